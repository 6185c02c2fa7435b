"""Trace-driven simulation of one expert under several workloads and scaling policies.

    python bench/autoscale_sim.py [--seed 7] [--lag 10] [--markdown /tmp/autoscale-bench.md]

Time advances in 1 s steps. Requests arrive (Poisson), wait in one FIFO queue (the router
balances across replicas), run in the replicas' batches for about the model's service time and
complete. Replicas take the model's cold start to become ready; policies see load `--lag`
seconds old. Removed replicas stop taking work at once and are billed while they drain.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from autoscale_policies import HpaLike, KubeAiLike, Oracle, Ours, Policy, View
from autoscale_workloads import LARGE, SMALL, ModelSize, Workload, poisson, workloads
from modelflock.autoscale.algorithm import ScalingPolicy

OBJECTIVE_SECONDS = 2  # queue-time objective per request
MAX_REPLICAS = 10
# A request's run time varies with its output length: a quarter each at these fractions of the
# mean (mean 1.0), so completions spread out like a real batch's.
SERVICE_SPREAD = (0.4, 0.8, 1.1, 1.7)
FLAP_SECONDS = 600  # a reversal of direction within this long counts as flapping


@dataclass
class Replica:
    ready_at: int
    created_at: int


@dataclass
class Result:
    policy: str
    requests: int = 0
    on_time: int = 0
    gpu_seconds: float = 0.0
    scale_events: int = 0
    reversals: int = 0
    recover_seconds: float | None = None

    @property
    def attainment(self) -> float:
        return self.on_time / self.requests if self.requests else 1.0


@dataclass
class Cluster:
    """The expert's replicas and the requests in flight."""

    size: ModelSize
    replicas: list[Replica] = field(default_factory=list)
    queue: deque[list[int]] = field(default_factory=deque)  # [arrival second, count]
    waiting: int = 0
    running: int = 0
    completions: dict[int, int] = field(default_factory=dict)
    draining_until: list[int] = field(default_factory=list)

    batch: int = 0  # the effective batch of one replica right now

    def ready(self, now: int) -> int:
        return sum(1 for r in self.replicas if r.ready_at <= now)

    def scale_to(self, desired: int, now: int) -> None:
        if desired > len(self.replicas):
            for _ in range(desired - len(self.replicas)):
                self.replicas.append(Replica(now + self.size.cold_start_seconds, now))
            return
        # Like a ReplicaSet: remove not-ready pods first, then the newest.
        order = sorted(self.replicas, key=lambda r: (r.ready_at <= now, r.created_at))
        for victim in order[: len(self.replicas) - desired]:
            self.replicas.remove(victim)
            if victim.ready_at <= now:
                # It finishes what it runs before its GPU is free.
                self.draining_until.append(now + round(self.size.service_seconds))

    def admit(self, now: int) -> list[tuple[int, int]]:
        """Start waiting requests in free batch slots; returns (arrival second, count) admitted."""
        free = self.batch * self.ready(now) - self.running
        admitted: list[tuple[int, int]] = []
        while free > 0 and self.queue:
            head = self.queue[0]
            take = min(free, head[1])
            admitted.append((head[0], take))
            head[1] -= take
            free -= take
            if head[1] == 0:
                self.queue.popleft()
        started = sum(c for _, c in admitted)
        self.waiting -= started
        self.running += started
        for i, frac in enumerate(SERVICE_SPREAD):
            share = started // len(SERVICE_SPREAD) + (1 if i < started % len(SERVICE_SPREAD) else 0)
            if share:
                at = now + max(1, round(self.size.service_seconds * frac))
                self.completions[at] = self.completions.get(at, 0) + share
        return admitted


def _in_step(workload: Workload, arrival: int) -> bool:
    if workload.step_at is None or arrival < workload.step_at:
        return False
    return workload.step_until is None or arrival < workload.step_until


