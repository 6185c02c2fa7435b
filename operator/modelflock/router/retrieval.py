"""The retrieval step (before the experts): embed the prompt, query the knowledge base's
pgvector table through a pool with read-only credentials, then answer from the passages
(no LLM), add them to the expert's request, or fall through.

The store going away never fails a request: the step records why, reports it to the operator
(the RoutingPolicy status says it) and lets the experts answer. After a failure the store is
skipped for `retryAfterSeconds`, so a dead store costs requests nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from modelflock.retrieval.store import ConnectionInfo, Passage, open_pool, search
from modelflock.router.accounting import RouterMetrics
from modelflock.router.answer import (
    answer_text,
    completion_body,
    context_text,
    decide,
    estimate_tokens,
    stream_events,
    usable,
)
from modelflock.router.config import KnowledgeBase
from modelflock.router.http_server import Reply, Result
from modelflock.router.job import Answer, Job, Served
from modelflock.router.upstream import Upstream, UpstreamFailure

log = logging.getLogger(__name__)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
Report = Callable[[str, bool, str], None]  # knowledge base, reachable, detail
Vector = npt.NDArray[np.float32]
_VECTOR_CACHE_SIZE = 4096


def parse_embedding(value: Any) -> Vector:
    """An OpenAI embedding item's vector: base64 of little-endian float32s (what the router
    asks for: no JSON floats to print or parse) or a list of numbers (a server that ignores
    `encoding_format`). ValueError for anything else."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"embedding is not base64: {exc}") from None
        if not raw or len(raw) % 4:
            raise ValueError(f"embedding of {len(raw)} bytes is not float32s")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        return np.asarray(value, dtype=np.float32)
    raise ValueError("embedding is neither base64 nor a list of numbers")


class StoreUnavailable(Exception):
    """The store (or its credentials) failed: skipped for a while, reported to the operator."""


class EmbeddingUnavailable(Exception):
    """The query could not be embedded (the embedder is slow or failing, not the store)."""


@dataclass
class _Store:
    """One knowledge base's pool, the credentials it was opened with, and its health."""

    info: ConnectionInfo | None = None
    pool: asyncpg.Pool | None = None
    fingerprint: str = ""
    skip_until: float = 0.0
    opening: asyncio.Lock | None = None


