"""The scaling decision for one ModelExpert: a pure function of policy, observation and memory.

Nothing here does I/O or reads a clock, so every branch is table- and property-testable and the
benchmark (`bench/autoscale_sim.py`) runs this exact code.

How replicas are sized (see docs/autoscaling.md):
- A replica's capacity `c` (requests it runs at once) is learned: a pod with a queue runs as
  many as it can; an unsaturated pod's KV cache in use tells how many more would fit (so `c`
  also grows when requests get shorter). A lower `c` is believed only once it persists for
  `CAPACITY_CONFIRM_SECONDS`. When `c` moves by more than the tolerance, a replica's
  completion rate moves with it (a request's time in a batch is assumed unchanged until a
  full batch of the new requests is measured).
- The load to carry is the arrival rate, by Little's law: requests in flight at full batches
  = arrival rate x service time. The arrival rate is the pods' completion counters plus the
  change of requests in flight (requests leave only by finishing: a larger fall is metrics
  that do not show them yet, e.g. routers' held requests on a pod scraped before they came);
  the service time at full batches is `c` over the completion rate of a saturated replica
  (learned). A waiting backlog adds what drains it within a cold start. Without counters,
  the requests in flight (waiting + running) are the load.
- Headroom is square-root staffing: slots = load + burstHeadroom * sqrt(load), which is
  relatively less as load grows (Poisson bursts grow with the square root of the rate).
- Scale up when the slots exceed what the replicas on hand (ready and starting) hold with
  `targetQueueDepth` waiting each: desired = ceil(slots / (c + T)); scale down to
  ceil(slots / c). The gap between c and c + T is the hysteresis that stops flapping.
- After a decrease, the replica comes back on a peak of the requests in flight only if the
  sustained arrival rate rose (beyond the tolerance and its own Poisson noise), does not fit
  the replicas, or the queue is long: a fuller batch runs slower, so fewer replicas run nearly
  full and every Poisson peak crosses the trigger.
- Decreases are held by the scale-down window (the highest recommendation in it wins, as in
  the HPA); without an explicit window it is derived from the expert's own cold start, learned
  from how long its pods took to become ready. Increases are immediate but capped per step.
- A pod whose metrics cannot be read is assumed as busy as the pods that answer and holds
  scale-down for `staleMetricsSeconds`; after that it counts as stale and no longer does.
- A scheduled minimum (`schedule.py`) is a floor above `minReplicas` from one learned cold
  start before its window until its end; the wall-clock time comes in the observation.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from datetime import datetime

from modelflock.autoscale.schedule import Schedule, scheduled_floor

# Ceil of float ratios without turning 3.0000000001 into 4.
_EPSILON = 1e-9
# A saturated running count below the learned capacity must persist this long to replace it.
CAPACITY_CONFIRM_SECONDS = 15.0
# KV-cache usage below this says too little about how many more sequences fit.
KV_MIN_USAGE = 0.05
# Real batches stop short of a full KV cache (blocks, uneven outputs): the estimate is cut.
KV_USABLE = 0.95
# Arrival and completion rates are smoothed over about this long.
RATE_SMOOTHING_SECONDS = 15.0
# Without an explicit window, decreases wait this many cold starts, within these bounds.
HOLD_COLD_STARTS = 2.0
HOLD_MIN_SECONDS = 300.0
HOLD_MAX_SECONDS = 600.0
HOLD_DEFAULT_SECONDS = 300.0  # until a cold start was seen
COLD_START_MAX_SECONDS = 1800.0
# A backlog is provisioned to drain within a cold start; within this until one was seen.
DEFAULT_DRAIN_SECONDS = 60.0  # a pod starting for longer is stuck, not slow
# A saturated replica's completion rate is learned only while its batch is this full: a pod
# with a short queue below a full batch (uneven KV reservations, a new share) completes fewer
# and would bias the rate low, so the arrivals would look heavier than they are.
FULL_BATCH_FRACTION = 0.97
# A saturated replica's completion rate is smoothed over about this long.
REPLICA_RATE_SMOOTHING_SECONDS = 120.0
# The sustained arrival rate (what a scale-down is judged against) is smoothed over this long.
SUSTAINED_RATE_SECONDS = 120.0
# After a decrease, a replica comes back on a Poisson peak only with a queue above this
# fraction of the replicas' batches (or once the sustained rate has risen or does not fit).
REUP_QUEUE_FRACTION = 0.5
# Requests missing from the pods' metrics for longer than this are gone, not late.
METRICS_LAG_MAX_SECONDS = 30.0
# The sustained rate has risen only beyond the tolerance plus this many standard deviations
# of its own Poisson noise.
RISE_NOISE_SIGMAS = 2.0
# The load is rising when the sustained rate is above what it was one scale-down window ago
# (two cold starts) by more than this many standard deviations of its own Poisson noise.
TREND_NOISE_SIGMAS = 2.0
# ... and rose by at least this share of that in the later half of the window: a trend, not
# the smoothed rate settling after a step (a step's settling rises about a fifth there).
TREND_LATER_SHARE = 1 / 3


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The autoscaling part of a ModelExpert spec (integers only, as in the CRD)."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_depth: int = 2
    tolerance_percent: int = 10
    max_scale_up_step: int = 4
    scale_up_window_seconds: int = 0
    # None: derived from the expert's learned cold start (HOLD_COLD_STARTS of them).
    scale_down_window_seconds: int | None = None
    scale_to_zero_after_seconds: int = 600
    # Routers re-send demand every few seconds while they hold requests; older is stale.
    demand_ttl_seconds: int = 30
    # Requests one replica runs at once, from a load test: the capacity assumed until a
    # saturated replica shows the real one (spec.autoscaling.capacityHint).
    capacity_hint: int | None = None
    # Square-root staffing factor: slots = load + burst_headroom * sqrt(load).
    burst_headroom: float = 1.0
    # A pod unreadable for this long stops holding scale-down (spec.staleMetricsSeconds).
    stale_metrics_seconds: int = 60
    # Floors above min_replicas in known busy hours (spec.autoscaling.schedules).
    schedules: tuple[Schedule, ...] = ()

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
        if not 0 <= self.burst_headroom <= 10:
            raise ValueError("burst_headroom must be in [0, 10]")
        if any(s.min_replicas > self.max_replicas for s in self.schedules):
            raise ValueError("a schedule's min_replicas must be <= max_replicas")
        for name in (
            "scale_up_window_seconds",
            "scale_down_window_seconds",
            "scale_to_zero_after_seconds",
            "demand_ttl_seconds",
            "stale_metrics_seconds",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class PodLoad:
    """Requests on one ready pod at scrape time; its KV cache in use (0..1) and its counter of
    finished requests, if the engine exposes them."""

    waiting: float
    running: float
    kv_cache_usage: float | None = None
    completed: float | None = None


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
    """What the loop saw this tick. `ready` has one entry per ready pod; None = scrape failed.
    `names` are the ready pods' names in the same order (empty: not known, then pods are
    never stale and completion counters are not used). `wall_clock` is the time of day (an
    aware datetime; `now` may be a monotonic clock): only scheduled minimums read it."""

    now: float
    current_replicas: int
    ready: tuple[PodLoad | None, ...] = ()
    starting: tuple[StartingPod, ...] = ()
    demand: Demand | None = None
    names: tuple[str, ...] = ()
    wall_clock: datetime | None = None


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
    `counters` are the pods' completion counters at `counters_at`, `in_flight` the requests in
    flight then; `arrival_rate`, `sustained_rate` (the same over SUSTAINED_RATE_SECONDS),
    `replica_rate` (requests per second a replica with a full batch completes) and
    `service_seconds` (time in a batch, by Little's law) are smoothed estimates. `down_rate`
    is the sustained rate at the last decrease (None once replicas were added since).
    `cold_start_seconds` is the longest a pod of this
    expert was seen loading. `unreadable_since` says since when each unreadable pod has been;
    `answered` names the ready pods whose metrics were read at least once. `scheduled` are
    the scheduled windows whose floor is in force (they hold it until their end). `draining`
    is whether the requests in flight were falling at the last tick (an unchanged count keeps
    that verdict). `trend` holds (time, sustained rate) over the last scale-down window.
    """

    recommendations: tuple[Recommendation, ...] = ()
    last_load_at: float | None = None
    capacity_per_replica: float | None = None
    lower_capacity_since: float | None = None
    counters: tuple[tuple[str, float], ...] = ()
    counters_at: float | None = None
    in_flight: float | None = None
    arrival_rate: float | None = None
    sustained_rate: float | None = None
    replica_rate: float | None = None
    service_seconds: float | None = None
    cold_start_seconds: float | None = None
    unreadable_since: tuple[tuple[str, float], ...] = ()
    answered: tuple[str, ...] = ()
    down_rate: float | None = None
    scheduled: tuple[tuple[Schedule, datetime], ...] = ()
    draining: bool = False
    trend: tuple[tuple[float, float], ...] = ()


