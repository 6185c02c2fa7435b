"""The simulated serving fleet of one expert: per-pod engines, a balancing router, cold starts.

Time advances in 1 s steps. Each pod is a small vLLM-like engine with its own waiting queue:
it admits requests first come first served while its batch and KV cache have room and its
prefill budget for the second lasts; a decode step takes longer the more sequences run;
a request finishes after its output tokens. The router sends each second's arrivals to the
ready pods with the fewest requests in flight (waiting + running) and holds them while no pod
is ready. Pods become ready a cold start (plus, optionally, a node's provisioning delay) after
they are created. A removed pod takes no new work, hands its queue back to the router and is
billed until its running requests finish.
"""

from __future__ import annotations

import functools
import heapq
from collections import deque
from dataclasses import dataclass, field

from autoscale_workloads import Mix, ModelSize

# A request's output length varies: these fractions of the mix's mean, in turn.
OUTPUT_SPREAD = (0.4, 0.8, 1.1, 1.7)
QUEUE_WAIT_OBJECTIVE = 2  # seconds, reported next to the TTFT/TPOT objective
EPISODE_SECONDS = 600  # attainment is also reported per 10-minute window of arrivals
NODE_KEEP_SECONDS = 600  # a freed node stays this long (cluster-autoscaler's default)
TTFT_BUCKET = 0.1  # histogram resolution for TTFT percentiles, seconds
TTFT_BUCKETS = 3000  # up to 300 s; longer lands in the last bucket


@dataclass(slots=True)
class Cohort:
    """Requests that arrived in the same second with the same mix and wait in one queue."""

    arrival: int
    count: int
    mix: Mix


def _in_flight(pod: Pod) -> int:
    return pod.waiting + pod.running


@functools.lru_cache(maxsize=256)
def _tokens(output: int, quarter: int) -> int:
    return max(1, round(output * OUTPUT_SPREAD[quarter]))


@dataclass(slots=True)
class Pod:
    created_at: int
    ready_at: int
    draining: bool = False
    queue: deque[Cohort] = field(default_factory=deque)
    waiting: int = 0
    running: int = 0
    kv_used: int = 0
    steps: float = 0.0  # decode steps done since the pod started
    prefill_debt: float = 0.0  # prefill seconds spilling into the next second
    prefill_used: float = 0.0  # prefill seconds of the current second (no decoding then)
    turn: int = 0  # which of OUTPUT_SPREAD the next admitted chunk gets
    completed: int = 0  # finished requests (vllm:request_success_total)
    # (steps at which done, seq, count, admitted at, output tokens, kv tokens, on time, arrival)
    batch: list[tuple[float, int, int, int, int, int, bool, int]] = field(default_factory=list)

    def ready(self, now: int) -> bool:
        return self.ready_at <= now

    @property
    def in_flight(self) -> int:
        return self.waiting + self.running


@dataclass(frozen=True, slots=True)
class PodSample:
    """What one ready pod's /metrics said at one second."""

    pod: int  # id(pod) stand-in: its creation sequence number
    waiting: int
    running: int
    kv_usage: float
    completed: int


@dataclass
class Outcome:
    """Per-run counters."""

    requests: int = 0
    slo_met: int = 0  # TTFT and TPOT both within objective
    queue_met: int = 0  # waited <= QUEUE_WAIT_OBJECTIVE
    gpu_seconds: float = 0.0
    ttft_hist: list[int] = field(default_factory=lambda: [0] * TTFT_BUCKETS)
    episode_total: dict[int, int] = field(default_factory=dict)
    episode_met: dict[int, int] = field(default_factory=dict)

    def record_ttft(self, ttft: float, count: int) -> None:
        self.ttft_hist[min(TTFT_BUCKETS - 1, int(ttft / TTFT_BUCKET))] += count

    def ttft_percentile(self, q: float) -> float:
        total = sum(self.ttft_hist)
        if not total:
            return 0.0
        need, seen = q * total, 0
        for i, c in enumerate(self.ttft_hist):
            seen += c
            if seen >= need:
                return (i + 1) * TTFT_BUCKET
        return TTFT_BUCKETS * TTFT_BUCKET

    def worst_episode(self) -> float:
        shares = [self.episode_met.get(e, 0) / n for e, n in self.episode_total.items() if n >= 50]
        return min(shares, default=1.0)


