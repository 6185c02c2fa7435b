"""Autoscaling benchmark: policies against a lower bound and a feasible plan, simulated fleets.

    python bench/autoscale_sim.py --quick                   # smoke: seed 1, 3 workloads, bound
    python bench/autoscale_sim.py --seeds 1-10 --no-sweep   # defaults and bound, 10 seeds
    python bench/autoscale_sim.py --seeds 1-10              # full: + knob sweeps (long)

See docs/autoscaling.md for the model, the policies and the tables this prints.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import math
import multiprocessing
import pickle
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import cast

import autoscale_bound
import autoscale_clairvoyant
import autoscale_engine
import autoscale_policies
import autoscale_workloads
from autoscale_bound import Plan, plan, saturated
from autoscale_clairvoyant import Feasible, default_segment, search, segment_loads
from autoscale_engine import Fleet, PodSample
from autoscale_policies import (
    Hpa,
    KubeAiLike,
    Ours,
    Policy,
    Replay,
    View,
    in_flight_total,
    kv_total,
    waiting_total,
)
from autoscale_workloads import (
    BASE_MIX,
    LOAD_TEST_MIX,
    SIZES,
    ModelSize,
    Workload,
    poisson,
    workloads,
)
from modelflock.autoscale import algorithm, schedule
from modelflock.autoscale.algorithm import (
    Demand,
    Observation,
    PodLoad,
    ScalerMemory,
    ScalingPolicy,
    StartingPod,
    decide,
    remembered,
)
from modelflock.autoscale.schedule import Schedule

MAX_REPLICAS = 10
WARM_UP_SECONDS = 300  # served at the first second's load, not counted
TARGETS = (0.95, 0.99)
# The unit that searches a feasible clairvoyant plan (an upper bound on the optimum).
FEASIBLE = "feasible plan"


# -- policies and their knobs -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Family:
    """A policy as users run it, its main knob's default and the values swept."""

    name: str
    knob: str
    default: float
    sweep: tuple[float, ...]
    make: Callable[[ModelSize, float], Policy]
    note: str = ""


def _ours(size: ModelSize, knob: float) -> Policy:
    # The CRD defaults; only the expert's bounds and the swept burstHeadroom are set. The
    # expert served before (a previous day): its status keeps what the autoscaler learned
    # then, as the operator's does across restarts (capacity, service time, cold start).
    batch, rate = saturated(size, BASE_MIX)
    memory = remembered(ScalerMemory(), batch, batch / rate, size.cold_start_seconds)
    return Ours(
        ScalingPolicy(min_replicas=0, max_replicas=MAX_REPLICAS, burst_headroom=knob),
        memory=memory,
    )


def _keda(size: ModelSize, knob: float) -> Policy:
    # The production-stack recipe: sum of vllm:num_requests_waiting, threshold 5
    # (AverageValue), polling 15 s, min 1; cooldownPeriod 360 s only applies to 1 -> 0.
    return Hpa("keda recipe", waiting_total, target=knob, interval=15)


def _hpa_waiting(size: ModelSize, knob: float) -> Policy:
    return Hpa("hpa waiting", waiting_total, target=knob, interval=15)


def _hpa_load_test(size: ModelSize, knob: float) -> Policy:
    # In-flight per pod, target = the batch a load test measured at another mix (x knob).
    return Hpa(
        "hpa in-flight (load test)",
        in_flight_total,
        target=knob * size.batch(LOAD_TEST_MIX),
        interval=15,
    )


def _hpa_kv(size: ModelSize, knob: float) -> Policy:
    return Hpa("hpa kv-cache", kv_total, target=knob, interval=15)


def _kubeai(size: ModelSize, knob: float) -> Policy:
    return KubeAiLike(target=knob * size.batch(LOAD_TEST_MIX))


def _hand_fed(size: ModelSize, knob: float) -> Policy:
    # Reference only: the true batch of the base mix, which users do not have.
    return Hpa("hpa hand-fed (reference)", in_flight_total, target=knob * size.batch(BASE_MIX))


# "ours + schedule" runs only on the business-hours workloads. Their 3-hour day is read as a
# Monday from 08:15 UTC (run second 0): the office opens at 09:00 (second 2700, the first
# arrivals) and closes at 10:00 (second 7200; people leave until 10:15). The schedule is what
# a user writes for it: their office hours, and the replicas the expert ran at in office hours
# without it (2). The replicas are started one learned cold start before 09:00.
SCHEDULED = "ours + schedule"
SCHEDULED_WORKLOAD = "business hours"
DAY_START = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)  # a Monday
OFFICE_HOURS = Schedule(
    start=clock(9, 0), end=clock(10, 0), min_replicas=2, days=frozenset(range(5))
)


