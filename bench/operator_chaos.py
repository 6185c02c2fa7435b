"""Operator chaos on the real control plane (the long version of
tests/integration/test_operator_chaos.py and test_api_outage.py), printing a table.

    python bench/operator_chaos.py [--kills 50] [--seed 14] [--outages 10,70] [--etcd 10]

1. Two operator replicas (lease 4 s); `--kills` times: one or two random spec changes
   (replicas, pod template, expert created or deleted, gateway on/off), a random pause of up
   to 0.6 s (the leader is mid-reconcile), SIGKILL of the leader, a new standby started. Then
   the invariants of tests/operator_chaos.py: convergence, orphans, double scaling, spurious
   rollouts, tracebacks.
2. One operator with the chart's election timings (15/10/2 s) under a small portfolio:
   kube-apiserver stopped for each of `--outages` seconds, then etcd for `--etcd` seconds;
   after each, a spec change is made as soon as the API is ready and timed to its Deployment,
   and the operator's log lines over the outage are counted.

Everything runs on 127.0.0.1, in a cluster of its own, and is bounded by timeouts.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests")]

from localcluster import LocalCluster  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

from operator_chaos import (  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
    Chaos,
    autoscaled,
    expert,
    measure_outage,
)
from support import (  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
    OperatorProcess,
    apply,
    condition,
    get_json,
    wait_for,
)


def start_cluster(workdir: Path) -> LocalCluster:
    cluster = LocalCluster(workdir=workdir / "cluster")
    cluster.start()
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modelexperts.modelflock.io",
        "crd/routingpolicies.modelflock.io",
    )
    return cluster


def chaos_rows(
    cluster: LocalCluster, workdir: Path, kills: int, seed: int
) -> list[tuple[str, str]]:
    cluster.kubectl("create", "namespace", "chaos")
    chaos = Chaos(cluster, "chaos", workdir / "chaos", seed=seed)
    started = time.monotonic()
    try:
        chaos.start()
        for index in range(kills):
            took = chaos.kill_leader(max_delay=0.6)
            print(f"kill {index + 1}/{kills}: new leader after {took:.1f}s", file=sys.stderr)
        converged = chaos.wait_converged(timeout=120)
        report = chaos.check()
    finally:
        chaos.stop()
    takeovers = sorted(report.takeovers)
    return [
        ("leader SIGKILLs (mid-reconcile, 0-0.6 s after a change)", str(report.kills)),
        ("spec changes in between", str(report.spec_changes)),
        (
            "takeover by the standby (lease 4 s): median / max",
            f"{statistics.median(takeovers):.1f} s / {takeovers[-1]:.1f} s",
        ),
        ("converged after the last takeover", f"{converged:.1f} s"),
        ("orphaned or left-over children", str(len(report.orphans) + len(report.leftovers))),
        ("Deployments written more than once per change", str(len(report.extra_generations))),
        (
            "spurious rollouts (ReplicaSets beyond template changes)",
            str(len(report.extra_rollouts)),
        ),
        ("autoscaled expert rescaled without load", str(len(report.rescaled))),
        ("operator tracebacks", str(report.tracebacks)),
        ("events posted again by the next leader (at-least-once)", str(report.events_repeated)),
        ("chaos phase wall time", f"{time.monotonic() - started:.0f} s"),
    ]


def outage_rows(
    cluster: LocalCluster, workdir: Path, outages: Sequence[float], etcd: float
) -> list[tuple[str, str]]:
    namespace = "outage"
    cluster.kubectl("create", "namespace", namespace)
    (workdir / "outage-operator").mkdir()
    operator = OperatorProcess(cluster=cluster, workdir=workdir / "outage-operator")
    operator.start()
    rows: list[tuple[str, str]] = []
    try:
        secret = base64.b64encode(b"sk-bench").decode()
        apply(
            cluster,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "k"},
                "data": {"a": secret},
            },
        )
        for doc in (expert("steady"), autoscaled()):
            apply(cluster, namespace, doc)
        apply(
            cluster,
            namespace,
            {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "portfolio"},
                "spec": {
                    "experts": ["steady", "scaled"],
                    "routes": [{"name": "chat", "expert": "steady"}],
                },
            },
        )
        for name in ("steady", "scaled"):
            wait_for(
                lambda name=name: (
                    condition(get_json(cluster, "modelexpert", name, "-n", namespace), "Ready").get(
                        "status"
                    )
                    == "True"
                ),
                f"{name} Ready",
                120,
            )
        plan = [("kube-apiserver", seconds) for seconds in outages] + [("etcd", etcd)]
        for component, seconds in plan:
            result = measure_outage(cluster, operator, namespace, component, seconds)
            tracebacks = sum("Traceback" in line for line in result.lines)
            rows.append(
                (
                    f"{component} down {result.down:.0f} s",
                    f"API ready {result.back:.1f} s after restart; spec change reached its "
                    f"Deployment {result.resumed:.1f} s later; {len(result.lines)} log lines; "
                    f"{tracebacks} tracebacks",
                )
            )
            print(rows[-1][0] + ": " + rows[-1][1], file=sys.stderr)
            print("\n".join("    " + line for line in result.lines), file=sys.stderr)
    finally:
        operator.stop()
    return rows


def table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=50, help="leader SIGKILLs (50)")
    parser.add_argument("--seed", type=int, default=14, help="random spec changes and pauses")
    parser.add_argument(
        "--outages", default="10,70", help="kube-apiserver outages, seconds, comma-separated"
    )
    parser.add_argument("--etcd", type=float, default=10, help="etcd outage, seconds (10)")
    args = parser.parse_args(argv)
    outages = [float(part) for part in args.outages.split(",") if part]
    with tempfile.TemporaryDirectory(prefix="modelflock-chaos-") as tmp:
        workdir = Path(tmp)
        cluster = start_cluster(workdir)
        try:
            rows = chaos_rows(cluster, workdir, args.kills, args.seed)
            rows += outage_rows(cluster, workdir, outages, args.etcd)
        finally:
            cluster.stop()
    print("| measurement | result |\n|---|---|")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
