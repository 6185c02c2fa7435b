"""Deterministic text, token counting and embeddings: same input, same output, every run."""

from __future__ import annotations

import hashlib
import math
import random
import re

_VOCABULARY_TEXT = (
    "the model answers with a short and useful sentence about data code text plan "
    "result value system request token cache queue batch stream route expert cost "
    "fast small large simple clear method function class list table graph node pod "
    "cluster service policy scale demand replica metric signal latency budget check"
)

REFUSAL_TEXT = "I'm sorry, but I cannot help with that request."

_WORD = re.compile(r"[a-z0-9]+")


def count_tokens(text: str) -> int:
    """A whitespace word count: close enough to a tokenizer for queueing and accounting."""
    return len(text.split())


def generate_words(seed_text: str, count: int) -> list[str]:
    """`count` words chosen deterministically from the prompt (no process-random seeding)."""
    seed = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    vocabulary = _VOCABULARY_TEXT.split()
    return [rng.choice(vocabulary) for _ in range(count)]


def _bucket(word: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


def embed(text: str, dim: int) -> list[float]:
    """Signed hashed bag of words, L2-normalised: texts sharing words have a high cosine."""
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        index, sign = _bucket(word, dim)
        vector[index] += sign
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        return vector
    return [v / norm for v in vector]


# Degraded answers draw from words no good answer uses, so any judge can tell them apart:
# the simulated judge by vocabulary, an embedding model by meaning.
_DEGRADED_TEXT = (
    "unrelated vague wrong guess perhaps banana weather football holiday nonsense filler "
    "random maybe unclear confused noise irrelevant trivia gossip sorry unsure"
)
_GOOD_WORDS = frozenset(_VOCABULARY_TEXT.split())


def _unit(seed_text: str) -> float:
    """A number in [0, 1) fixed by the text (the same on every engine and every run)."""
    digest = hashlib.blake2b(b"quality:" + seed_text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_degraded(prompt: str, rate: float) -> bool:
    """Whether an engine with `rate` degrades this prompt. Nested across engines: an engine
    with a lower rate degrades a subset of the prompts one with a higher rate degrades."""
    return _unit(prompt) < rate


def degraded_words(seed_text: str, count: int) -> list[str]:
    seed = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed ^ 0x5EED)
    vocabulary = _DEGRADED_TEXT.split()
    return [rng.choice(vocabulary) for _ in range(count)]


def answer_quality(text: str) -> float:
    """Share of the answer's words that good answers use (0 for an empty answer)."""
    words = _WORD.findall(text.lower())
    return sum(w in _GOOD_WORDS for w in words) / len(words) if words else 0.0
