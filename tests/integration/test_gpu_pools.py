"""kwok GPU pools and the real scheduler: pods land on the right pool, or stay Pending."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from localcluster import NODE_IP, LocalCluster

from support import fresh_namespace

pytestmark = pytest.mark.cluster

NS = "gpu-tests"


def _pod(name: str, pool: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeSelector": {"modelflock.io/node-pool": pool},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [
                {
                    "name": "engine",
                    "image": "engine:test",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


def _get(cluster: LocalCluster, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(cluster.kubectl("get", "pod", name, "-n", NS, "-o", "json"))
    return pod


def _wait(cluster: LocalCluster, name: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pod = _get(cluster, name)
        if predicate(pod) or time.monotonic() > deadline:
            return pod
        time.sleep(0.3)


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as name:
        yield name


def test_pools_exist_with_gpu_capacity_and_taints(cluster: LocalCluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        by_pool.setdefault(node["metadata"]["labels"]["modelflock.io/node-pool"], []).append(node)
    assert {pool: len(members) for pool, members in by_pool.items()} == {"l4": 8, "h100": 2}
    assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in by_pool["h100"]} == {"8"}
    for node in nodes:
        assert node["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
        assert all(
            a["address"] in (NODE_IP, node["metadata"]["name"])
            or ipaddress.ip_address(a["address"]).is_loopback
            for a in node["status"].get("addresses", [])
            if a["type"] == "InternalIP"
        )


def test_one_gpu_pod_runs_on_its_pool(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_pod("fits", "l4", 1)))
    pod = _wait(cluster, "fits", lambda p: _condition(p, "Ready").get("status") == "True")
    assert _condition(pod, "Ready").get("status") == "True", pod["status"]
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"].startswith("gpu-l4-")
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(cluster.pod_cidr)


def test_too_many_gpus_stays_pending_unschedulable(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_pod("too-big", "l4", 4)))
    pod = _wait(
        cluster, "too-big", lambda p: _condition(p, "PodScheduled").get("reason") == "Unschedulable"
    )
    scheduled = _condition(pod, "PodScheduled")
    assert scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable", pod[
        "status"
    ]
    assert "nvidia.com/gpu" in scheduled.get("message", "")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_untolerated_taint_keeps_pod_off_gpu_nodes(cluster: LocalCluster) -> None:
    pod = _pod("no-toleration", "h100", 1)
    del pod["spec"]["tolerations"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    got = _wait(
        cluster,
        "no-toleration",
        lambda p: _condition(p, "PodScheduled").get("reason") == "Unschedulable",
    )
    assert "taint" in _condition(got, "PodScheduled").get("message", "")
