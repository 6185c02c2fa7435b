"""One autoscaling tick for one expert: sample the pods, then decide. No Kubernetes calls.

The operator lists the expert's pods, calls `evaluate()` on a timer, writes
`decision.desired_replicas` through the scale subresource and keeps `decision.memory` for the
next tick (per expert, in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from modelflock.autoscale.algorithm import (
    Decision,
    Demand,
    Observation,
    PodLoad,
    ScalerMemory,
    ScalingPolicy,
    StartingPod,
    decide,
)
from modelflock.autoscale.sources import MetricSource, PodTarget


@dataclass(frozen=True, slots=True)
class ExpertPods:
    """The expert's pods as the operator sees them (terminating pods left out)."""

    current_replicas: int  # the scale subresource's spec.replicas
    ready: tuple[PodTarget, ...] = ()
    starting: tuple[StartingPod, ...] = ()


@dataclass(frozen=True, slots=True)
class Evaluation:
    decision: Decision
    # Per ready pod, in `ExpertPods.ready` order, for status and the flock API.
    loads: tuple[tuple[PodTarget, PodLoad | None], ...]


async def evaluate(
    policy: ScalingPolicy,
    pods: ExpertPods,
    source: MetricSource,
    demand: Demand | None,
    memory: ScalerMemory,
    now: float,
    wall_clock: datetime | None = None,
) -> Evaluation:
    """Sample every ready pod through `source` and return the decision for this tick.

    `now` and `demand.at` must come from the same clock (the DemandStore's, monotonic);
    `wall_clock` is the aware time of day the scheduled minimums are read at.
    """
    samples: Sequence[PodLoad | None] = await source.sample(pods.ready) if pods.ready else []
    if len(samples) != len(pods.ready):
        # A source that answers for the wrong pods is a bug; treat all as unknown, not idle.
        samples = [None] * len(pods.ready)
    observation = Observation(
        now=now,
        current_replicas=pods.current_replicas,
        ready=tuple(samples),
        starting=pods.starting,
        names=tuple(p.name for p in pods.ready),
        demand=demand,
        wall_clock=wall_clock,
    )
    return Evaluation(
        decision=decide(policy, observation, memory),
        loads=tuple(zip(pods.ready, samples, strict=True)),
    )
