"""Scoring a prompt embedding against each intent's example embeddings (pure numpy).

Three scorers, measured against each other in docs/router.md (bench/classifier_eval.py):
- `knn`: the mean cosine similarity of the k nearest examples of each intent;
- `centroid`: the cosine similarity to each intent's mean example;
- `head`: a small multinomial logistic regression trained on the examples.
Each also has a leave-one-out (or, for the head, k-fold) variant that scores every example
without itself: what calibration (calibrate.py) learns the scale of the scores from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float64]
Method = Literal["knn", "centroid", "head"]
METHODS: tuple[Method, ...] = ("knn", "centroid", "head")
# What the embedding stage uses: the most accurate held out on the example policy's data
# (docs/router.md, "Which scorer"; bench/classifier_eval.py --scorers).
DEFAULT_METHOD: Method = "head"
DEFAULT_K = 3
_FLOOR = -1.0  # cosine lower bound: the score of an intent with no usable example


def normalise_rows(matrix: npt.ArrayLike) -> Vectors:
    rows = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Vectors = (rows / np.where(norms == 0, 1, norms)).astype(np.float32)
    return out


@dataclass(frozen=True)
class ExampleSet:
    """Example vectors grouped by intent: rows bounds[i][0]:bounds[i][1] belong to labels[i]."""

    labels: tuple[str, ...]
    vectors: Vectors  # (n, d), L2-normalised
    owners: npt.NDArray[np.int64]  # (n,) index into labels
    bounds: tuple[tuple[int, int], ...]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def counts(self) -> list[int]:
        return [end - start for start, end in self.bounds]


def example_set(pairs: Sequence[tuple[str, npt.ArrayLike]]) -> ExampleSet:
    """Group (intent, vector) pairs by intent, intents in order of first appearance."""
    labels: list[str] = []
    for intent, _ in pairs:
        if intent not in labels:
            labels.append(intent)
    rows: list[npt.ArrayLike] = []
    owners: list[int] = []
    bounds: list[tuple[int, int]] = []
    for index, label in enumerate(labels):
        start = len(rows)
        rows += [vector for intent, vector in pairs if intent == label]
        owners += [index] * (len(rows) - start)
        bounds.append((start, len(rows)))
    vectors = normalise_rows(np.vstack([np.asarray(r, dtype=np.float32) for r in rows]))
    return ExampleSet(tuple(labels), vectors, np.asarray(owners, dtype=np.int64), tuple(bounds))


def _top_k_mean(similarities: Scores, k: int) -> Scores:
    """Mean of the k largest values of each row (fewer columns: all of them)."""
    columns = similarities.shape[1]
    if columns == 0:
        return np.full(similarities.shape[0], _FLOOR)
    k = min(k, columns)
    top = np.partition(similarities, columns - k, axis=1)[:, columns - k :]
    out: Scores = top.mean(axis=1)
    return out


def knn_scores(examples: ExampleSet, queries: Vectors, k: int = DEFAULT_K) -> Scores:
    """(m, intents): mean similarity of each query to the k nearest examples per intent."""
    similarities = (queries @ examples.vectors.T).astype(np.float64)
    return np.column_stack(
        [_top_k_mean(similarities[:, start:end], k) for start, end in examples.bounds]
    )


def knn_scores_loo(examples: ExampleSet, k: int = DEFAULT_K) -> Scores:
    """(n, intents): every example scored by the others (itself left out)."""
    similarities = (examples.vectors @ examples.vectors.T).astype(np.float64)
    np.fill_diagonal(similarities, -np.inf)
    columns = []
    for start, end in examples.bounds:
        block = similarities[:, start:end]
        # Rows of this intent have one example fewer (their own is -inf).
        own = np.zeros(block.shape[0], dtype=bool)
        own[start:end] = True
        scores = np.empty(block.shape[0])
        scores[~own] = _top_k_mean(block[~own], k)
        if end - start > 1:
            inner = np.sort(block[own], axis=1)[:, 1:]  # drop the -inf (the row itself)
            scores[own] = _top_k_mean(inner, k)
        else:
            scores[own] = _FLOOR
        columns.append(scores)
    return np.column_stack(columns)


def _centroids(examples: ExampleSet) -> Vectors:
    return normalise_rows(
        np.vstack([examples.vectors[start:end].sum(axis=0) for start, end in examples.bounds])
    )


def centroid_scores(examples: ExampleSet, queries: Vectors) -> Scores:
    out: Scores = (queries @ _centroids(examples).T).astype(np.float64)
    return out


def centroid_scores_loo(examples: ExampleSet) -> Scores:
    """Each example against the centroids, its own intent's recomputed without it."""
    scores = centroid_scores(examples, examples.vectors)
    for label, (start, end) in enumerate(examples.bounds):
        if end - start < 2:
            scores[start:end, label] = _FLOOR
            continue
        total = examples.vectors[start:end].sum(axis=0)
        without = normalise_rows(total[None, :] - examples.vectors[start:end])
        scores[start:end, label] = np.einsum("ij,ij->i", examples.vectors[start:end], without)
    return scores


