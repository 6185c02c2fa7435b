"""Confidence intervals and recommendation thresholds of shadow evaluation (pure)."""

from __future__ import annotations

import math
import random

import pytest

from modelflock.evaluation.stats import (
    Tally,
    Thresholds,
    decide,
    describe,
    question,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    [
        # Reference values (Wilson score interval, z = 1.96), computed independently.
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (1, 10, 0.0179, 0.4042),
        (81, 263, 0.2553, 0.3662),
        (396, 412, 0.9378, 0.9759),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_matches_reference_values(k: int, n: int, lower: float, upper: float) -> None:
    interval = wilson(k, n)
    assert interval.estimate == pytest.approx(k / n)
    assert interval.lower == pytest.approx(lower, abs=1e-4)
    assert interval.upper == pytest.approx(upper, abs=1e-4)
    assert interval.lower <= interval.estimate <= interval.upper


def test_wilson_without_trials_knows_nothing() -> None:
    assert wilson(0, 0) == wilson(0, 0)
    interval = wilson(0, 0)
    assert (interval.lower, interval.upper) == (0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3), (0, -1)])
def test_wilson_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson(k, n)


def test_wilson_interval_narrows_with_more_samples() -> None:
    widths = [wilson(n * 9 // 10, n).upper - wilson(n * 9 // 10, n).lower for n in (20, 80, 320)]
    assert widths[0] > widths[1] > widths[2]
    # roughly 1/sqrt(n): quadrupling the samples halves the width
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.15)


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = random.Random(13)
    for p in (0.05, 0.5, 0.93):
        n, trials = 60, 2000
        covered = 0
        for _ in range(trials):
            k = sum(rng.random() < p for _ in range(n))
            interval = wilson(k, n)
            covered += interval.lower <= p <= interval.upper
        assert 0.92 <= covered / trials <= 0.98, (p, covered / trials)


def cheap(samples: int, matched: int, **kw: float) -> Tally:
    """A cheaper candidate (40 % of the cost) with `matched` ties, the rest losses."""
    return Tally(
        samples=samples,
        ties=matched,
        losses=samples - matched,
        served_cost=kw.get("served", 1.0),
        candidate_cost=kw.get("candidate", 0.4),
    )


def reference(samples: int, served_lost: int) -> Tally:
    """A pricier candidate (a reference) that beat the served expert `served_lost` times."""
    return Tally(
        samples=samples,
        wins=served_lost,
        ties=samples - served_lost,
        served_cost=0.1,
        candidate_cost=1.0,
    )


T = Thresholds(min_samples=30, match_target=0.9, loss_limit=0.2)


@pytest.mark.parametrize(
    ("tally", "expected"),
    [
        (cheap(412, 396), "MoveDown"),  # 96 %, lower end 93.8 % >= 90 %
        (cheap(40, 38), "NeedMoreSamples"),  # 95 %, but the interval (83-99 %) spans 90 %
        (cheap(29, 29), "NeedMoreSamples"),  # perfect, but too few samples
        (cheap(300, 240), "Keep"),  # 80 % matched, the whole interval (75-84 %) below 90 %
        (cheap(0, 0), "NeedMoreSamples"),
        (reference(263, 81), "Escalate"),  # lost 31 %, lower end 25.5 % >= 20 %
        (reference(100, 22), "NeedMoreSamples"),  # 22 % lost: the interval (15-31 %) spans 20 %
        (reference(300, 6), "Keep"),  # 2 % lost (1-4 %)
        (reference(30, 2), "NeedMoreSamples"),  # 7 %, but the upper end (21 %) is above 20 %
        (reference(60, 2), "Keep"),  # 3 % (1-11 %)
        (reference(10, 9), "NeedMoreSamples"),
        # equal cost: a reference question (no saving to be had by moving)
        (Tally(samples=100, wins=50, ties=50, served_cost=1.0, candidate_cost=1.0), "Escalate"),
        # similarity: agreements count as matches, disagreements as losses
        (
            Tally(samples=200, agreements=195, disagreements=5, served_cost=2, candidate_cost=1),
            "MoveDown",
        ),
        (
            Tally(samples=200, agreements=100, disagreements=100, served_cost=1, candidate_cost=2),
            "Escalate",
        ),
        # no prices at all: nothing is cheaper, so only a reference question can be asked
        (Tally(samples=200, ties=200), "Keep"),
        (cheap(20, 0, served=1.0, candidate=0.1), "NeedMoreSamples"),  # below minSamples
    ],
)
def test_decision_thresholds(tally: Tally, expected: str) -> None:
    assert decide(tally, T).recommendation == expected


def test_the_candidate_that_wins_counts_as_matched_when_cheaper() -> None:
    tally = Tally(samples=100, wins=60, ties=40, served_cost=1.0, candidate_cost=0.5)
    assert question(tally) == "downsize"
    assert decide(tally, T).recommendation == "MoveDown"


def test_thresholds_are_the_policy_s() -> None:
    tally = cheap(412, 396)
    assert decide(tally, Thresholds(match_target=0.95)).recommendation == "NeedMoreSamples"
    assert decide(tally, Thresholds(match_target=0.98)).recommendation == "Keep"
    assert decide(tally, Thresholds(min_samples=500)).recommendation == "NeedMoreSamples"


def test_tallies_add_up_field_by_field() -> None:
    a = Tally(samples=2, wins=1, ties=1, served_cost=0.5, judge_cost=0.1, candidate_seconds=1)
    b = Tally(samples=3, losses=3, served_cost=0.25, candidate_seconds=2)
    total = a + b
    assert (total.samples, total.wins, total.ties, total.losses) == (5, 1, 1, 3)
    assert total.served_cost == pytest.approx(0.75)
    assert total.candidate_seconds == pytest.approx(3)
    assert total.mean(total.candidate_seconds) == pytest.approx(0.6)
    assert Tally().mean(1.0) == 0.0


def test_sentences_read_like_the_issue_s_examples() -> None:
    tally = cheap(412, 396)
    text = describe(
        "summarize", "summarize-tgi", "intent-small", "pairwise", tally, decide(tally, T), T
    )
    assert text == (
        "route `summarize`: `intent-small` matched `summarize-tgi` on 96 % ± 2 % of 412 samples"
        " at 40 % of the cost — consider moving it down"
    )
    tally = reference(263, 81)
    text = describe("code", "code-7b", "frontier", "pairwise", tally, decide(tally, T), T)
    assert text == (
        "route `code`: `code-7b` lost to `frontier` on 31 % ± 6 % of 263 samples"
        " — consider a cascade check or a bigger expert"
    )
    tally = Tally(samples=50, agreements=20, disagreements=30, served_cost=1, candidate_cost=3)
    text = describe("chat", "small", "big", "similarity", tally, decide(tally, T), T)
    assert "`small` disagreed with `big` on 60 %" in text
    assert "consider a cascade check" in text


def test_margin_is_the_larger_side_of_the_asymmetric_interval() -> None:
    interval = wilson(396, 412)
    assert interval.margin == pytest.approx(interval.estimate - interval.lower)
    assert math.isclose(round(interval.margin * 100), 2)


def test_an_undecided_interval_says_so() -> None:
    tally = cheap(40, 38)
    text = describe("s", "big", "small", "pairwise", tally, decide(tally, T), T)
    assert text.endswith("— the interval 83 % to 99 % still spans 90 %: more samples needed")
    tally = cheap(10, 10)
    text = describe("s", "big", "small", "pairwise", tally, decide(tally, T), T)
    assert text.endswith("— too few samples (need 30)")