class RetrievalStep:
    def __init__(
        self, upstream: Upstream, metrics: RouterMetrics, report: Report | None = None
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.report = report
        self._stores: dict[str, _Store] = {}
        # Recent query vectors (lookups repeat): (model, urls, text) → vector, least recent
        # first. A repeated query costs no embedding call.
        self._vectors: OrderedDict[tuple[str, tuple[str, ...], str], Vector] = OrderedDict()
        self._ids = itertools.count(1)
        # Embedding experts that refused encoding_format base64: asked for floats instead.
        self._floats_only: set[str] = set()

    # ------------------------------------------------------------------ the store

    async def _pool(self, kb: KnowledgeBase, fingerprint: str) -> asyncpg.Pool:
        store = self._stores.setdefault(kb.name, _Store())
        if store.pool is not None and store.fingerprint == fingerprint:
            return store.pool
        if store.opening is None:
            store.opening = asyncio.Lock()
        async with store.opening:
            if store.pool is not None and store.fingerprint == fingerprint:
                return store.pool
            try:
                info = await asyncio.to_thread(ConnectionInfo.from_dir, kb.secret_dir)
            except (OSError, ValueError) as exc:
                raise StoreUnavailable(str(exc)) from None
            if store.pool is not None and info == store.info:
                store.fingerprint = fingerprint  # files changed elsewhere: same credentials
                return store.pool
            old, store.pool = store.pool, None
            if old is not None:
                old.terminate()
            seconds = kb.query_timeout_milliseconds / 1000
            try:
                async with asyncio.timeout(max(seconds, 1.0)):
                    store.pool = await open_pool(info, kb.ef_search, seconds)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StoreUnavailable(f"cannot open a connection: {exc}") from None
            store.info, store.fingerprint = info, fingerprint
            return store.pool

    async def _search(
        self, pool: asyncpg.Pool, kb: KnowledgeBase, vector: Vector, top_k: int
    ) -> list[Passage]:
        seconds = kb.query_timeout_milliseconds / 1000
        try:
            async with asyncio.timeout(seconds):
                return await search(pool, kb.table, vector, top_k, seconds)
        except TimeoutError:
            raise StoreUnavailable(f"no answer within {kb.query_timeout_milliseconds} ms") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from None

    async def _embed(self, job: Job, kb: KnowledgeBase) -> tuple[Vector, int]:
        """The query's vector and the tokens paid for it (0 when it came from the cache)."""
        expert = job.state.experts[kb.expert]
        key = (expert.config.model, tuple(expert.config.urls), job.parsed.prompt)
        cached = self._vectors.get(key)
        if cached is not None:
            self._vectors.move_to_end(key)
            return cached, 0
        vector, tokens = await self._embed_remote(job, kb)
        self._vectors[key] = vector
        if len(self._vectors) > _VECTOR_CACHE_SIZE:
            self._vectors.popitem(last=False)
        return vector, tokens

    async def _embed_remote(self, job: Job, kb: KnowledgeBase) -> tuple[Vector, int]:
        expert = job.state.experts[kb.expert]
        as_floats = expert.name in self._floats_only
        payload = {
            "model": expert.config.model,
            "input": [job.parsed.prompt],
            "encoding_format": "float" if as_floats else "base64",
        }
        try:
            async with asyncio.timeout(kb.embed_timeout_milliseconds / 1000):
                try:
                    body = await self.upstream.call_json(expert, "/embeddings", payload)
                except UpstreamFailure as exc:
                    if as_floats or exc.status not in (400, 422):
                        raise
                    # An engine without base64 output: floats from now on.
                    self._floats_only.add(expert.name)
                    payload["encoding_format"] = "float"
                    body = await self.upstream.call_json(expert, "/embeddings", payload)
            vector = parse_embedding(body["data"][0]["embedding"])
        except (UpstreamFailure, TimeoutError, KeyError, IndexError, TypeError, ValueError) as exc:
            detail = str(exc) or type(exc).__name__
            raise EmbeddingUnavailable(f"embedding the query failed: {detail}") from None
        if len(vector) != kb.dimensions:
            raise EmbeddingUnavailable(
                f"expert {kb.expert} returned {len(vector)} dimensions, the table has {kb.dimensions}"
            )
        usage = body.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return vector, tokens if isinstance(tokens, int) else estimate_tokens(job.parsed.prompt)

    # ------------------------------------------------------------------ the step

    async def before(self, job: Job) -> Result | None:
        route = job.route_spec
        if route is None or route.retrieval is None or job.parsed.kind == "embedding":
            return None
        spec = route.retrieval
        kb = next(k for k in job.state.config.knowledge_bases if k.name == spec.knowledge_base)
        loop = asyncio.get_running_loop()
        started = loop.time()
        headers = job.extra_headers
        headers["x-modelflock-knowledge-base"] = kb.name
        store = self._stores.get(kb.name)
        if store is not None and started < store.skip_until:
            headers["x-modelflock-retrieval"] = "unavailable"
            self.metrics.retrievals.inc((job.route, kb.name, "unavailable"))
            return None
        try:
            # The pool first: a store that cannot be reached costs no embedding call.
            pool = await self._pool(kb, job.state.fingerprint)
            vector, tokens = await self._embed(job, kb)
            # The query's embedding is paid for whatever happens next.
            self._charge_embedding(job, kb, tokens)
            passages = await self._search(pool, kb, vector, spec.top_k)
        except EmbeddingUnavailable as exc:
            # This request falls through; the store stays in use for the next ones.
            headers["x-modelflock-retrieval"] = "unavailable"
            self.metrics.retrievals.inc((job.route, kb.name, "unavailable"))
            log.warning("route %s: knowledge base %s: %s", job.route, kb.name, exc)
            return None
        except StoreUnavailable as exc:
            self._stores.setdefault(kb.name, _Store()).skip_until = (
                loop.time() + kb.retry_after_seconds
            )
            headers["x-modelflock-retrieval"] = "unavailable"
            self.metrics.retrievals.inc((job.route, kb.name, "unavailable"))
            log.warning("route %s: knowledge base %s unavailable: %s", job.route, kb.name, exc)
            if self.report is not None:
                self.report(kb.name, False, str(exc)[:500])
            return None
        if self.report is not None:
            self.report(kb.name, True, "")
        self.metrics.retrieval_seconds.observe((job.route, kb.name), loop.time() - started)
        min_score = float(spec.min_score)
        decision = decide(spec.mode, min_score, passages)
        best = max((p.score for p in passages), default=0.0)
        headers["x-modelflock-retrieval"] = "miss" if decision == "miss" else "hit"
        headers["x-modelflock-retrieval-score"] = f"{best:.4f}"
        self.metrics.retrievals.inc((job.route, kb.name, "miss" if decision == "miss" else "hit"))
        job.retrieved = passages
        if decision == "augment":
            job.context.append(
                context_text(usable(passages, min_score), "Passages from the knowledge base:")
            )
        if decision != "answer":
            return None
        return await self._answer(job, kb, usable(passages, min_score)[: spec.top_k])

    def _charge_embedding(self, job: Job, kb: KnowledgeBase, tokens: int) -> None:
        expert = job.state.experts[kb.expert]
        cost = expert.cost(tokens, 0)
        key = (job.route, kb.expert)
        self.metrics.tokens.inc((*key, "input"), tokens)
        self.metrics.cost.inc(key, cost)
        self.metrics.retrieval_embedding_cost.inc((job.route, kb.name), cost)
        job.cost += cost

    async def _answer(self, job: Job, kb: KnowledgeBase, passages: list[Passage]) -> Result:
        chat = job.parsed.kind == "chat"
        text = answer_text(passages)
        # The conversation and this answer as an LLM would have counted them (estimated).
        usage = (max(1, (job.parsed.total_chars + 3) // 4), estimate_tokens(text))
        label = f"kb:{kb.name}"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-kb-{next(self._ids)}"
        created = int(time.time())
        # What the route's own expert (or the baseline) would have charged for this answer.
        state = job.state
        base = state.baseline or state.experts[job.sequence[0]]
        baseline_cost = base.cost(*usage)
        job.baseline_cost += baseline_cost
        m = self.metrics
        m.baseline_cost.inc((job.route, label), baseline_cost)
        m.retrieval_saved.inc((job.route, kb.name), max(0.0, baseline_cost - job.cost))
        m.requests.inc((job.route, label, job.intent, "200"))
        now = asyncio.get_running_loop().time()
        m.ttfb.observe((job.route, label), now - job.started)
        m.latency.observe((job.route, label), now - job.started)
        headers = job.headers(label)
        headers["x-modelflock-cost"] = repr(job.cost)
        headers["x-modelflock-baseline-cost"] = repr(job.baseline_cost)
        if not job.parsed.stream:
            payload = completion_body(chat, label, text, passages, usage, rid, created)
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            job.outcome = Served(label, 200, Answer(200, body, "application/json", payload))
            return Reply(200, body, headers)
        events = stream_events(
            chat, label, text, passages, usage, rid, created, job.parsed.wants_usage
        )
        out = await job.request.stream(200, {**_SSE_HEADERS, **headers})
        for event in events:
            await out.write(event)
        await out.end()
        job.outcome = Served(label, 200, None)
        return out

    async def close(self) -> None:
        for store in self._stores.values():
            if store.pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(store.pool.close(), 5)
        self._stores.clear()
