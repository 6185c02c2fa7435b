"""A feasible clairvoyant plan: an upper bound on what the best clairvoyant policy needs.

The fluid planner (`autoscale_bound`) gives a lower bound on the GPU-hours any policy needs to
reach an attainment target, but its fleet model is so optimistic that its own schedule,
replayed in the simulation, misses most targets. This module brackets the clairvoyant optimum
from the other side: it searches for a replica schedule that knows the actual arrivals, is
replayed in the real simulation (each replica created one cold start early, as the bound's
replay is) and reaches the target there. Any such schedule's GPU-hours are an UPPER bound on
the clairvoyant optimum (the cheapest schedule that reaches the target in the simulation);
the fluid DP is the lower bound; the optimum lies between. A policy that spends less than
the feasible plan is possible: the search is bounded, not exhaustive.

The search: per segment (30 s for the 7B, 60 s for the 70B, as the bound's) the load the
actual arrivals bring, in replicas at full batches (`segment_loads`), and for a utilisation
cap u the schedule `ceil(load_k / u)` (`schedule_for`). Lower u means more replicas in every
segment. The search bisects u for the cheapest replayed schedule that reaches each target,
sharing replays between targets; it reports the cheapest schedule it replayed that reached
the target (the replay's attainment need not be monotone in u).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from autoscale_workloads import ModelSize, Workload

# The utilisation caps searched: u = 0.5 (twice the replicas the arrivals fill) up to 1.1
# (a tenth fewer: segments whose Poisson peak the next segment's spare replicas absorb).
LOW_UTILISATION = 0.5
HIGH_UTILISATION = 1.1
FIRST_GUESS = 0.9
BISECTION_STEPS = 7  # 0.6 / 2^7: u to within 0.005


class Replayed(Protocol):
    """What a replay in the simulation reports (autoscale_sim.Result has these)."""

    @property
    def attainment(self) -> float: ...

    @property
    def gpu_hours(self) -> float: ...


R = TypeVar("R", bound=Replayed)


@dataclass(frozen=True, slots=True)
class Feasible:
    """The cheapest replayed schedule found for one target (reached), or, if none reached
    it, the schedule with the best attainment (not reached: no upper bound)."""

    target: float
    reached: bool
    utilisation: float  # the cap u of the schedule reported
    gpu_seconds: float  # replayed in the simulation, loading and draining billed
    attainment: float  # replayed in the simulation
    schedule: tuple[int, ...]  # replicas per segment
    segment: int
    replays: int  # simulations the whole search ran (all targets together)


def default_segment(size: ModelSize) -> int:
    """The bound's segment: 30 s for a fast-starting model, 60 s for a slow one."""
    return 30 if size.cold_start_seconds < 120 else 60


def segment_loads(
    size: ModelSize, workload: Workload, arrivals: Sequence[int], segment: int
) -> list[float]:
    """The load of each segment in replicas: its arrivals over what a replica completes in
    the segment with full batches of each second's mix."""
    loads = []
    for start in range(0, len(arrivals), segment):
        end = min(len(arrivals), start + segment)
        work = sum(arrivals[t] / size.throughput(workload.mix(t)) for t in range(start, end))
        loads.append(work / segment)
    return loads


def schedule_for(loads: Sequence[float], utilisation: float, n_max: int) -> tuple[int, ...]:
    """Replicas per segment at utilisation cap u: ceil(load / u), at most n_max."""
    if utilisation <= 0:
        raise ValueError(f"utilisation: must be positive, got {utilisation}")
    return tuple(min(n_max, math.ceil(load / utilisation - 1e-9)) for load in loads)


def search(
    loads: Sequence[float],
    targets: Sequence[float],
    n_max: int,
    segment: int,
    replay: Callable[[tuple[int, ...]], R],
    steps: int = BISECTION_STEPS,
) -> list[tuple[Feasible, R]]:
    """For each target, the cheapest replayed schedule `ceil(load / u)` that reached it, and
    its replay. Replays are shared between targets and never repeated for the same
    schedule."""
    seen: dict[tuple[int, ...], R] = {}
    tried: dict[float, tuple[int, ...]] = {}

    def run(u: float) -> R:
        schedule = schedule_for(loads, u, n_max)
        tried[u] = schedule
        if schedule not in seen:
            seen[schedule] = replay(schedule)
        return seen[schedule]

    for target in sorted(targets, reverse=True):
        # The bracket from what earlier targets replayed: the highest u that reached this
        # target, and the lowest u above it that did not.
        reached = [u for u in tried if seen[tried[u]].attainment >= target]
        lo = max(reached, default=None)
        missed = [u for u in tried if (lo is None or u > lo) and seen[tried[u]].attainment < target]
        hi = min(missed, default=HIGH_UTILISATION)
        if lo is None:
            guess = FIRST_GUESS if hi > FIRST_GUESS else (LOW_UTILISATION + hi) / 2
            if run(guess).attainment >= target:
                lo = guess
            elif run(LOW_UTILISATION).attainment >= target:
                lo, hi = LOW_UTILISATION, guess
        if lo is not None:
            for _ in range(steps):
                if hi - lo < 0.005:
                    break
                mid = (lo + hi) / 2
                if run(mid).attainment >= target:
                    lo = mid
                else:
                    hi = mid
    out = []
    for target in targets:
        ok = [u for u in tried if seen[tried[u]].attainment >= target]
        if ok:
            u = min(ok, key=lambda v: (seen[tried[v]].gpu_hours, -v))
        else:
            u = max(tried, key=lambda v: (seen[tried[v]].attainment, v))
        result = seen[tried[u]]
        out.append(
            (
                Feasible(
                    target=target,
                    reached=bool(ok),
                    utilisation=u,
                    gpu_seconds=result.gpu_hours * 3600,
                    attainment=result.attainment,
                    schedule=tried[u],
                    segment=segment,
                    replays=len(seen),
                ),
                result,
            )
        )
    return out
