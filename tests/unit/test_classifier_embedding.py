"""The embedding stage's numbers: scorers, leave-one-out, calibration, the stage's life cycle
(warming, batches, re-use across config versions, the prompt LRU) and bad embeddings."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from modelflock.router.classify.cache import VectorCache, vector_key
from modelflock.router.classify.calibrate import (
    DEFAULT_TEMPERATURE,
    build_index,
    expected_calibration_error,
    softmax,
)
from modelflock.router.classify.embedding import (
    BATCH,
    EmbeddingStage,
    checked_vectors,
    embedding_text,
)
from modelflock.router.classify.features import Features, StageFailure
from modelflock.router.classify.scoring import (
    centroid_scores,
    centroid_scores_loo,
    example_set,
    knn_scores,
    knn_scores_loo,
)


def clusters(seed: int = 0, per: int = 12, dim: int = 24, spread: float = 1.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, dim))
    pairs = [
        (f"i{i}", c + rng.normal(scale=spread, size=dim))
        for i, c in enumerate(centers)
        for _ in range(per)
    ]
    return centers, pairs


@pytest.mark.parametrize(
    ("loo", "full"),
    [
        (knn_scores_loo, lambda s, q: knn_scores(s, q, 3)),
        (centroid_scores_loo, centroid_scores),
    ],
    ids=["knn", "centroid"],
)
def test_leave_one_out_equals_scoring_without_the_example(loo, full) -> None:  # type: ignore[no-untyped-def]
    _, pairs = clusters(per=5)
    examples = example_set(pairs)
    held_out = loo(examples)
    for row in (0, 3, 7, 19):
        rest = example_set(pairs[:row] + pairs[row + 1 :])
        expected = full(rest, examples.vectors[row : row + 1])[0]
        assert held_out[row] == pytest.approx(expected, abs=1e-5)


def test_an_intent_with_one_example_cannot_score_itself_left_out() -> None:
    examples = example_set([("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("b", [0.1, 1.0])])
    assert knn_scores_loo(examples)[0, 0] == -1.0
    assert centroid_scores_loo(examples)[0, 0] == -1.0


def _squashed(vectors: np.ndarray, b: float = 0.3) -> np.ndarray:
    """The same geometry as seen by a model whose cosines all sit high (bge's 0.7-0.9): one
    shared extra dimension makes every cosine b * cos + (1 - b)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    shared = np.full((len(unit), 1), np.sqrt(1 - b))
    return np.hstack([np.sqrt(b) * unit, shared])


@pytest.mark.parametrize(
    ("method", "tolerance"), [("knn", 0.01), ("centroid", 0.05), ("head", 0.05)]
)
def test_confidence_means_the_same_on_a_compressed_similarity_scale(
    method: str, tolerance: float
) -> None:
    centers, pairs = clusters(seed=1, spread=1.3)
    squashed = [(i, _squashed(np.asarray([v]))[0]) for i, v in pairs]
    plain, compressed = build_index(pairs, method), build_index(squashed, method)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    queries = np.vstack(
        [c + rng.normal(scale=1.3, size=c.size) for c in centers for _ in range(10)]
    )
    raw_plain = plain.scorer.scores(_unit(queries[:1]))
    raw_squashed = compressed.scorer.scores(_squashed(queries[:1]).astype(np.float32))
    if method != "head":
        assert raw_squashed.min() > raw_plain.min() + 0.2  # the raw scale really differs
    if method == "knn":  # scores exactly b * s + (1 - b): the temperature must follow b
        ratio = compressed.calibration.temperature / plain.calibration.temperature
        assert ratio == pytest.approx(0.3, rel=0.05)
    p_plain = plain.probabilities(queries).max(axis=1)
    p_squashed = compressed.probabilities(_squashed(queries)).max(axis=1)
    # Same confidence, give or take: one minConfidence fits both "models".
    assert np.mean(np.abs(p_plain - p_squashed)) < tolerance
    for threshold in (0.5, 0.7, 0.9):
        assert (
            abs(np.mean(p_plain >= threshold) - np.mean(p_squashed >= threshold)) <= 2 * tolerance
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    out: np.ndarray = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return out


def test_separable_examples_do_not_make_the_confidence_absolute() -> None:
    index = build_index(
        [
            ("a", [1.0, 0.0, 0.1]),
            ("a", [1.0, 0.1, 0.0]),
            ("b", [0.0, 1.0, 0.1]),
            ("b", [0.1, 1.0, 0.0]),
        ]
    )
    assert index.calibration.held_out_accuracy == 1.0
    assert index.best([1.0, 0.05, 0.05])[1] < 0.95  # four examples cannot justify certainty


@pytest.mark.parametrize("method", ["knn", "centroid", "head"])
def test_calibrated_probabilities_match_held_out_accuracy(method: str) -> None:
    _, pairs = clusters(seed=2, per=30, spread=1.6)
    index = build_index(pairs, method)  # type: ignore[arg-type]
    c = index.calibration
    assert c.calibrated and c.examples == 120
    assert 0.5 < c.held_out_accuracy < 1.0  # overlapping clusters: a real test of calibration
    assert c.calibration_error < 0.12
    if method == "head":
        return  # logits, not similarities: no fixed scale to compare with
    # What calibration buys: at a fixed, unfitted scale the same similarities are far off.
    held_out = index.scorer.held_out_scores()
    truth = index.scorer.examples.owners
    assert expected_calibration_error(softmax(held_out, 1.0), truth) > 0.4


def test_too_few_examples_are_reported_uncalibrated() -> None:
    index = build_index([("a", [1.0, 0.0]), ("b", [0.0, 1.0])])
    assert not index.calibration.calibrated
    assert index.calibration.temperature == DEFAULT_TEMPERATURE
    assert index.best([0.9, 0.1])[0] == "a"


def test_expected_calibration_error_of_a_perfectly_calibrated_coin() -> None:
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.0)
    assert softmax(np.array([[0.0, 0.0]]), 1.0).tolist() == [[0.5, 0.5]]


class Embedder:
    """A deterministic bag-of-letters embedder that counts what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [[float(t.count(ch)) + 0.01 for ch in "abcdefghijklmnopqrstuvwxyz"] for t in texts]


EXAMPLES = [("code", "def code bug fix"), ("code", "code compile debug"), ("code", "fix the code")]
EXAMPLES += [("poem", "a poem of roses"), ("poem", "poems of sorrow"), ("poem", "sonnet of rose")]


def f(text: str) -> Features:
    return Features(text, len(text), "auto", {})


async def test_stage_warms_up_then_decides_and_caches_prompts() -> None:
    embed = Embedder()
    embed.gate = asyncio.Event()
    stage = EmbeddingStage(EXAMPLES, embed, "m", min_confidence=0.0, timeout=1.0)
    assert not stage.ready
    preparing = asyncio.create_task(stage.prepare())
    await asyncio.sleep(0)
    # While the examples are being embedded, the stage does not wait: it says so.
    with pytest.raises(StageFailure) as failure:
        await stage.decide(f("debug this code"))
    assert failure.value.reason == "warming"
    embed.gate.set()
    await preparing
    assert stage.ready and len(embed.calls) == 1  # six examples, one batch
    verdict = await stage.decide(f("debug this code"))
    assert verdict.intent == "code" and verdict.confidence is not None
    await stage.decide(f("debug this code"))
    assert len(embed.calls) == 2  # the repeated prompt came from the LRU
    assert stage.cache.hits == 1


async def test_min_confidence_makes_the_stage_unsure_with_its_guess() -> None:
    stage = EmbeddingStage(EXAMPLES, Embedder(), "m", min_confidence=0.9, timeout=1.0)
    await stage.prepare()
    sure = await stage.decide(f("a poem of roses, sonnets"))
    assert sure.intent == "poem" and sure.confidence is not None and sure.confidence >= 0.9
    verdict = await stage.decide(f("zzzz qqq rose"))  # hardly like any example
    assert verdict.intent is None and verdict.guess == "poem"
    assert verdict.confidence is not None and verdict.confidence < 0.9


async def test_examples_are_embedded_in_batches_and_reused_by_the_next_version() -> None:
    embed = Embedder()
    many = [("code" if i % 2 else "poem", f"example {i} " + "ab" * (i % 7)) for i in range(150)]
    stage = EmbeddingStage(many, embed, "m", 0.5, 1.0)
    await stage.prepare()
    assert [len(c) for c in embed.calls] == [BATCH] * (150 // BATCH) + [150 % BATCH]
    # The next config version keeps 149 examples and adds one: only that one is embedded.
    changed = [*many[1:], ("poem", "a brand new example")]
    embed.calls.clear()
    again = EmbeddingStage(changed, embed, "m", 0.5, 1.0, known=stage.vectors)
    assert not again.ready
    await again.prepare()
    assert embed.calls == [["a brand new example"]]
    # Unchanged examples: ready at once with the previous version's index, nothing embedded.
    same = EmbeddingStage(changed, embed, "m", 0.5, 1.0, known=again.vectors, fitted=again.fitted())
    assert same.ready and same.index is again.index and len(embed.calls) == 1
    # The vectors without the index (another scorer): nothing to embed, only a fit.
    refit = EmbeddingStage(
        changed, embed, "m", 0.5, 1.0, known=again.vectors, method="knn", fitted=again.fitted()
    )
    assert not refit.ready
    await refit.prepare()
    assert refit.ready and len(embed.calls) == 1
    # Another embedding model: nothing can be re-used.
    other = EmbeddingStage(changed, embed, "other-model", 0.5, 1.0, known=again.vectors)
    assert not other.ready


async def test_a_failed_warm_up_leaves_the_stage_warming_and_can_be_retried() -> None:
    embed = Embedder()
    embed.fail = ConnectionRefusedError("embedder down")
    stage = EmbeddingStage(EXAMPLES, embed, "m", 0.5, 1.0)
    with pytest.raises(ConnectionRefusedError):
        await stage.prepare()
    assert not stage.ready
    embed.fail = None
    await stage.prepare()
    assert stage.ready


@pytest.mark.parametrize(
    ("raw", "count", "dim", "message"),
    [
        ([[1.0, 2.0]], 2, None, "expected 2 embeddings"),
        ({"data": []}, 1, None, "expected 1 embeddings"),
        ([["x", 1.0]], 1, None, "not a list of numbers"),
        ([[1.0, float("nan")]], 1, None, "finite"),
        ([[]], 1, None, "finite"),
        ([[1.0, 2.0, 3.0]], 1, 2, "3 dimensions, the examples 2"),
        ([[0.0, 0.0]], 1, None, "all zeros"),
    ],
)
def test_bad_embeddings_are_named(raw: object, count: int, dim: int | None, message: str) -> None:
    with pytest.raises(StageFailure, match=message) as failure:
        checked_vectors(raw, count, dim)
    assert failure.value.reason == "bad_response"


def test_long_prompts_are_embedded_head_and_tail() -> None:
    text = "Summarize this: " + "x" * 5000 + " in three bullets"
    cut = embedding_text(text)
    assert cut.startswith("Summarize this:") and cut.endswith("in three bullets")
    assert len(cut) < 2100
    assert embedding_text("short") == "short"


def test_prompt_cache_is_a_bounded_lru_keyed_by_a_hash() -> None:
    cache = VectorCache(max_entries=2)
    a, b, c = (vector_key("m", t) for t in ("a", "b", "c"))
    assert len(a) == 32 and vector_key("n", "a") != a  # the model is part of the key
    vec = np.zeros(2, dtype=np.float32)
    cache.put(a, vec)
    cache.put(b, vec)
    assert cache.get(a) is vec  # a is now the most recent
    cache.put(c, vec)
    assert cache.get(b) is None and cache.get(a) is vec and cache.get(c) is vec
    assert len(cache) == 2


@pytest.mark.parametrize("method", ["knn", "centroid", "head"])
def test_the_per_request_path_agrees_with_the_batch_path(method: str) -> None:
    centers, pairs = clusters(seed=3)
    index = build_index(pairs, method)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    for center in centers:
        query = center + rng.normal(scale=1.0, size=center.size)
        probs = index.probabilities(np.asarray([query], dtype=np.float32))[0]
        label, p = index.best(query)
        assert label == index.labels[int(probs.argmax())]
        assert p == pytest.approx(float(probs.max()), rel=1e-5)


async def test_the_index_is_fitted_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fitting hundreds of examples takes a second or more: requests are answered meanwhile
    (warming), the loop is not blocked."""
    import modelflock.router.classify.embedding as embedding

    release = threading.Event()
    fitting = threading.Event()
    real = embedding.build_index

    def slow_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        fitting.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding, "build_index", slow_fit)
    stage = EmbeddingStage(EXAMPLES, Embedder(), "m", min_confidence=0.0, timeout=1.0)
    preparing = asyncio.create_task(stage.prepare())
    # The loop keeps turning while the fit holds its thread (on the loop, it would hang here).
    assert await asyncio.wait_for(asyncio.to_thread(fitting.wait, 30), 30)
    with pytest.raises(StageFailure) as failure:
        await stage.decide(f("debug this code"))
    assert failure.value.reason == "warming"
    release.set()
    await asyncio.wait_for(preparing, 30)
    assert (await stage.decide(f("debug this code"))).intent == "code"