class Reason(enum.StrEnum):
    QUEUE_ABOVE_TARGET = "QueueAboveTarget"
    LOAD_BELOW_CAPACITY = "LoadBelowCapacity"
    WITHIN_TOLERANCE = "WithinTolerance"
    PEAK_AFTER_SCALE_DOWN = "PeakAfterScaleDown"
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
    SCHEDULED_MINIMUM = "ScheduledMinimum"


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
    failed: int  # unreadable, not yet stale: these hold scale-down
    stale: int  # unreadable for longer than stale_metrics_seconds

    @property
    def in_flight(self) -> float:
        return self.waiting + self.running


@dataclass(frozen=True, slots=True)
class _Rates:
    """Arrival rate (requests/s) and a saturated replica's completion rate, if measured."""

    arrival: float | None
    replica: float | None
    counters: tuple[tuple[str, float], ...]
    counters_at: float | None
    service: float | None = None  # seconds a request runs, by Little's law on the batches
    sustained: float | None = None  # the arrival rate smoothed over SUSTAINED_RATE_SECONDS
    # Requests in flight at the reference point, when not simply those measured now.
    in_flight: float | None = None


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPSILON))


def _unreadable(
    obs: Observation, memory: ScalerMemory
) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """Since when each unreadable pod has been (by name), and the names of those that are."""
    before = dict(memory.unreadable_since)
    since = tuple(
        (name, before.get(name, obs.now))
        for name, sample in zip(obs.names, obs.ready, strict=False)
        if sample is None
    )
    return since, frozenset(name for name, _ in since)