@dataclass
class ScheduledOurs(Ours):
    """Ours with the time of day in its observation (second 0 is `DAY_START`), as the
    operator passes the wall clock; otherwise the same observation as `Ours`."""

    def decide(self, view: View) -> int:
        obs = Observation(
            now=float(view.now),
            current_replicas=view.replicas,
            ready=tuple(
                PodLoad(
                    float(s.waiting),
                    float(s.running),
                    kv_cache_usage=s.kv_usage,
                    completed=float(s.completed),
                )
                for s in view.samples
            ),
            names=tuple(f"pod-{s.pod}" for s in view.samples),
            starting=tuple(StartingPod(age_seconds=a) for a in view.starting_ages),
            demand=Demand(view.now, view.held_by_router) if view.held_by_router else None,
            wall_clock=DAY_START + timedelta(seconds=view.now),
        )
        decision = decide(self.policy, obs, self.memory)
        self.memory = decision.memory
        self.message = decision.message
        return decision.desired_replicas


def _ours_scheduled(size: ModelSize, knob: float) -> Policy:
    # Ours as above, with the office hours' scheduled minimum.
    batch, rate = saturated(size, BASE_MIX)
    memory = remembered(ScalerMemory(), batch, batch / rate, size.cold_start_seconds)
    return ScheduledOurs(
        ScalingPolicy(
            min_replicas=0,
            max_replicas=MAX_REPLICAS,
            burst_headroom=knob,
            schedules=(OFFICE_HOURS,),
        ),
        memory=memory,
        name=SCHEDULED,
    )


FAMILIES = (
    Family("ours", "burstHeadroom", 1.0, (0.0, 1.0, 3.0), _ours),
    Family("keda recipe", "threshold", 5, (1, 2, 5), _keda),
    Family("hpa waiting", "target", 1, (), _hpa_waiting),
    Family("hpa in-flight (load test)", "target x", 1.0, (0.6, 1.0), _hpa_load_test),
    Family("hpa kv-cache", "target", 0.8, (), _hpa_kv),
    Family("kubeai-like", "target x", 1.0, (), _kubeai),
    Family("hpa hand-fed (reference)", "target x", 1.0, (), _hand_fed),
)
# Run only where it applies (see SCHEDULED_WORKLOAD), at its default.
SCHEDULED_FAMILY = Family(SCHEDULED, "burstHeadroom", 1.0, (), _ours_scheduled)


def _family(name: str) -> Family:
    return next(f for f in (*FAMILIES, SCHEDULED_FAMILY) if f.name == name)


# -- one run ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Result:
    family: str
    knob: float | None
    requests: int
    attainment: float  # TTFT and TPOT within objective
    queue_attainment: float  # waited <= 2 s
    p95_ttft: float
    p99_ttft: float
    worst_episode: float
    gpu_hours: float
    scale_events: int
    direction_changes: int


def steady_replicas(workload: Workload, size: ModelSize) -> int:
    """Replicas a fleet runs in steady state at the first second's load (85 % busy)."""
    rate = workload.rate(size, 0)
    if rate <= 0:
        return 0
    return min(MAX_REPLICAS, math.ceil(rate / (0.85 * size.throughput(workload.mix(0)))))


def simulate(
    workload: Workload,
    size: ModelSize,
    policy: Policy,
    arrivals: Sequence[int],
    *,
    seed: int,
    lag: int,
    node_delay: int,
    family: str,
    knob: float | None,
) -> Result:
    fleet = Fleet(size, node_delay)
    n0 = steady_replicas(workload, size)
    start = -WARM_UP_SECONDS
    fleet.scale_to(n0, start, warm=True)
    warm_rng = random.Random(f"warm/{seed}/{workload.name}/{size.name}")
    rate0 = workload.rate(size, 0)
    mix0 = workload.mix(0)
    interval = policy.interval
    # A tick sees the pods' metrics `lag` seconds old (the oldest there are at the start):
    # only the seconds some tick reads are sampled.
    needed = {max(start, d - lag) for d in range(start, workload.duration) if d % interval == 0}
    snapshots: dict[int, tuple[PodSample, ...]] = {}
    log: list[tuple[int, int]] = []
    mix = workload.mix
    for now in range(start, workload.duration):
        if now < 0:
            fleet.step(now, poisson(warm_rng, rate0), mix0)
        else:
            fleet.step(now, arrivals[now], mix(now))
        if now in needed:
            snapshots[now] = fleet.sample(now)
        if now % interval:
            continue
        seen_at = max(start, now - lag)
        for t in [t for t in snapshots if t < seen_at]:
            del snapshots[t]
        ready = fleet.ready_pods(now)
        old = {s.pod: s for s in snapshots[seen_at]}
        view = View(
            now=now,
            replicas=fleet.replicas(),
            ready=len(ready),
            starting_ages=tuple(fleet.starting_ages(now)),
            samples=tuple(old.get(i, PodSample(i, 0, 0, 0.0, 0)) for i, _ in ready),
            held_by_router=fleet.held_count,
        )
        desired = max(0, min(MAX_REPLICAS, policy.decide(view)))
        if now < 0:
            continue  # the warm-up primes the policy's memory; the fleet stays steady
        current = fleet.replicas()
        if desired != current:
            log.append((now, 1 if desired > current else -1))
            fleet.scale_to(desired, now)
    fleet.finish(workload.duration)
    out = fleet.out
    changes = sum(1 for (_, a), (_, b) in itertools.pairwise(log) if a != b)
    return Result(
        family=family,
        knob=knob,
        requests=out.requests,
        attainment=out.slo_met / out.requests if out.requests else 1.0,
        queue_attainment=out.queue_met / out.requests if out.requests else 1.0,
        p95_ttft=out.ttft_percentile(0.95),
        p99_ttft=out.ttft_percentile(0.99),
        worst_episode=out.worst_episode(),
        gpu_hours=out.gpu_seconds / 3600,
        scale_events=len(log),
        direction_changes=changes,
    )


