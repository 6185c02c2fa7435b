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
Runtime = Literal["numpy", "onnx"]  # modelflock.sim.minilm (numpy and weights: imported lazily)


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


# One text up to this many characters (~60 word pieces, ≤ ~15 ms of CPU) is embedded on the
# event loop when the model is idle: handing it to a worker thread costs 1-2 ms of wake-up on a
# loaded machine, a tenth of the work. Anything larger, or anything arriving while a batch is
# computing, goes to a worker thread, so the engine keeps answering.
_INLINE_CHARS = 256


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (`modelflock.sim.minilm`); one computation at a time."""

    def __init__(self, runtime: Runtime = "onnx", threads: int = 1) -> None:
        from modelflock.sim.minilm import MiniLM  # numpy and the weights only when asked for

        self.model = MiniLM.load(runtime=runtime, threads=threads)
        self.dim = self.model.dim

    async def embed(self, texts: Sequence[str]) -> Embedded:
        encoded = None
        if len(texts) == 1 and len(texts[0]) <= _INLINE_CHARS:
            encoded = self.model.encode_if_idle(list(texts))
        if encoded is None:
            encoded = await asyncio.to_thread(self.model.encode, list(texts))
        return Embedded(encoded.vectors.tolist(), sum(encoded.tokens))


def make_embedder(
    model: EmbeddingModel, dim: int, runtime: Runtime = "onnx", threads: int = 1
) -> Embedder:
    if model == "minilm":
        return MiniLMEmbedder(runtime, threads)
    return HashEmbedder(dim)
