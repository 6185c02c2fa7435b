"""After an API-server or etcd outage the operator resumes within seconds, by itself, and logs
the outage in a few lines.

Before: a spec change reached its Deployment only when kopf's watch reconnected (up to 21 s
of backoff; 12.3 s after a 70 s outage), and about 35 WARNING/ERROR lines a second were logged.
Here the test cluster's own kube-apiserver and etcd are stopped and started again
(tests/cluster/localcluster.py) under a small running portfolio, with the chart's election
timings (lease 15 s, renew deadline 10 s, retry 2 s).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from localcluster import LocalCluster

from operator_chaos import Outage, autoscaled, expert, measure_outage
from support import (
    FRONTIER_EXPERT,
    OperatorProcess,
    apply,
    condition,
    delete_namespace,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "outage"


PORTFOLIO: list[dict[str, Any]] = [
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "frontier-key"},
        "data": {"api-key": base64.b64encode(b"sk-outage").decode()},
    },
    expert("steady"),
    autoscaled(),
    FRONTIER_EXPERT,
    {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "outage"},
        "spec": {
            "experts": ["steady", "scaled", "frontier"],
            "baseline": "frontier",
            "routes": [{"name": "chat", "expert": "steady", "fallbacks": ["frontier"]}],
        },
    },
]


@pytest.fixture(scope="module")
def running(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The portfolio, served by the session operator with the chart's election timings."""
    cluster.kubectl("create", "namespace", NS)
    try:
        for doc in PORTFOLIO:
            apply(cluster, NS, doc)
        for name in ("steady", "scaled", "frontier"):
            wait_for(lambda name=name: ready(cluster, "modelexpert", name), f"{name} Ready", 60)
        wait_for(lambda: ready(cluster, "routingpolicy", "outage"), "policy Ready", 60)
        yield operator
    finally:
        # Whatever happened, leave a leading operator behind for the next module.
        if not operator.running:
            operator.start()
        wait_for(operator.is_leader, "session operator leading", 60)
        delete_namespace(cluster, NS)


def ready(cluster: LocalCluster, kind: str, name: str) -> Any:
    obj = get_json(cluster, kind, name, "-n", NS)
    ok = (
        condition(obj, "Ready").get("status") == "True"
        and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    )
    return obj if ok else None


def summary(result: Outage) -> str:
    """The figures and the log lines (printed too: `pytest -s` shows them)."""
    return (
        f"down {result.down:.1f}s, API ready {result.back:.1f}s after start, resumed "
        f"{result.resumed:.1f}s later, {len(result.lines)} log lines:\n" + "\n".join(result.lines)
    )


def test_short_apiserver_outage(cluster: LocalCluster, running: OperatorProcess) -> None:
    """3 s down (plus the API server's own start, seconds on a loaded machine): watches
    reconnect, or, past the renew deadline, the leader steps down and leads again."""
    result = measure_outage(cluster, running, NS, "kube-apiserver", 3)
    text = "\n".join(result.lines)
    print(summary(result))
    assert result.resumed < 6.0, summary(result)
    assert len(result.lines) <= 8, summary(result)
    assert text.count("Kubernetes API unreachable") == 1, summary(result)
    assert text.count("Kubernetes API reachable again") == 1, summary(result)
    assert "Traceback" not in text, summary(result)


def test_long_apiserver_outage(cluster: LocalCluster, running: OperatorProcess) -> None:
    """25 s down, past the renew deadline: the leader stops writing, and leads again (it is the
    only candidate) as soon as the API answers."""
    result = measure_outage(cluster, running, NS, "kube-apiserver", 25)
    text = "\n".join(result.lines)
    print(summary(result))
    assert result.resumed < 6.0, summary(result)
    assert len(result.lines) <= 10, summary(result)
    assert "lost the leader Lease" in text, summary(result)
    assert text.count("Kubernetes API unreachable") == 1, summary(result)
    assert text.count("Kubernetes API reachable again") == 1, summary(result)
    assert "Traceback" not in text, summary(result)
    assert running.is_leader()


def test_etcd_restart(cluster: LocalCluster, running: OperatorProcess) -> None:
    result = measure_outage(cluster, running, NS, "etcd", 8)
    text = "\n".join(result.lines)
    print(summary(result))
    assert result.resumed < 6.0, summary(result)
    assert len(result.lines) <= 10, summary(result)
    assert "Traceback" not in text, summary(result)
    assert running.is_leader()
    for name in ("steady", "scaled", "frontier"):
        wait_for(lambda name=name: ready(cluster, "modelexpert", name), f"{name} Ready", 60)
    wait_for(lambda: ready(cluster, "routingpolicy", "outage"), "policy Ready", 60)