class Fleet:
    """The expert's pods, its router and the requests in flight."""

    def __init__(self, size: ModelSize, node_delay: int = 0) -> None:
        self.size = size
        self.node_delay = node_delay
        self.pods: dict[int, Pod] = {}
        self.held: deque[Cohort] = deque()  # at the router, no pod ready
        self.held_count = 0
        self.out = Outcome()
        self.free_nodes: list[int] = []  # release times of idle nodes
        self._next_id = 0
        self._seq = 0

    # -- replicas -------------------------------------------------------------------------
    def replicas(self) -> int:
        """Pods counted by the scale subresource (not draining)."""
        return sum(1 for p in self.pods.values() if not p.draining)

    def ready_pods(self, now: int) -> list[tuple[int, Pod]]:
        return [(i, p) for i, p in self.pods.items() if not p.draining and p.ready(now)]

    def starting_ages(self, now: int) -> list[int]:
        return [
            now - p.created_at for p in self.pods.values() if not p.draining and not p.ready(now)
        ]

    def scale_to(self, desired: int, now: int, *, warm: bool = False) -> None:
        live = [(i, p) for i, p in self.pods.items() if not p.draining]
        if desired > len(live):
            for _ in range(desired - len(live)):
                delay = self.size.cold_start_seconds
                self.free_nodes = [t for t in self.free_nodes if now - t < NODE_KEEP_SECONDS]
                if self.free_nodes:
                    self.free_nodes.pop()
                elif not warm:
                    delay += self.node_delay
                ready_at = now if warm else now + delay
                self.pods[self._next_id] = Pod(
                    created_at=now - (delay if warm else 0), ready_at=ready_at
                )
                self._next_id += 1
            return
        # Like a ReplicaSet: remove not-ready pods first, then the newest.
        order = sorted(live, key=lambda ip: (ip[1].ready(now), ip[1].created_at, ip[0]))
        for i, victim in order[: len(live) - desired]:
            victim.draining = True
            for cohort in victim.queue:
                self._hold(cohort)
            victim.queue.clear()
            victim.waiting = 0
            if not victim.ready(now) or victim.running == 0:
                self._release(i, now)

    def _release(self, i: int, now: int) -> None:
        del self.pods[i]
        self.free_nodes.append(now)

    def _hold(self, cohort: Cohort) -> None:
        self.held.append(cohort)
        self.held_count += cohort.count

    # -- one second ------------------------------------------------------------------------
    def step(self, now: int, arrivals: int, mix: Mix) -> None:
        """One second. Negative seconds are the warm-up: served, never counted."""
        out = self.out
        if arrivals:
            if now >= 0:
                out.requests += arrivals
                ep = now // EPISODE_SECONDS
                out.episode_total[ep] = out.episode_total.get(ep, 0) + arrivals
            self._hold(Cohort(now, arrivals, mix))
        ready: list[Pod] = []
        serving: list[Pod] = []
        for i, pod in list(self.pods.items()):
            if pod.ready_at > now:
                continue
            batch = pod.batch
            if batch and batch[0][0] <= pod.steps:
                self._complete(pod, now)
            if pod.draining:
                if pod.running == 0:
                    self._release(i, now)
                    continue
            else:
                ready.append(pod)
            serving.append(pod)
        if ready and self.held:
            self._route(ready)
        step_base, step_per_seq = self.size.step_base, self.size.step_per_seq
        for pod in serving:
            if pod.queue or pod.prefill_debt:
                self._admit(pod, now)
            running = pod.running
            if running:
                pod.steps += (1.0 - pod.prefill_used) / (step_base + step_per_seq * running)
            pod.prefill_used = 0.0
        if now >= 0:
            out.gpu_seconds += len(self.pods) * self.size.gpus

    def _route(self, pods: list[Pod]) -> None:
        """Least requests in flight first, one cohort slice at a time (water filling)."""
        if len(pods) == 1:
            pod = pods[0]
            while self.held:
                cohort = self.held.popleft()
                pod.queue.append(cohort)
                pod.waiting += cohort.count
            self.held_count = 0
            return
        while self.held:
            cohort = self.held.popleft()
            self.held_count -= cohort.count
            left = cohort.count
            while left:
                pods.sort(key=_in_flight)
                low = pods[0].waiting + pods[0].running
                level = None
                tied = 0
                for p in pods:
                    f = p.waiting + p.running
                    if f > low:
                        level = f
                        break
                    tied += 1
                room = (level - low) * tied if level is not None else left
                give = min(left, room)
                share, extra = divmod(give, tied)
                for j in range(tied):
                    n = share + (1 if j < extra else 0)
                    if n:
                        p = pods[j]
                        p.queue.append(Cohort(cohort.arrival, n, cohort.mix))
                        p.waiting += n
                left -= give

    def _complete(self, pod: Pod, now: int) -> None:
        out = self.out
        tpot_slo = self.size.tpot_slo
        batch, steps = pod.batch, pod.steps
        pop = heapq.heappop
        running, completed, kv_used = pod.running, pod.completed, pod.kv_used
        while batch and batch[0][0] <= steps:
            _, _, n, admitted, tokens, kv, ttft_ok, arrival = pop(batch)
            running -= n
            completed += n
            kv_used -= n * kv
            if arrival >= 0 and ttft_ok and (now - admitted) <= tpot_slo * tokens:
                out.slo_met += n
                ep = arrival // EPISODE_SECONDS
                out.episode_met[ep] = out.episode_met.get(ep, 0) + n
        pod.running, pod.completed, pod.kv_used = running, completed, kv_used

    def _admit(self, pod: Pod, now: int) -> None:
        size, out = self.size, self.out
        max_seqs, kv_capacity = size.max_seqs, size.kv_capacity
        prefill_rate, ttft_slo = size.prefill_tokens_per_second, size.ttft_slo
        step_base, step_per_seq = size.step_base, size.step_per_seq
        queue, batch = pod.queue, pod.batch
        elapsed = pod.prefill_debt
        budget = 1.0 - elapsed
        hist = out.ttft_hist
        spread = len(OUTPUT_SPREAD)
        push = heapq.heappush
        running, kv_used, waiting = pod.running, pod.kv_used, pod.waiting
        while queue and budget > 0 and running < max_seqs:
            head = queue[0]
            mix = head.mix
            prompt = mix.prompt
            kv_each = prompt + mix.output
            fit = min(max_seqs - running, (kv_capacity - kv_used) // kv_each)
            if fit <= 0:
                break
            prefill_each = prompt / prefill_rate
            by_budget = max(1, int(budget / prefill_each))
            count = head.count
            take = min(count, fit, by_budget)
            cost = take * prefill_each
            arrival = head.arrival
            waited = now - arrival
            # The chunk's requests get their first token after the prefill ahead of them,
            # their own prefill (on average half the chunk's) and one decode step.
            ttft = waited + elapsed + cost / 2 + step_base + step_per_seq * (running + take)
            ttft_ok = ttft <= ttft_slo
            if arrival >= 0:
                hist[min(TTFT_BUCKETS - 1, int(ttft / TTFT_BUCKET))] += take
                if waited <= QUEUE_WAIT_OBJECTIVE:
                    out.queue_met += take
            elapsed += cost
            budget -= cost
            # Output lengths: each admitted chunk gets the next of OUTPUT_SPREAD in turn (per
            # pod), so lengths vary across chunks and seconds.
            tokens = _tokens(mix.output, pod.turn)
            pod.turn = (pod.turn + 1) % spread
            kv = prompt + tokens
            self._seq += 1
            push(batch, (pod.steps + tokens, self._seq, take, now, tokens, kv, ttft_ok, arrival))
            kv_used += take * kv
            running += take
            waiting -= take
            if count == take:
                queue.popleft()
            else:
                head.count = count - take
        pod.running, pod.kv_used, pod.waiting = running, kv_used, waiting
        pod.prefill_debt = max(0.0, elapsed - 1.0)
        pod.prefill_used = min(1.0, elapsed)

    # -- observation ----------------------------------------------------------------------
    def sample(self, now: int) -> tuple[PodSample, ...]:
        cap = self.size.kv_capacity
        return tuple(
            PodSample(i, p.waiting, p.running, p.kv_used / cap, p.completed)
            for i, p in self.ready_pods(now)
        )

    def finish(self, end: int) -> None:
        """Requests never admitted by the end: a miss if they have already waited too long;
        otherwise left out of the count (they could still make it)."""
        out = self.out
        waiting = list(self.held) + [c for p in self.pods.values() for c in p.queue]
        for c in waiting:
            if c.arrival < 0:
                continue
            if end - c.arrival > self.size.ttft_slo:
                out.record_ttft(end - c.arrival, c.count)
            else:
                out.requests -= c.count
                ep = c.arrival // EPISODE_SECONDS
                out.episode_total[ep] -= c.count
        for p in self.pods.values():
            for _, _, n, _, _, _, ttft_ok, arrival in p.batch:
                if arrival >= 0 and ttft_ok:
                    out.slo_met += n  # on time so far; TPOT assumed kept
                    ep = arrival // EPISODE_SECONDS
                    out.episode_met[ep] = out.episode_met.get(ep, 0) + n