@dataclass(frozen=True, slots=True)
class Case:
    seed: int
    size: str
    workload: str
    sweep: bool
    lag: int
    node_delay: int
    bound: bool
    feasible: bool = False  # also search a feasible clairvoyant plan (shown when cached)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    predictable: bool
    load_changes: int
    results: tuple[Result, ...]
    plans: tuple[Plan, ...]
    feasible: tuple[Feasible, ...] = ()  # an upper bound on the clairvoyant optimum


@dataclass(frozen=True, slots=True)
class Unit:
    """One piece of a case, computed and cached on its own: a policy at one knob value,
    (family None) the bound and its replay, or (family FEASIBLE) the feasible clairvoyant
    plans and their replays. Changing the algorithm reruns only "ours"."""

    case: Case
    family: str | None
    knob: float | None


# What a unit computes: a policy's run, the bound's plans and their replay, or the feasible
# plans and their replays.
Payload = Result | tuple[tuple[Plan, ...], Result] | tuple[tuple[Feasible, ...], tuple[Result, ...]]


def case_units(case: Case) -> list[Unit]:
    """The units a case needs before it is reported (the feasible plan is optional)."""
    units = [Unit(case, None, None)] if case.bound else []
    for fam in FAMILIES:
        knobs = sorted({fam.default, *fam.sweep}) if case.sweep else [fam.default]
        units += [Unit(case, fam.name, knob) for knob in knobs]
    if case.workload.startswith(SCHEDULED_WORKLOAD):
        units.append(Unit(case, SCHEDULED, SCHEDULED_FAMILY.default))
    return units


def optional_units(case: Case) -> list[Unit]:
    """Units shown when they are there: the feasible clairvoyant plan."""
    return [Unit(case, FEASIBLE, None)] if case.feasible else []


def _setting(case: Case) -> tuple[ModelSize, Workload, list[int]]:
    size = next(s for s in SIZES if s.name == case.size)
    workload = next(w for w in workloads(case.seed) if w.name == case.workload)
    return size, workload, workload.arrivals(size, case.seed)


def run_unit(unit: Unit) -> tuple[Unit, Payload]:
    case = unit.case
    size, workload, arrivals = _setting(case)
    if unit.family == FEASIBLE:
        found = feasible_plans(
            workload, size, arrivals, seed=case.seed, lag=case.lag, node_delay=case.node_delay
        )
        return unit, found
    if unit.family is not None:
        fam = _family(unit.family)
        assert unit.knob is not None
        result = simulate(
            workload,
            size,
            fam.make(size, unit.knob),
            arrivals,
            seed=case.seed,
            lag=case.lag,
            node_delay=case.node_delay,
            family=fam.name,
            knob=unit.knob,
        )
        return unit, result
    n0 = steady_replicas(workload, size)
    plans = tuple(plan(workload, size, arrivals, TARGETS, MAX_REPLICAS, n0))
    top = plans[-1]
    lead = size.cold_start_seconds + case.node_delay
    replay = simulate(
        workload,
        size,
        Replay("plan replay", top.schedule, top.segment, lead),
        arrivals,
        seed=case.seed,
        lag=case.lag,
        node_delay=case.node_delay,
        family="plan replay (99 %)",
        knob=None,
    )
    return unit, (plans, replay)


def feasible_plans(
    workload: Workload,
    size: ModelSize,
    arrivals: Sequence[int],
    *,
    seed: int,
    lag: int,
    node_delay: int,
) -> tuple[tuple[Feasible, ...], tuple[Result, ...]]:
    """The feasible clairvoyant plan for each target, each replayed in the simulation as the
    bound's plan is (every replica created one cold start early)."""
    segment = default_segment(size)
    lead = size.cold_start_seconds + node_delay

    def replay(schedule: tuple[int, ...]) -> Result:
        return simulate(
            workload,
            size,
            Replay("feasible plan", schedule, segment, lead),
            arrivals,
            seed=seed,
            lag=lag,
            node_delay=node_delay,
            family=FEASIBLE,
            knob=None,
        )

    loads = segment_loads(size, workload, arrivals, segment)
    found = search(loads, TARGETS, MAX_REPLICAS, segment, replay)
    rows = tuple(replace(r, family=f"feasible plan ({100 * p.target:.0f} %)") for p, r in found)
    return tuple(p for p, _ in found), rows


