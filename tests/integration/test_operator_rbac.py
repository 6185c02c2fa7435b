"""Finding 11: the operator runs with exactly the permissions the chart grants, and no more.

The chart's ServiceAccount and RBAC objects are rendered by helm and applied to the real
control plane; the operator then runs *as that ServiceAccount* (a TokenRequest token) through
everything it does: engine and external experts, the autoscaler's scale writes, a routing
policy with its token Secret, router ConfigMap and gateway (created, then deleted), events,
the leader Lease and the leader label on its pod. Any "forbidden" in its log fails the test,
so a verb dropped from the chart that the code still needs is caught here; and the
ServiceAccount must not be able to list or watch Secrets.

The namespaced mode (watchNamespaces) runs the same way with Roles only: objects in the
watched namespace are served, objects elsewhere are left alone.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localcluster import LocalCluster

from support import (
    FRONTIER_EXPERT,
    OperatorProcess,
    apply,
    condition,
    get_json,
    helm_template,
    make_webhook_certs,
    model_expert,
    service_account_kubeconfig,
    wait_for,
    without_session_operator,
)

pytestmark = pytest.mark.cluster

RELEASE_NS = "mf-rbac"
TEAM = "rbac-team"
INSIDE = "rbac-inside"
OTHER = "rbac-other"
POD = "rbac-operator-0"
SECRET_VALUE = "sk-rbac-test-0001"


@pytest.fixture(scope="module")
def namespaces(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[None]:
    """The session's admin operator would serve these namespaces too: stop it meanwhile."""
    with without_session_operator(cluster, operator, RELEASE_NS, TEAM, INSIDE, OTHER):
        yield


def install_rbac(cluster: LocalCluster, release: str, *values: str) -> str:
    """Applies the chart's ServiceAccount and RBAC templates; returns the account's name."""
    text = helm_template(
        cluster,
        release,
        RELEASE_NS,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
        *values,
    )
    cluster.kubectl("apply", "-f", "-", input=text)
    return f"{release}-modelflock"


def can_i(cluster: LocalCluster, account: str, *args: str) -> bool:
    out = cluster.kubectl(
        "auth", "can-i", *args, f"--as=system:serviceaccount:{RELEASE_NS}:{account}", check=False
    )
    return out.strip().splitlines()[0].strip() == "yes"


def run_as(
    cluster: LocalCluster,
    account: str,
    workdir: Path,
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> OperatorProcess:
    kubeconfig = service_account_kubeconfig(
        cluster, RELEASE_NS, account, workdir / "kubeconfig-sa.json"
    )
    process = OperatorProcess(
        cluster=cluster,
        workdir=workdir,
        env={"KUBECONFIG": str(kubeconfig), "POD_NAME": POD, "POD_NAMESPACE": RELEASE_NS},
        config_overrides={"leaderElection": {"leaseNamespace": RELEASE_NS}, **(config or {})},
        **kwargs,
    )
    process.start()
    return process


def expert(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": f"org/{name}", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
        "cost": {"inputPerMillion": "0.10", "outputPerMillion": "0.20"},
    }
    base.update(spec)
    return model_expert(name, base)


def policy(gateway_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "team"},
        "spec": {
            "experts": ["small", "frontier"],
            "baseline": "frontier",
            "routes": [{"name": "chat", "expert": "small", "fallbacks": ["frontier"]}],
            "gateway": {
                "replicas": gateway_replicas,
                "apiKeys": [{"name": "team", "secretRef": {"name": "gateway-keys", "key": "team"}}],
            },
        },
    }


def ready(cluster: LocalCluster, kind: str, name: str, namespace: str = TEAM) -> Any:
    obj = get_json(cluster, kind, name, "-n", namespace)
    ok = (
        condition(obj, "Ready").get("status") == "True"
        and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    )
    return obj if ok else None


def problems_in_log(process: OperatorProcess) -> list[str]:
    return [
        line
        for line in process.log_path.read_text(errors="replace").splitlines()
        if "forbidden" in line.lower() or "Traceback" in line
    ]


