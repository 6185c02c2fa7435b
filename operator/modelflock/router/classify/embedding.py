"""The embedding stage: the prompt's embedding against the intents' example embeddings, with a
calibrated probability (calibrate.py) compared with `minConfidence`.

Example vectors are computed once per config version, in the background, in batches, and
re-used by the next version for every example text it keeps; the index (scorer and
calibration) is then fitted in a worker thread, off the event loop, and re-used as it is by a
version with the same examples. Until it is ready the stage does not wait: it reports
`warming` (a stage failure, visible in headers, metrics and the policy status) and the next
stage decides. Prompt vectors go through a bounded LRU.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from modelflock.router.classify.cache import Vector, VectorCache, vector_key
from modelflock.router.classify.calibrate import IntentIndex, build_index
from modelflock.router.classify.features import Features, StageFailure, Verdict
from modelflock.router.classify.scoring import DEFAULT_METHOD, Method

EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]

BATCH = 32  # example texts per embeddings request
BATCH_TIMEOUT_SECONDS = 120.0
# Embedding models read a few hundred tokens; the instruction is usually at the start or the
# end of a long prompt (a pasted article, then "summarise this").
HEAD_CHARS, TAIL_CHARS = 1500, 500


def embedding_text(text: str) -> str:
    """What is embedded of a prompt: all of it, or its head and tail when long."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n…\n" + text[-TAIL_CHARS:]


def checked_vectors(raw: object, count: int, dim: int | None) -> list[Vector]:
    """The embeddings answer as vectors, or StageFailure(bad_response) saying what is wrong."""
    if not isinstance(raw, list) or len(raw) != count:
        raise StageFailure("bad_response", f"expected {count} embeddings")
    vectors = []
    for item in raw:
        try:
            vector = np.asarray(item, dtype=np.float32)
        except (TypeError, ValueError):
            raise StageFailure("bad_response", "an embedding is not a list of numbers") from None
        if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
            raise StageFailure("bad_response", "an embedding is not a finite vector")
        if dim is not None and vector.size != dim:
            raise StageFailure(
                "bad_response", f"embedding has {vector.size} dimensions, the examples {dim}"
            )
        if not float(np.linalg.norm(vector)):
            raise StageFailure("bad_response", "an embedding is all zeros")
        vectors.append(vector)
    return vectors


class EmbeddingStage:
    """Embeds the prompt through an embedding expert and scores it against the examples."""

    name = "embedding"

    def __init__(
        self,
        examples: Sequence[tuple[str, str]],
        embed: EmbedFn,
        model: str,
        min_confidence: float,
        timeout: float,
        cache: VectorCache | None = None,
        known: Mapping[bytes, Vector] | None = None,
        method: Method = DEFAULT_METHOD,
        fitted: Mapping[bytes, IntentIndex] | None = None,
    ) -> None:
        self.examples = list(examples)
        self._embed = embed
        self.model = model
        self.min_confidence = min_confidence
        self.timeout = timeout
        self.cache = cache if cache is not None else VectorCache()
        self.method = method
        self._keys = [vector_key(model, text) for _, text in self.examples]
        # Example vectors by key, seeded with what the previous config version computed.
        self.vectors: dict[bytes, Vector] = {
            k: known[k] for k in self._keys if known is not None and k in known
        }
        # The examples, their intents and the scorer: what the fitted index depends on.
        digest = hashlib.sha256(method.encode())
        for (intent, _), key in zip(self.examples, self._keys, strict=True):
            digest.update(intent.encode() + b"\0" + key)
        self.fingerprint = digest.digest()
        # A reload that kept the examples: the previous version's index, ready at once.
        self.index: IntentIndex | None = (fitted or {}).get(self.fingerprint)
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self.index is not None

    def fitted(self) -> dict[bytes, IntentIndex]:
        """The fitted index by fingerprint, for the next config version (empty: not ready)."""
        return {} if self.index is None else {self.fingerprint: self.index}

    async def prepare(self) -> IntentIndex | None:
        """Embed the examples not embedded yet, then fit and calibrate the index in a worker
        thread (a second or more for hundreds of examples: not on the event loop)."""
        async with self._lock:
            if self.index is not None or not self.examples:
                return self.index
            missing: dict[bytes, str] = {}
            for (_, text), key in zip(self.examples, self._keys, strict=True):
                if key not in self.vectors:
                    missing[key] = embedding_text(text)
            keys, texts = list(missing), list(missing.values())
            dim = next((v.size for v in self.vectors.values()), None)
            for start in range(0, len(texts), BATCH):
                async with asyncio.timeout(BATCH_TIMEOUT_SECONDS):
                    raw = await self._embed(texts[start : start + BATCH])
                batch = checked_vectors(raw, len(texts[start : start + BATCH]), dim)
                dim = batch[0].size
                self.vectors.update(zip(keys[start : start + BATCH], batch, strict=True))
            pairs = [
                (intent, self.vectors[k])
                for (intent, _), k in zip(self.examples, self._keys, strict=True)
            ]
            self.index = await asyncio.to_thread(build_index, pairs, self.method)
            return self.index

    async def prompt_vector(self, text: str) -> Vector:
        key = vector_key(self.model, text)
        vector = self.cache.get(key)
        if vector is None:
            [vector] = checked_vectors(
                await self._embed([embedding_text(text)]),
                1,
                self.index.dim if self.index else None,
            )
            self.cache.put(key, vector)
        return vector

    async def score(self, f: Features) -> tuple[str, float] | None:
        """The best intent and its calibrated probability (None: nothing to compare)."""
        if not self.examples or not f.text:
            return None
        index = self.index
        if index is None:
            raise StageFailure("warming", "intent examples are still being embedded")
        return index.best(await self.prompt_vector(f.text))

    async def decide(self, f: Features) -> Verdict:
        found = await self.score(f)
        if found is None:
            return Verdict(None)
        intent, confidence = found
        if confidence < self.min_confidence or math.isnan(confidence):
            return Verdict(None, confidence, intent)
        return Verdict(intent, confidence)
