"""What answers an engine-sim's /v1/embeddings: hashed bags of words, or a real model.

`hash` is instant and deterministic (texts sharing words have a high cosine) and serves the
router's plumbing tests. `minilm` runs all-MiniLM-L6-v2 on CPU (`modelflock.sim.minilm`), so
classification and retrieval are tested and measured on a real embedding model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from modelflock.sim.text import count_tokens, embed

EmbeddingModel = Literal["hash", "minilm"]


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    prompt_tokens: int


class Embedder(Protocol):
    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Embedded: ...


@dataclass(frozen=True)
class HashEmbedder:
    dim: int

    async def embed(self, texts: Sequence[str]) -> Embedded:
        return Embedded([embed(t, self.dim) for t in texts], sum(count_tokens(t) for t in texts))


class MiniLMEmbedder:
    """The model runs in a worker thread, so the engine's event loop keeps answering."""

    def __init__(self) -> None:
        from modelflock.sim.minilm import MiniLM  # numpy and the weights only when asked for

        self.model = MiniLM.load()
        self.dim = self.model.dim

    async def embed(self, texts: Sequence[str]) -> Embedded:
        encoded = await asyncio.to_thread(self.model.encode, list(texts))
        return Embedded(encoded.vectors.tolist(), sum(encoded.tokens))


def make_embedder(model: EmbeddingModel, dim: int) -> Embedder:
    if model == "minilm":
        return MiniLMEmbedder()
    return HashEmbedder(dim)