def test_operator_runs_with_the_charts_cluster_role_only(
    cluster: LocalCluster, namespaces: None, tmp_path: Path
) -> None:
    account = install_rbac(cluster, "rbac")
    # What finding 11 was about: no reading every Secret in the cluster.
    assert not can_i(cluster, account, "list", "secrets", "--all-namespaces")
    assert not can_i(cluster, account, "watch", "secrets", "--all-namespaces")
    assert not can_i(cluster, account, "list", "secrets", "-n", TEAM)
    assert can_i(cluster, account, "get", "secrets", "-n", TEAM)
    assert not can_i(cluster, account, "list", "namespaces")
    assert not can_i(cluster, account, "list", "customresourcedefinitions")
    assert not can_i(cluster, account, "update", "configmaps", "-n", TEAM)
    assert not can_i(cluster, account, "delete", "configmaps", "-n", TEAM)
    # The pod whose leader label the operator sets (a Pending pod is enough).
    cluster.kubectl(
        "run", POD, "-n", RELEASE_NS, "--image=modelflock/modelflock:0.1.0", "--restart=Never"
    )
    process = run_as(
        cluster, account, tmp_path, webhook_dir=make_webhook_certs(tmp_path / "webhook")
    )
    try:
        secret = base64.b64encode(SECRET_VALUE.encode()).decode()
        apply(
            cluster,
            TEAM,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "frontier-key"},
                "data": {"api-key": secret},
            },
        )
        apply(cluster, TEAM, expert("small"))
        apply(cluster, TEAM, FRONTIER_EXPERT)
        apply(cluster, TEAM, policy(gateway_replicas=1))
        small = wait_for(lambda: ready(cluster, "modelexpert", "small"), "small Ready", 60)
        # The autoscaler wrote replicas through the scale subresource.
        assert small["spec"]["replicas"] == 1
        wait_for(lambda: ready(cluster, "modelexpert", "frontier"), "frontier Ready", 60)
        rp = wait_for(lambda: ready(cluster, "routingpolicy", "team"), "policy Ready", 60)
        assert get_json(cluster, "configmap", "team-router-config", "-n", TEAM)
        assert get_json(cluster, "secret", "team-router-token", "-n", TEAM)
        assert get_json(cluster, "deployment", "team-router", "-n", TEAM)
        assert get_json(cluster, "service", "team-router", "-n", TEAM)
        assert get_json(cluster, "networkpolicy", "team-router", "-n", TEAM)
        assert rp["status"]["configHash"]
        events = json.loads(cluster.kubectl("get", "events", "-n", TEAM, "-o", "json"))["items"]
        assert any(e["involvedObject"]["name"] == "small" for e in events)
        # Gateway off: the operator deletes its Deployment and Service.
        apply(cluster, TEAM, policy(gateway_replicas=0))
        wait_for(
            lambda: (
                get_json(cluster, "deployment", "team-router", "-n", TEAM) is None
                and get_json(cluster, "service", "team-router", "-n", TEAM) is None
            ),
            "gateway removed",
            30,
        )
        # Leader election with the chart's Role: the Lease, and the label on its own pod.
        lease = get_json(cluster, "lease", "modelflock-operator", "-n", RELEASE_NS)
        assert lease["spec"]["holderIdentity"] == POD
        pod = get_json(cluster, "pod", POD, "-n", RELEASE_NS)
        assert pod["metadata"]["labels"].get("modelflock.io/leader") == "true"
        time.sleep(3)  # a few more resyncs and autoscaler ticks
        assert problems_in_log(process) == []
    finally:
        process.stop()
    # Stopping released the Lease and took the label off.
    lease = get_json(cluster, "lease", "modelflock-operator", "-n", RELEASE_NS)
    assert lease["spec"]["holderIdentity"] == ""
    pod = get_json(cluster, "pod", POD, "-n", RELEASE_NS)
    assert "modelflock.io/leader" not in pod["metadata"].get("labels", {})
    assert problems_in_log(process) == []
    assert SECRET_VALUE not in process.log_path.read_text(errors="replace")


def test_namespaced_mode_serves_only_its_namespaces_with_roles(
    cluster: LocalCluster, namespaces: None, tmp_path: Path
) -> None:
    account = install_rbac(cluster, "rbacns", "--set", f"watchNamespaces={{{INSIDE}}}")
    assert not can_i(cluster, account, "list", "modelexperts", "--all-namespaces")
    assert not can_i(cluster, account, "list", "modelexperts", "-n", OTHER)
    assert can_i(cluster, account, "list", "modelexperts", "-n", INSIDE)
    bindings = json.loads(cluster.kubectl("get", "clusterrolebindings", "-o", "json"))["items"]
    assert not [
        b for b in bindings if any(s.get("name") == account for s in b.get("subjects") or [])
    ], "namespaced mode must bind no ClusterRole"
    # The namespace comes from the configuration (as the chart renders it), not a flag.
    process = run_as(
        cluster, account, tmp_path, config={"watchNamespaces": [INSIDE]}, scope_args=[]
    )
    try:
        apply(cluster, INSIDE, expert("inside", autoscaling={"enabled": False}, replicas=1))
        apply(cluster, OTHER, expert("outside", autoscaling={"enabled": False}, replicas=1))
        wait_for(lambda: ready(cluster, "modelexpert", "inside", INSIDE), "inside Ready", 60)
        time.sleep(5)
        outside = get_json(cluster, "modelexpert", "outside", "-n", OTHER)
        assert "status" not in outside and not outside["metadata"].get("finalizers")
        assert get_json(cluster, "deployment", "outside", "-n", OTHER) is None
        assert problems_in_log(process) == []
    finally:
        process.stop()
