"""The shadow step's pure decisions: sampling, candidate admission, the daily budget, and the
report deltas."""

from __future__ import annotations

from typing import Any

import pytest

from modelflock.evaluation.stats import Tally
from modelflock.router.balance import EndpointLive, ExpertLive
from modelflock.router.config import Evaluation
from modelflock.router.shadow.budget import DailyBudget, utc_day
from modelflock.router.shadow.reporting import report_body
from modelflock.router.shadow.sampling import (
    candidate_admission,
    opted_out,
    route_plans,
    sample,
)

PLANS = route_plans(
    Evaluation.model_validate(
        {
            "judge": {"type": "expert", "expert": "j"},
            "routes": [
                {"name": "code", "sampleRate": "0.05", "candidates": ["small", "big"]},
                {"name": "solo", "sampleRate": "1", "candidates": ["big"]},
            ],
        }
    )
)


@pytest.mark.parametrize(
    ("route", "served", "status", "streamed", "headers", "draw", "result"),
    [
        ("code", "mid", 200, False, {}, 0.01, ("small", "big")),
        ("code", "mid", 200, False, {}, 0.0499, ("small", "big")),
        ("code", "mid", 200, False, {}, 0.05, "not-drawn"),
        ("code", "mid", 200, False, {}, 0.9, "not-drawn"),
        ("chat", "mid", 200, False, {}, 0.0, "off"),  # route not sampled
        ("code", "small", 200, False, {}, 0.0, ("big",)),  # never against itself
        ("solo", "big", 200, False, {}, 0.0, "no-candidate"),
        ("code", "mid", 503, False, {}, 0.0, "not-answered"),
        ("code", "none", 200, False, {}, 0.0, "not-answered"),
        ("code", "mid", 200, True, {}, 0.0, "stream"),
        ("code", "mid", 200, False, {"x-modelflock-shadow": "off"}, 0.0, "opted-out"),
        ("code", "mid", 200, False, {"x-modelflock-shadow": " No "}, 0.0, "opted-out"),
        ("code", "mid", 200, False, {"x-modelflock-shadow": "on"}, 0.0, ("small", "big")),
    ],
)
def test_sampling_decision(
    route: str,
    served: str,
    status: int,
    streamed: bool,
    headers: dict[str, str],
    draw: float,
    result: Any,
) -> None:
    assert sample(PLANS, route, served, status, streamed, headers, draw) == result


def test_no_evaluation_means_no_plans() -> None:
    assert route_plans(None) == {}
    assert not opted_out({})


def live(ready: int, queues: list[int | None]) -> ExpertLive:
    return ExpertLive(
        ready_replicas=ready,
        desired_replicas=ready,
        cold_start_seconds=30,
        endpoints=tuple(EndpointLive(f"http://e{i}", ready > 0, q) for i, q in enumerate(queues)),
    )


@pytest.mark.parametrize(
    ("state", "admission"),
    [
        (None, "go"),  # no discovery: trust the Service
        (live(1, [0]), "go"),
        (live(2, [0, None]), "go"),
        (live(2, [0, 1]), "overloaded"),  # any waiting request: samples only use idle slots
        (live(0, []), "cold"),
        (live(0, [0]), "cold"),
    ],
)
def test_candidate_admission(state: ExpertLive | None, admission: str) -> None:
    assert candidate_admission(state) == admission


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_budget_holds_until_spent_and_resets_at_midnight_utc() -> None:
    clock = Clock(1_800_000_000.0)  # 2027-01-15T08:00:00Z
    budget = DailyBudget(lambda: 1.0, clock)
    assert budget.day == "2027-01-15" == utc_day(clock.now)
    assert budget.allows()
    budget.spend(0.6)
    assert budget.allows()
    budget.spend(0.5)
    assert not budget.allows()
    clock.now += 16 * 3600  # the next UTC day
    assert budget.allows()
    assert budget.spent == 0.0


def test_budget_counts_the_policy_spend_the_operator_reports() -> None:
    clock = Clock(1_800_000_000.0)
    budget = DailyBudget(lambda: 1.0, clock)
    budget.spend(0.25)
    budget.spend(0.25)  # unreported: 0.5
    budget.acknowledged("2027-01-15", 0.25, 0.9)  # the operator took 0.25 of ours
    assert budget.unreported == pytest.approx(0.25)
    assert budget.spent == pytest.approx(1.15)
    assert not budget.allows()
    budget.acknowledged("2027-01-14", 0.25, 0.0)  # a late answer about yesterday: ignored
    assert budget.spent == pytest.approx(1.15)


def test_report_carries_only_what_changed() -> None:
    key = ("code", "code-7b", "frontier", "pairwise")
    other = ("chat", "small", "big", "similarity")
    before = {
        key: Tally(samples=3, wins=1, ties=2, served_cost=0.3),
        other: Tally(samples=2, agreements=2),
    }
    now = {
        key: Tally(samples=5, wins=2, ties=2, losses=1, served_cost=0.5),
        other: Tally(samples=2, agreements=2),
    }
    body = report_body("r1", now, before, 4, "2027-01-15", 0.125)
    assert body["router"] == "r1" and body["dropped"] == 4 and body["spentUSD"] == 0.125
    [result] = body["results"]
    assert result["route"] == "code" and result["judge"] == "pairwise"
    assert (result["samples"], result["wins"], result["ties"], result["losses"]) == (2, 1, 0, 1)
    assert result["servedCostUSD"] == pytest.approx(0.2)
    assert report_body("r1", now, now, 0, "2027-01-15", 0)["results"] == []
