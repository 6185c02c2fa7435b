"""Operator benchmark against the real test control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok GPU nodes; see tests/cluster/localcluster.py).

    python bench/operator_bench.py [--experts 200] [--samples 30] [--seed 1] [--markdown FILE]

Measures, with `modelflock operator` running as a subprocess (tests/support.py OperatorProcess):

1. create → Deployment latency: a ModelExpert is created with the official Python client
   (CustomObjectsApi.create_namespaced_custom_object; the clock starts just before the call) and
   a watch on Deployments (all namespaces, started beforehand) timestamps the Deployment's
   ADDED event. p50/p95 over N sequential samples. Baseline ("direct path"): the same rendered
   Deployment created by hand through the same client and timestamped by the same watch, so the
   operator's added latency is the difference. Measured twice: with an otherwise empty operator,
   and with `--experts` experts already under management.
2. cold start: `--experts` experts are created while the operator is stopped; the clock starts
   just before the operator process is spawned and stops when every one of them has
   status.observedGeneration == metadata.generation and a Deployment (both from watches).
3. operator peak RSS: VmHWM (and the highest sampled VmRSS) from /proc/<pid>/status, sampled
   every 0.2 s for every operator process of the run.

Every expert is a 7B vLLM model on the `l4` pool with autoscaling disabled and 1 replica, so
each one really gets a scheduled, Running (kwok) pod; the `l4` pool is sized so they all fit.
The operator runs with the production defaults for its timers (resyncSeconds 30, autoscaler
intervalSeconds 5). Everything is on 127.0.0.1 and every phase is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests")]

from kubernetes import client as k8s_client  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from localcluster import (  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
    DEFAULT_POOLS,
    GpuPool,
    LocalCluster,
)

from modelflock.api.modelexpert import ModelExpertSpec  # noqa: E402
from modelflock.operator_config import parse_operator_config  # noqa: E402
from modelflock.render.expert import EXPERT_LABEL, ExpertRef, render_deployment  # noqa: E402
from support import OperatorProcess  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

GROUP, VERSION, PLURAL = "modelflock.io", "v1alpha1", "modelexperts"
NS_IDLE, NS_COLD, NS_LOADED, NS_DIRECT = "bench-idle", "bench-cold", "bench-loaded", "bench-direct"
GOALS = {"p50": 0.200, "cold": 30.0, "rss_mib": 150.0}
RSS_INTERVAL = 0.2
SAMPLE_TIMEOUT = 60.0
Key = tuple[str, str]


def expert_spec() -> dict[str, Any]:
    return {
        "engine": "vllm",
        "model": {"name": "org/model-7b", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"enabled": False},
        "replicas": 1,
    }


def expert_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": expert_spec(),
    }


def direct_deployment(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The Deployment the operator would render, without the owner and with a label of its own
    so the operator's child handlers ignore it."""
    ref = ExpertRef(name=name, namespace=NS_DIRECT, uid="00000000-0000-0000-0000-000000000000")
    spec = ModelExpertSpec.model_validate(expert_spec())
    manifest = render_deployment(ref, spec, parse_operator_config(config), 1)
    del manifest["metadata"]["ownerReferences"]
    for container in manifest["spec"]["template"]["spec"]["containers"]:
        for quantities in container.get("resources", {}).values():
            # The typed client wants quantities as strings; the API server reads both alike.
            quantities.update({k: str(v) for k, v in quantities.items()})
    text = json.dumps(manifest).replace(EXPERT_LABEL, "bench.modelflock.io/direct")
    result: dict[str, Any] = json.loads(text)
    return result


# ---- watches -------------------------------------------------------------------------------