def assemble(case: Case, payloads: dict[Unit, Payload]) -> CaseResult:
    """A case's results in the order the tables list them (policies, then the replays)."""
    _, workload, _ = _setting(case)
    results: list[Result] = []
    plans: tuple[Plan, ...] = ()
    replay: list[Result] = []
    feasible: tuple[Feasible, ...] = ()
    for unit in case_units(case) + [u for u in optional_units(case) if u in payloads]:
        payload = payloads[unit]
        # (A run pickled by the script itself is a __main__.Result: test the payload's shape.)
        if not isinstance(payload, tuple):
            results.append(payload)
        elif unit.family == FEASIBLE:
            found = cast(tuple[tuple[Feasible, ...], tuple[Result, ...]], payload)
            feasible = found[0]
            replay += found[1]
        else:
            bound = cast(tuple[tuple[Plan, ...], Result], payload)
            plans = bound[0]
            replay.insert(0, bound[1])
    return CaseResult(
        case,
        workload.predictable,
        workload.load_changes,
        tuple(results + replay),
        plans,
        feasible,
    )


def run_case(case: Case) -> CaseResult:
    return assemble(case, dict(run_unit(u) for u in case_units(case) + optional_units(case)))


# -- reading the results ------------------------------------------------------------------
def matched(results: Sequence[Result], target: float) -> float | None:
    """GPU-hours at `target` attainment on a family's curve (cheapest points, interpolated);
    None if no knob value reached it."""
    points = sorted((r.attainment, r.gpu_hours) for r in results)
    # Cheapest GPU-hours for at least this attainment (the curve's lower envelope).
    frontier: list[tuple[float, float]] = []
    for att, gpu in reversed(points):
        if not frontier or gpu < frontier[-1][1]:
            frontier.append((att, gpu))
    frontier.reverse()  # rising attainment, rising GPU-hours
    above = [p for p in frontier if p[0] >= target]
    if not above:
        return None
    hi = above[0]
    below = [p for p in frontier if p[0] < target]
    if not below:
        return hi[1]
    lo = below[-1]
    share = (target - lo[0]) / (hi[0] - lo[0])
    return lo[1] + share * (hi[1] - lo[1])


