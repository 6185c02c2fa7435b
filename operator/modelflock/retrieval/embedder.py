"""Embedding calls of an ingest: OpenAI `/v1/embeddings`, in batches, retried with backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp


class EmbeddingFailed(Exception):
    """The embedding expert did not answer usably after every retry."""


def backoff_seconds(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Delay before retry `attempt` (1, 2, ...): doubling from `base`, at most `cap`."""
    return float(min(cap, base * 2 ** (attempt - 1)))


def parse_embeddings(body: object, count: int) -> tuple[list[list[float]], int]:
    """Vectors in input order and the prompt tokens used; ValueError when malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError("the answer has no 'data' list")
    data = body["data"]
    if len(data) != count:
        raise ValueError(f"asked for {count} embeddings, got {len(data)}")
    try:
        ordered = sorted(data, key=lambda d: int(d["index"]))
        vectors = [[float(x) for x in d["embedding"]] for d in ordered]
    except (KeyError, TypeError, ValueError):
        raise ValueError("an embedding is not a list of numbers") from None
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return vectors, tokens if isinstance(tokens, int) else 0


@dataclass
class Embedder:
    """Calls one embedding endpoint; `base_url` is re-read per call (replicas come and go)."""

    session: aiohttp.ClientSession
    base_url: Callable[[], Awaitable[str]]
    model: str
    api_key: str | None = None
    timeout_seconds: float = 30.0
    max_retries: int = 4
    calls: int = 0
    tokens: int = 0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def _call(self, texts: Sequence[str]) -> list[list[float]]:
        url = (await self.base_url()).rstrip("/")
        url = url + ("/embeddings" if url.endswith("/v1") else "/v1/embeddings")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        payload = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        async with self.session.post(url, json=payload, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.json(content_type=None)
        vectors, tokens = parse_embeddings(body, len(texts))
        self.calls += 1
        self.tokens += tokens
        return vectors

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One batch, retried up to max_retries times; EmbeddingFailed with the last error."""
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await self.sleep(backoff_seconds(attempt))
            try:
                return await self._call(texts)
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = str(exc) or type(exc).__name__
        raise EmbeddingFailed(f"{self.max_retries + 1} attempts failed; last: {last}")
