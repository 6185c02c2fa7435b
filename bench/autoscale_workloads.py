"""Workloads and engine models for the autoscaling benchmark (all seeded, all deterministic)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSize:
    """One replica of an expert: how much it holds, how fast it serves, how slowly it starts."""

    name: str
    gpus: int
    batch: int  # requests one replica runs at once (effective, KV-cache limited)
    service_seconds: float  # mean time a request runs once admitted
    cold_start_seconds: int  # pod created -> ready (schedule, pull cached image, load weights)

    @property
    def throughput(self) -> float:
        """Requests per second one saturated replica completes."""
        return self.batch / self.service_seconds


# 7B on one GPU: ~300 output tokens at ~20 ms/token, ~48 sequences in flight; weights load in
# tens of seconds. 70B on four GPUs (tensor parallel): ~50 ms/token, fewer sequences fit in the
# KV cache, and loading ~140 GB of weights takes minutes.
SMALL = ModelSize("7B", gpus=1, batch=48, service_seconds=6.0, cold_start_seconds=45)
LARGE = ModelSize("70B", gpus=4, batch=24, service_seconds=15.0, cold_start_seconds=300)


def _same_mix(t: int) -> float:
    return 1.0


@dataclass(frozen=True, slots=True)
class Workload:
    """Arrival rate over time, in replica-equivalents (1.0 = one saturated replica's throughput
    with the request mix the expert was load-tested on)."""

    name: str
    duration: int
    load: Callable[[int], float]
    # The moment load jumps, for "time to recover" (None: no single step to recover from).
    step_at: int | None = None
    step_until: int | None = None
    # Effective batch relative to the load-tested one: longer prompts and outputs leave room
    # in the KV cache for fewer sequences. Fixed-target baselines keep the tested number.
    batch_factor: Callable[[int], float] = _same_mix
    # Not in the original set (marked in the table): models what a fixed target misses.
    added: bool = False

    def batch(self, size: ModelSize, t: int) -> int:
        return max(1, round(size.batch * self.batch_factor(t)))


def _step(t: int) -> float:
    return 5.0 if 1200 <= t < 3600 else 1.0


def _ramp(t: int) -> float:
    half = 2700
    return 0.5 + 5.5 * (t / half if t < half else max(0.0, (2 * half - t) / half))


def _daily(t: int) -> float:
    # One day compressed into six hours: night trough 0.3, midday peak 6.
    return 0.3 + 5.7 * (1 - math.cos(2 * math.pi * t / 21600)) / 2


def _idle_then_burst(t: int) -> float:
    return 4.0 if 1200 <= t < 2100 else 0.0


def _longer_requests(t: int) -> float:
    # After 30 min, long-document traffic joins: sequences hold twice the KV cache.
    return 0.5 if t >= 1800 else 1.0


def _mix_shift(t: int) -> float:
    return 2.5


def _business_hours(t: int) -> float:
    # A specialised expert used only in office hours (6 h compressed day): nothing at night,
    # half an hour of arrivals in the morning, a plateau, half an hour of leaving.
    open_at, close_at, ramp = 5400, 14400, 1800
    if t < open_at or t >= close_at + ramp:
        return 0.0
    if t < open_at + ramp:
        return 1.5 * (t - open_at) / ramp
    if t < close_at:
        return 1.5
    return 1.5 * (close_at + ramp - t) / ramp


def _bursty(seed: int) -> Callable[[int], float]:
    """Base load with bursts at 3x, starting as a Poisson process (one per ~8 minutes)."""
    rng = random.Random(seed)
    duration = 5400
    boost = [1.0] * duration
    t = 0.0
    while True:
        t += rng.expovariate(1 / 480)
        if t >= duration:
            break
        length = rng.randint(60, 180)
        for s in range(int(t), min(duration, int(t) + length)):
            boost[s] = 3.0

    def load(t: int) -> float:
        return 2.0 * boost[t] if t < duration else 2.0

    return load


def workloads(seed: int) -> list[Workload]:
    return [
        Workload("step", 5400, _step, step_at=1200, step_until=3600),
        Workload("ramp", 5400, _ramp),
        Workload("bursty", 5400, _bursty(seed)),
        Workload("daily cycle (6 h)", 21600, _daily),
        Workload("idle-then-burst", 3600, _idle_then_burst, step_at=1200, step_until=2100),
        Workload(
            "mix shift to longer requests",
            5400,
            _mix_shift,
            step_at=1800,
            batch_factor=_longer_requests,
            added=True,
        ),
        Workload("business-hours expert (6 h)", 21600, _business_hours, added=True),
    ]


def poisson(rng: random.Random, mean: float) -> int:
    """Poisson sample (the stdlib has none): exact for small means, normal approximation above."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