def _measure(
    obs: Observation,
    policy: ScalingPolicy,
    unreadable: tuple[tuple[str, float], ...],
    answered: tuple[str, ...],
) -> _Load:
    samples = [s for s in obs.ready if s is not None]
    waiting = sum(s.waiting for s in samples)
    running = sum(s.running for s in samples)
    missing = len(obs.ready) - len(samples)
    stale = sum(1 for _, at in unreadable if obs.now - at >= policy.stale_metrics_seconds)
    stale = min(stale, missing)
    # A pod that just became ready and has not answered yet holds nothing yet; one that
    # answered before is assumed as busy as those that answer now (never idle). Names
    # unknown: every unreadable pod counts as busy.
    known = set(answered)
    busy_missing = (
        sum(1 for n, s in zip(obs.names, obs.ready, strict=False) if s is None and n in known)
        if obs.names
        else missing
    )
    if samples and busy_missing:
        # A stale pod still serves (it is ready) but no longer holds scale-down.
        scale = (len(samples) + busy_missing) / len(samples)
        waiting, running = waiting * scale, running * scale
    if not obs.ready and _demand_is_fresh(obs, policy):
        # With no pod serving, the requests routers hold are the queue.
        assert obs.demand is not None
        waiting += obs.demand.waiting
    return _Load(
        waiting=waiting,
        running=running,
        sampled=len(samples),
        failed=missing - stale,
        stale=stale,
    )


def _demand_is_fresh(obs: Observation, policy: ScalingPolicy) -> bool:
    d = obs.demand
    return d is not None and d.waiting > 0 and obs.now - d.at <= policy.demand_ttl_seconds