@dataclass(frozen=True)
class Head:
    """A linear softmax classifier over the embedding: logits = x @ weights + bias."""

    weights: npt.NDArray[np.float64]  # (d, intents)
    bias: npt.NDArray[np.float64]  # (intents,)


# The head's fit: an L2 penalty small enough to let it use the examples, and enough
# Nesterov steps to converge (plain gradient descent stopped at 300 steps left it
# under-fitted: 85 % against 89 % held out on the example policy's 485 examples).
HEAD_L2 = 1e-4
HEAD_STEPS = 250


def train_head(
    vectors: Vectors,
    owners: npt.NDArray[np.int64],
    classes: int,
    l2: float = HEAD_L2,
    steps: int = HEAD_STEPS,
    rate: float = 2.0,
    momentum: float = 0.9,
) -> Head:
    """Full-batch Nesterov-accelerated gradient descent on the cross-entropy with an L2
    penalty (deterministic; unit-length inputs keep the step size safe)."""
    x = vectors.astype(np.float64)
    onehot = np.eye(classes)[owners]
    weights = np.zeros((x.shape[1], classes))
    bias = np.zeros(classes)
    step_w = np.zeros_like(weights)
    step_b = np.zeros_like(bias)
    for _ in range(steps):
        ahead_w = weights + momentum * step_w
        ahead_b = bias + momentum * step_b
        logits = x @ ahead_w + ahead_b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        error = (probs - onehot) / len(x)
        step_w = momentum * step_w - rate * (x.T @ error + l2 * ahead_w)
        step_b = momentum * step_b - rate * error.sum(axis=0)
        weights += step_w
        bias += step_b
    return Head(weights, bias)


def head_scores(head: Head, queries: Vectors) -> Scores:
    out: Scores = queries.astype(np.float64) @ head.weights + head.bias
    return out


def head_scores_kfold(examples: ExampleSet, folds: int = 5) -> Scores:
    """Held-out logits for every example (k-fold: a head per fold, leave-one-out is too dear)."""
    n, classes = len(examples.owners), len(examples.labels)
    scores = np.zeros((n, classes))
    fold_of = np.arange(n) % folds
    for fold in range(min(folds, n)):
        held = fold_of == fold
        if held.all():
            continue
        head = train_head(examples.vectors[~held], examples.owners[~held], classes)
        scores[held] = head_scores(head, examples.vectors[held])
    return scores


@dataclass(frozen=True)
class Scorer:
    """What the embedding stage keeps per config version: examples and how to score them."""

    examples: ExampleSet
    method: Method = DEFAULT_METHOD
    k: int = DEFAULT_K
    head: Head | None = None
    centroids: Vectors | None = None  # computed once per config version (method centroid)

    def scores(self, queries: Vectors) -> Scores:
        if self.method == "knn":
            return knn_scores(self.examples, queries, self.k)
        if self.method == "centroid":
            assert self.centroids is not None
            out: Scores = (queries @ self.centroids.T).astype(np.float64)
            return out
        assert self.head is not None
        return head_scores(self.head, queries)

    def held_out_scores(self) -> Scores:
        if self.method == "knn":
            return knn_scores_loo(self.examples, self.k)
        if self.method == "centroid":
            return centroid_scores_loo(self.examples)
        return head_scores_kfold(self.examples)


def scorer(examples: ExampleSet, method: Method = DEFAULT_METHOD, k: int = DEFAULT_K) -> Scorer:
    head = None
    if method == "head":
        head = train_head(examples.vectors, examples.owners, len(examples.labels))
    centroids = _centroids(examples) if method == "centroid" else None
    return Scorer(examples, method, k, head, centroids)
