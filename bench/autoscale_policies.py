"""Scaling policies compared by the benchmark: ours (the real decide()) and the baselines."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from autoscale_workloads import ModelSize, Workload
from modelflock.autoscale.algorithm import (
    Demand,
    Observation,
    PodLoad,
    ScalerMemory,
    ScalingPolicy,
    StartingPod,
    decide,
)


@dataclass(frozen=True, slots=True)
class View:
    """What a policy may know at a tick: replica state now, load as of `lag` seconds ago."""

    now: int
    replicas: int
    ready: int
    starting_ages: tuple[int, ...]
    waiting: float
    running: float
    ready_sampled: int  # replicas that were ready when `waiting` and `running` were sampled
    held_by_router: int  # requests a router holds because no replica is ready


class Policy(Protocol):
    name: str
    interval: int

    def decide(self, view: View) -> int: ...


def per_pod_loads(view: View) -> tuple[PodLoad, ...]:
    """What the operator's per-pod scrape sees, `lag` seconds late.

    The router balances, so the replicas that were ready at the sample share its load evenly.
    A replica that became ready since held nothing then; a removed one is no longer scraped.
    (Spreading old totals over the replicas ready now would make every pod look saturated at
    a fraction of its batch right after a scale-up.)
    """
    if not view.ready:
        return ()
    if not view.ready_sampled:
        return tuple(PodLoad(0.0, 0.0) for _ in range(view.ready))
    share = PodLoad(view.waiting / view.ready_sampled, view.running / view.ready_sampled)
    kept = min(view.ready, view.ready_sampled)
    return (share,) * kept + (PodLoad(0.0, 0.0),) * (view.ready - kept)


@dataclass
class Ours:
    """The operator's algorithm with its CRD defaults; only min/max come from the expert."""

    policy: ScalingPolicy
    name: str = "ours"
    interval: int = 5
    memory: ScalerMemory = field(default_factory=ScalerMemory)

    def decide(self, view: View) -> int:
        obs = Observation(
            now=float(view.now),
            current_replicas=view.replicas,
            ready=per_pod_loads(view),
            starting=tuple(StartingPod(age_seconds=a) for a in view.starting_ages),
            demand=Demand(view.now, view.held_by_router) if view.held_by_router else None,
        )
        decision = decide(self.policy, obs, self.memory)
        self.memory = decision.memory
        return decision.desired_replicas


@dataclass
class HpaLike:
    """HorizontalPodAutoscaler v2 behaviour on an average-per-pod metric.

    desired = ceil(total / target), 10% tolerance, up by max(100%, 4 pods) per sync,
    down to the highest recommendation of the last `down_window` seconds. No scale to zero.
    """

    name: str
    interval: int
    target: float
    use_running: bool
    min_replicas: int = 1
    max_replicas: int = 10
    down_window: int = 300
    history: deque[tuple[int, int]] = field(default_factory=deque)

    def decide(self, view: View) -> int:
        current = view.replicas
        metric = view.waiting + (view.running if self.use_running else 0.0)
        if view.ready == 0:
            raw = current
        else:
            ratio = metric / (self.target * view.ready)
            raw = current if abs(ratio - 1) <= 0.1 else math.ceil(metric / self.target)
        raw = min(self.max_replicas, max(self.min_replicas, raw))
        self.history.append((view.now, raw))
        while self.history and view.now - self.history[0][0] > self.down_window:
            self.history.popleft()
        if raw > current:
            return min(raw, current + max(current, 4))
        return min(current, max(r for _, r in self.history))


@dataclass
class KubeAiLike:
    """KubeAI: every 10 s, in-flight requests (incl. held by its proxy) averaged over 10 min,
    desired = ceil(avg / targetRequests); wakes from zero on the first held request."""

    target: float
    name: str = "kubeai-like"
    interval: int = 10
    window: int = 600
    min_replicas: int = 0
    max_replicas: int = 10
    scale_down_delay: int = 30
    samples: deque[float] = field(default_factory=deque)
    lower_since: int | None = None

    def decide(self, view: View) -> int:
        self.samples.append(view.waiting + view.running + view.held_by_router)
        while len(self.samples) > self.window // self.interval:
            self.samples.popleft()
        avg = sum(self.samples) / len(self.samples)
        desired = min(self.max_replicas, max(self.min_replicas, math.ceil(avg / self.target)))
        if view.held_by_router and view.replicas == 0:
            desired = max(desired, 1)
        if desired >= view.replicas:
            self.lower_since = None
            return desired
        if self.lower_since is None:
            self.lower_since = view.now
        return desired if view.now - self.lower_since >= self.scale_down_delay else view.replicas


@dataclass
class Oracle:
    """Perfect foresight: knows the arrival rate and the cold start, starts replicas exactly
    early enough for the load to come and removes them the moment they are not needed."""

    workload: Workload
    size: ModelSize
    name: str = "oracle"
    interval: int = 5
    utilisation: float = 0.85  # headroom for Poisson noise
    max_replicas: int = 10

    def need(self, t: int) -> int:
        t = min(t, self.workload.duration - 1)
        # It also foresees the request mix: replicas hold fewer sequences when they are longer.
        rate = self.workload.load(t) / self.workload.batch_factor(t)
        return math.ceil(rate / self.utilisation - 1e-9)

    def decide(self, view: View) -> int:
        horizon = self.size.cold_start_seconds + self.interval
        wanted = max(self.need(t) for t in range(view.now, view.now + horizon + 1, 5))
        return min(self.max_replicas, wanted)