def _learn_capacity(
    obs: Observation, previous: float | None, lower_since: float | None, tolerance: float
) -> tuple[float | None, float | None]:
    """A pod with a queue runs as many requests as it can: that is a replica's capacity. An
    unsaturated pod's KV cache says how many would fit: a clearly higher capacity is believed
    at once (the requests got shorter).

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
    fits = [
        s.running / s.kv_cache_usage * KV_USABLE
        for s in samples
        if s.kv_cache_usage is not None and s.kv_cache_usage >= KV_MIN_USAGE and s.running >= 1
    ]
    if fits:
        estimate = sum(fits) / len(fits)
        if previous is None or estimate > previous * (1 + tolerance):
            return estimate, None
    busiest = max((s.running for s in samples), default=0.0)
    if busiest > 0 and (previous is None or busiest > previous):
        # A pod proved it holds this many; never assume less than that.
        return busiest, None
    return previous, None


def _estimates_kept(
    memory: ScalerMemory, counters: tuple[tuple[str, float], ...], at: float
) -> _Rates:
    """The remembered estimates, measured from the reference point (counters, at)."""
    return _Rates(
        memory.arrival_rate,
        memory.replica_rate,
        counters,
        at,
        memory.service_seconds,
        memory.sustained_rate,
    )


def _rates(obs: Observation, memory: ScalerMemory, load: _Load, capacity: float | None) -> _Rates:
    """Arrival rate = completions per second + change of requests in flight (Little's law
    keeps no request unaccounted); a saturated replica's completion rate is learned too."""
    complete = (
        bool(obs.names)
        and len(obs.names) == len(obs.ready)
        and all(s is not None and s.completed is not None for s in obs.ready)
    )
    if obs.ready and not complete:
        # Some pod exposes no counter (or is unreadable): no arrival rate this tick.
        return _Rates(
            None, memory.replica_rate, (), None, memory.service_seconds, memory.sustained_rate
        )
    counters = tuple(
        (name, s.completed)
        for name, s in zip(obs.names, obs.ready, strict=False)
        if s is not None and s.completed is not None
    )
    at = memory.counters_at
    dt = obs.now - at if at is not None else 0.0
    if at is None or memory.in_flight is None or dt < 0:
        # The first tick with counters (or a clock that went back): start measuring.
        return _estimates_kept(memory, counters, obs.now)
    if dt < 1.0:
        # Too soon to tell: keep the previous reference point.
        return _estimates_kept(memory, memory.counters, at)
    before = dict(memory.counters)
    if {name for name, _ in counters} != set(before):
        # Pods came or went (or the routers' held requests moved onto the first pods): the
        # change of requests in flight then moves with them, not with the arrivals. Start a
        # new reference point and keep the estimate.
        kept = _estimates_kept(memory, counters, obs.now)
        if not before and memory.in_flight is not None and load.in_flight < memory.in_flight:
            # The first pods took over the requests routers held: those are in flight on the
            # pods, even when their first metrics (scraped before they got them) are empty.
            return dataclasses.replace(kept, in_flight=memory.in_flight)
        return kept
    done = 0.0
    saturated_rates: list[float] = []
    for (name, total), sample in zip(
        counters, (s for s in obs.ready if s is not None), strict=False
    ):
        if name in before and total >= before[name]:
            rate = (total - before[name]) / dt
            done += rate
            # Saturated with a full batch, and past its first batch (a pod that just became
            # ready has a queue but has finished nothing yet).
            if (
                sample.waiting >= 1
                and capacity
                and before[name] >= capacity
                and sample.running >= capacity * FULL_BATCH_FRACTION
            ):
                saturated_rates.append(rate)
    if counters and load.in_flight + done * dt < memory.in_flight - 0.5:
        # Requests leave a pod only by finishing (half a request of slack for rounding): a
        # fall beyond the completions is requests the metrics do not show yet (a pod's scrape
        # from before the routers' held requests reached it). Keep the reference point:
        # counted as arrivals once they showed, they read as a burst (70B business hours:
        # 8.5 requests/s where 0.7 arrived, and six replicas instead of two). A fall that
        # lasts longer than metrics lag is real (a crashed engine lost its requests): start
        # from it, keeping the estimate, rather than freeze the rate.
        if dt <= METRICS_LAG_MAX_SECONDS:
            return _estimates_kept(memory, memory.counters, at)
        return _estimates_kept(memory, counters, obs.now)
    # Pods without a previous counter (new) or not ready (no counters) are not counted: the
    # change of requests in flight then also misses theirs, which the smoothing absorbs.
    instant = (
        max(0.0, done + (load.in_flight - memory.in_flight) / dt)
        if counters or not obs.ready
        else None
    )
    alpha = min(1.0, dt / RATE_SMOOTHING_SECONDS)
    arrival = memory.arrival_rate
    sustained = memory.sustained_rate
    if instant is not None:
        arrival = instant if arrival is None else arrival + alpha * (instant - arrival)
        slow = min(1.0, dt / SUSTAINED_RATE_SECONDS)
        sustained = instant if sustained is None else sustained + slow * (instant - sustained)
    replica = memory.replica_rate
    if saturated_rates:
        seen = sum(saturated_rates) / len(saturated_rates)
        # Smoothed the same way up and down: the completions of a few seconds are noisy, and
        # believing every higher sample at once made the rate the envelope of the noise
        # (70B: 1.5-1.7/s where a saturated replica completes 1.31/s), so a request's time
        # in a batch came out short and the sizing while replicas load a fifth low.
        if replica is None:
            replica = seen
        else:
            replica += min(1.0, dt / REPLICA_RATE_SMOOTHING_SECONDS) * (seen - replica)
    service = memory.service_seconds
    if done > 0 and load.running > 0:
        # Little's law on the batches: running = completion rate x time in the batch.
        seen_service = load.running / done
        service = seen_service if service is None else service + alpha * (seen_service - service)
    return _Rates(arrival, replica, counters, obs.now, service, sustained)


