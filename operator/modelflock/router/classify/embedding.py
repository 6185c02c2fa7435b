"""The embedding stage: nearest intent by cosine similarity to the intents' example prompts."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence

from modelflock.router.classify.features import Features

EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]


def normalise(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else list(vector)


def nearest_intent(
    vector: Sequence[float], examples: Sequence[tuple[str, Sequence[float]]], min_similarity: float
) -> tuple[str, float] | None:
    """Best (intent, cosine) over normalised example vectors, or None when below the bar."""
    query = normalise(vector)
    best: tuple[str, float] | None = None
    for intent, example in examples:
        score = math.fsum(a * b for a, b in zip(query, example, strict=False))
        if best is None or score > best[1]:
            best = (intent, score)
    if best is None or best[1] < min_similarity:
        return None
    return best


class EmbeddingStage:
    """Embeds the prompt through an embedding expert; example vectors are computed once."""

    name = "embedding"

    def __init__(
        self,
        examples: Sequence[tuple[str, str]],
        embed: EmbedFn,
        min_similarity: float,
        timeout: float,
    ) -> None:
        self._examples = list(examples)
        self._embed = embed
        self.min_similarity = min_similarity
        self.timeout = timeout
        self._vectors: list[tuple[str, list[float]]] | None = None
        self._lock = asyncio.Lock()

    async def example_vectors(self) -> list[tuple[str, list[float]]]:
        if self._vectors is None:
            async with self._lock:
                if self._vectors is None:
                    texts = [text for _, text in self._examples]
                    vectors = await self._embed(texts) if texts else []
                    self._vectors = [
                        (intent, normalise(v))
                        for (intent, _), v in zip(self._examples, vectors, strict=True)
                    ]
        return self._vectors

    async def decide(self, f: Features) -> str | None:
        examples = await self.example_vectors()
        if not examples or not f.text:
            return None
        [vector] = await self._embed([f.text])
        found = nearest_intent(vector, examples, self.min_similarity)
        return found[0] if found else None
