"""The ModelExpert controller against the real control plane with kwok GPU pools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from localcluster import LocalCluster

from support import OperatorProcess, apply, condition, fresh_namespace, get_json, wait_for

pytestmark = pytest.mark.cluster

NS = "experts"


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as name:
        yield name


def expert(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": "org/model-7b", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"enabled": False},
        "replicas": 1,
    }
    base.update(spec)
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": base,
    }


def get_expert(cluster: LocalCluster, name: str) -> Any:
    return get_json(cluster, "modelexpert", name, "-n", NS)


def ready_with(cluster: LocalCluster, name: str, replicas: int) -> Any:
    obj = get_expert(cluster, name)
    status = (obj or {}).get("status", {})
    ok = (
        condition(obj, "Ready").get("status") == "True"
        and status.get("readyReplicas") == replicas
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )
    return obj if ok else None


def pods_of(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", NS, "-l", f"modelflock.io/expert={name}", "-o", "json")
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


@pytest.mark.parametrize(("engine", "port"), [("vllm", 8000), ("tgi", 8080)])
def test_engine_expert_runs_on_its_pool_and_reports_ready(
    cluster: LocalCluster, engine: str, port: int
) -> None:
    name = f"{engine}-ready"
    apply(cluster, NS, expert(name, engine=engine, replicas=2))
    obj = wait_for(lambda: ready_with(cluster, name, 2), f"{name} Ready with 2 replicas", 60)
    status = obj["status"]
    assert status["replicas"] == 2 and status["desiredReplicas"] == 2
    assert status["replicaSummary"] == "2/2"
    assert status["endpoint"] == f"http://{name}.{NS}.svc.cluster.local:8000/v1"
    assert status["selector"] == f"app.kubernetes.io/component=engine,modelflock.io/expert={name}"
    pods = pods_of(cluster, name)
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("gpu-l4-") for p in pods)
    container = pods[0]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == port
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    deployment = get_json(cluster, "deployment", name, "-n", NS)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelExpert" and owner["uid"] == obj["metadata"]["uid"]
    with_fields = json.loads(
        cluster.kubectl("get", "deployment", name, "-n", NS, "-o", "json", "--show-managed-fields")
    )
    managers = {
        m["manager"] for m in with_fields["metadata"]["managedFields"] if m["operation"] == "Apply"
    }
    assert managers == {"modelflock"}
    printed = cluster.kubectl("get", "mx", name, "-n", NS)
    assert "2/2" in printed and "True" in printed and engine in printed


def test_too_large_model_is_refused_before_scheduling(cluster: LocalCluster) -> None:
    name = "too-large"
    apply(cluster, NS, expert(name, model={"name": "org/llama-70b", "parameters": "70B"}))
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name))
            and condition(o, "Degraded").get("reason") == "InsufficientGPUMemory"
            and o
        ),
        "InsufficientGPUMemory",
    )
    assert condition(obj, "Ready")["status"] == "False"
    assert "70B" in condition(obj, "Degraded")["message"]
    assert get_json(cluster, "deployment", name, "-n", NS) is None
    assert pods_of(cluster, name) == []


def test_unknown_pool_is_reported(cluster: LocalCluster) -> None:
    apply(cluster, NS, expert("no-pool", nodePool="tpu-v5"))
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, "no-pool"))
            and condition(o, "Ready").get("reason") == "UnknownNodePool"
            and o
        ),
        "UnknownNodePool",
    )
    assert "tpu-v5" in condition(obj, "Degraded")["message"]


def test_more_gpus_than_any_node_is_unschedulable_with_the_schedulers_message(
    cluster: LocalCluster,
) -> None:
    name = "four-gpus-on-l4"
    apply(
        cluster,
        NS,
        expert(name, resources={"gpus": 4}, model={"name": "org/m", "parameters": "7B"}),
    )
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name))
            and condition(o, "Degraded").get("reason") == "Unschedulable"
            and o
        ),
        "Degraded=Unschedulable",
        60,
    )
    message = condition(obj, "Degraded")["message"]
    assert "Insufficient nvidia.com/gpu" in message  # the scheduler's own words
    assert "4 GPUs" in message  # and the operator's explanation
    assert condition(obj, "Ready")["status"] == "False"
    assert all(p["status"]["phase"] == "Pending" for p in pods_of(cluster, name))
    events = cluster.kubectl(
        "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}"
    )
    assert "Unschedulable" in events


def test_children_deleted_or_edited_by_hand_are_put_back(cluster: LocalCluster) -> None:
    name = "drift"
    apply(cluster, NS, expert(name))
    wait_for(lambda: ready_with(cluster, name, 1), "drift ready", 60)
    cluster.kubectl("delete", "service", name, "-n", NS)
    wait_for(lambda: get_json(cluster, "service", name, "-n", NS), "Service recreated", 30)

    patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["--hacked"]}
    ]
    cluster.kubectl("patch", "deployment", name, "-n", NS, "--type=json", "-p", json.dumps(patch))
    wait_for(
        lambda: (
            "--model=org/model-7b"
            in get_json(cluster, "deployment", name, "-n", NS)["spec"]["template"]["spec"][
                "containers"
            ][0]["args"]
        ),
        "Deployment args restored",
        30,
    )


def _rollout_state(cluster: LocalCluster, name: str) -> tuple[int, set[str]]:
    deployment = get_json(cluster, "deployment", name, "-n", NS)
    sets = json.loads(
        cluster.kubectl("get", "rs", "-n", NS, "-l", f"modelflock.io/expert={name}", "-o", "json")
    )
    hashes = {rs["metadata"]["labels"]["pod-template-hash"] for rs in sets["items"]}
    return deployment["metadata"]["generation"], hashes


def test_operator_restart_causes_no_rollout_and_a_spec_change_exactly_one(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    name = "rollouts"
    apply(cluster, NS, expert(name))
    wait_for(lambda: ready_with(cluster, name, 1), "ready", 60)
    before = _rollout_state(cluster, name)

    operator.stop()
    operator.start()
    # Let the restarted operator reconcile this expert at least once.
    wait_for(
        lambda: 'modelflock_reconciles_total{kind="ModelExpert",result="ok"}' in operator.metrics(),
        "a reconcile",
        30,
    )
    wait_for(lambda: ready_with(cluster, name, 1), "still ready", 30)
    assert _rollout_state(cluster, name) == before

    apply(cluster, NS, expert(name, engineArgs=["--max-num-seqs=32"]))
    wait_for(lambda: len(_rollout_state(cluster, name)[1]) == 2, "a new ReplicaSet", 30)
    wait_for(lambda: ready_with(cluster, name, 1), "ready after rollout", 60)
    generation, hashes = _rollout_state(cluster, name)
    assert generation == before[0] + 1
    assert len(hashes) == 2 and before[1] < hashes


def test_deleting_the_expert_removes_its_children(cluster: LocalCluster) -> None:
    name = "deleted"
    apply(cluster, NS, expert(name))
    wait_for(lambda: ready_with(cluster, name, 1), "ready", 60)
    cluster.kubectl("delete", "modelexpert", name, "-n", NS, "--wait=true", "--timeout=30s")
    wait_for(
        lambda: (
            get_json(cluster, "deployment", name, "-n", NS) is None
            and get_json(cluster, "service", name, "-n", NS) is None
            and not pods_of(cluster, name)
        ),
        "children garbage-collected",
        60,
    )


def test_external_expert_waits_for_its_secret(cluster: LocalCluster) -> None:
    name = "frontier"
    doc = expert(
        name,
        engine="external",
        external={
            "baseURL": "https://frontier.example.com/v1",
            "model": "big",
            "apiKeySecretRef": {"name": "frontier-key", "key": "api-key"},
        },
    )
    for key in ("model", "nodePool", "replicas", "autoscaling"):
        doc["spec"].pop(key)
    apply(cluster, NS, doc)
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name))
            and condition(o, "Ready").get("reason") == "SecretNotFound"
            and o
        ),
        "SecretNotFound",
    )
    assert "frontier-key" in condition(obj, "Ready")["message"]

    cluster.kubectl(
        "create", "secret", "generic", "frontier-key", "-n", NS, "--from-literal=wrong=sk-123"
    )
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name))
            and "no key api-key" in condition(o, "Ready").get("message", "")
            and o
        ),
        "missing key named",
        30,
    )
    # The example Secret's value, applied unedited: not Ready, and the reason says why.
    cluster.kubectl("delete", "secret", "frontier-key", "-n", NS)
    cluster.kubectl(
        "create", "secret", "generic", "frontier-key", "-n", NS, "--from-literal=api-key=replace-me"
    )
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name))
            and condition(o, "Ready").get("reason") == "SecretPlaceholder"
            and o
        ),
        "SecretPlaceholder",
        30,
    )
    assert condition(obj, "Ready")["status"] == "False"
    assert "replace-me" not in condition(obj, "Ready")["message"]  # never echo the value
    cluster.kubectl("delete", "secret", "frontier-key", "-n", NS)
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "frontier-key",
        "-n",
        NS,
        "--from-literal=api-key=sk-secret-value",
    )
    obj = wait_for(
        lambda: (
            (o := get_expert(cluster, name)) and condition(o, "Ready").get("status") == "True" and o
        ),
        "external Ready",
        30,
    )
    assert obj["status"]["endpoint"] == "https://frontier.example.com/v1"
    assert get_json(cluster, "deployment", name, "-n", NS) is None
    everything = (
        json.dumps(obj) + cluster.kubectl("get", "events", "-n", NS) + operator_log(cluster)
    )
    assert "sk-secret-value" not in everything and "sk-123" not in everything


def operator_log(cluster: LocalCluster) -> str:
    logs = [
        p.read_text(errors="replace") for p in cluster.workdir.parent.glob("operator*/operator.log")
    ]
    return "\n".join(logs)


def test_operator_metrics(operator: OperatorProcess) -> None:
    text = operator.metrics()
    assert 'modelflock_reconciles_total{kind="ModelExpert",result="ok"}' in text
    assert "modelflock_reconcile_duration_seconds_bucket" in text
    assert 'modelflock_experts{condition="Ready"' in text