def _demand_slots(
    policy: ScalingPolicy,
    load: _Load,
    capacity: float,
    rates: _Rates,
    cold_start: float | None,
    loading: bool,
) -> tuple[float, str, float | None, float | None]:
    """Requests in flight to provision for (before headroom), how it was derived, what the
    arrivals alone keep in flight (Little's law; None without counters), and what the
    sustained arrivals keep in flight plus what drains the waiting backlog within a cold
    start (None without counters): a re-add after a decrease is judged on that.

    The requests in flight; while replicas load, the arrival rate by Little's law when the
    counters allow it and it says less: the queue then grows by itself because nothing new
    serves yet, and sizing on it would add a second wave. (Letting a higher rate win when
    nothing loads was tried: a burst of closed-loop clients looks like a rate and over-scales.)
    """
    queued = load.in_flight
    if rates.arrival is not None and (rates.replica or rates.service):
        # Seconds a request runs in a full batch: from a saturated replica's completion rate
        # once seen; until then as measured at the current occupancy (shorter: the first
        # queue then shows the rest).
        service = capacity / rates.replica if rates.replica else float(rates.service or 0.0)
        steady = rates.arrival * service  # Little's law
        drain_over = max(service, cold_start if cold_start is not None else DEFAULT_DRAIN_SECONDS)
        backlog = load.waiting * service / drain_over
        demand = max(load.running, steady) + backlog
        how = f"{rates.arrival:.3g} req/s x {service:.3g} s + backlog {load.waiting:g}"
        sustained = (rates.sustained if rates.sustained is not None else rates.arrival) * service
        if loading and demand < queued:
            # The queue grows while replicas load (nothing new serves yet): the rate says
            # what the arrivals need, and never more than the queue does.
            return demand, how, steady, sustained + backlog
        return (
            queued,
            f"{load.waiting:g} waiting + {load.running:g} running",
            steady,
            sustained + backlog,
        )
    return queued, f"{load.waiting:g} waiting + {load.running:g} running", None, None


def _recommend(
    policy: ScalingPolicy,
    load: _Load,
    on_hand: int,
    capacity: float | None,
    rates: _Rates,
    cold_start: float | None,
    loading: bool,
    draining: bool = False,
    after_down: bool = False,
) -> tuple[int, Reason, str, int | None]:
    """Replicas the current load asks for, ignoring windows, step and bounds; and the
    replicas the arrivals alone ask for (None: not known), which is what the scale-down
    window remembers. `after_down`: the last change was a decrease and the sustained arrival
    rate has not risen since, so a re-add is judged on the sustained arrivals too."""
    tol = policy.tolerance_percent / 100
    target = policy.target_queue_depth
    if load.in_flight <= 0:
        return 0, Reason.IDLE, "no waiting or running requests", None
    if capacity is None:
        # Nothing has ever run, so a replica's capacity is unknown: add one at a time.
        if on_hand == 0 or load.waiting > target * on_hand * (1 + tol):
            return (
                on_hand + 1,
                Reason.QUEUE_ABOVE_TARGET,
                (f"{load.waiting:g} waiting on {on_hand} replicas, capacity not known yet"),
                None,
            )
        return on_hand, Reason.WITHIN_TOLERANCE, "capacity not known yet; holding", None
    demand, how, steady, arrivals = _demand_slots(
        policy, load, capacity, rates, cold_start, loading
    )
    # Only a backlog beyond the scale-up trigger that is draining (fewer requests in flight
    # than at the last measurement; the same count keeps the last verdict) makes the two
    # differ by more than noise: a queue that stays (closed-loop clients) is load, not backlog.
    backlog = draining and load.waiting > target * max(1, on_hand)
    arrivals_ask = (
        None
        if steady is None or not backlog
        else max(1, _ceil((steady + policy.burst_headroom * math.sqrt(steady)) / capacity))
    )
    raw, reason, message = _size(
        policy, load, on_hand, capacity, demand, how, arrivals if after_down else None
    )
    return raw, reason, message, arrivals_ask


