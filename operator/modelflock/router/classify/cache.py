"""A bounded LRU of prompt embeddings keyed by a hash, so repeated prompts do not re-embed."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


def vector_key(model: str, text: str) -> bytes:
    """SHA-256 of the embedding model and the text: prompts are never kept as keys."""
    return hashlib.sha256(f"{model}\0{text}".encode()).digest()


class VectorCache:
    """Least recently used first out, at most `max_entries` vectors (384 floats: 1.5 KiB)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Vector] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Vector | None:
        vector = self._entries.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: bytes, vector: Vector) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = vector
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
