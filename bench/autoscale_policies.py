"""Scaling policies compared by the benchmark: ours (the operator's own decide()) and the
baselines as users run them."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoscale_engine import PodSample
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
    """What a policy may know at a tick: replicas now, each ready pod's metrics `lag` s old."""

    now: int
    replicas: int
    ready: int
    starting_ages: tuple[int, ...]
    samples: tuple[PodSample, ...]  # one per pod ready now (zeros if it was not ready then)
    held_by_router: int  # requests routers hold because no replica is ready (pushed, fresh)


class Policy(Protocol):
    name: str
    interval: int

    def decide(self, view: View) -> int: ...


@dataclass
class Ours:
    """The operator's algorithm (`modelflock.autoscale.algorithm.decide`), the same code."""

    policy: ScalingPolicy
    name: str = "ours"
    interval: int = 5
    memory: ScalerMemory = field(default_factory=ScalerMemory)
    message: str = ""  # the last decision's, for tracing

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
        )
        decision = decide(self.policy, obs, self.memory)
        self.memory = decision.memory
        self.message = decision.message
        return decision.desired_replicas


def waiting_total(samples: Sequence[PodSample]) -> float:
    return float(sum(s.waiting for s in samples))


def in_flight_total(samples: Sequence[PodSample]) -> float:
    return float(sum(s.waiting + s.running for s in samples))


def kv_total(samples: Sequence[PodSample]) -> float:
    return sum(s.kv_usage for s in samples)


@dataclass
class Hpa:
    """HorizontalPodAutoscaler v2 (directly, or fed by KEDA) on an AverageValue metric.

    desired = ceil(total / target) unless total / (target * ready) is within 10 % of 1;
    up by at most max(100 %, 4 pods) per sync; down only to the highest recommendation of
    the last 300 s (the default behaviour); never below min (1: a queue metric of 0 pods
    cannot wake from zero).
    """

    name: str
    metric: Callable[[Sequence[PodSample]], float]
    target: float
    interval: int = 15
    min_replicas: int = 1
    max_replicas: int = 10
    down_window: int = 300
    history: deque[tuple[int, int]] = field(default_factory=deque)

    def decide(self, view: View) -> int:
        current = view.replicas
        total = self.metric(view.samples)
        if view.ready == 0:
            raw = current
        else:
            ratio = total / (self.target * view.ready)
            raw = current if abs(ratio - 1) <= 0.1 else math.ceil(total / self.target - 1e-9)
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
        self.samples.append(in_flight_total(view.samples) + view.held_by_router)
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
class Replay:
    """Plays a fixed schedule (replicas per segment) with perfect foresight: each replica is
    created one cold start (plus node delay) before the segment that needs it."""

    name: str
    schedule: Sequence[int]
    segment: int
    lead: int
    interval: int = 1

    def decide(self, view: View) -> int:
        k = view.now // self.segment
        ahead = (view.now + self.lead) // self.segment
        if k >= len(self.schedule):
            return self.schedule[-1]
        wanted = self.schedule[k]
        for j in range(k + 1, min(len(self.schedule), ahead + 1)):
            wanted = max(wanted, self.schedule[j])
        return wanted