def _size(
    policy: ScalingPolicy,
    load: _Load,
    on_hand: int,
    capacity: float,
    demand: float,
    how: str,
    reup_arrivals: float | None = None,
) -> tuple[int, Reason, str]:
    """Replicas for `demand` requests in flight, with headroom and hysteresis.
    `reup_arrivals`: after a decrease, what the sustained arrivals keep in flight plus the
    backlog's drain (None: not after a decrease, or not known)."""
    tol = policy.tolerance_percent / 100
    target = policy.target_queue_depth
    slots = demand + policy.burst_headroom * math.sqrt(demand)
    up = slots / (capacity + target)
    # Scale up once the slots exceed full batches by `targetQueueDepth` per replica, or by
    # the tolerance when that is more (large batches: a few requests more are noise).
    trigger = on_hand * max(capacity + target, capacity * (1 + tol))
    # Re-adding the replica a decrease just took: at high occupancy a full batch runs slower,
    # so the fewer replicas run nearly full and every Poisson peak crosses the trigger. If the
    # sustained arrivals (with the backlog's drain within a cold start) still fit these
    # replicas' full batches and the queue is short, the peak drains by itself before a new
    # replica could start. No headroom here: the peak is what the headroom is for, and the
    # queue limit bounds it.
    if (
        slots > trigger + _EPSILON
        and reup_arrivals is not None
        and reup_arrivals <= on_hand * capacity
        and load.waiting <= REUP_QUEUE_FRACTION * on_hand * capacity
    ):
        return (
            on_hand,
            Reason.PEAK_AFTER_SCALE_DOWN,
            (
                f"{how}: {slots:.4g} slots on a peak, but the sustained arrivals need "
                f"{reup_arrivals:.4g} of {on_hand * capacity:.4g} and the queue drains"
            ),
        )
    if slots > trigger + _EPSILON:
        return (
            max(on_hand + 1, _ceil(up)),
            Reason.QUEUE_ABOVE_TARGET,
            (
                f"{how}: {slots:.4g} slots with headroom need {max(on_hand + 1, _ceil(up))} replicas "
                f"at {capacity:.4g} running + {target} waiting each"
            ),
        )
    # Fewer replicas hold every slot with no queue. A change smaller than the tolerance is
    # ignored (as in the HPA); the queue target above is the hysteresis.
    down = slots / capacity
    if _ceil(down) < on_hand and slots < on_hand * capacity * (1 - tol):
        return (
            max(1, _ceil(down)),
            Reason.LOAD_BELOW_CAPACITY,
            (
                f"{how}: {slots:.4g} slots with headroom fit in {max(1, _ceil(down))} replicas of {capacity:.4g}"
            ),
        )
    return (
        on_hand,
        Reason.WITHIN_TOLERANCE,
        (f"{load.waiting:g} waiting and {load.running:g} running on {on_hand} replicas"),
    )


def _cold_start(obs: Observation, previous: float | None) -> float | None:
    """The longest a pod was seen loading (scheduled, never served), stuck ones left out."""
    ages = [
        p.age_seconds
        for p in obs.starting
        if p.scheduled and not p.ever_served and p.age_seconds <= COLD_START_MAX_SECONDS
    ]
    longest = max(ages, default=None)
    if longest is None:
        return previous
    return longest if previous is None else max(previous, longest)


def scale_down_window(policy: ScalingPolicy, cold_start: float | None) -> float:
    """The explicit window, or HOLD_COLD_STARTS cold starts within [min, max] bounds."""
    if policy.scale_down_window_seconds is not None:
        return float(policy.scale_down_window_seconds)
    if cold_start is None:
        return HOLD_DEFAULT_SECONDS
    return min(HOLD_MAX_SECONDS, max(HOLD_MIN_SECONDS, HOLD_COLD_STARTS * cold_start))


def remembered(
    memory: ScalerMemory,
    capacity_in_status: float | None,
    service_in_status: float | None = None,
    cold_start_in_status: float | None = None,
) -> ScalerMemory:
    """The memory to decide with: what was learned before an operator restart (kept in the
    expert's status) is used until this process measures it again: the capacity per replica,
    the time a request runs in a full batch, and the cold start."""
    updates: dict[str, float] = {}
    if memory.capacity_per_replica is None and capacity_in_status:
        updates["capacity_per_replica"] = float(capacity_in_status)
    capacity = memory.capacity_per_replica or capacity_in_status
    if memory.replica_rate is None and service_in_status and capacity:
        updates["replica_rate"] = float(capacity) / float(service_in_status)
    if memory.cold_start_seconds is None and cold_start_in_status:
        updates["cold_start_seconds"] = float(cold_start_in_status)
    return dataclasses.replace(memory, **updates) if updates else memory  # type: ignore[arg-type]


