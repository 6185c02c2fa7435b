"""Operator side of shadow evaluation: report parsing, summing across routers, status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelflock.api.routingpolicy import RoutingPolicySpec
from modelflock.controller.evaluation import MAX_KEYS, TRIGGER_GAP_SECONDS, EvaluationStore
from modelflock.evaluation.stats import Tally
from modelflock.evaluation.wire import NotNamedError, parse_report, tally_wire
from modelflock.render.evaluation import evaluation_status, recommendation_changes, tally_of

EXPERTS = frozenset({"small", "big", "judge"})
KEY = ("code", "big", "small", "pairwise")
NOW = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)


def report(*results: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "router": "r1",
        "day": "2026-11-29",
        "spentUSD": 0.5,
        "dropped": 1,
        "results": list(results),
        **top,
    }


def item(**changes: Any) -> dict[str, Any]:
    return {
        **tally_wire(KEY, Tally(samples=3, ties=2, losses=1, served_cost=0.3, candidate_cost=0.1)),
        **changes,
    }


def test_a_report_round_trips() -> None:
    parsed = parse_report(report(item(), item()), EXPERTS)  # the same key twice: summed
    assert parsed.results[KEY] == Tally(
        samples=6, ties=4, losses=2, served_cost=0.6, candidate_cost=0.2
    )
    assert (parsed.router, parsed.day, parsed.spent, parsed.dropped) == ("r1", "2026-11-29", 0.5, 1)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "expected a JSON object"),
        (report(router=""), "router"),
        (report(day="yesterday"), "day"),
        (report(item(judge="vibes")), "judge"),
        (report(item(route="Not A Name")), "route"),
        (report(item(samples=4)), "sum of the outcomes"),
        (report(item(wins=-1, samples=2)), "wins"),
        (report(item(servedCostUSD=float("nan"))), "servedCostUSD"),
        (report(item(candidateCostUSD="1")), "candidateCostUSD"),
        (report(spentUSD=-2), "spentUSD"),
        (report(*[item()] * 300), "at most 256"),
    ],
)
def test_bad_reports_are_refused_with_the_field(body: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_report(body, EXPERTS)


def test_experts_the_policy_does_not_name_are_refused() -> None:
    with pytest.raises(NotNamedError, match="'other'"):
        parse_report(report(item(candidate="other")), EXPERTS)


def test_reports_of_several_routers_add_up_and_spend_is_per_day() -> None:
    store = EvaluationStore()
    key = ("ns", "policy")
    store.add(key, parse_report(report(item()), EXPERTS), NOW)
    state = store.add(key, parse_report(report(item(), router="r2"), EXPERTS), NOW)
    assert state.totals[KEY].samples == 6
    assert (state.day, state.spent, state.dropped) == ("2026-11-29", 1.0, 2)
    state = store.add(key, parse_report(report(day="2026-11-30", spentUSD=0.25), EXPERTS), NOW)
    assert (state.day, state.spent) == ("2026-11-30", 0.25)
    state = store.add(key, parse_report(report(spentUSD=9.0), EXPERTS), NOW)  # late, yesterday's
    assert (state.day, state.spent) == ("2026-11-30", 0.25)
    assert state.totals[KEY].samples == 6


def test_a_restarted_operator_continues_from_its_status() -> None:
    spec = policy_spec()
    first = EvaluationStore()
    first.add(("ns", "p"), parse_report(report(item()), EXPERTS), NOW)
    state = first.get(("ns", "p"))
    status = evaluation_status(spec, state.totals, state.day, state.spent, state.dropped, NOW)
    second = EvaluationStore()
    # a report arrives before the first reconcile of the new process: both are kept
    second.add(("ns", "p"), parse_report(report(item()), EXPERTS), NOW)
    seeded = second.seed(("ns", "p"), status)
    assert seeded.totals[KEY].samples == 6
    assert seeded.spent == pytest.approx(1.0)
    assert seeded.totals[KEY].served_cost == pytest.approx(0.6)
    again = second.seed(("ns", "p"), status)  # once per process
    assert again.totals[KEY].samples == 6


# (seconds since the first report, expected wake-up delay): the first report wakes the worker
# at once; reports inside the gap schedule one trailing wake-up at the gap's end (before,
# the last report of a burst waited for the resync, 30 s by default); reports while that
# one is pending add nothing; after the gap, at once again.
GAP = TRIGGER_GAP_SECONDS


@pytest.mark.parametrize(
    "reports",
    [
        [(0.0, 0.0)],
        [(0.0, 0.0), (1.0, GAP - 1.0)],
        [(0.0, 0.0), (1.0, GAP - 1.0), (2.0, None), (GAP - 0.5, None)],
        [(0.0, 0.0), (1.0, GAP - 1.0), (GAP + 0.5, GAP - 0.5)],
        [(0.0, 0.0), (GAP, 0.0), (2 * GAP + 3.0, 0.0)],
        [(0.0, 0.0), (3.0, GAP - 3.0), (2 * GAP + 1.0, 0.0)],
    ],
)
def test_reports_wake_the_policy_worker_rate_limited_with_a_trailing_wake_up(
    reports: list[tuple[float, float | None]],
) -> None:
    store = EvaluationStore()
    key = ("ns", "policy")
    start = 1000.0
    seen = [(at, store.trigger_delay(key, start + at)) for at, _ in reports]
    assert seen == [(at, pytest.approx(d) if d is not None else None) for at, d in reports]
    other = store.trigger_delay(("ns", "other"), start + 1.0)
    assert other == 0.0  # per policy


def test_keys_per_policy_are_bounded() -> None:
    store = EvaluationStore()
    for chunk in range(0, 600, 200):
        items = [item(route=f"r{chunk + i}") for i in range(200)]
        store.add(("ns", "p"), parse_report(report(*items), EXPERTS), NOW)
    assert len(store.get(("ns", "p")).totals) == MAX_KEYS


def policy_spec(**evaluation: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {
            "experts": sorted(EXPERTS),
            "routes": [{"name": "code", "expert": "big"}, {"name": "chat", "expert": "small"}],
            "evaluation": {
                "judge": {"type": "expert", "expert": "judge"},
                "candidates": ["small"],
                **evaluation,
            },
        }
    )


def test_status_is_bounded_sorted_and_limited_to_current_routes() -> None:
    totals = {
        ("code", "big", "small", "pairwise"): Tally(
            samples=412, ties=396, losses=16, served_cost=1, candidate_cost=0.4
        ),
        ("chat", "small", "big", "pairwise"): Tally(
            samples=500, wins=160, ties=340, served_cost=0.1, candidate_cost=1
        ),
        ("gone", "big", "small", "pairwise"): Tally(samples=900, ties=900),
        **{("code", "big", "small", f"x{i}"): Tally(samples=1, ties=1) for i in range(100)},
    }
    status = evaluation_status(policy_spec(), totals, "2026-11-29", 0.125, 3, NOW)
    assert status is not None
    assert len(status.results) == 64
    first, second = status.results[:2]
    assert (first.route, first.recommendation) == ("chat", "Escalate")
    assert (second.route, second.recommendation) == ("code", "MoveDown")
    assert second.message.endswith("consider moving it down")
    assert (second.rate, second.rate_lower) == ("0.9612", "0.9379")
    assert all(r.route != "gone" for r in status.results)
    assert status.spent_today_usd == "0.125" and status.dropped == 3
    # thresholds come from the policy
    strict = evaluation_status(
        policy_spec(thresholds={"matchTarget": "0.99"}), totals, None, 0, 0, None
    )
    assert strict is not None and strict.results[1].recommendation == "Keep"
    # the status round-trips into counters
    key, tally = tally_of(second)
    assert key == ("code", "big", "small", "pairwise")
    assert tally.samples == 412 and tally.candidate_cost == pytest.approx(0.4)


def test_no_evaluation_and_no_data_means_no_status() -> None:
    spec = RoutingPolicySpec.model_validate(
        {"experts": ["a"], "routes": [{"name": "r", "expert": "a"}]}
    )
    assert evaluation_status(spec, {}, None, 0, 0, None) is None


def test_only_changed_recommendations_raise_events() -> None:
    spec = policy_spec()
    few = {KEY: Tally(samples=10, ties=10, served_cost=1, candidate_cost=0.5)}
    many = {KEY: Tally(samples=100, ties=100, served_cost=1, candidate_cost=0.5)}
    worse = {KEY: Tally(samples=200, ties=150, losses=50, served_cost=1, candidate_cost=0.5)}
    s0 = evaluation_status(spec, few, None, 0, 0, None)
    s1 = evaluation_status(spec, many, None, 0, 0, None)
    s2 = evaluation_status(spec, worse, None, 0, 0, None)
    assert recommendation_changes(None, s0) == []  # NeedMoreSamples at first: nothing to say
    assert [r.recommendation for r in recommendation_changes(s0, s1)] == ["MoveDown"]
    assert recommendation_changes(s1, s1) == []
    assert [r.recommendation for r in recommendation_changes(s1, s2)] == ["Keep"]


def test_report_reads_a_policy_s_status_with_its_thresholds() -> None:
    from modelflock.router.quality import format_quality, tallies_from_policy

    spec = policy_spec(thresholds={"minSamples": 5})
    totals = {KEY: Tally(samples=40, ties=40, served_cost=1.0, candidate_cost=0.5)}
    status = evaluation_status(spec, totals, "2026-11-29", 0.5, 0, NOW)
    assert status is not None
    policy = {"spec": spec.to_api(), "status": {"evaluation": status.to_api()}}
    tallies, thresholds = tallies_from_policy(policy)
    assert tallies == totals and thresholds.min_samples == 5
    text = format_quality(tallies, thresholds)
    assert "route `code`: `small` matched `big` on 100 % ± 9 % of 40 samples" in text
    assert "MoveDown" in text


# A report whose answer was lost is sent again, grown, under the next sequence number, saying
# which sequence the router last got an answer for; what the operator applied from the
# unanswered ones comes off (before, the status counted those samples and that spend twice).
def applied(samples: int, spent: float = 0.0, dropped: int = 0, day: str = "2026-11-29") -> Any:
    from modelflock.controller.evaluation import Applied

    results = {KEY: Tally(samples=samples, ties=samples)} if samples else {}
    return Applied(day, spent, dropped, results)


@pytest.mark.parametrize(
    ("samples", "spent", "dropped", "acknowledged", "pending", "fresh"),
    [
        (5, 0.5, 2, 0, {}, (5, 0.5, 2)),  # nothing unanswered: all of it
        (5, 0.5, 2, 0, {1: applied(3, 0.25, 1)}, (2, 0.25, 1)),  # 1 applied, answer lost
        (5, 0.5, 2, 1, {1: applied(3, 0.25, 1)}, (5, 0.5, 2)),  # 1 was answered: not resent
        (9, 0.75, 3, 0, {1: applied(3, 0.25, 1), 2: applied(4, 0.25, 1)}, (2, 0.25, 1)),
        (5, 0.5, 0, 0, {1: applied(3, 0.25, day="2026-11-28")}, (2, 0.5, 0)),  # spend per day
        (3, 0.25, 1, 0, {4: applied(3, 0.25, 1)}, (0, 0.0, 0)),  # a duplicate: nothing new
    ],
)
def test_the_fresh_part_of_a_resent_report(
    samples: int,
    spent: float,
    dropped: int,
    acknowledged: int,
    pending: dict[int, Any],
    fresh: tuple[int, float, int],
) -> None:
    from modelflock.controller.evaluation import fresh_part

    body = report(item(**tally_wire(KEY, Tally(samples=samples, ties=samples))))
    body.update(spentUSD=spent, dropped=dropped, sequence=9, acknowledged=acknowledged)
    part = fresh_part(parse_report(body, EXPERTS), pending)
    got = (part.results[KEY].samples if KEY in part.results else 0, part.spent, part.dropped)
    assert got == (fresh[0], pytest.approx(fresh[1]), fresh[2])


def test_a_report_sent_again_after_a_lost_answer_counts_once() -> None:
    """The router's reporter against the operator's store, through the wire format: the first
    answer is lost after the operator applied the report."""
    import asyncio

    from modelflock.router.config import Evaluation
    from modelflock.router.shadow.budget import DailyBudget
    from modelflock.router.shadow.metrics import ShadowMetrics
    from modelflock.router.shadow.reporting import ShadowReporter

    store = EvaluationStore()
    policy = ("ns", "p")
    metrics = ShadowMetrics()
    budget = DailyBudget(lambda: 10.0, lambda: NOW.timestamp())
    answers = iter([False, True, True, False, False, True])

    async def post(body: dict[str, Any]) -> dict[str, Any] | None:
        state = store.add(policy, parse_report(body, EXPERTS), NOW)
        answered = {"day": state.day, "spentTodayUSD": state.spent}
        return answered if next(answers) else None  # applied, but the answer may be lost

    reporter = ShadowReporter(
        "r1", metrics, budget, lambda: Evaluation(), post, lambda: NOW.timestamp()
    )
    route = ("code", "big", "small", "pairwise")

    async def rounds() -> None:
        for judged in (3, 2, 4, 1, 5, 2):
            for _ in range(judged):
                metrics.samples.inc((*route, "tie"))
            metrics.dropped.inc((*route[:3], "budget"))
            budget.spend(0.25)
            await reporter.report_once()

    asyncio.run(rounds())
    state = store.get(policy)
    assert state.totals[KEY].samples == 3 + 2 + 4 + 1 + 5 + 2
    assert state.dropped == 6
    assert state.spent == pytest.approx(6 * 0.25)
    assert budget.spent == pytest.approx(6 * 0.25)
