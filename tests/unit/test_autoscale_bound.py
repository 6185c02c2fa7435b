"""The benchmark's lower-bound planner (bench/autoscale_bound.py) against brute force.

On tiny cases every replica schedule is enumerated and run through the exact relaxed model
(queue ages and running requests carried without rounding); the planner's bound must never
exceed the cheapest schedule that meets the target, and must not be trivially loose.
"""

from __future__ import annotations

import itertools
import random

import pytest
from autoscale_tiny import TINY

from autoscale_bound import SegmentModel, plan
from autoscale_workloads import BASE_MIX, Workload, poisson

SEGMENT = 10
SEGMENTS = 5
N_MAX = 3


def _workload(levels: list[float]) -> Workload:
    def load(t: int) -> float:
        return levels[min(len(levels) - 1, t // SEGMENT)]

    return Workload("tiny", SEGMENT * SEGMENTS, load, predictable=True)


def _arrivals(workload: Workload, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [poisson(rng, workload.rate(TINY, t)) for t in range(workload.duration)]


def _brute_force(
    workload: Workload, arrivals: list[int], n0: int, r0: float, target: float
) -> float:
    """Cheapest GPU-seconds over every schedule in 0..N_MAX that meets the target, exact."""
    model = SegmentModel(TINY, arrivals, [BASE_MIX] * workload.duration, SEGMENT)
    allowed = (1 - target) * sum(arrivals)
    best = float("inf")
    for schedule in itertools.product(range(N_MAX + 1), repeat=SEGMENTS):
        cost, misses, running, queue, late, prev = 0.0, 0.0, r0, [], 0.0, n0
        for k, n in enumerate(schedule):
            cost += n * SEGMENT + TINY.cold_start_seconds * max(0, n - prev)
            miss, running, queue, late = model.run(k, n, running, 0.0, queue, late)
            misses += miss
            prev = n
        if misses <= allowed + 1e-9:
            best = min(best, cost)
    return best


CASES = [
    # (load levels per segment in replica-equivalents, seed, target)
    ([0.5, 2.0, 2.5, 1.0, 0.2], 1, 0.95),
    ([0.5, 2.0, 2.5, 1.0, 0.2], 2, 0.99),
    ([1.5, 1.5, 0.0, 0.0, 2.5], 3, 0.95),
    ([0.3, 2.8, 0.3, 2.8, 0.3], 4, 0.90),
    ([1.5, 1.5, 1.5, 1.5, 1.5], 5, 0.99),
]


@pytest.mark.parametrize(("levels", "seed", "target"), CASES)
def test_bound_is_at_most_the_brute_force_optimum(
    levels: list[float], seed: int, target: float
) -> None:
    workload = _workload(levels)
    arrivals = _arrivals(workload, seed)
    n0 = 1
    result = plan(workload, TINY, arrivals, (target,), N_MAX, n0, segment=SEGMENT)[0]
    residence = TINY.prefill_seconds(BASE_MIX) + TINY.decode_seconds(BASE_MIX, 8)
    r0 = min(n0 * TINY.batch(BASE_MIX), workload.rate(TINY, 0) * residence)
    optimum = _brute_force(workload, arrivals, n0, r0, target)
    assert optimum < float("inf"), "case must be feasible with N_MAX replicas"
    assert result.bound_gpu_seconds <= optimum + 1e-6
    # Not trivially loose (the Lagrangian duality gap stays within 25 % on these cases).
    assert result.bound_gpu_seconds >= 0.75 * optimum
    # The planner's own schedule costs at least the bound.
    assert result.plan_gpu_seconds >= result.bound_gpu_seconds - 1e-6


def test_more_attainment_never_costs_less() -> None:
    workload = _workload([0.5, 2.0, 2.5, 1.0, 0.2])
    arrivals = _arrivals(workload, 7)
    low, high = plan(workload, TINY, arrivals, (0.90, 0.99), N_MAX, 1, segment=SEGMENT)
    assert low.bound_gpu_seconds <= high.bound_gpu_seconds + 1e-6
    assert high.plan_attainment >= 0.99 - 1e-9


def test_cold_start_is_paid_for_every_added_replica() -> None:
    # Idle, then a burst that needs replicas: the bound includes their loading time.
    workload = _workload([0.0, 0.0, 2.5, 2.5, 0.0])
    arrivals = _arrivals(workload, 11)
    result = plan(workload, TINY, arrivals, (0.95,), N_MAX, 0, segment=SEGMENT)[0]
    added = sum(max(0, b - a) for a, b in itertools.pairwise((0, *result.schedule)))
    assert added >= 2
    serving = sum(result.schedule) * SEGMENT
    assert result.plan_gpu_seconds == pytest.approx(serving + added * TINY.cold_start_seconds)