def decide(policy: ScalingPolicy, obs: Observation, memory: ScalerMemory) -> Decision:
    """Desired replicas for one expert now, with the reason and the memory for next time."""
    now = obs.now
    current = obs.current_replicas
    unreadable, _ = _unreadable(obs, memory)
    answered = tuple(
        n
        for n, s in zip(obs.names, obs.ready, strict=False)
        if s is not None or n in memory.answered
    )
    load = _measure(obs, policy, unreadable, memory.answered)
    demand_fresh = _demand_is_fresh(obs, policy)
    known = memory.capacity_per_replica
    if known is None and policy.capacity_hint is not None:
        known = float(policy.capacity_hint)  # until measured; a saturated replica corrects it
    tol = policy.tolerance_percent / 100
    capacity, lower_since = _learn_capacity(obs, known, memory.lower_capacity_since, tol)
    if memory.replica_rate and known and capacity and abs(capacity - known) > tol * known:
        # The requests changed (a KV estimate or a saturated batch moved `c` by more than the
        # tolerance): until a full batch of them is measured, a request's time in a batch is
        # assumed unchanged, so a replica completes proportionally more (or fewer) of them.
        memory = dataclasses.replace(memory, replica_rate=memory.replica_rate * capacity / known)
    rates = _rates(obs, memory, load, capacity)
    cold_start = _cold_start(obs, memory.cold_start_seconds)
    window = scale_down_window(policy, cold_start)

    busy = load.in_flight > 0 or demand_fresh or load.failed > 0
    # Unknown history (e.g. operator restart): assume load just now, so idleness is
    # measured from here and a restart never scales an expert straight to zero.
    last_load_at = now if busy or memory.last_load_at is None else memory.last_load_at

    trend, rising_from = _trend(memory.trend, now, rates.sustained, window)

    # Replicas already on their way count as capacity: no second wave while a model loads.
    on_hand = max(current, len(obs.ready) + len(obs.starting))
    all_failed = bool(obs.ready) and load.sampled == 0
    draining = False

    if all_failed:
        raw, reason, message = (
            current,
            Reason.METRICS_UNAVAILABLE,
            (f"no metrics from any of {len(obs.ready)} ready pods; holding"),
        )
        arrivals_ask: int | None = None
    else:
        loading = any(p.scheduled and not p.ever_served for p in obs.starting)
        # An unchanged count (nothing finished between two samples) keeps the last verdict.
        draining = memory.in_flight is not None and (
            load.in_flight < memory.in_flight
            or (load.in_flight == memory.in_flight and memory.draining)
        )
        # The last change was a decrease, and the sustained arrival rate has not risen since
        # (by more than the tolerance): a rising load is never held back.
        after_down = (
            memory.down_rate is not None
            and rates.sustained is not None
            and rates.sustained <= rate_risen_above(memory.down_rate, tol)
        )
        raw, reason, message, arrivals_ask = _recommend(
            policy, load, on_hand, capacity, rates, cold_start, loading, draining, after_down
        )
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

    # The window remembers what the arrivals asked for: replicas added to drain a backlog
    # leave once it is gone, instead of staying for the whole window.
    remembered_ask = raw if arrivals_ask is None else min(raw, arrivals_ask)
    history = _remember(
        memory.recommendations, Recommendation(now, remembered_ask), policy, now, window
    )
    if to_zero:
        # The idle timer is this decision's own stabilization window.
        desired, reason = 0, Reason.SCALED_TO_ZERO
        message = "no demand" if stays_at_zero else f"idle for {idle_for:g}s"
    else:
        desired, reason, message = _stabilize(
            policy, history, current, raw, reason, message, window
        )
        if on_hand == 0 and demand_fresh and desired < raw:
            # Requests are held right now: waking is never delayed by the scale-up window.
            desired, reason, message = (
                raw,
                Reason.WOKEN_BY_DEMAND,
                (f"routers hold {obs.demand.waiting if obs.demand else 0} requests"),
            )
        if rising_from is not None and desired < current:
            # The sustained arrivals rose over the last scale-down window: a dip of the
            # requests in flight on a rising load is not a reason to let a replica go.
            desired, reason, message = (
                current,
                Reason.STABILIZING_DOWN,
                (
                    f"{message}; arrivals rising ({rising_from:.3g} -> "
                    f"{rates.sustained or 0.0:.3g} req/s): not scaling down"
                ),
            )
        if load.failed and desired < current:
            desired, reason, message = (
                current,
                Reason.METRICS_UNAVAILABLE,
                (
                    f"{load.failed} of {len(obs.ready)} scrapes failed; not scaling down for "
                    f"up to {policy.stale_metrics_seconds}s"
                ),
            )

    desired, reason, message = _bound(policy, current, desired, reason, message)
    floor = scheduled_floor(policy.schedules, obs.wall_clock, cold_start, memory.scheduled)
    if desired < min(floor.minimum, policy.max_replicas):
        # Like minReplicas, reaching the floor is not limited by the step; the window above
        # remembers what the load asked for, so the floor's replicas go once it ends.
        desired, reason, message = (
            min(floor.minimum, policy.max_replicas),
            Reason.SCHEDULED_MINIMUM,
            f"{message}; {floor.reason}",
        )
    desired, reason, message = _protect_starting(obs, current, desired, reason, message)

    return Decision(
        desired_replicas=desired,
        reason=reason,
        message=message,
        memory=ScalerMemory(
            recommendations=history,
            last_load_at=last_load_at,
            capacity_per_replica=capacity,
            lower_capacity_since=lower_since,
            counters=rates.counters,
            counters_at=rates.counters_at,
            in_flight=(
                memory.in_flight
                if rates.counters_at != now
                else (load.in_flight if rates.in_flight is None else rates.in_flight)
            ),
            arrival_rate=rates.arrival,
            sustained_rate=rates.sustained,
            replica_rate=rates.replica,
            service_seconds=rates.service,
            cold_start_seconds=cold_start,
            unreadable_since=unreadable,
            answered=answered,
            down_rate=_down_rate(memory.down_rate, rates.sustained, current, desired),
            scheduled=floor.started,
            draining=draining,
            trend=trend,
        ),
        queue_depth=load.waiting,
        running=load.running,
        recommendation=raw,
    )


