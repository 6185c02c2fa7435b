"""A confidence that means the same for every embedding model.

Raw cosine similarities live on a scale of their own per model (MiniLM's paraphrases score
0.3-0.6, bge's 0.7-0.9), so a fixed similarity threshold means something different for each.
Instead the stage turns each intent's score into a probability, softmax(scores / T), where the
temperature T is fitted when the config loads, on the policy's own examples: every example is
scored by the others (leave-one-out; k-fold for the linear head) and T minimises the negative log-likelihood of their
true intents. `minConfidence` is then a probability of being right, whatever the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelflock.router.classify.scoring import (
    DEFAULT_K,
    DEFAULT_METHOD,
    Method,
    Scorer,
    Scores,
    Vectors,
    example_set,
    normalise_rows,
    scorer,
)

# Used when the examples cannot calibrate (fewer than two intents with two examples each):
# a cosine-scale guess, reported as uncalibrated.
DEFAULT_TEMPERATURE = 0.05
_GRID = np.geomspace(1e-3, 10.0, 241)


def softmax(scores: Scores, temperature: float) -> Scores:
    scaled = np.atleast_2d(scores) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled)
    out: Scores = weights / weights.sum(axis=1, keepdims=True)
    return out


def negative_log_likelihood(
    scores: Scores, truth: npt.NDArray[np.int64], temperature: float, smoothing: float = 0.0
) -> float:
    """Mean cross-entropy against the true intents, the targets smoothed by `smoothing`."""
    log_probs = np.log(np.clip(softmax(scores, temperature), 1e-12, 1.0))
    rows = np.arange(len(truth))
    true_part = log_probs[rows, truth]
    if not smoothing or scores.shape[1] < 2:
        return float(-true_part.mean())
    others = (log_probs.sum(axis=1) - true_part) / (scores.shape[1] - 1)
    return float(-((1 - smoothing) * true_part + smoothing * others).mean())


def fit_temperature(scores: Scores, truth: npt.NDArray[np.int64]) -> float:
    """The temperature with the lowest held-out NLL: a log grid, then a finer one around it.

    Targets are smoothed by a pseudo-count, 1/(n+2): when every held-out example is right
    (few, well separated examples) the plain NLL would drive the temperature to zero and
    every answer to certainty; n examples cannot justify more than about 1 - 1/(n+2).
    """
    smoothing = 1.0 / (len(truth) + 2)
    grid = _GRID
    for _ in range(2):
        losses = [negative_log_likelihood(scores, truth, float(t), smoothing) for t in grid]
        best = int(np.argmin(losses))
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        grid = np.geomspace(low, high, 41)
    losses = [negative_log_likelihood(scores, truth, float(t), smoothing) for t in grid]
    return float(grid[int(np.argmin(losses))])


def expected_calibration_error(
    probs: Scores, truth: npt.NDArray[np.int64], bins: int = 10
) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


@dataclass(frozen=True)
class Calibration:
    temperature: float
    calibrated: bool  # False: too few examples, DEFAULT_TEMPERATURE is a guess
    examples: int
    held_out_accuracy: float  # each example classified by the others
    calibration_error: float  # expected calibration error of the held-out probabilities


def calibrate(fitted: Scorer) -> Calibration:
    examples = fitted.examples
    counts = fitted.examples.counts()
    truth = examples.owners
    if sum(1 for c in counts if c >= 2) < 2:
        return Calibration(DEFAULT_TEMPERATURE, False, len(truth), 0.0, 0.0)
    held_out = fitted.held_out_scores()
    temperature = fit_temperature(held_out, truth)
    probs = softmax(held_out, temperature)
    return Calibration(
        temperature=temperature,
        calibrated=True,
        examples=len(truth),
        held_out_accuracy=float((probs.argmax(axis=1) == truth).mean()),
        calibration_error=expected_calibration_error(probs, truth),
    )


@dataclass(frozen=True)
class IntentIndex:
    """Examples, scorer and calibration of one config version: prompt vector → probabilities."""

    scorer: Scorer
    calibration: Calibration

    @property
    def labels(self) -> tuple[str, ...]:
        return self.scorer.examples.labels

    @property
    def dim(self) -> int:
        return self.scorer.examples.dim

    def probabilities(self, vectors: Vectors) -> Scores:
        """(m, intents) calibrated probabilities for (m, d) prompt vectors."""
        return softmax(self.scorer.scores(normalise_rows(vectors)), self.calibration.temperature)

    def best(self, vector: npt.ArrayLike) -> tuple[str, float]:
        """The most probable intent of one prompt vector and its probability (the per-request
        path: one matrix-vector product for centroids or the head, the softmax over a handful of intents
        in plain Python, which beats numpy's per-call overhead at this size)."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.sqrt(query @ query)) or 1.0
        fitted = self.scorer
        if fitted.method == "centroid" and fitted.centroids is not None:
            raw = (fitted.centroids @ query).tolist()
            scores = [s / norm for s in raw]
        elif fitted.method == "head" and fitted.head is not None:
            logits = (query @ fitted.head.weights).tolist()
            scores = [s / norm + b for s, b in zip(logits, fitted.head.bias.tolist(), strict=True)]
        else:
            scores = fitted.scores((query / norm)[None, :])[0].tolist()
        temperature = self.calibration.temperature
        top = max(scores)
        weights = [math.exp((s - top) / temperature) for s in scores]
        index = max(range(len(weights)), key=weights.__getitem__)
        return self.labels[index], weights[index] / math.fsum(weights)


def build_index(
    pairs: Sequence[tuple[str, npt.ArrayLike]],
    method: Method = DEFAULT_METHOD,
    k: int = DEFAULT_K,
) -> IntentIndex:
    """Group the example vectors, fit the scorer, calibrate it on held-out scores."""
    fitted = scorer(example_set(pairs), method, k)
    return IntentIndex(fitted, calibrate(fitted))