def simulate(workload: Workload, size: ModelSize, policy: Policy, seed: int, lag: int) -> Result:
    rng = random.Random(seed)
    cluster = Cluster(size)
    result = Result(policy.name)
    snapshots: deque[tuple[int, int, int, int]] = deque()  # (waiting, running, held, ready)
    desired_log: list[tuple[int, int]] = []
    last_miss_arrival: int | None = None
    initial = 1 if workload.load(0) > 0 else 0
    cluster.scale_to(initial, -size.cold_start_seconds)  # warm start for loaded workloads

    for now in range(workload.duration):
        cluster.batch = workload.batch(size, now)
        arrivals = poisson(rng, workload.load(now) * size.throughput)
        if arrivals:
            cluster.queue.append([now, arrivals])
            cluster.waiting += arrivals
            result.requests += arrivals
        cluster.running -= cluster.completions.pop(now, 0)
        for arrival, count in cluster.admit(now):
            if now - arrival <= OBJECTIVE_SECONDS:
                result.on_time += count
            elif _in_step(workload, arrival):
                last_miss_arrival = max(last_miss_arrival or arrival, arrival)

        ready = cluster.ready(now)
        held = cluster.waiting if ready == 0 else 0
        snapshots.append((cluster.waiting, cluster.running, held, ready))
        if len(snapshots) > lag + 1:
            snapshots.popleft()

        if now % policy.interval == 0:
            waiting, running, held_then, ready_then = snapshots[0]
            view = View(
                now=now,
                replicas=len(cluster.replicas),
                ready=ready,
                starting_ages=tuple(
                    now - r.created_at for r in cluster.replicas if r.ready_at > now
                ),
                waiting=waiting,
                running=running,
                ready_sampled=ready_then,
                held_by_router=max(held, held_then),
            )
            desired = max(0, min(MAX_REPLICAS, policy.decide(view)))
            if desired != len(cluster.replicas):
                desired_log.append((now, desired - len(cluster.replicas)))
                cluster.scale_to(desired, now)

        cluster.draining_until = [t for t in cluster.draining_until if t > now]
        result.gpu_seconds += (len(cluster.replicas) + len(cluster.draining_until)) * size.gpus

    # Requests still queued at the end never met the objective (they are already counted).
    result.scale_events = len(desired_log)
    result.reversals = sum(
        1
        for (t0, d0), (t1, d1) in itertools.pairwise(desired_log)
        if d0 < 0 < d1 and t1 - t0 < FLAP_SECONDS
    )
    if workload.step_at is not None:
        result.recover_seconds = (
            0.0 if last_miss_arrival is None else float(last_miss_arrival - workload.step_at)
        )
    return result


def our_policy(capacity_hint: int | None = None) -> ScalingPolicy:
    """The CRD defaults; the expert's own bounds are the only per-benchmark settings."""
    return ScalingPolicy(min_replicas=0, max_replicas=MAX_REPLICAS, capacity_hint=capacity_hint)


def policies(workload: Workload, size: ModelSize) -> list[Policy]:
    return [
        Ours(our_policy()),
        # The same with spec.autoscaling.capacityHint set to the load-tested batch: the number
        # hpa-like and kubeai-like are given as their target.
        Ours(our_policy(size.batch), name="ours + capacityHint"),
        # HPA on average in-flight (running + waiting) per pod, targeting one full batch.
        HpaLike("hpa-like", interval=15, target=size.batch, use_running=True),
        # KEDA ScaledObject on vllm:num_requests_waiting, threshold 5, polling 30 s.
        HpaLike("keda-like", interval=30, target=5, use_running=False),
        KubeAiLike(target=size.batch),
        Oracle(workload, size),
    ]


def run(seed: int, lag: int) -> list[tuple[str, str, Result]]:
    rows = []
    for size in (SMALL, LARGE):
        for workload in workloads(seed):
            for policy in policies(workload, size):
                rows.append((size.name, workload.name, simulate(workload, size, policy, seed, lag)))
    return rows


def table(rows: list[tuple[str, str, Result]]) -> str:
    header = (
        "| model | workload | policy | queue time <= 2 s | GPU-hours | vs HPA | "
        "scale events | reversals < 10 min | recover after step |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    hpa = {(m, w): r.gpu_seconds for m, w, r in rows if r.policy == "hpa-like"}
    added = {w.name for w in workloads(0) if w.added}
    lines = []
    for model, workload, r in rows:
        vs = r.gpu_seconds / hpa[(model, workload)] - 1 if hpa[(model, workload)] else 0.0
        recover = "-" if r.recover_seconds is None else f"{r.recover_seconds:.0f} s"
        name = f"{workload} (added)" if workload in added else workload
        lines.append(
            f"| {model} | {name} | {r.policy} | {100 * r.attainment:.1f}% | "
            f"{r.gpu_seconds / 3600:.1f} | {100 * vs:+.0f}% | {r.scale_events} | "
            f"{r.reversals} | {recover} |"
        )
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lag", type=int, default=10, help="metric lag in seconds")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.seed, args.lag)
    text = table(rows)
    sys.stdout.write(text)
    sys.stdout.write(f"\n{len(rows)} runs in {time.perf_counter() - started:.1f} s\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