def rate_risen_above(rate: float, tolerance: float) -> float:
    """The sustained arrival rate above which it has risen since `rate`: by more than the
    tolerance and more than the estimate's own Poisson noise (two standard deviations of a
    rate smoothed over SUSTAINED_RATE_SECONDS: sqrt(rate / (2 x that))). At the 70B's 2
    requests/s the noise alone is 4.5 %, and a 10 % tolerance was crossed by chance."""
    noise = math.sqrt(max(rate, 0.0) / (2 * SUSTAINED_RATE_SECONDS))
    return rate * (1 + tolerance) + RISE_NOISE_SIGMAS * noise


def _trend(
    history: tuple[tuple[float, float], ...],
    now: float,
    sustained: float | None,
    window: float,
) -> tuple[tuple[tuple[float, float], ...], float | None]:
    """The sustained rates of the last scale-down window (kept for the next tick), and the
    earliest of them when the load is rising: the samples span at least half the window, the
    rate now is above the earliest by more than its own Poisson noise (TREND_NOISE_SIGMAS
    standard deviations), and at least TREND_LATER_SHARE of that rise came in the later half
    of the span (a trend, not the smoothed rate settling after a step). None otherwise."""
    kept = tuple((at, rate) for at, rate in history if 0 <= now - at <= window)
    if sustained is None:
        return kept, None
    rising_from = None
    span = now - kept[0][0] if kept else 0.0
    middle = next((rate for at, rate in kept if at >= now - span / 2), None)
    if kept and span >= window / 2 and middle is not None:
        earliest = kept[0][1]
        noise = math.sqrt(max(earliest, 0.0) / (2 * SUSTAINED_RATE_SECONDS))
        rise = sustained - earliest
        if rise > TREND_NOISE_SIGMAS * noise and sustained - middle >= TREND_LATER_SHARE * rise:
            rising_from = earliest
    return (*kept, (now, sustained)), rising_from


def _down_rate(
    previous: float | None, sustained: float | None, current: int, desired: int
) -> float | None:
    """The sustained arrival rate at the last decrease; None once replicas were added."""
    if desired < current:
        return sustained
    if desired > current:
        return None
    return previous


def _remember(
    history: tuple[Recommendation, ...],
    latest: Recommendation,
    policy: ScalingPolicy,
    now: float,
    window: float,
) -> tuple[Recommendation, ...]:
    keep = max(policy.scale_up_window_seconds, window)
    return (*(r for r in history if now - r.at <= keep and r.at <= now), latest)


def _stabilize(
    policy: ScalingPolicy,
    history: tuple[Recommendation, ...],
    current: int,
    raw: int,
    reason: Reason,
    message: str,
    window: float,
) -> tuple[int, Reason, str]:
    """HPA-style: rise to the lowest recent recommendation, fall to the highest one. The
    latest entry of `history` is this tick's (what the window will remember); `raw` is what
    this tick asks for now."""
    now = history[-1].at
    earlier = history[:-1]
    up = min([raw, *(r.replicas for r in earlier if now - r.at <= policy.scale_up_window_seconds)])
    down = max([raw, *(r.replicas for r in earlier if now - r.at <= window)])
    if current < up:
        return up, reason, message
    if current > down:
        return down, reason, message
    if raw < current:
        return (
            current,
            Reason.STABILIZING_DOWN,
            (f"load asks for {raw}; holding {current} for the {window:g}s scale-down window"),
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