class Watcher:
    """A watch over all namespaces in a thread; records when each object first satisfied
    `ready(obj)` (time.monotonic() at receipt of the event)."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        args: Sequence[Any],
        ready: Callable[[dict[str, Any]], bool],
    ) -> None:
        self.name = name
        self.list_call = list_call
        self.args = tuple(args)
        self.ready = ready
        self.seen: dict[Key, float] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        listed = self.list_call(*self.args, _preload_content=False)
        initial = json.loads(listed.data)
        with self.cond:
            for obj in initial["items"]:
                self._record(obj, time.monotonic())
        self.version = str(initial["metadata"]["resourceVersion"])
        self.thread.start()

    def _record(self, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (str(meta.get("namespace")), str(meta["name"]))
        if key not in self.seen and self.ready(obj):
            self.seen[key] = now
            self.cond.notify_all()

    def _run(self) -> None:
        while not self.stopping:
            stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.list_call,
                    *self.args,
                    resource_version=self.version,
                    timeout_seconds=60,
                    deserialize=False,
                ):
                    now = time.monotonic()
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {self.name}: {obj}")
                    self.version = str(obj["metadata"]["resourceVersion"])
                    if event["type"] in ("ADDED", "MODIFIED"):
                        with self.cond:
                            self._record(obj, now)
                    if self.stopping:
                        return
            except BaseException as error:  # surfaced to the waiting thread
                if self.stopping:
                    return
                self.error = error
                with self.cond:
                    self.cond.notify_all()
                return

    def wait(self, keys: Sequence[Key], timeout: float) -> dict[Key, float]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"watch {self.name} failed: {self.error!r}")
                missing = [k for k in keys if k not in self.seen]
                if not missing:
                    return {k: self.seen[k] for k in keys}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name}: {len(missing)} of {len(keys)} not ready after {timeout}s"
                        f" (first: {missing[0]})"
                    )
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self.stopping = True


def reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"].get("generation"))


# ---- operator RSS --------------------------------------------------------------------------


def proc_status_kib(pid: int, fields: Sequence[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in fields:
                values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RssSampler:
    """Samples the current operator process every 0.2 s; keeps the peaks per pid."""

    pid: Callable[[], int | None]
    hwm_kib: dict[int, int] = field(default_factory=dict)
    rss_max_kib: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.wait(RSS_INTERVAL):
            self.sample()

    def sample(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        values = proc_status_kib(pid, ("VmHWM", "VmRSS"))
        if not values:
            return
        self.samples += 1
        self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), values.get("VmHWM", 0))
        self.rss_max_kib[pid] = max(self.rss_max_kib.get(pid, 0), values.get("VmRSS", 0))


# ---- the run -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Latencies:
    deployment: list[float] = field(default_factory=list)  # create call → Deployment ADDED
    status: list[float] = field(default_factory=list)  # create call → observedGeneration
    direct: list[float] = field(default_factory=list)  # direct Deployment create → ADDED


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    rng: random.Random
    cluster: LocalCluster
    config: dict[str, Any]
    operator: OperatorProcess | None = None
    notes: list[str] = field(default_factory=list)
    loads: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)

    def connect(self) -> None:
        k8s_config.load_kube_config(config_file=str(self.cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = k8s_client.ApiClient()
        self.core = k8s_client.CoreV1Api(self.api)
        self.apps = k8s_client.AppsV1Api(self.api)
        self.custom = k8s_client.CustomObjectsApi(self.api)
        self.deployments = Watcher(
            "deployments", self.apps.list_deployment_for_all_namespaces, (), lambda _: True
        )
        self.experts = Watcher(
            "modelexperts",
            self.custom.list_cluster_custom_object,
            (GROUP, VERSION, PLURAL),
            reconciled,
        )
        self.deployments.start()
        self.experts.start()

    def note_load(self, when: str) -> None:
        self.loads.append((when, os.getloadavg()))

    def start_operator(self) -> OperatorProcess:
        workdir = self.workdir / f"operator-{time.monotonic_ns()}"
        workdir.mkdir()
        op = OperatorProcess(
            cluster=self.cluster, workdir=workdir, config_overrides=self.config_overrides()
        )
        self.operator = op
        op.start()
        return op

    def config_overrides(self) -> dict[str, Any]:
        """Bench pools; production timers instead of the tests' fast ones (operator_config())."""
        return {**self.config, "autoscaler": {}, "resyncSeconds": 30.0}

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def namespace(self, name: str) -> None:
        self.core.create_namespace(
            k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name))
        )

    def create_expert(self, namespace: str, name: str) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, expert_manifest(name)
        )

    def latency(self, namespace: str, prefix: str) -> Latencies:
        """`samples` operator samples and `samples` direct samples, interleaved in random order,
        strictly one at a time, with a random 0.1-0.4 s pause between them."""
        result = Latencies()
        order = ["operator"] * self.args.samples + ["direct"] * self.args.samples
        self.rng.shuffle(order)
        for index, kind in enumerate(order):
            time.sleep(self.rng.uniform(0.1, 0.4))
            name = f"{prefix}-{index:03d}"
            if kind == "operator":
                key = (namespace, name)
                started = time.monotonic()
                self.create_expert(namespace, name)
                created = self.deployments.wait([key], SAMPLE_TIMEOUT)[key]
                status = self.experts.wait([key], SAMPLE_TIMEOUT)[key]
                result.deployment.append(created - started)
                result.status.append(status - started)
            else:
                key = (NS_DIRECT, name)
                body = k8s_client.V1Deployment.from_dict(direct_deployment(name, self.config))
                assert body is not None
                started = time.monotonic()
                self.apps.create_namespaced_deployment(NS_DIRECT, body)
                result.direct.append(self.deployments.wait([key], SAMPLE_TIMEOUT)[key] - started)
        return result

    def cold_start(self) -> tuple[float, float, float, float]:
        """Returns (all reconciled, operator healthy, first reconciled, operator CPU seconds)."""
        self.namespace(NS_COLD)
        names = [f"cold-{i:04d}" for i in range(self.args.experts)]
        for name in names:
            self.create_expert(NS_COLD, name)
        keys = [(NS_COLD, n) for n in names]
        time.sleep(1.0)  # let the control plane settle after the burst of creates
        self.note_load("before cold start")
        started = time.monotonic()
        op = self.start_operator()
        healthy = time.monotonic() - started
        timeout = max(120.0, self.args.experts * 1.5)
        deployments = self.deployments.wait(keys, timeout)
        statuses = self.experts.wait(keys, timeout)
        done = [max(deployments[k], statuses[k]) for k in keys]
        assert op.process is not None
        cpu = cpu_seconds(op.process.pid)
        return max(done) - started, healthy, min(done) - started, cpu

    def delete_namespace(self, name: str, timeout: float = 180.0) -> None:
        self.core.delete_namespace(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.core.read_namespace(name)
            except ApiException as error:
                if error.status == 404:
                    return
                raise
            time.sleep(0.5)
        raise TimeoutError(f"namespace {name} still exists after {timeout}s")


def counter_total(op: OperatorProcess, name: str, label: str) -> float:
    """Sum of a counter's samples whose labels contain `label` (e.g. 'kind="Deployment"')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{name}{{") and label in line
    )


def reconciles_total(op: OperatorProcess) -> float:
    return counter_total(op, "modelflock_reconciles_total", 'kind="ModelExpert"')


def deployment_applies(op: OperatorProcess) -> float:
    return counter_total(op, "modelflock_applies_total", 'kind="Deployment"')


def bench_pools(args: argparse.Namespace) -> tuple[GpuPool, ...]:
    gpus = args.experts + 2 * args.samples + 16
    l4 = GpuPool(
        name="l4",
        nodes=math.ceil(gpus / 8),
        gpus_per_node=8,
        gpu_memory_gib=24,
        product="NVIDIA-L4",
    )
    return (l4, *[p for p in DEFAULT_POOLS if p.name != "l4"])


def pool_config(pools: Sequence[GpuPool]) -> list[dict[str, Any]]:
    return [
        {
            "name": pool.name,
            "nodeSelector": {"modelflock.io/node-pool": pool.name},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "gpuMemoryGiB": pool.gpu_memory_gib,
            "gpusPerNode": pool.gpus_per_node,
        }
        for pool in pools
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mib(kib: int) -> float:
    return kib / 1024


@dataclass
class Row:
    metric: str
    value: str
    goal: str = ""
    met: str = ""


def table(rows: Sequence[Row]) -> tuple[str, str]:
    headers = ("metric", "value", "goal", "met?")
    cells = [headers, *[(r.metric, r.value, r.goal, r.met) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    text = "\n".join(
        "  ".join(c[i].ljust(widths[i]) for i in range(4)).rstrip() for c in cells
    ).splitlines()
    text.insert(1, "  ".join("-" * w for w in widths))
    markdown = [
        "| " + " | ".join(headers) + " |",
        "|---|---:|---:|:---:|",
        *["| " + " | ".join((r.metric, r.value, r.goal, r.met)) + " |" for r in rows],
    ]
    return "\n".join(text), "\n".join(markdown)


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def latency_rows(label: str, result: Latencies, goal: bool) -> list[Row]:
    p50 = percentile(result.deployment, 50)
    direct50 = percentile(result.direct, 50)
    return [
        Row(
            f"{label}: create → Deployment p50",
            ms(p50),
            "< 200 ms" if goal else "",
            verdict(p50 < GOALS["p50"]) if goal else "",
        ),
        Row(f"{label}: create → Deployment p95", ms(percentile(result.deployment, 95))),
        Row(f"{label}: direct Deployment create p50 (baseline)", ms(direct50)),
        Row(f"{label}: direct Deployment create p95 (baseline)", ms(percentile(result.direct, 95))),
        Row(f"{label}: operator added latency (p50 - baseline p50)", ms(p50 - direct50)),
        Row(f"{label}: create → status.observedGeneration p50", ms(percentile(result.status, 50))),
    ]


def run(args: argparse.Namespace) -> str:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="modelflock-opbench-") as tmp:
        workdir = Path(tmp)
        pools = bench_pools(args)
        cluster = LocalCluster(workdir=workdir / "cluster", pools=pools)
        config = {"nodePools": pool_config(pools)}
        bench = Bench(args=args, workdir=workdir, rng=rng, cluster=cluster, config=config)
        bench.note_load("start")
        cluster.start()
        sampler = RssSampler(
            pid=lambda: (
                bench.operator.process.pid
                if bench.operator is not None and bench.operator.process is not None
                else None
            )
        )
        sampler_thread = threading.Thread(target=sampler.run, name="rss", daemon=True)
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/modelexperts.modelflock.io",
                "crd/routingpolicies.modelflock.io",
            )
            bench.connect()
            sampler_thread.start()
            for ns in (NS_IDLE, NS_DIRECT):
                bench.namespace(ns)

            log(f"phase 1: {args.samples}+{args.samples} latency samples, no other experts")
            bench.start_operator()
            time.sleep(2.0)  # let kopf's watches settle
            bench.note_load("phase 1")
            idle = bench.latency(NS_IDLE, "idle")
            log("phase 1 done; deleting its experts")
            bench.delete_namespace(NS_IDLE)
            bench.stop_operator()

            log(f"phase 2: cold start with {args.experts} experts")
            cold, healthy, first, cpu = bench.cold_start()
            assert bench.operator is not None
            reconciles_cold = reconciles_total(bench.operator)
            applies_cold = deployment_applies(bench.operator)
            log(f"phase 2 done: {cold:.1f}s")

            log(f"phase 3: latency with {args.experts} experts under management")
            bench.namespace(NS_LOADED)
            time.sleep(2.0)
            bench.note_load("phase 3")
            loaded = bench.latency(NS_LOADED, "loaded")
            applies_end = deployment_applies(bench.operator)
            sampler.sample()
            bench.note_load("end")
        finally:
            sampler.stopping.set()
            bench.stop_operator()
            with contextlib.suppress(AttributeError):
                bench.deployments.stop()
                bench.experts.stop()
            cluster.stop()

    peak_hwm = max(sampler.hwm_kib.values())
    peak_rss = max(sampler.rss_max_kib.values())
    n = args.experts
    rows = [
        *latency_rows("idle operator", idle, goal=True),
        *latency_rows(f"{n} experts managed", loaded, goal=False),
        Row(
            f"cold start: {n} experts reconciled (spawn → all observedGeneration + Deployment)",
            f"{cold:.1f} s",
            "< 30 s",
            verdict(cold < GOALS["cold"]),
        ),
        Row("cold start: operator spawn → liveness OK", f"{healthy:.1f} s"),
        Row("cold start: spawn → first expert reconciled", f"{first:.1f} s"),
        Row("cold start: operator CPU time until all reconciled", f"{cpu:.1f} s"),
        Row(
            "cold start: ModelExpert reconciles counted by then",
            f"{reconciles_cold:.0f}",
        ),
        Row(
            "cold start: Deployment server-side applies by then (1 per expert is the floor)",
            f"{applies_cold:.0f}",
        ),
        Row(
            f"phase 3: Deployment applies while {n} ready experts were managed"
            f" and {args.samples} were created",
            f"{applies_end - applies_cold:.0f}",
        ),
        Row(
            "operator peak RSS (VmHWM, max over operator processes)",
            f"{mib(peak_hwm):.1f} MiB",
            "< 150 MiB",
            verdict(mib(peak_hwm) < GOALS["rss_mib"]),
        ),
        Row("operator highest sampled VmRSS", f"{mib(peak_rss):.1f} MiB"),
    ]
    text, markdown = table(rows)
    hwm_each = ", ".join(f"{mib(v):.1f}" for v in sampler.hwm_kib.values())
    loads = "; ".join(f"{when}: {a:.2f} {b:.2f} {c:.2f}" for when, (a, b, c) in bench.loads)
    context = [
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()},"
        f" Python {platform.python_version()}; shared with other engineers' test runs",
        f"- load average (1/5/15 min) — {loads}",
        f"- samples: {args.samples} operator + {args.samples} direct per latency phase"
        f" (interleaved, seed {args.seed}); RSS samples: {sampler.samples}"
        f" every {RSS_INTERVAL}s; VmHWM per operator process (MiB): {hwm_each}",
        f"- pools: {', '.join(f'{p.name} {p.nodes}x{p.gpus_per_node} GPU' for p in pools)}",
    ]
    print(text)
    print("\n".join(context))
    return markdown + "\n\n" + "\n".join(context) + "\n"


def log(message: str) -> None:
    print(f"[operator-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experts", type=int, default=200, help="experts for the cold start")
    parser.add_argument("--samples", type=int, default=30, help="latency samples per path")
    parser.add_argument("--seed", type=int, default=1, help="order and pauses of the samples")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    if args.experts < 1 or args.samples < 1:
        parser.error("--experts and --samples must be at least 1")
    markdown = run(args)
    if args.markdown:
        args.markdown.write_text(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
