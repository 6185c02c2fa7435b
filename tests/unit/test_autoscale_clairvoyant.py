"""The benchmark's feasible clairvoyant plan (bench/autoscale_clairvoyant.py).

Its GPU-hours are an upper bound on the clairvoyant optimum only if its schedule really
reaches the target in the simulation; the fluid planner's bound must stay at or below it.
Both are checked on tiny cases replayed in the real simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from autoscale_tiny import TINY

from autoscale_bound import plan
from autoscale_clairvoyant import schedule_for, search, segment_loads
from autoscale_policies import Replay
from autoscale_sim import TARGETS, feasible_plans, simulate, steady_replicas
from autoscale_workloads import BASE_MIX, LONG_MIX, Workload


@pytest.mark.parametrize(
    ("loads", "utilisation", "n_max", "expected"),
    [
        ([0.0, 0.4, 1.0, 2.5], 1.0, 10, (0, 1, 1, 3)),
        ([0.0, 0.4, 1.0, 2.5], 0.5, 10, (0, 1, 2, 5)),
        ([0.0, 0.4, 1.0, 2.5], 0.5, 4, (0, 1, 2, 4)),
        ([0.9, 1.8], 0.9, 10, (1, 2)),  # exactly at the cap: no extra replica
        ([0.9, 1.8], 1.1, 10, (1, 2)),
    ],
)
def test_schedule_caps_utilisation(
    loads: list[float], utilisation: float, n_max: int, expected: tuple[int, ...]
) -> None:
    assert schedule_for(loads, utilisation, n_max) == expected


def test_schedule_rejects_a_non_positive_cap() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        schedule_for([1.0], 0.0, 10)


def test_segment_load_counts_replicas_at_the_mix_of_each_second() -> None:
    # One replica's worth of base-mix arrivals, then the same rate of long requests (half as
    # many fit in a replica's KV cache, so the same rate is about two replicas' load).
    rate = TINY.throughput(BASE_MIX)
    workload = Workload(
        "mix", 40, lambda t: 1.0, True, mix=lambda t: LONG_MIX if t >= 20 else BASE_MIX
    )
    arrivals = [round(rate * (t + 1)) - round(rate * t) for t in range(40)]
    first, second = segment_loads(TINY, workload, arrivals, 20)
    assert first == pytest.approx(1.0, abs=0.1)
    assert second == pytest.approx(rate / TINY.throughput(LONG_MIX), abs=0.1)
    assert second > 1.5


@dataclass(frozen=True)
class Fake:
    attainment: float
    gpu_hours: float


def test_search_returns_the_cheapest_schedule_that_reached_each_target() -> None:
    # Attainment grows with the replicas over all segments; the search must find the
    # cheapest schedule of its family (ceil(load / u)) that reaches each target, as a scan of
    # u in steps of 0.001 does.
    loads = [2.0, 3.0, 5.0, 1.2, 0.7, 4.4]
    calls: list[tuple[int, ...]] = []

    def attainment(schedule: tuple[int, ...]) -> float:
        return min(1.0, 0.5 + 0.04 * (sum(schedule) - 17))

    def replay(schedule: tuple[int, ...]) -> Fake:
        calls.append(schedule)
        return Fake(attainment(schedule), sum(schedule) / 3600)

    found = search(loads, (0.9, 0.99), 10, 30, replay)
    assert len(calls) == len(set(calls)), "a schedule was replayed twice"
    assert len(calls) <= 12
    family = [schedule_for(loads, u / 1000, 10) for u in range(500, 1101)]
    for target, (feasible, row) in zip((0.9, 0.99), found, strict=True):
        cheapest = min(sum(s) for s in family if attainment(s) >= target)
        assert feasible.reached
        assert row.attainment == feasible.attainment >= target
        assert sum(feasible.schedule) == cheapest
        assert feasible.gpu_seconds == pytest.approx(cheapest)
        assert feasible.replays == len(calls)
    assert found[0][0].gpu_seconds < found[1][0].gpu_seconds


def test_search_says_when_no_schedule_reached_the_target() -> None:
    def replay(schedule: tuple[int, ...]) -> Fake:
        return Fake(0.5, sum(schedule) / 3600)

    ((found, _),) = search([1.0, 2.0], (0.99,), 10, 30, replay)
    assert not found.reached
    assert found.attainment == 0.5


def _tiny_workload(levels: list[float], segment: int) -> Workload:
    def load(t: int) -> float:
        return levels[min(len(levels) - 1, t // segment)]

    return Workload("tiny", segment * len(levels), load, predictable=False)


@pytest.mark.parametrize(
    ("levels", "seed"),
    [
        ([0.5, 2.0, 3.0, 3.0, 1.0, 0.3, 0.3, 1.5, 1.5, 0.5, 0.5, 0.5], 1),
        ([0.0, 0.0, 0.0, 2.5, 2.5, 2.5, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], 2),
    ],
)
def test_feasible_plan_reaches_its_target_and_costs_at_least_the_bound(
    levels: list[float], seed: int
) -> None:
    # 12 segments of 30 s: the replay's warm-up (300 s) reads the schedule's tail.
    workload = _tiny_workload(levels, 30)
    arrivals = workload.arrivals(TINY, seed)
    plans, rows = feasible_plans(workload, TINY, arrivals, seed=seed, lag=10, node_delay=0)
    n0 = steady_replicas(workload, TINY)
    bounds = plan(workload, TINY, arrivals, TARGETS, 10, n0, segment=30)
    for feasible, row, bound in zip(plans, rows, bounds, strict=True):
        assert feasible.reached, feasible
        assert row.attainment >= feasible.target
        # Replayed again from its schedule alone, in the real simulation: the same run.
        again = simulate(
            workload,
            TINY,
            Replay("again", feasible.schedule, feasible.segment, TINY.cold_start_seconds),
            arrivals,
            seed=seed,
            lag=10,
            node_delay=0,
            family="again",
            knob=None,
        )
        assert again.attainment == row.attainment >= feasible.target
        assert again.gpu_hours * 3600 == pytest.approx(feasible.gpu_seconds)
        # An upper bound on the clairvoyant optimum is never below the lower bound.
        assert feasible.gpu_seconds >= bound.bound_gpu_seconds - 1e-6
    # More attainment never comes cheaper in the search's own results.
    assert plans[0].gpu_seconds <= plans[1].gpu_seconds
