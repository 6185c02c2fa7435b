"""The scaling decision for one ModelExpert: a pure function of policy, observation and memory.

Nothing here does I/O or reads a clock, so every branch is table- and property-testable and the
benchmark (`bench/autoscale_sim.py`) runs this exact code.

How replicas are sized (see docs/autoscaling.md):
- A pod that has a queue is saturated, so its running count is what one replica can hold (its
  effective batch capacity `c`, remembered across ticks).
- Scale up when the in-flight load (waiting + running) exceeds what the replicas on hand (ready
  and still starting) hold with `targetQueueDepth` waiting each: desired = ceil(load / (c + T)).
- Scale down to the replicas that run all in-flight requests with no queue:
  desired = ceil(load / c). The gap between c and c + T is the hysteresis that stops flapping.
- A lower capacity is believed only after it has been seen for `CAPACITY_CONFIRM_SECONDS`: one
  stray sample would otherwise keep too many replicas forever (each then runs less than the
  wrong `c`, so nothing would correct it).
- Decreases are further held by the scale-down window (the highest recommendation in it wins,
  as in the HPA); increases are immediate but capped per step.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

# Ceil of float ratios without turning 3.0000000001 into 4.
_EPSILON = 1e-9
# A saturated running count below the learned capacity must persist this long to replace it.
CAPACITY_CONFIRM_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The autoscaling part of a ModelExpert spec (integers only, as in the CRD)."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_depth: int = 2
    tolerance_percent: int = 10
    max_scale_up_step: int = 4
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = 300
    scale_to_zero_after_seconds: int = 600
    # Routers re-send demand every few seconds while they hold requests; older is stale.
    demand_ttl_seconds: int = 30
    # Requests one replica runs at once, from a load test: the capacity assumed until a
    # saturated replica shows the real one (spec.autoscaling.capacityHint).
    capacity_hint: int | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.capacity_hint is not None and self.capacity_hint < 1:
            raise ValueError("capacity_hint must be >= 1")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError("max_replicas must be >= max(1, min_replicas)")
        if self.target_queue_depth < 1:
            raise ValueError("target_queue_depth must be >= 1")
        if not 0 <= self.tolerance_percent < 100:
            raise ValueError("tolerance_percent must be in [0, 100)")
        if self.max_scale_up_step < 1:
            raise ValueError("max_scale_up_step must be >= 1")
        for name in (
            "scale_up_window_seconds",
            "scale_down_window_seconds",
            "scale_to_zero_after_seconds",
            "demand_ttl_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class PodLoad:
    """Requests on one ready pod at scrape time, and its KV cache in use (0..1) if exposed."""

    waiting: float
    running: float
    kv_cache_usage: float | None = None


@dataclass(frozen=True, slots=True)
class StartingPod:
    """A pod that is not ready: scheduled and loading a model, or still pending."""

    age_seconds: float
    scheduled: bool = True
    ever_served: bool = False


@dataclass(frozen=True, slots=True)
class Demand:
    """The latest demand a router reported for this expert (requests it holds)."""

    at: float
    waiting: int


@dataclass(frozen=True, slots=True)
class Observation:
    """What the loop saw this tick. `ready` has one entry per ready pod; None = scrape failed."""

    now: float
    current_replicas: int
    ready: tuple[PodLoad | None, ...] = ()
    starting: tuple[StartingPod, ...] = ()
    demand: Demand | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScalerMemory:
    """State carried from one decision to the next for one expert (kept by the caller).

    `last_load_at` is the last time there was load or demand (None: not known yet).
    `capacity_per_replica` is the learned running count of a saturated replica.
    `lower_capacity_since` is when saturated pods started to run fewer than that (unconfirmed).
    """

    recommendations: tuple[Recommendation, ...] = ()
    last_load_at: float | None = None
    capacity_per_replica: float | None = None
    lower_capacity_since: float | None = None


class Reason(enum.StrEnum):
    QUEUE_ABOVE_TARGET = "QueueAboveTarget"
    LOAD_BELOW_CAPACITY = "LoadBelowCapacity"
    WITHIN_TOLERANCE = "WithinTolerance"
    STABILIZING_DOWN = "StabilizingDown"
    STABILIZING_UP = "StabilizingUp"
    SCALE_UP_LIMITED = "ScaleUpLimited"
    AT_MAX = "AtMax"
    AT_MIN = "AtMin"
    SCALED_TO_ZERO = "ScaledToZero"
    WOKEN_BY_DEMAND = "WokenByDemand"
    IDLE = "Idle"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    WAITING_FOR_STARTING_PODS = "WaitingForStartingPods"


@dataclass(frozen=True, slots=True)
class Decision:
    desired_replicas: int
    reason: Reason
    message: str
    memory: ScalerMemory
    # Observed totals (router-held requests included while no pod is ready), for status.
    queue_depth: float
    running: float
    # What the load alone asked for, before windows, step and bounds.
    recommendation: int


@dataclass(frozen=True, slots=True)
class _Load:
    waiting: float
    running: float
    sampled: int
    failed: int

    @property
    def in_flight(self) -> float:
        return self.waiting + self.running


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPSILON))


def _measure(obs: Observation, policy: ScalingPolicy) -> _Load:
    samples = [s for s in obs.ready if s is not None]
    waiting = sum(s.waiting for s in samples)
    running = sum(s.running for s in samples)
    failed = len(obs.ready) - len(samples)
    if samples and failed:
        # Pods we could not scrape are assumed as busy as those we could, never idle.
        scale = len(obs.ready) / len(samples)
        waiting, running = waiting * scale, running * scale
    if not obs.ready and _demand_is_fresh(obs, policy):
        # With no pod serving, the requests routers hold are the queue.
        assert obs.demand is not None
        waiting += obs.demand.waiting
    return _Load(waiting=waiting, running=running, sampled=len(samples), failed=failed)


def _demand_is_fresh(obs: Observation, policy: ScalingPolicy) -> bool:
    d = obs.demand
    return d is not None and d.waiting > 0 and obs.now - d.at <= policy.demand_ttl_seconds


def _learn_capacity(
    obs: Observation, previous: float | None, lower_since: float | None
) -> tuple[float | None, float | None]:
    """A pod with a queue runs as many requests as it can: that is a replica's capacity.

    Returns the capacity and since when a lower, not yet confirmed one has been seen.
    """
    samples = [s for s in obs.ready if s is not None]
    saturated = [s.running for s in samples if s.waiting >= 1 and s.running > 0]
    if saturated:
        seen = sum(saturated) / len(saturated)
        if previous is None or seen >= previous:
            return seen, None
        # Capacity moves with prompt/output lengths, so a lower one is adopted, but only once
        # it persists: a request caught between two engine steps, or a sample taken before
        # a new replica got its share, looks the same for a moment.
        since = obs.now if lower_since is None else lower_since
        if obs.now - since >= CAPACITY_CONFIRM_SECONDS:
            return seen, None
        return previous, since
    busiest = max((s.running for s in samples), default=0.0)
    if busiest > 0 and (previous is None or busiest > previous):
        # A pod proved it holds this many; never assume less than that.
        return busiest, None
    return previous, None


def _recommend(
    policy: ScalingPolicy, load: _Load, on_hand: int, capacity: float | None
) -> tuple[int, Reason, str]:
    """Replicas the current load asks for, ignoring windows, step and bounds."""
    tol = policy.tolerance_percent / 100
    target = policy.target_queue_depth
    if load.in_flight <= 0:
        return 0, Reason.IDLE, "no waiting or running requests"
    if capacity is None:
        # Nothing has ever run, so a replica's capacity is unknown: add one at a time.
        if on_hand == 0 or load.waiting > target * on_hand * (1 + tol):
            return (
                on_hand + 1,
                Reason.QUEUE_ABOVE_TARGET,
                (f"{load.waiting:g} waiting on {on_hand} replicas, capacity not known yet"),
            )
        return on_hand, Reason.WITHIN_TOLERANCE, "capacity not known yet; holding"
    up = load.in_flight / (capacity + target)
    if up > on_hand + _EPSILON:
        # More than `targetQueueDepth` waiting per replica on top of full batches.
        return (
            _ceil(up),
            Reason.QUEUE_ABOVE_TARGET,
            (
                f"{load.waiting:g} waiting and {load.running:g} running need {_ceil(up)} replicas "
                f"at {capacity:g} running + {target} waiting each"
            ),
        )
    # Fewer replicas run every in-flight request with no queue. A change smaller than the
    # tolerance is ignored (as in the HPA); the queue target above is the hysteresis.
    down = load.in_flight / capacity
    if _ceil(down) < on_hand and load.in_flight < on_hand * capacity * (1 - tol):
        return (
            max(1, _ceil(down)),
            Reason.LOAD_BELOW_CAPACITY,
            (f"{load.in_flight:g} in flight fit in {max(1, _ceil(down))} replicas of {capacity:g}"),
        )
    return (
        on_hand,
        Reason.WITHIN_TOLERANCE,
        (f"{load.waiting:g} waiting and {load.running:g} running on {on_hand} replicas"),
    )


def remembered(memory: ScalerMemory, capacity_in_status: float | None) -> ScalerMemory:
    """The memory to decide with: a capacity learned before an operator restart (kept in the
    expert's status) is used until a saturated replica shows the current one."""
    if memory.capacity_per_replica is not None or not capacity_in_status:
        return memory
    return dataclasses.replace(memory, capacity_per_replica=float(capacity_in_status))


def decide(policy: ScalingPolicy, obs: Observation, memory: ScalerMemory) -> Decision:
    """Desired replicas for one expert now, with the reason and the memory for next time."""
    now = obs.now
    current = obs.current_replicas
    load = _measure(obs, policy)
    demand_fresh = _demand_is_fresh(obs, policy)
    known = memory.capacity_per_replica
    if known is None and policy.capacity_hint is not None:
        known = float(policy.capacity_hint)  # until measured; a saturated replica corrects it
    capacity, lower_since = _learn_capacity(obs, known, memory.lower_capacity_since)

    busy = load.in_flight > 0 or demand_fresh or load.failed > 0
    # Unknown history (e.g. operator restart): assume load just now, so idleness is
    # measured from here and a restart never scales an expert straight to zero.
    last_load_at = now if busy or memory.last_load_at is None else memory.last_load_at

    # Replicas already on their way count as capacity: no second wave while a model loads.
    on_hand = max(current, len(obs.ready) + len(obs.starting))
    all_failed = bool(obs.ready) and load.sampled == 0

    if all_failed:
        raw, reason, message = (
            current,
            Reason.METRICS_UNAVAILABLE,
            (f"no metrics from any of {len(obs.ready)} ready pods; holding"),
        )
    else:
        raw, reason, message = _recommend(policy, load, on_hand, capacity)
        if on_hand == 0 and demand_fresh:
            raw = max(raw, 1)
            reason, message = (
                Reason.WOKEN_BY_DEMAND,
                (f"routers hold {obs.demand.waiting if obs.demand else 0} requests"),
            )

    idle_for = now - last_load_at
    to_zero = (
        policy.min_replicas == 0
        and not busy
        and not all_failed
        and idle_for >= policy.scale_to_zero_after_seconds
    )
    stays_at_zero = policy.min_replicas == 0 and current == 0 and on_hand == 0 and not busy
    if stays_at_zero:
        # Already at zero with nothing asking for it: nothing to wake.
        to_zero = True
    elif raw == 0 and not to_zero:
        # Idle but not long enough (or min > 0): the smallest warm size.
        raw = max(1, policy.min_replicas)

    history = _remember(memory.recommendations, Recommendation(now, raw), policy, now)
    if to_zero:
        # The idle timer is this decision's own stabilization window.
        desired, reason = 0, Reason.SCALED_TO_ZERO
        message = "no demand" if stays_at_zero else f"idle for {idle_for:g}s"
    else:
        desired, reason, message = _stabilize(policy, history, current, raw, reason, message)
        if on_hand == 0 and demand_fresh and desired < raw:
            # Requests are held right now: waking is never delayed by the scale-up window.
            desired, reason, message = (
                raw,
                Reason.WOKEN_BY_DEMAND,
                (f"routers hold {obs.demand.waiting if obs.demand else 0} requests"),
            )
        if load.failed and desired < current:
            desired, reason, message = (
                current,
                Reason.METRICS_UNAVAILABLE,
                (f"{load.failed} of {len(obs.ready)} scrapes failed; not scaling down"),
            )

    desired, reason, message = _bound(policy, current, desired, reason, message)
    desired, reason, message = _protect_starting(obs, current, desired, reason, message)

    return Decision(
        desired_replicas=desired,
        reason=reason,
        message=message,
        memory=ScalerMemory(history, last_load_at, capacity, lower_since),
        queue_depth=load.waiting,
        running=load.running,
        recommendation=raw,
    )


def _remember(
    history: tuple[Recommendation, ...],
    latest: Recommendation,
    policy: ScalingPolicy,
    now: float,
) -> tuple[Recommendation, ...]:
    keep = max(policy.scale_up_window_seconds, policy.scale_down_window_seconds)
    return (*(r for r in history if now - r.at <= keep and r.at <= now), latest)


def _stabilize(
    policy: ScalingPolicy,
    history: tuple[Recommendation, ...],
    current: int,
    raw: int,
    reason: Reason,
    message: str,
) -> tuple[int, Reason, str]:
    """HPA-style: rise to the lowest recent recommendation, fall to the highest one."""
    now = history[-1].at
    up = min(r.replicas for r in history if now - r.at <= policy.scale_up_window_seconds)
    down = max(r.replicas for r in history if now - r.at <= policy.scale_down_window_seconds)
    if current < up:
        return up, reason, message
    if current > down:
        return down, reason, message
    if raw < current:
        return (
            current,
            Reason.STABILIZING_DOWN,
            (
                f"load asks for {raw}; holding {current} for the "
                f"{policy.scale_down_window_seconds}s scale-down window"
            ),
        )
    if raw > current:
        return (
            current,
            Reason.STABILIZING_UP,
            (
                f"load asks for {raw}; waiting for the {policy.scale_up_window_seconds}s "
                "scale-up window"
            ),
        )
    return current, reason, message


def _bound(
    policy: ScalingPolicy, current: int, desired: int, reason: Reason, message: str
) -> tuple[int, Reason, str]:
    if desired > current + policy.max_scale_up_step:
        desired = current + policy.max_scale_up_step
        reason, message = (
            Reason.SCALE_UP_LIMITED,
            (f"{message}; limited to +{policy.max_scale_up_step} per step"),
        )
    if desired > policy.max_replicas:
        return policy.max_replicas, Reason.AT_MAX, f"{message}; capped at max {policy.max_replicas}"
    if 0 < desired < policy.min_replicas or (desired == 0 and policy.min_replicas > 0):
        return policy.min_replicas, Reason.AT_MIN, f"{message}; raised to min {policy.min_replicas}"
    return desired, reason, message


def _protect_starting(
    obs: Observation, current: int, desired: int, reason: Reason, message: str
) -> tuple[int, Reason, str]:
    """Never scale away a pod that is loading its model and has not served yet.

    A ReplicaSet removes not-ready pods first, so any decrease below ready + loading would
    kill a loading pod; pending (unscheduled) pods hold no GPU and may go.
    """
    loading = sum(1 for p in obs.starting if p.scheduled and not p.ever_served)
    floor = min(current, len(obs.ready) + loading)
    if loading and desired < floor:
        return (
            floor,
            Reason.WAITING_FOR_STARTING_PODS,
            (f"{message}; keeping {loading} pods that are still loading"),
        )
    return desired, reason, message