def _fmt_range(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def _by_workload(cases: Iterable[CaseResult]) -> dict[tuple[str, str], list[CaseResult]]:
    """Cases grouped by (model, workload), in the order they come."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for c in cases:
        groups.setdefault((c.case.size, c.case.workload), []).append(c)
    return groups


def defaults_table(cases: Sequence[CaseResult]) -> str:
    lines = [
        "| model | workload | policy | SLO attainment | queue ≤ 2 s | p99 TTFT s | worst 10 min |"
        " GPU-hours | direction changes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = _by_workload(cases)
    defaults = {f.name: f.default for f in (*FAMILIES, SCHEDULED_FAMILY)}
    for (size, workload), group in groups.items():
        names = [r.family for r in group[0].results if r.knob in (None, defaults.get(r.family))]
        for name in dict.fromkeys(names):
            rows = [
                r
                for c in group
                for r in c.results
                if r.family == name and r.knob in (None, defaults.get(name))
            ]
            lines.append(
                f"| {size} | {workload} | {name} | "
                f"{_fmt_range([100 * r.attainment for r in rows], '.1f')} | "
                f"{_fmt_range([100 * r.queue_attainment for r in rows], '.1f')} | "
                f"{_fmt_range([r.p99_ttft for r in rows], '.1f')} | "
                f"{_fmt_range([100 * r.worst_episode for r in rows], '.0f')} | "
                f"{_fmt_range([r.gpu_hours for r in rows], '.1f')} | "
                f"{_fmt_range([float(r.direction_changes) for r in rows], '.1f')} |"
            )
        bounds = [p for c in group for p in c.plans]
        for target in TARGETS:
            vals = [p.bound_gpu_seconds / 3600 for p in bounds if p.target == target]
            if vals:
                lines.append(
                    f"| {size} | {workload} | **lower bound at {100 * target:.0f} %** | "
                    f"{100 * target:.0f} | | | | {_fmt_range(vals, '.1f')} | |"
                )
    return "\n".join(lines) + "\n"


def matched_table(cases: Sequence[CaseResult]) -> str:
    swept = [f.name for f in FAMILIES if f.sweep]
    head = " | ".join(f"{n} @{100 * t:.0f}" for t in TARGETS for n in swept)
    lines = [
        f"| model | workload | seed | {head} | bound @95 | bound @99 | feasible plan @95 |"
        " feasible plan @99 |",
        "|---|---|---:|" + "---:|" * (len(swept) * len(TARGETS) + 4),
    ]
    for c in cases:
        cells = []
        for target in TARGETS:
            for name in swept:
                v = matched([r for r in c.results if r.family == name], target)
                cells.append("n/r" if v is None else f"{v:.1f}")
        b = {p.target: p.bound_gpu_seconds / 3600 for p in c.plans}
        cells += [f"{b[t]:.1f}" if t in b else "-" for t in TARGETS]
        f = _feasible_hours(c)
        cells += [f"{f[t]:.1f}" if t in f else "n/r" if c.feasible else "-" for t in TARGETS]
        lines.append(
            f"| {c.case.size} | {c.case.workload} | {c.case.seed} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _feasible_hours(c: CaseResult) -> dict[float, float]:
    """GPU-hours of the feasible clairvoyant plan per target it reached."""
    return {p.target: p.gpu_seconds / 3600 for p in c.feasible if p.reached}


@dataclass(frozen=True, slots=True)
class Bracket:
    """Ours (default) against the clairvoyant optimum at 99 %, which lies between the fluid
    lower bound and the feasible plan (an upper bound on it)."""

    vs_fluid: float | None  # ours / fluid bound: an upper bound on ours / optimum
    vs_feasible: float | None  # ours / feasible plan: a lower bound on ours / optimum
    width: float | None  # feasible / fluid
    verdict: str  # "met", "missed" or "open" (the bracket cannot tell)


def bracket(c: CaseResult, default: Result) -> Bracket:
    """Where ours stands against the optimum at 99 %, and whether the goal (≤ 1.10 / 1.25
    times the optimum at ≥ 97 % attainment) is met for sure, missed for sure, or open."""
    goal = 1.10 if c.predictable else 1.25
    fluid = {p.target: p.bound_gpu_seconds / 3600 for p in c.plans}.get(0.99)
    feasible = _feasible_hours(c).get(0.99)
    vs_fluid = default.gpu_hours / fluid if fluid else None
    vs_feasible = default.gpu_hours / feasible if feasible else None
    width = feasible / fluid if feasible and fluid else None
    if default.attainment < 0.97:
        verdict = "missed"
    elif vs_fluid is not None and vs_fluid <= goal:
        verdict = "met"
    elif vs_feasible is not None and vs_feasible > goal:
        verdict = "missed"
    else:
        verdict = "open"
    return Bracket(vs_fluid, vs_feasible, width, verdict)


def goals_table(cases: Sequence[CaseResult]) -> str:
    """Per workload x seed: ours against the KEDA recipe at matched attainment, against the
    bound, and flapping."""
    lines = [
        "| model | workload | seed | ours vs KEDA at KEDA's attainment | ours vs KEDA @95 | "
        "ours vs KEDA @99 | ours (default) attainment | ours / bound @99 | ≤ goal | "
        "direction changes / load changes | ours / feasible plan @99 | feasible / bound @99 | "
        "goal against the optimum |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for c in cases:
        ours = [r for r in c.results if r.family == "ours"]
        keda = [r for r in c.results if r.family == "keda recipe"]
        cells = []
        for target in TARGETS:
            o, k = matched(ours, target), matched(keda, target)
            if o is None:
                cells.append("ours n/r")
            elif k is None:
                cells.append("KEDA n/r")
            else:
                cells.append(f"{100 * (o / k - 1):+.0f}%")
        default = next(r for r in ours if r.knob == FAMILIES[0].default)
        recipe = next(r for r in keda if r.knob == FAMILIES[1].default)
        at_recipe = matched(ours, recipe.attainment)
        vs_recipe = (
            "ours n/r"
            if at_recipe is None
            else f"{100 * (at_recipe / recipe.gpu_hours - 1):+.0f}% (at {100 * recipe.attainment:.1f}%)"
        )
        b = {p.target: p.bound_gpu_seconds / 3600 for p in c.plans}
        br = bracket(c, default)
        goal = 1.10 if c.predictable else 1.25
        if 0.99 in b and b[0.99] > 0:
            ratio = default.gpu_hours / b[0.99]
            ok = ratio <= goal and default.attainment >= 0.97
            bound_cell, goal_cell = f"{ratio:.2f}", ("yes" if ok else "no") + f" (≤ {goal:.2f})"
        else:
            bound_cell, goal_cell = "-", "-"
        lines.append(
            f"| {c.case.size} | {c.case.workload} | {c.case.seed} | {vs_recipe} | {cells[0]} | "
            f"{cells[1]} | "
            f"{100 * default.attainment:.1f}% | {bound_cell} | {goal_cell} | "
            f"{default.direction_changes} / {c.load_changes} | {_ratio(br.vs_feasible)} | "
            f"{_ratio(br.width)} | {br.verdict} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _with_missing(values: Sequence[float | None], n: int) -> str:
    """Mean (range) of the values there are, and on how many cases there was none (no
    feasible plan reached 99 %, or it was not computed)."""
    there = [v for v in values if v is not None]
    cell = _fmt_range(there, ".2f")
    return cell + (f" (n/r on {n - len(there)})" if len(there) < n else "")


def goals_summary(cases: Sequence[CaseResult]) -> str:
    """The goals per workload over its seeds: mean (range), and on how many seeds each goal
    was met."""
    lines = [
        "| model | workload | seeds | ours / bound @99 | goal | met on | ours attainment | "
        "ours vs KEDA at KEDA's attainment | ≤ -30 % on | direction changes / load changes |"
        " ≤ 1 per change on | ours / feasible plan @99 | feasible / bound @99 |"
        " goal against the optimum: met / open / missed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = _by_workload(cases)
    for (size, workload), group in groups.items():
        ratios, attained, vs_keda, flips, met, keda_met, flip_met = [], [], [], [], 0, 0, 0
        brackets: list[Bracket] = []
        goal = 1.10 if group[0].predictable else 1.25
        for c in group:
            ours = [r for r in c.results if r.family == "ours"]
            default = next(r for r in ours if r.knob == FAMILIES[0].default)
            recipe = next(
                r for r in c.results if r.family == "keda recipe" and r.knob == FAMILIES[1].default
            )
            attained.append(100 * default.attainment)
            brackets.append(bracket(c, default))
            b = {p.target: p.bound_gpu_seconds / 3600 for p in c.plans}
            if b.get(0.99):
                ratio = default.gpu_hours / b[0.99]
                ratios.append(ratio)
                met += ratio <= goal and default.attainment >= 0.97
            at_recipe = matched(ours, recipe.attainment)
            if at_recipe is not None:
                saving = 100 * (at_recipe / recipe.gpu_hours - 1)
                vs_keda.append(saving)
                keda_met += saving <= -30
            flips.append(default.direction_changes / max(1, c.load_changes))
            flip_met += default.direction_changes <= c.load_changes
        n = len(group)
        keda_cell = _fmt_range(vs_keda, "+.0f") + " %" if vs_keda else "ours n/r"
        if vs_keda and len(vs_keda) < n:
            keda_cell += f" (ours n/r on {n - len(vs_keda)})"
        lines.append(
            f"| {size} | {workload} | {n} | {_fmt_range(ratios, '.2f')} | ≤ {goal:.2f} | "
            f"{met}/{n} | {_fmt_range(attained, '.1f')} | {keda_cell} | {keda_met}/{n} | "
            f"{_fmt_range(flips, '.1f')} | {flip_met}/{n} | "
            f"{_with_missing([b.vs_feasible for b in brackets], n)} | "
            f"{_with_missing([b.width for b in brackets], n)} | "
            + " / ".join(
                str(sum(b.verdict == v for b in brackets)) for v in ("met", "open", "missed")
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def before_table(cases: Sequence[CaseResult], before: dict[Case, Result]) -> str:
    """Ours at its default, another version of the algorithm (`before`, from the cache) →
    this one, per workload (means over the seeds both have), then the totals."""
    lines = [
        "| model | workload | GPU-hours before → now | SLO attainment before → now | "
        "direction changes per load change before → now | ≤ 1 per change on, before → now |",
        "|---|---|---:|---:|---:|---:|",
    ]
    total_before = total_now = 0.0
    flat_before = flat_now = runs = 0
    seeds: set[int] = set()
    for (size, workload), group in _by_workload(cases).items():
        pairs = []
        for c in group:
            if c.case in before:
                now = next(
                    r for r in c.results if r.family == "ours" and r.knob == FAMILIES[0].default
                )
                pairs.append((before[c.case], now, max(1, c.load_changes), c.load_changes))
                seeds.add(c.case.seed)
        if not pairs:
            continue
        n = len(pairs)
        gpu_b = statistics.fmean(b.gpu_hours for b, _, _, _ in pairs)
        gpu_n = statistics.fmean(r.gpu_hours for _, r, _, _ in pairs)
        ok_b = sum(b.direction_changes <= lc for b, _, _, lc in pairs)
        ok_n = sum(r.direction_changes <= lc for _, r, _, lc in pairs)
        total_before += gpu_b
        total_now += gpu_n
        flat_before += ok_b
        flat_now += ok_n
        runs += n
        lines.append(
            f"| {size} | {workload} | {gpu_b:.2f} → {gpu_n:.2f} ({100 * (gpu_n / gpu_b - 1):+.0f} %) | "
            f"{100 * statistics.fmean(b.attainment for b, _, _, _ in pairs):.1f} → "
            f"{100 * statistics.fmean(r.attainment for _, r, _, _ in pairs):.1f} | "
            f"{statistics.fmean(b.direction_changes / d for b, _, d, _ in pairs):.1f} → "
            f"{statistics.fmean(r.direction_changes / d for _, r, d, _ in pairs):.1f} | "
            f"{ok_b}/{n} → {ok_n}/{n} |"
        )
    if not runs:
        return "No run of the other version of the algorithm is in the cache.\n"
    lines.append("")
    lines.append(
        f"Total over the cases (mean per seed, seeds {_seed_list(sorted(seeds))}): "
        f"{total_before:.1f} → {total_now:.1f} GPU-hours "
        f"({100 * (total_now / total_before - 1):+.1f} %); runs with at most one direction "
        f"change per load change: {flat_before} → {flat_now} of {runs}."
    )
    return "\n".join(lines) + "\n"


def _seed_list(seeds: Sequence[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(str(s) for s in seeds)


def _before_runs(cache: Path | None, cases: Sequence[Case], source: bytes) -> dict[Case, Result]:
    """Ours at its default under another version of algorithm.py, where the cache has it."""
    fingerprints: dict[str | None, str] = {"ours": _fingerprint("ours", source)}
    found: dict[Case, Result] = {}
    for case in cases:
        payload = _load(cache, Unit(case, "ours", FAMILIES[0].default), fingerprints)
        if payload is not None:
            found[case] = cast(Result, payload)
    return found


def schedule_table(cases: Sequence[CaseResult]) -> str:
    """Business hours: ours at its default with and without the office hours' scheduled
    minimum, against the feasible plan and the fluid bound at 99 % (mean and range over
    seeds; "n/r on k": no feasible plan reached 99 % on k seeds)."""
    lines = [
        "| model | workload | seeds | policy | SLO attainment | GPU-hours | / feasible plan @99 |"
        " / bound @99 | goal against the optimum: met / open / missed |"
        " direction changes / load changes |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = _by_workload(c for c in cases if any(r.family == SCHEDULED for r in c.results))
    for (size, workload), group in groups.items():
        for name in ("ours", SCHEDULED):
            runs = [
                (c, next(r for r in c.results if r.family == name and r.knob == 1.0)) for c in group
            ]
            brackets = [bracket(c, r) for c, r in runs]
            n = len(runs)
            lines.append(
                f"| {size} | {workload} | {n} | {name} | "
                f"{_fmt_range([100 * r.attainment for _, r in runs], '.1f')} | "
                f"{_fmt_range([r.gpu_hours for _, r in runs], '.2f')} | "
                f"{_with_missing([b.vs_feasible for b in brackets], n)} | "
                f"{_with_missing([b.vs_fluid for b in brackets], n)} | "
                + " / ".join(
                    str(sum(b.verdict == v for b in brackets)) for v in ("met", "open", "missed")
                )
                + f" | {_fmt_range([r.direction_changes / max(1, c.load_changes) for c, r in runs], '.1f')} |"
            )
    return "\n".join(lines) + "\n"


def beaten_bounds(cases: Sequence[CaseResult]) -> list[str]:
    """Runs that reached a target with fewer GPU-hours than its bound (should never happen)."""
    out = []
    for c in cases:
        for p in c.plans:
            for r in c.results:
                if r.attainment >= p.target and r.gpu_hours < p.bound_gpu_seconds / 3600:
                    out.append(
                        f"{c.case.size} {c.case.workload} seed {c.case.seed}: {r.family} "
                        f"({r.knob}) {r.gpu_hours:.2f} GPU-h at {100 * r.attainment:.1f}% < "
                        f"bound {p.bound_gpu_seconds / 3600:.2f} at {100 * p.target:.0f}%"
                    )
    return out


def _fingerprint(family: str | None, algorithm_source: bytes | None = None) -> str:
    """The code a unit's result depends on; a cached result of other code is not reused.
    `algorithm_source`: another version of algorithm.py (to find "ours" runs of it)."""
    h = hashlib.sha256()
    for mod in (autoscale_engine, autoscale_workloads, autoscale_policies):
        h.update(Path(str(mod.__file__)).read_bytes())
    for fn in (simulate, steady_replicas, _setting):
        h.update(inspect.getsource(fn).encode())
    if family is None:
        h.update(Path(str(autoscale_bound.__file__)).read_bytes())
        h.update(repr(TARGETS).encode())
    elif family == FEASIBLE:
        h.update(Path(str(autoscale_clairvoyant.__file__)).read_bytes())
        h.update(inspect.getsource(feasible_plans).encode())
        h.update(repr((TARGETS, MAX_REPLICAS)).encode())
    else:
        fam = _family(family)
        h.update(inspect.getsource(fam.make).encode())
        h.update(repr(MAX_REPLICAS).encode())
        if fam.make in (_ours, _ours_scheduled):
            h.update(algorithm_source or Path(str(algorithm.__file__)).read_bytes())
            h.update(Path(str(schedule.__file__)).read_bytes())
        if fam.make is _ours_scheduled:
            h.update(inspect.getsource(ScheduledOurs).encode())
            h.update(repr((DAY_START, OFFICE_HOURS)).encode())
    return h.hexdigest()[:12]


def _cache_file(cache: Path, unit: Unit, fingerprints: dict[str | None, str]) -> Path:
    case = unit.case
    what = "bound" if unit.family is None else f"{unit.family}-{unit.knob}"
    key = (
        f"{case.size}-{case.workload}-{case.seed}-{case.lag}-{case.node_delay}-{what}-"
        f"{fingerprints[unit.family]}"
    )
    return cache / (key.replace(" ", "_").replace("/", "_") + ".pickle")


def _load(cache: Path | None, unit: Unit, fingerprints: dict[str | None, str]) -> Payload | None:
    if cache is None or not _cache_file(cache, unit, fingerprints).exists():
        return None
    with _cache_file(cache, unit, fingerprints).open("rb") as f:
        payload: Payload = pickle.load(f)
    return payload


def _store(
    cache: Path | None, unit: Unit, payload: Payload, fingerprints: dict[str | None, str]
) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    path = _cache_file(cache, unit, fingerprints)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(payload, f)
    tmp.replace(path)


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", default="1-10", help="e.g. 1-10 or 1,7,13")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: seed 1, 3 workloads, defaults, bound"
    )
    parser.add_argument("--no-sweep", action="store_true", help="each policy at its default only")
    parser.add_argument("--no-bound", action="store_true", help="skip the lower-bound planner")
    parser.add_argument(
        "--no-feasible",
        action="store_true",
        help="skip the feasible clairvoyant plan (an upper bound on the optimum)",
    )
    parser.add_argument("--lag", type=int, default=10, help="metric lag in seconds")
    parser.add_argument("--node-delay", type=int, default=0, help="node provisioning seconds")
    parser.add_argument("--models", default="7B,70B")
    parser.add_argument("--workloads", default="", help="comma-separated name prefixes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--report-only", action="store_true", help="print the tables from --cache alone"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep each case's result here; a rerun reuses them (resume a long sweep)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--before-algorithm",
        type=Path,
        help="another version of algorithm.py (e.g. from git show): also compare ours at its "
        "default with its runs in --cache (never computed here)",
    )
    parser.add_argument(
        "--held-out",
        default="",
        help="seeds not used for tuning (e.g. 4-10): their goals are also summarised apart",
    )
    args = parser.parse_args(argv)
    seeds = [1] if args.quick else _seeds(args.seeds)
    sweep = not (args.quick or args.no_sweep)
    bound = not args.no_bound
    prefixes = [p for p in args.workloads.split(",") if p]
    if args.quick and not prefixes:
        prefixes = ["step", "bursty", "mix shift to shorter"]
    cases = [
        Case(seed, size, w.name, sweep, args.lag, args.node_delay, bound, not args.no_feasible)
        for size in args.models.split(",")
        for w in workloads(0)
        if not prefixes or any(w.name.startswith(p) for p in prefixes)
        for seed in seeds
    ]
    started = time.perf_counter()
    fingerprints: dict[str | None, str] = {
        None: _fingerprint(None),
        FEASIBLE: _fingerprint(FEASIBLE),
    }
    fingerprints.update({f.name: _fingerprint(f.name) for f in (*FAMILIES, SCHEDULED_FAMILY)})
    durations = {w.name: w.duration for w in workloads(0)}
    # Seed by seed (a stopped run leaves whole seeds), the bounds and long workloads first.
    units = sorted(
        (u for c in cases for u in case_units(c) + optional_units(c)),
        key=lambda u: (
            u.case.seed,
            u.family not in (None, FEASIBLE),
            -durations[u.case.workload],
        ),
    )
    payloads: dict[Unit, Payload] = {}
    todo = []
    for u in units:
        cached = _load(args.cache, u, fingerprints)
        if cached is not None:
            payloads[u] = cached
        elif not args.report_only:
            todo.append(u)
    if args.jobs > 1 and len(todo) > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            for unit, payload in pool.imap_unordered(run_unit, todo, chunksize=1):
                _store(args.cache, unit, payload, fingerprints)
                payloads[unit] = payload
    else:
        for u in todo:
            unit, payload = run_unit(u)
            _store(args.cache, unit, payload, fingerprints)
            payloads[unit] = payload
    done = [assemble(c, payloads) for c in cases if all(u in payloads for u in case_units(c))]
    ran = len(todo)
    text = "### Each policy at its default setting (mean and range over seeds)\n\n"
    text += defaults_table(done)
    if sweep:
        text += "\n### GPU-hours at matched attainment (knob swept; n/r = not reached)\n\n"
        text += matched_table(done)
    if bound:
        text += "\n### Goals per workload (mean and range over seeds)\n\n" + goals_summary(done)
        if args.held_out:
            held = [c for c in done if c.case.seed in set(_seeds(args.held_out))]
            text += (
                f"\n### Goals on the seeds not used for tuning ({args.held_out})\n\n"
                + goals_summary(held)
            )
        if any(r.family == SCHEDULED for c in done for r in c.results):
            text += (
                "\n### Business hours with a scheduled minimum (ours at its default)\n\n"
                + schedule_table(done)
            )
        text += "\n### Goals per workload and seed\n\n" + goals_table(done)
        beaten = beaten_bounds(done)
        text += "\nRuns below the bound: " + ("none" if not beaten else "; ".join(beaten)) + "\n"
    if args.before_algorithm:
        before = _before_runs(
            args.cache, [c.case for c in done], args.before_algorithm.read_bytes()
        )
        text += (
            f"\n### Ours at its default: {args.before_algorithm.name} → this algorithm\n\n"
            + before_table(done, before)
        )
        if args.held_out:
            held_seeds = set(_seeds(args.held_out))
            text += f"\nOn the seeds not used for tuning ({args.held_out}):\n\n" + before_table(
                [c for c in done if c.case.seed in held_seeds], before
            )
    sys.stdout.write(text)
    sys.stdout.write(
        f"\n{len(done)} cases ({ran} runs computed, the rest cached) in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
