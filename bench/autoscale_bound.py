"""A lower bound on the GPU-hours any scaling policy needs to reach an attainment target.

The planner knows the actual arrivals (the same per-second counts every policy faces), the
request mix and the cold start. It chooses a replica count per segment (30 s for the 7B,
60 s for the 70B) by dynamic programming over (replicas, running requests at the segment's
start), with a Lagrange multiplier on missed requests:

    minimise  sum_k  n_k * segment * gpus  +  cold_start * gpus * max(0, n_k - n_{k-1})
              + lambda * misses_k(n_k, running_k)

and bisects lambda until the misses fit the target. For every lambda, `value - lambda *
allowed misses` is a lower bound on the constrained optimum (weak duality); the bound reported
is the best of those. The schedule at the chosen lambda is the planner's own plan (also
replayed in the real simulation, row "plan replay").

The segment model is a relaxation of the simulation, each part optimistic:
- one pooled queue and one pooled batch for all replicas (a perfect router);
- a request that can no longer meet its TTFT is dropped (counted missed) instead of taking
  a slot; its TPOT is never checked; only its own prefill counts against its TTFT;
- running requests complete as a fluid at the rate their occupancy allows (running / service
  time), and a removed replica's requests finish elsewhere for free (no drain billing);
- at a segment boundary the queue is dropped and running requests are rounded down to a grid
  of half a replica's batch.
Two things are not relaxations: replica counts change only at segment boundaries, and the
fluid completion is an approximation of the simulation's discrete completions. The benchmark
reports any run that beats the bound.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoscale_workloads import Mix, ModelSize, Workload


@dataclass(frozen=True, slots=True)
class Plan:
    target: float  # attainment the plan had to reach
    bound_gpu_seconds: float  # the lower bound (dual)
    plan_gpu_seconds: float  # the planner's schedule (primal), in the relaxed model
    plan_attainment: float
    schedule: tuple[int, ...]  # replicas per segment
    segment: int


@functools.lru_cache(maxsize=64)
def saturated(size: ModelSize, mix: Mix) -> tuple[float, float]:
    """What a saturated replica of the simulation really runs and completes with this mix:
    (mean running requests, requests per second). KV-cache reservations of uneven outputs
    leave part of the cache unusable, so it runs fewer than `size.batch(mix)`."""
    from autoscale_engine import Fleet

    fleet = Fleet(size)
    fleet.scale_to(1, -1000, warm=True)
    rate = 2 * size.throughput(mix)
    running = []
    for t in range(-1000, 0):
        fleet.step(t, round(rate * (t + 1)) - round(rate * t), mix)
        if t == -700:
            done_before = sum(p.completed for p in fleet.pods.values())
        if t >= -700:
            running.extend(p.running for p in fleet.pods.values())
    done = sum(p.completed for p in fleet.pods.values()) - done_before
    return sum(running) / len(running), done / 700


def effective_batch(size: ModelSize, mix: Mix) -> int:
    """The planner's replica: the simulation's saturated batch, rounded up (never smaller)."""
    return max(1, min(size.batch(mix), math.ceil(saturated(size, mix)[0])))


def allowed_wait(size: ModelSize, mix: Mix) -> int:
    """Whole seconds a request may wait and still meet its TTFT, at best."""
    prefill = size.prefill_seconds(mix)
    return max(0, math.floor(size.ttft_slo - prefill / 2 - size.step_base + 1e-9))


def _queue_grid() -> tuple[float, ...]:
    grid = [float(i) for i in range(11)]
    while grid[-1] < 50_000:
        grid.append(math.floor(grid[-1] * 1.1))
    return tuple(grid)


# Backlog carried across a segment boundary is rounded down to one of these (10 % steps).
QUEUE_GRID = _queue_grid()


class SegmentModel:
    """The relaxed fleet, second by second, for one workload's actual arrivals."""

    def __init__(
        self, size: ModelSize, arrivals: Sequence[int], mixes: Sequence[Mix], segment: int
    ) -> None:
        self.size = size
        self.arrivals = arrivals
        self.mixes = mixes
        self.segment = segment
        self.segments = math.ceil(len(arrivals) / segment)
        # Running requests carried across a boundary are rounded down to a grid whose step is
        # 1 % of what the replicas complete in a segment (so the rounding frees at most that).
        slowest = min(size.throughput(m) for m in set(mixes))
        self.grid_unit = max(1.0, segment * slowest / 100)
        # Per second: slots per replica, prefill seconds per request, allowed wait, output
        # tokens, and how many replicas the arrivals need at full batches.
        per_mix = {
            m: (
                float(effective_batch(size, m)),
                size.prefill_seconds(m),
                allowed_wait(size, m),
                float(m.output),
                size.throughput(m),
            )
            for m in set(mixes)
        }
        self.params = [per_mix[m] for m in mixes]
        self.float_arrivals = [float(a) for a in arrivals]
        self.need = [a / self.params[t][4] for t, a in enumerate(arrivals)]
        self._cache: dict[tuple[int, int, int, int], tuple[float, float, int]] = {}

    def grid_step(self, n: int) -> float:
        return self.grid_unit * max(1, n)

    def grid_index(self, n: int, running: float) -> int:
        return int(running / self.grid_step(n) + 1e-9)

    @staticmethod
    def queue_index(backlog: float) -> int:
        """The highest grid step at or below the backlog (the grid rises strictly)."""
        return max(0, bisect.bisect_right(QUEUE_GRID, backlog + 1e-9) - 1)

    def run(
        self,
        k: int,
        n: int,
        running: float,
        backlog: float,
        queue: Sequence[float] | None = None,
        late: float = 0.0,
    ) -> tuple[float, float, list[float], float]:
        """Misses, running requests and the waiting queue (by age, oldest first) at the end of
        segment k with n replicas, and the missed requests still waiting. The queue is served
        first come, first served; a request that waited too long is missed but still takes
        its slot when its turn comes. A `backlog` carried in without ages counts as just
        arrived; `queue` (by age, oldest first, the newest a second old) and `late` carry the
        exact state instead."""
        size = self.size
        start = k * self.segment
        end = min(len(self.arrivals), start + self.segment)
        queue = list(queue) if queue is not None else ([backlog] if backlog > 0 else [])
        misses = 0.0
        r = running
        step_base, step_per_seq = size.step_base, size.step_per_seq
        arrivals, params = self.float_arrivals, self.params
        pop = queue.pop
        append = queue.append
        for t in range(start, end):
            batch, prefill, w, output, _ = params[t]
            slots = n * batch
            if r > slots:
                r = slots
            if n:
                cap = slots - r
                by_prefill = n / prefill
                if by_prefill < cap:
                    cap = by_prefill
            else:
                cap = 0.0
            append(arrivals[t])
            while len(queue) > w + 1:
                old = pop(0)
                misses += old
                late += old
            if late < cap:
                admitted = late
                late = 0.0
            else:
                admitted = cap
                late -= admitted
            if cap > admitted:
                for i, waiting in enumerate(queue):
                    room = cap - admitted
                    if room <= 0:
                        break
                    if waiting < room:
                        queue[i] = 0.0
                        admitted += waiting
                    else:
                        queue[i] = waiting - room
                        admitted += room
            r += admitted
            if r > 0:
                # Decoding runs for what the second's prefills leave.
                spare = 1 - admitted * prefill / n
                if spare > 0:
                    done = r * spare / (output * (step_base + step_per_seq * r / n))
                    r = r - done if done < r else 0.0
            while queue and queue[0] <= 0:
                pop(0)
        return misses, r, queue, late

    def cached(self, k: int, n: int, r_index: int, q_index: int) -> tuple[float, float, int]:
        key = (k, n, r_index, q_index)
        hit = self._cache.get(key)
        if hit is None:
            misses, r, queue, late = self.run(
                k, n, r_index * self.grid_step(n), QUEUE_GRID[q_index]
            )
            hit = (misses, r, self.queue_index(sum(queue) + late))
            self._cache[key] = hit
        return hit

    def candidates(self, k: int, n_max: int, lookahead: int) -> range | list[int]:
        """Replica counts tried in segment k: 0 up to 1.5 times (+2) what the arrivals of this
        segment and of the next `lookahead` (a cold start) need at full batches. More would
        only cost more: no request misses with that many."""
        seg = self.segment
        lo_t, hi_t = k * seg, min(len(self.arrivals), (k + 1 + lookahead) * seg)
        own_end = min(len(self.arrivals), (k + 1) * seg)
        need = self.need
        need_own = sum(need[lo_t:own_end]) / max(1, own_end - lo_t)
        need_ahead = max(
            sum(need[j * seg : (j + 1) * seg]) / seg for j in range(k, max(k + 1, hi_t // seg))
        )
        hi = min(n_max, math.ceil(1.5 * max(need_own, need_ahead)) + 2)
        return range(hi + 1)


def _dp(
    model: SegmentModel,
    lam: float,
    start: tuple[int, float, int],
    choices: Sequence[Sequence[int]],
    cold: int,
    gpus: int,
) -> tuple[float, float, float, tuple[int, ...]]:
    """Min of cost + lam * misses over schedules: (value, cost, misses, schedule).

    A state is (replicas, backlog bucket) at a boundary. Paths reaching the same state are
    merged optimistically: the lowest value, and the fewest running requests of any of them
    (fewer running requests never cost attainment), so the result stays a lower bound.
    """
    seg = model.segment
    Entry = tuple[float, float, float, tuple[int, ...], float]
    n0, r0, q0 = start
    layer: dict[tuple[int, int], Entry] = {(n0, q0): (0.0, 0.0, 0.0, (), r0)}
    for k in range(model.segments):
        length = min(seg, len(model.arrivals) - k * seg)
        cap_batch = model.params[k * seg][0]
        nxt: dict[tuple[int, int], Entry] = {}
        for (n_prev, q_index), (value, cost, misses, path, running) in layer.items():
            for n in choices[k]:
                r_start = model.grid_index(n, min(running, n * cap_batch))
                seg_miss, r_end, q_end = model.cached(k, n, r_start, q_index)
                step_cost = (n * length + cold * max(0, n - n_prev)) * gpus
                v = value + step_cost + lam * seg_miss
                key = (n, q_end)
                old = nxt.get(key)
                if old is None:
                    nxt[key] = (v, cost + step_cost, misses + seg_miss, (*path, n), r_end)
                elif v < old[0]:
                    nxt[key] = (
                        v,
                        cost + step_cost,
                        misses + seg_miss,
                        (*path, n),
                        min(r_end, old[4]),
                    )
                elif r_end < old[4]:
                    nxt[key] = (*old[:4], r_end)
        layer = _prune(nxt)
    best = min(layer.values(), key=lambda e: e[0])
    return best[0], best[1], best[2], best[3]


def _prune(
    layer: dict[tuple[int, int], tuple[float, float, float, tuple[int, ...], float]],
) -> dict[tuple[int, int], tuple[float, float, float, tuple[int, ...], float]]:
    """Drop a state when one with the same replicas, a smaller backlog and a lower value
    exists; the survivor takes the smaller running count of the two (an optimistic merge)."""
    kept: dict[tuple[int, int], tuple[float, float, float, tuple[int, ...], float]] = {}
    best: dict[int, tuple[int, float]] = {}  # replicas -> (key's backlog, value) to beat
    for key in sorted(layer, key=lambda k: (k[0], k[1])):
        entry = layer[key]
        n = key[0]
        if n in best and best[n][1] <= entry[0]:
            survivor = (n, best[n][0])
            old = kept[survivor]
            if entry[4] < old[4]:
                kept[survivor] = (*old[:4], entry[4])
            continue
        kept[key] = entry
        best[n] = (key[1], entry[0])
    return kept


def plan(
    workload: Workload,
    size: ModelSize,
    arrivals: Sequence[int],
    targets: Sequence[float],
    n_max: int,
    n0: int,
    segment: int | None = None,
) -> list[Plan]:
    """The bound and plan for each attainment target."""
    mixes = [workload.mix(t) for t in range(workload.duration)]
    seg = segment or (30 if size.cold_start_seconds < 120 else 60)
    model = SegmentModel(size, arrivals, mixes, seg)
    total = float(sum(arrivals))
    mix0 = mixes[0]
    residence = size.prefill_seconds(mix0) + size.decode_seconds(mix0, size.batch(mix0))
    steady = min(n0 * size.batch(mix0), workload.rate(size, 0) * residence)
    start = (n0, steady, 0)
    lookahead = math.ceil(size.cold_start_seconds / seg) + 1
    choices = [model.candidates(k, n_max, lookahead) for k in range(model.segments)]
    # Steady state: the first segment also offers the replicas already running.
    choices[0] = sorted({*choices[0], n0})
    return [
        _search(model, target, total, start, choices, size.cold_start_seconds, size.gpus)
        for target in targets
    ]


def _search(
    model: SegmentModel,
    target: float,
    total: float,
    start: tuple[int, float, int],
    choices: Sequence[Sequence[int]],
    cold: int,
    gpus: int,
) -> Plan:
    allowed = (1 - target) * total
    best_bound = 0.0
    feasible: tuple[float, float, tuple[int, ...]] | None = None
    lo, hi = 0.0, 1.0
    # Grow hi until the plan meets the target (a missed request worth hi GPU-seconds).
    for _ in range(40):
        value, cost, misses, path = _dp(model, hi, start, choices, cold, gpus)
        best_bound = max(best_bound, value - hi * allowed)
        if misses <= allowed + 1e-9:
            feasible = (cost, misses, path)
            break
        lo, hi = hi, hi * 4
    if feasible is None:
        raise ValueError(f"target {target} unreachable")
    for _ in range(14):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 4
        value, cost, misses, path = _dp(model, mid, start, choices, cold, gpus)
        best_bound = max(best_bound, value - mid * allowed)
        if misses <= allowed + 1e-9:
            hi = mid
            if cost < feasible[0]:
                feasible = (cost, misses, path)
        else:
            lo = mid
        if hi / max(lo, 1e-12) < 1.1:
            break
    cost, misses, path = feasible
    return Plan(
        target=target,
        bound_gpu_seconds=best_bound,
        plan_gpu_seconds=cost,
        plan_attainment=1 - misses / total if total else 1.0,
        schedule=path,
        segment=model.segment,
    )
