"""Engine models and workloads for the autoscaling benchmark (all seeded, all deterministic)."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mix:
    """The request mix at one moment: mean prompt and output length in tokens."""

    prompt: int
    output: int

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens one request holds (prompt and output, reserved when admitted)."""
        return self.prompt + self.output


@dataclass(frozen=True, slots=True)
class ModelSize:
    """One replica of an expert, modelled like a vLLM engine.

    A decode step takes `step_base + step_per_seq * running` seconds, so a fuller batch serves
    every request more slowly (and the replica's throughput grows less than linearly). Prompts
    are prefilled at `prefill_tokens_per_second`, which stalls decoding for that long. A
    request is admitted while fewer than `max_seqs` run and the KV cache has room for it.
    """

    name: str
    gpus: int
    max_seqs: int
    kv_capacity: int  # KV-cache tokens of one replica
    step_base: float
    step_per_seq: float
    prefill_tokens_per_second: float
    cold_start_seconds: int  # pod created -> ready (schedule, pull a cached image, load weights)
    ttft_slo: float  # time to first token objective (queue wait + prefill + one step)
    tpot_slo: float  # time per output token objective (the request's own mean)

    def batch(self, mix: Mix) -> int:
        """Requests one replica runs at once with this mix (KV cache or max_seqs bound)."""
        return max(1, min(self.max_seqs, self.kv_capacity // mix.kv_tokens))

    def step(self, running: float) -> float:
        return self.step_base + self.step_per_seq * running

    def prefill_seconds(self, mix: Mix) -> float:
        return mix.prompt / self.prefill_tokens_per_second

    def decode_seconds(self, mix: Mix, running: float) -> float:
        """Time a request's output takes at this occupancy when nothing prefills."""
        return mix.output * self.step(running)

    def throughput(self, mix: Mix) -> float:
        return _throughput(self, mix)


@functools.lru_cache(maxsize=64)
def _throughput(size: ModelSize, mix: Mix) -> float:
    """Requests per second one replica completes with a full batch of this mix.

    Prefilling the arrivals stalls decoding for a share `rate * prefill` of each second,
    so the batch's residence time is prefill + decode / (1 - rate * prefill): solved for
    the rate by bisection.
    """
    batch = size.batch(mix)
    p, d = size.prefill_seconds(mix), size.decode_seconds(mix, batch)
    lo, hi = 0.0, 1.0 / p
    for _ in range(60):
        rate = (lo + hi) / 2
        residence = p + d / max(1e-9, 1 - rate * p)
        if rate * residence > batch:
            hi = rate
        else:
            lo = rate
    return lo


BASE_MIX = Mix(prompt=1000, output=300)
# The mix a user load-tested at to pick an HPA target: shorter prompts than production.
LOAD_TEST_MIX = Mix(prompt=500, output=300)
LONG_MIX = Mix(prompt=2300, output=300)  # long documents: half the sequences fit
SHORT_MIX = Mix(prompt=350, output=300)  # chat turns: twice the sequences fit

# 7B on one GPU: ~21 ms per step at 48 sequences, 40k prompt tokens/s (chunked), weights load in 45 s.
SMALL = ModelSize(
    "7B",
    gpus=1,
    max_seqs=256,
    kv_capacity=62_400,
    step_base=0.014,
    step_per_seq=0.00015,
    prefill_tokens_per_second=40_000,
    cold_start_seconds=45,
    ttft_slo=2.5,
    tpot_slo=0.040,
)
# 70B on four GPUs (tensor parallel): ~49 ms per step at 24 sequences, ~140 GB to load.
LARGE = ModelSize(
    "70B",
    gpus=4,
    max_seqs=256,
    kv_capacity=31_200,
    step_base=0.035,
    step_per_seq=0.0006,
    prefill_tokens_per_second=12_000,
    cold_start_seconds=300,
    ttft_slo=4.0,
    tpot_slo=0.100,
)
SIZES = (SMALL, LARGE)


def _base(t: int) -> Mix:
    return BASE_MIX


@dataclass(frozen=True, slots=True)
class Workload:
    """Arrival rate over time in replica-equivalents: 1.0 = the requests per second one
    replica completes with a full batch of the base mix. `mix` may change the request lengths
    (and so what one replica holds) while the rate stays."""

    name: str
    duration: int
    load: Callable[[int], float]
    predictable: bool
    mix: Callable[[int], Mix] = _base
    # The moment load jumps, for "time to recover" (None: no single step to recover from).
    step_at: int | None = None
    # Moments the load changes direction or level: "no flapping" allows one direction change
    # per load change.
    load_changes: int = 1

    def rate(self, size: ModelSize, t: int) -> float:
        return self.load(t) * size.throughput(BASE_MIX)

    def arrivals(self, size: ModelSize, seed: int) -> list[int]:
        """Requests arriving in each second: the same for every policy and the planner."""
        rng = random.Random(f"{seed}/{self.name}/{size.name}")
        return [poisson(rng, self.rate(size, t)) for t in range(self.duration)]


def _step(t: int) -> float:
    return 5.0 if 1200 <= t < 3600 else 1.0


def _ramp(t: int) -> float:
    half = 2700
    return 0.5 + 5.5 * (t / half if t < half else max(0.0, (2 * half - t) / half))


def _daily(t: int) -> float:
    # One day compressed into three hours: night trough 0.3, midday peak 6.
    return 0.3 + 5.7 * (1 - math.cos(2 * math.pi * t / 10800)) / 2


def _idle_then_burst(t: int) -> float:
    return 4.0 if 1200 <= t < 2100 else 0.0


def _constant(level: float) -> Callable[[int], float]:
    def load(t: int) -> float:
        return level

    return load


def _longer_after(t: int) -> Mix:
    # After 30 min, long-document traffic: each sequence holds twice the KV cache.
    return LONG_MIX if t >= 1800 else BASE_MIX


def _shorter_after(t: int) -> Mix:
    # After 30 min, chat traffic: each sequence holds half the KV cache.
    return SHORT_MIX if t >= 1800 else BASE_MIX


def _business_hours(t: int) -> float:
    # A specialised expert used only in office hours (3 h compressed day): nothing at night,
    # 15 minutes of arrivals in the morning, a plateau, 15 minutes of leaving.
    open_at, close_at, ramp = 2700, 7200, 900
    if t < open_at or t >= close_at + ramp:
        return 0.0
    if t < open_at + ramp:
        return 1.5 * (t - open_at) / ramp
    if t < close_at:
        return 1.5
    return 1.5 * (close_at + ramp - t) / ramp


def _bursty(seed: int) -> tuple[Callable[[int], float], int]:
    """Base load 2 with bursts at 3x, starting as a Poisson process (one per ~8 minutes)."""
    rng = random.Random(f"bursts/{seed}")
    duration = 5400
    boost = [1.0] * duration
    bursts = 0
    t = 0.0
    while True:
        t += rng.expovariate(1 / 480)
        if t >= duration:
            break
        bursts += 1
        length = rng.randint(60, 180)
        for s in range(int(t), min(duration, int(t) + length)):
            boost[s] = 3.0

    def load(t: int) -> float:
        return 2.0 * boost[t] if t < duration else 2.0

    return load, 2 * bursts


def workloads(seed: int) -> list[Workload]:
    bursty, burst_changes = _bursty(seed)
    return [
        Workload("step", 5400, _step, predictable=False, step_at=1200, load_changes=2),
        Workload("ramp", 5400, _ramp, predictable=True, load_changes=2),
        Workload("bursty", 5400, bursty, predictable=False, load_changes=burst_changes),
        Workload("daily cycle (3 h)", 10800, _daily, predictable=True, load_changes=2),
        Workload(
            "idle-then-burst",
            3600,
            _idle_then_burst,
            predictable=False,
            step_at=1200,
            load_changes=2,
        ),
        Workload(
            "mix shift to longer",
            5400,
            _constant(2.5),
            predictable=True,
            mix=_longer_after,
            step_at=1800,
        ),
        Workload(
            "mix shift to shorter",
            5400,
            _constant(2.5),
            predictable=True,
            mix=_shorter_after,
            step_at=1800,
        ),
        Workload("business hours (3 h)", 10800, _business_hours, predictable=True, load_changes=2),
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
