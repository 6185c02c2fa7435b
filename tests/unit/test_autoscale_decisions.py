"""The scaling decisions added for issue 15, table by table: square-root headroom, sizing
from the arrival rate (Little's law), capacity learned upwards from the KV cache, a scale-down
hold derived from the cold start, and pods with unreadable metrics that go stale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from modelflock.autoscale.algorithm import (
    HOLD_DEFAULT_SECONDS,
    Observation,
    PodLoad,
    Reason,
    Recommendation,
    ScalerMemory,
    ScalingPolicy,
    StartingPod,
    decide,
    rate_risen_above,
    scale_down_window,
)


def policy(**kw: float | int | None) -> ScalingPolicy:
    base: dict[str, float | int | None] = {
        "min_replicas": 1,
        "max_replicas": 40,
        "target_queue_depth": 2,
        "max_scale_up_step": 40,
        "scale_down_window_seconds": 0,
    }
    base.update(kw)
    return ScalingPolicy(**base)  # type: ignore[arg-type]


def steady(n: int, running: float, waiting: float = 0.0) -> tuple[PodLoad, ...]:
    return tuple(PodLoad(waiting, running) for _ in range(n))


KNOWN = ScalerMemory(last_load_at=1000.0, capacity_per_replica=10.0)


# ---------------------------------------------------------------- square-root headroom
@dataclass(frozen=True)
class HeadroomCase:
    name: str
    headroom: float
    pods: int
    running_each: float
    desired: int


# Replicas of 40, targetQueueDepth 1, tolerance 10 %: scale up when the slots exceed 44 per
# replica, sized at 41 per replica.
BIG = ScalerMemory(last_load_at=1000.0, capacity_per_replica=40.0)
HEADROOM = [
    # 80 in flight on 2 replicas: no headroom keeps 2; 80 + sqrt(80) = 88.9 slots need 3.
    HeadroomCase("none keeps full batches", 0.0, 2, 40.0, 2),
    HeadroomCase("sqrt(80) more slots", 1.0, 2, 40.0, 3),
    # 800 in flight: 800 + 4 * sqrt(800) = 913 slots: 23 replicas, 15 % more.
    HeadroomCase("relatively less at high load", 4.0, 20, 40.0, 23),
    # Light load: 3 in flight + sqrt(3) = 4.7 slots fit one replica.
    HeadroomCase("light load still one", 1.0, 1, 3.0, 1),
]


@pytest.mark.parametrize("case", HEADROOM, ids=[c.name for c in HEADROOM])
def test_square_root_headroom(case: HeadroomCase) -> None:
    d = decide(
        policy(burst_headroom=case.headroom, target_queue_depth=1),
        Observation(1000.0, case.pods, steady(case.pods, case.running_each)),
        BIG,
    )
    assert d.desired_replicas == case.desired, d.message


def test_headroom_shrinks_relative_to_load() -> None:
    ratios = []
    for n in (2, 8, 32):
        d = decide(
            policy(burst_headroom=2.0, max_replicas=100, target_queue_depth=1),
            Observation(1000.0, n, steady(n, 40.0)),
            BIG,
        )
        ratios.append(d.desired_replicas / n)
    # Full batches on 2, 8 and 32 replicas: +50 %, +12.5 %, then within the tolerance.
    assert ratios == [1.5, 1.125, 1.0]


# ---------------------------------------------------------------- arrival rate (Little)
def counted(now: float, per_pod: list[tuple[float, float, float]]) -> Observation:
    """Pods a, b, ... with (waiting, running, completed so far)."""
    names = tuple("abcdefgh"[i] for i in range(len(per_pod)))
    ready = tuple(PodLoad(w, r, completed=c) for w, r, c in per_pod)
    return Observation(now, len(per_pod), ready, names=names)


def test_while_a_replica_loads_the_arrival_rate_sizes_not_the_growing_queue() -> None:
    # 10 s ago both ready pods had finished 100 and 20 were in flight; now 150 each (10/s
    # done) and 40 in flight (+2/s): 12 requests/s arrive. A saturated replica completes
    # 5/s, so a request runs 10 / 5 = 2 s at full batch: 24 in flight at steady state, plus
    # the backlog of 20 drained over 60 s: 24.7 slots, which the 3 replicas on hand (one
    # loading) hold.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0)),
        counters_at=990.0,
        in_flight=20.0,
        replica_rate=5.0,
    )
    ready = counted(1000.0, [(10, 10, 150), (10, 10, 150)]).ready
    obs = Observation(1000.0, 3, ready, (StartingPod(20.0),), names=("a", "b"))
    d = decide(policy(burst_headroom=0.0), obs, memory)
    assert d.memory.arrival_rate == pytest.approx(12.0)
    assert (d.desired_replicas, d.reason) == (3, Reason.WITHIN_TOLERANCE), d.message
    # Sized on the queue (no counters), the growing backlog adds a fourth: 40 / 12.
    plain = Observation(1000.0, 3, steady(2, 10.0, 10.0), (StartingPod(20.0),))
    assert decide(policy(burst_headroom=0.0), plain, KNOWN).desired_replicas == 4


def test_without_loading_pods_the_queue_sizes_even_when_the_rate_says_more() -> None:
    # In flight rose from 0 to 20 in 10 s (a burst of clients): the rate (10/s x 2.5 s = 25)
    # says more than the 20 in flight, but only a loading fleet uses the rate.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0)),
        counters_at=990.0,
        in_flight=0.0,
    )
    obs = counted(1000.0, [(0, 10, 140), (0, 10, 140)])
    d = decide(policy(burst_headroom=0.0), obs, memory)
    assert d.memory.arrival_rate == pytest.approx(10.0)
    assert (d.desired_replicas, d.reason) == (2, Reason.WITHIN_TOLERANCE), d.message


def test_rates_need_every_pods_counter() -> None:
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0)),
        counters_at=990.0,
        in_flight=20.0,
        arrival_rate=6.0,
    )
    obs = Observation(
        1000.0,
        2,
        (PodLoad(0, 10, completed=120.0), PodLoad(0, 10)),
        names=("a", "b"),
    )
    d = decide(policy(), obs, memory)
    assert d.memory.arrival_rate is None and d.memory.counters_at is None


@dataclass(frozen=True)
class PodSetCase:
    name: str
    before: tuple[str, ...]  # pods whose counters the previous tick kept
    now: list[tuple[float, float, float]]  # pods a, b, ... now: (waiting, running, done)
    in_flight_before: float
    arrival_after: float


POD_SETS = [
    # Same pods: 10/s done, in flight 20 -> 40 over 10 s: 12/s, smoothed 6 -> 12 (alpha 2/3).
    PodSetCase("same pods measure", ("a", "b"), [(10, 10, 150), (10, 10, 150)], 20.0, 10.0),
    # A third pod became ready with 300 requests the router moved onto it (or that a lagging
    # scrape had shown as 0): that is no arrival; the estimate is kept, the reference reset.
    PodSetCase(
        "a new pod restarts", ("a", "b"), [(10, 10, 150), (10, 10, 150), (290, 10, 0)], 20.0, 6.0
    ),
    # The first pods after the routers held everything: the held requests moved onto them.
    PodSetCase("first pods after zero", (), [(400, 10, 0)], 400.0, 6.0),
    # A pod went away and handed its queue back: kept too.
    PodSetCase("a pod left", ("a", "b", "c"), [(40, 10, 150), (10, 10, 150)], 20.0, 6.0),
]


@pytest.mark.parametrize("case", POD_SETS, ids=lambda c: c.name)
def test_arrival_rate_restarts_when_the_pods_change(case: PodSetCase) -> None:
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=tuple((n, 100.0) for n in case.before),
        counters_at=990.0,
        in_flight=case.in_flight_before,
        arrival_rate=6.0,
        replica_rate=5.0,
    )
    d = decide(policy(), counted(1000.0, case.now), memory)
    assert d.memory.arrival_rate == pytest.approx(case.arrival_after)
    # Either way the next tick measures from here.
    assert d.memory.counters_at == 1000.0
    assert d.memory.in_flight == pytest.approx(sum(w + r for w, r, _ in case.now))


@dataclass(frozen=True)
class DrainCase:
    name: str
    waiting_each: float  # on each of the 6 ready pods (10 running each, c = 10)
    arrival_rate: float  # requests/s; a request runs 10 / 5 = 2 s in a full batch
    recommendation: int  # what the load asks for now
    remembered: int  # what the scale-down window keeps from this tick


DRAINS = [
    # 6 x 12 waiting is a backlog (over 2 per replica): 132 in flight + sqrt = 143.5 slots
    # ask for 12 replicas at 12 each, but the arrivals (20/s x 2 s = 40 in flight, + sqrt(40)
    # = 46.3) only for 5. The window remembers 5: drain replicas leave with the backlog.
    DrainCase("backlog: the arrivals are remembered", 12.0, 20.0, 12, 5),
    # 1 waiting each is no backlog: what the load asks for is remembered (66 + sqrt(66) =
    # 74.1 slots over 6 x 12: 7).
    DrainCase("no backlog: the load is remembered", 1.0, 20.0, 7, 7),
    # The same queue, but it stays (as many arrive as finish: closed-loop clients): that is
    # load, not a backlog draining, and the window remembers it all.
    DrainCase("a queue that stays is load", 12.0, 30.0, 12, 12),
    # The arrivals ask for more than the queue (60/s x 2 s = 120 + sqrt: 14): the queue's 12.
    DrainCase("the queue asks less", 12.0, 60.0, 12, 12),
]


@pytest.mark.parametrize("case", DRAINS, ids=lambda c: c.name)
def test_scale_down_window_remembers_what_the_arrivals_ask(case: DrainCase) -> None:
    # Each pod completes 5/s (30/s in all, the saturated replica rate stays 5); the in-flight
    # count falls or rises so that the arrival rate is the case's, as already smoothed.
    in_flight = 6 * (case.waiting_each + 10)
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=tuple((n, 100.0) for n in "abcdef"),
        counters_at=995.0,
        in_flight=in_flight - 5 * (case.arrival_rate - 30),
        arrival_rate=case.arrival_rate,
        replica_rate=5.0,
    )
    obs = counted(1000.0, [(case.waiting_each, 10.0, 125.0)] * 6)
    d = decide(policy(scale_down_window_seconds=300), obs, memory)
    assert d.memory.arrival_rate == pytest.approx(case.arrival_rate)
    assert d.recommendation == case.recommendation, d.message
    assert d.memory.recommendations[-1].replicas == case.remembered, d.message


@pytest.mark.parametrize(("was_draining", "remembered"), [(True, 7), (False, 12)])
def test_an_unchanged_count_keeps_the_last_draining_verdict(
    was_draining: bool, remembered: int
) -> None:
    # 6 pods with 12 waiting and 10 running each, exactly as many as at the last tick (a
    # 70B batch finishes in lumps: two samples 5 s apart can show the same count while its
    # backlog drains). The arrivals (30/s x 2 s = 60 + sqrt(60): 7 replicas) or the queue
    # (132 + sqrt(132) over 12 each: 12) is remembered as the last verdict said: a backlog
    # that was draining still is, a queue that stayed still does.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=tuple((n, 100.0) for n in "abcdef"),
        counters_at=995.0,
        in_flight=6 * 22.0,
        arrival_rate=30.0,
        replica_rate=5.0,
        draining=was_draining,
    )
    d = decide(
        policy(scale_down_window_seconds=300),
        counted(1000.0, [(12.0, 10.0, 125.0)] * 6),
        memory,
    )
    assert d.recommendation == 12, d.message
    assert d.memory.recommendations[-1].replicas == remembered, d.message
    assert d.memory.draining is was_draining


def test_drain_replicas_leave_when_the_backlog_is_gone() -> None:
    # 300 s window. At t=800, 8 replicas with 12 waiting each: the backlog asks for more
    # (capped by max 8 here), the arrivals (20/s) for 5. At t=1000 the backlog is gone and
    # 40 run: 8 -> 5 at once, not held at 8 for the rest of the window.
    p = policy(scale_down_window_seconds=300, max_replicas=8)
    first = decide(
        p,
        counted(800.0, [(12.0, 10.0, 1000.0)] * 8),
        ScalerMemory(
            last_load_at=790.0,
            capacity_per_replica=10.0,
            counters=tuple((n, 1000.0 - 5 * 4.0) for n in "abcdefgh"),
            counters_at=795.0,
            in_flight=8 * 22.0 - 5 * (20.0 - 32.0),
            arrival_rate=20.0,
            replica_rate=5.0,
        ),
    )
    assert first.memory.arrival_rate == pytest.approx(20.0)
    assert first.desired_replicas == 8, first.message
    # 200 s later: 40 in flight (was 176), each pod completed 517 more: 20.68 - 0.68 = 20/s.
    later = decide(p, counted(1000.0, [(0.0, 5.0, 1517.0)] * 8), first.memory)
    assert later.memory.arrival_rate == pytest.approx(20.0)
    assert later.desired_replicas == 5, later.message
    # Without counters (queue-only sizing) the window holds the backlog's recommendation.
    plain = decide(p, Observation(800.0, 8, steady(8, 10.0, 12.0)), KNOWN)
    held = decide(p, Observation(1000.0, 8, steady(8, 5.0)), plain.memory)
    assert held.desired_replicas == 8, held.message


def test_saturated_replica_rate_ignores_a_pod_on_its_first_batch() -> None:
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 0.0)),
        counters_at=990.0,
        in_flight=20.0,
    )
    # b just became ready: it has a queue but finished nothing yet.
    obs = counted(1000.0, [(3, 10, 130), (3, 10, 0)])
    d = decide(policy(), obs, memory)
    assert d.memory.replica_rate == pytest.approx(3.0)


def test_replica_rate_is_learned_from_full_batches_only() -> None:
    # Both pods have a queue, but b runs 8 of 10 (uneven KV reservations): it completes
    # fewer per second, and counting it would make every arrival look heavier.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0)),
        counters_at=990.0,
        in_flight=24.0,
    )
    obs = counted(1000.0, [(3, 10, 130), (3, 8, 120)])
    d = decide(policy(), obs, memory)
    assert d.memory.replica_rate == pytest.approx(3.0)


@pytest.mark.parametrize(("per_second", "after"), [(6.0, 4.2), (2.0, 3.8)])
def test_replica_rate_is_smoothed_the_same_way_up_and_down(per_second: float, after: float) -> None:
    # A saturated pod with a full batch completed `per_second` over 12 s; the rate learned so
    # far is 4/s: a tenth of the way (12 s of 120 s) towards it, whether higher or lower.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0),),
        counters_at=988.0,
        in_flight=13.0,
        replica_rate=4.0,
    )
    obs = counted(1000.0, [(3, 10, 100.0 + 12 * per_second)])
    d = decide(policy(), obs, memory)
    assert d.memory.replica_rate == pytest.approx(after)


# ---------------------------------------------------------------- re-adding after a decrease
@dataclass(frozen=True)
class ReaddCase:
    name: str
    waiting_each: float  # on each of the 2 ready pods (10 running each, c = 10)
    sustained: float  # requests/s, as smoothed so far (and what arrives this tick)
    down_rate: float | None  # the sustained rate at the last decrease (None: none since)
    desired: int


# c = 10, a saturated replica completes 1/s: a request runs 10 s in a full batch. 2 replicas,
# burstHeadroom 1, targetQueueDepth 2: scale-up trigger 2 x 12 = 24 slots. 1 waiting each:
# 22 in flight + sqrt(22) = 26.7 slots cross it.
READDS = [
    # A peak after a decrease: the sustained arrivals (1.2/s x 10 s = 12, + backlog 2 x 10 /
    # 60 s = 12.3 in flight) fit the 2 replicas' 20, and 2 waiting drain by themselves.
    ReaddCase("a peak after a decrease is held", 1.0, 1.2, 1.2, 2),
    # The same peak with no decrease since the last change: the queue rule scales up.
    ReaddCase("no decrease before: up", 1.0, 1.2, None, 3),
    # The sustained rate rose by more than the tolerance and its own noise since the
    # decrease (0.9/s x 1.1 + 2 x sqrt(0.9 / 240) = 1.11/s): up.
    ReaddCase("rising load is never held", 1.0, 1.2, 0.9, 3),
    # 1.05 -> 1.2/s is past the tolerance (1.155) but within two standard deviations of a
    # rate smoothed over 120 s (+0.13/s at 1.05/s): chance, not a rise; held.
    ReaddCase("a rise within the rate's noise is held", 1.0, 1.2, 1.05, 2),
    # More than half the replicas' batches wait (12 > 10): up.
    ReaddCase("a long queue is not a peak", 6.0, 1.2, 1.2, 4),
    # The sustained arrivals need more than the replicas hold (2.1/s: 21 + 0.3): up.
    ReaddCase("sustained arrivals that do not fit", 1.0, 2.1, 2.1, 3),
    # 1.9/s (19.3 in flight) still fit: held (the peak itself is what headroom is for).
    ReaddCase("sustained arrivals fit without headroom", 1.0, 1.9, 1.9, 2),
]


@pytest.mark.parametrize("case", READDS, ids=lambda c: c.name)
def test_a_replica_taken_by_a_decrease_comes_back_only_for_sustained_load(
    case: ReaddCase,
) -> None:
    in_flight = 2 * (case.waiting_each + 10.0)
    # 5 s ago the same requests were in flight and each pod finished sustained x 5 / 2 since.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0)),
        counters_at=995.0,
        in_flight=in_flight,
        arrival_rate=case.sustained,
        sustained_rate=case.sustained,
        replica_rate=1.0,
        down_rate=case.down_rate,
    )
    done = 100.0 + case.sustained * 5 / 2
    obs = counted(1000.0, [(case.waiting_each, 10.0, done)] * 2)
    d = decide(policy(burst_headroom=1.0), obs, memory)
    assert d.memory.sustained_rate == pytest.approx(case.sustained)
    assert d.desired_replicas == case.desired, d.message
    held = d.desired_replicas == 2
    assert (d.reason == Reason.PEAK_AFTER_SCALE_DOWN) == held, d.reason


# ---------------------------------------------------------------- scale-down on a rising load
@dataclass(frozen=True)
class TrendCase:
    name: str
    trend: tuple[tuple[float, float], ...]  # (time, sustained rate) remembered before now
    desired: int


# 3 replicas of c = 10 running 5 each (a dip): 15 + sqrt(15) = 18.9 slots fit 2. The
# sustained rate now is 1.0/s; the scale-down window is 300 s.
TRENDS = [
    TrendCase("flat load: down", ((700.0, 1.0), (850.0, 1.0)), 2),
    # 0.8 -> 0.9 -> 1.0/s: risen beyond 2 x sqrt(0.8 / 240) = 0.115/s, half of it lately.
    TrendCase("rising ramp: held", ((700.0, 0.8), (850.0, 0.9)), 3),
    # 0.5 -> 0.95 -> 1.0/s: the smoothed rate settling after a step (0.05 of the 0.5 rise
    # in the later half): down.
    TrendCase("settling after a step: down", ((700.0, 0.5), (850.0, 0.95)), 2),
    # 0.92 -> 1.0/s is within two standard deviations of the rate's noise (0.124/s): down.
    TrendCase("a rise within the noise: down", ((700.0, 0.92), (850.0, 0.96)), 2),
    # Samples over 100 s only (less than half the window): not a trend yet, down.
    TrendCase("too short a history: down", ((900.0, 0.8), (950.0, 0.9)), 2),
    # The rise began more than a window ago; the window's own samples are flat: down.
    TrendCase("older samples are forgotten", ((600.0, 0.5), (700.0, 1.0), (850.0, 1.0)), 2),
]


@pytest.mark.parametrize("case", TRENDS, ids=lambda c: c.name)
def test_no_scale_down_while_the_sustained_arrivals_rise(case: TrendCase) -> None:
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0), ("b", 100.0), ("c", 100.0)),
        counters_at=995.0,
        in_flight=15.0,
        arrival_rate=1.0,
        sustained_rate=1.0,
        replica_rate=1.0,
        trend=case.trend,
    )
    obs = counted(1000.0, [(0.0, 5.0, 100.0 + 1.0 * 5 / 3)] * 3)
    d = decide(policy(scale_down_window_seconds=300), obs, memory)
    assert d.memory.sustained_rate == pytest.approx(1.0)
    assert d.desired_replicas == case.desired, d.message
    held = case.desired == 3
    assert (d.reason == Reason.STABILIZING_DOWN) == held, d.reason
    assert ("arrivals rising" in d.message) == held, d.message
    # The window's samples are kept for the next tick, this one's last.
    kept = tuple(t for t in case.trend if 1000.0 - t[0] <= 300)
    assert d.memory.trend[:-1] == kept
    assert d.memory.trend[-1] == pytest.approx((1000.0, 1.0))


@pytest.mark.parametrize(
    ("rate", "risen_above"),
    [
        # tolerance 10 % plus 2 x sqrt(rate / 240): the noise matters at a few requests/s
        # (70B: 2/s -> +9 % more) and hardly at a hundred (+1.3 %).
        (2.0, 2.0 * 1.1 + 2 * (2.0 / 240) ** 0.5),
        (100.0, 110.0 + 2 * (100.0 / 240) ** 0.5),
        (0.0, 0.0),
    ],
)
def test_a_rise_counts_beyond_the_tolerance_and_the_noise(rate: float, risen_above: float) -> None:
    assert rate_risen_above(rate, 0.1) == pytest.approx(risen_above)


def test_held_requests_landing_on_the_first_pod_are_not_arrivals() -> None:
    # 118 requests held by routers (no pod ready), arriving at 0.74/s. The first pod becomes
    # ready; its first two scrapes predate the held requests reaching it (empty), the third
    # shows them. They were in flight all along: the rate stays near 0.74/s (the 4 more in
    # 10 s: 0.4/s), where counting them as arrivals made it 8.5/s and woke six 70B replicas.
    memory = ScalerMemory(
        last_load_at=1000.0,
        capacity_per_replica=22.0,
        counters_at=1000.0,
        in_flight=118.0,
        arrival_rate=0.74,
        replica_rate=1.3,
    )
    p = policy(min_replicas=0, max_scale_up_step=4)
    empty = [(0.0, 0.0, 0.0)]
    first = decide(p, counted(1005.0, empty), memory)
    assert first.memory.in_flight == pytest.approx(118.0)
    second = decide(p, counted(1010.0, empty), first.memory)
    assert second.memory.counters_at == 1005.0  # the reference point stays
    assert second.memory.arrival_rate == pytest.approx(0.74)
    third = decide(p, counted(1015.0, [(110.0, 12.0, 0.0)]), second.memory)
    assert third.memory.arrival_rate == pytest.approx(0.74 + 10 / 15 * (0.4 - 0.74))
    assert third.memory.in_flight == pytest.approx(122.0)


@pytest.mark.parametrize(("since", "reference_at"), [(10.0, 990.0), (40.0, 1000.0)])
def test_requests_missing_for_longer_than_metrics_lag_are_gone(
    since: float, reference_at: float
) -> None:
    # 50 in flight at the reference point, 10 now and nothing finished: 40 requests the
    # metrics do not show. For up to 30 s that is lag (the reference point stays); after
    # that they are gone (an engine crashed): the count is the new reference, and the rate
    # estimate is kept either way rather than read as -4/s or frozen.
    memory = ScalerMemory(
        last_load_at=990.0,
        capacity_per_replica=10.0,
        counters=(("a", 100.0),),
        counters_at=1000.0 - since,
        in_flight=50.0,
        arrival_rate=2.0,
    )
    d = decide(policy(), counted(1000.0, [(0.0, 10.0, 100.0)]), memory)
    assert d.memory.counters_at == reference_at
    assert d.memory.in_flight == (50.0 if reference_at < 1000.0 else 10.0)
    assert d.memory.arrival_rate == pytest.approx(2.0)


def test_the_rate_at_a_decrease_is_kept_until_replicas_are_added() -> None:
    p = policy(burst_headroom=0.0)
    memory = ScalerMemory(last_load_at=990.0, capacity_per_replica=10.0, sustained_rate=4.0)
    # Without counters the sustained rate stays as it was: 4/s.
    down = decide(p, Observation(1000.0, 3, steady(3, 5.0)), memory)
    assert down.desired_replicas == 2 and down.memory.down_rate == pytest.approx(4.0)
    held = decide(p, Observation(1005.0, 2, steady(2, 9.0)), down.memory)
    assert held.desired_replicas == 2 and held.memory.down_rate == pytest.approx(4.0)
    up = decide(p, Observation(1010.0, 2, steady(2, 10.0, 5.0)), held.memory)
    assert up.desired_replicas == 3 and up.memory.down_rate is None


# ---------------------------------------------------------------- KV cache learns upwards
@pytest.mark.parametrize(
    ("load", "before", "after"),
    [
        # 20 running fill 40 % of the cache: 50 would fit, 47.5 after the usable cut.
        (PodLoad(0, 20, kv_cache_usage=0.4), 24.0, 47.5),
        # Within the tolerance of what is known: kept.
        (PodLoad(0, 20, kv_cache_usage=0.76), 24.0, 24.0),
        # Too little of the cache in use to say anything.
        (PodLoad(0, 1, kv_cache_usage=0.02), 24.0, 24.0),
        # Nothing known yet: the estimate is the first capacity.
        (PodLoad(0, 6, kv_cache_usage=0.3), None, 19.0),
        # A queue says the real limit is lower than the cache suggests: saturation wins.
        (PodLoad(4, 30, kv_cache_usage=0.5), None, 30.0),
    ],
)
def test_capacity_from_kv_headroom(load: PodLoad, before: float | None, after: float) -> None:
    memory = ScalerMemory(last_load_at=1000.0, capacity_per_replica=before)
    d = decide(policy(), Observation(1000.0, 1, (load,)), memory)
    assert d.memory.capacity_per_replica == pytest.approx(after)


@pytest.mark.parametrize(
    ("load", "rate_after"),
    [
        # Requests got shorter: twice as many fit, each still runs as long in a batch, so a
        # replica completes 2 x 47.5 / 24 = 3.96/s until a full batch of them is measured.
        (PodLoad(0, 20, kv_cache_usage=0.4), 2.0 * 47.5 / 24.0),
        # `c` within the tolerance: the measured rate stands.
        (PodLoad(0, 20, kv_cache_usage=0.76), 2.0),
    ],
)
def test_a_changed_capacity_scales_the_replica_rate(load: PodLoad, rate_after: float) -> None:
    memory = ScalerMemory(last_load_at=1000.0, capacity_per_replica=24.0, replica_rate=2.0)
    d = decide(policy(), Observation(1000.0, 1, (load,)), memory)
    assert d.memory.replica_rate == pytest.approx(rate_after)


# ---------------------------------------------------------------- hold from the cold start
@pytest.mark.parametrize(
    ("explicit", "cold_start", "window"),
    [
        (None, None, HOLD_DEFAULT_SECONDS),
        (None, 45.0, 300.0),  # never shorter than 5 minutes (bursts return within that)
        (None, 200.0, 400.0),
        (None, 300.0, 600.0),
        (None, 900.0, 600.0),  # never longer than ten minutes
        (120, 300.0, 120.0),  # an explicit window wins
    ],
)
def test_scale_down_window_follows_the_cold_start(
    explicit: int | None, cold_start: float | None, window: float
) -> None:
    assert scale_down_window(policy(scale_down_window_seconds=explicit), cold_start) == window


def test_a_fast_starting_expert_scales_down_sooner() -> None:
    history = (Recommendation(600.0, 4),)  # 400 s ago 4 were needed
    obs = Observation(1000.0, 4, steady(4, 1.0))
    fast = ScalerMemory(history, 1000.0, 10.0, cold_start_seconds=45.0)
    slow = ScalerMemory(history, 1000.0, 10.0, cold_start_seconds=300.0)
    auto = policy(scale_down_window_seconds=None, burst_headroom=0.0)
    assert decide(auto, obs, fast).desired_replicas == 1
    d = decide(auto, obs, slow)
    assert (d.desired_replicas, d.reason) == (4, Reason.STABILIZING_DOWN)


@pytest.mark.parametrize(
    ("starting", "before", "after"),
    [
        ((StartingPod(40.0), StartingPod(12.0)), None, 40.0),
        ((StartingPod(40.0),), 90.0, 90.0),  # the longest seen is kept
        ((StartingPod(200.0, scheduled=False),), None, None),  # pending: no GPU yet
        ((StartingPod(5000.0),), 90.0, 90.0),  # stuck, not slow
        ((StartingPod(30.0, ever_served=True),), None, None),  # restarting, not loading
    ],
)
def test_cold_start_is_learned_from_loading_pods(
    starting: tuple[StartingPod, ...], before: float | None, after: float | None
) -> None:
    memory = ScalerMemory(last_load_at=1000.0, capacity_per_replica=10.0, cold_start_seconds=before)
    obs = Observation(1000.0, 2 + len(starting), steady(2, 5.0), starting)
    assert decide(policy(), obs, memory).memory.cold_start_seconds == after


# ---------------------------------------------------------------- stale metrics
@pytest.mark.parametrize(
    ("unreadable_for", "desired", "reason"),
    [
        (0.0, 4, Reason.METRICS_UNAVAILABLE),  # just failed: assumed busy, no scale-down
        (59.0, 4, Reason.METRICS_UNAVAILABLE),
        (60.0, 1, Reason.LOAD_BELOW_CAPACITY),  # stale: no longer holds scale-down
    ],
)
def test_unreadable_pod_holds_scale_down_only_until_stale(
    unreadable_for: float, desired: int, reason: Reason
) -> None:
    now = 1000.0
    memory = ScalerMemory(
        last_load_at=now, capacity_per_replica=10.0, unreadable_since=(("d", now - unreadable_for),)
    )
    obs = Observation(now, 4, (*steady(3, 1.0), None), names=("a", "b", "c", "d"))
    d = decide(policy(stale_metrics_seconds=60, burst_headroom=0.0), obs, memory)
    assert (d.desired_replicas, d.reason) == (desired, reason), d.message
    assert d.memory.unreadable_since == (("d", now - unreadable_for),)


def test_a_readable_pod_is_forgotten_as_unreadable() -> None:
    memory = ScalerMemory(last_load_at=1000.0, unreadable_since=(("d", 900.0),))
    obs = Observation(1000.0, 2, steady(2, 1.0), names=("a", "d"))
    assert decide(policy(), obs, memory).memory.unreadable_since == ()


def test_stale_pods_no_longer_block_scale_to_zero() -> None:
    zero = policy(min_replicas=0, scale_to_zero_after_seconds=600, burst_headroom=0.0)
    obs = Observation(5000.0, 1, (None,), names=("a",))
    # Every pod unreadable: nothing is known, the expert holds (MetricsUnavailable).
    held = decide(zero, obs, ScalerMemory(last_load_at=1000.0, unreadable_since=(("a", 0.0),)))
    assert held.reason is Reason.METRICS_UNAVAILABLE
    # One idle readable pod and one stale: idle long enough, so to zero.
    two = Observation(5000.0, 2, (PodLoad(0, 0), None), names=("a", "b"))
    memory = ScalerMemory(last_load_at=1000.0, unreadable_since=(("b", 4000.0),))
    assert decide(zero, two, memory).desired_replicas == 0


def test_invalid_new_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        ScalingPolicy(burst_headroom=-1)
    with pytest.raises(ValueError):
        ScalingPolicy(stale_metrics_seconds=-1)
    assert math.isclose(ScalingPolicy().burst_headroom, 1.0)
