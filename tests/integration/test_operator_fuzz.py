"""Fuzzing: hypothesis generates ModelExperts and RoutingPolicies from the CRDs' own schemas,
applies them to the real API server (which refuses what its validation refuses: counted), and
the operator must handle every accepted object: zero tracebacks, zero failed reconciles, and
a truthful status for each, checked against what exists in the cluster.

Bounded for CI: BATCHES examples, each a namespace with EXPERTS experts and POLICIES policies.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from localcluster import LocalCluster

from schema_strategies import from_schema
from support import OperatorProcess, condition, get_json, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BATCHES = 3
EXPERTS = 12
POLICIES = 4
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"modelflock.io_{plural}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


SMALL = st.integers(min_value=0, max_value=2)


def expert_specs() -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(  # type: ignore[no-any-return]
        crd_schema("modelexperts"),
        {
            # Mostly pools that exist, sometimes one that does not.
            "nodePool": st.sampled_from(["l4", "h100", "tpu"]),
            # Few pods: the fake GPU pools are shared with the other tests.
            "replicas": SMALL,
            "autoscaling.minReplicas": SMALL,
            "autoscaling.maxReplicas": st.integers(min_value=1, max_value=2),
            "resources.gpus": st.integers(min_value=0, max_value=2),
        },
    )


def policy_specs(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    named = st.one_of(
        st.sampled_from(names), st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
    )
    return from_schema(  # type: ignore[no-any-return]
        crd_schema("routingpolicies"),
        {
            "experts": st.lists(named, min_size=1, max_size=4, unique=True),
            "experts[]": named,
            "baseline": named,
            "gateway.replicas": st.integers(min_value=0, max_value=1),
        },
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = [f"fz-{i}" for i in range(EXPERTS)]
    experts = [draw(expert_specs()) for _ in names]
    policies = [draw(policy_specs(names)) for _ in range(POLICIES)]
    return experts, policies


@pytest.fixture(scope="module")
def fuzz_operator(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator of its own (clean log and counters); the session one is stopped meanwhile."""
    operator.stop()
    process = OperatorProcess(cluster=cluster, workdir=tmp_path_factory.mktemp("fuzz-operator"))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        operator.start()


def create(cluster: LocalCluster, namespace: str, doc: dict[str, Any]) -> str | None:
    """None when the API server accepted the object, else its refusal."""
    result = cluster.run_kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(doc))
    return None if result.returncode == 0 else result.stderr.strip()


def truth_problems(cluster: LocalCluster, namespace: str, kind: str, name: str) -> list[str]:
    """What is untrue (or missing) in one object's status, compared with the cluster."""
    obj = get_json(cluster, kind, name, "-n", namespace)
    if obj is None:
        return ["object vanished"]
    generation = obj["metadata"]["generation"]
    status = obj.get("status") or {}
    problems: list[str] = []
    if status.get("observedGeneration") != generation:
        problems.append(f"observedGeneration {status.get('observedGeneration')} != {generation}")
    wanted = ("Ready", "Progressing", "Degraded") if kind == "modelexpert" else ("Ready",)
    for kind_ in wanted:
        found = condition(obj, kind_)
        if not found:
            problems.append(f"no {kind_} condition")
        elif found.get("observedGeneration") != generation or not CAMEL.match(
            found.get("reason", "")
        ):
            problems.append(f"{kind_} condition stale or without a reason: {found}")
    if problems:
        return problems
    ready = condition(obj, "Ready")
    if kind == "modelexpert":
        spec = obj["spec"]
        deployment = get_json(cluster, "deployment", name, "-n", namespace)
        if spec.get("engine") == "external":
            has_ref = bool((spec.get("external") or {}).get("apiKeySecretRef"))
            # No Secrets exist in the fuzz namespaces: a named key is missing, always.
            if (ready["status"] == "True") == has_ref:
                problems.append(f"external Ready={ready['status']} with secret ref {has_ref}")
            if deployment is not None:
                problems.append("external expert has a Deployment")
        elif ready["status"] == "True":
            if deployment is None:
                problems.append(f"Ready ({ready['reason']}) without a Deployment")
            else:
                live = int((deployment.get("status") or {}).get("readyReplicas") or 0)
                if ready["reason"] == "ScaledToZero":
                    if deployment["spec"]["replicas"] != 0 or live != 0:
                        problems.append("ScaledToZero but replicas remain")
                elif live < 1 or status.get("readyReplicas") != live:
                    problems.append(
                        f"Ready with status.readyReplicas {status.get('readyReplicas')}, "
                        f"Deployment readyReplicas {live}"
                    )
        if (
            deployment is not None
            and status.get("desiredReplicas") != deployment["spec"]["replicas"]
        ):
            problems.append(
                f"desiredReplicas {status.get('desiredReplicas')} != Deployment "
                f"{deployment['spec']['replicas']}"
            )
    else:
        resolved = condition(obj, "ResolvedRefs")
        missing = [
            expert
            for expert in obj["spec"].get("experts", [])
            if get_json(cluster, "modelexpert", expert, "-n", namespace) is None
        ]
        if (resolved.get("status") == "True") == bool(missing):
            problems.append(f"ResolvedRefs={resolved.get('status')} with missing {missing}")
        config_name = status.get("configMapName")
        config = (
            get_json(cluster, "configmap", config_name, "-n", namespace) if config_name else None
        )
        annotations = ((config or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get("modelflock.io/config-hash") != status.get("configHash"):
            problems.append("status.configHash is not the ConfigMap's")
    return problems


def failed_reconciles(process: OperatorProcess) -> float:
    total = 0.0
    for line in process.metrics().splitlines():
        if line.startswith("modelflock_reconciles_total{") and 'result="error"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class Tally:
    batch = 0
    accepted = 0
    refused = 0


@settings(
    max_examples=BATCHES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: each example costs a namespace
    suppress_health_check=(HealthCheck.function_scoped_fixture, HealthCheck.too_slow),
)
@given(batch=batches())
def test_generated_specs_get_truthful_status(
    cluster: LocalCluster,
    fuzz_operator: OperatorProcess,
    batch: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    experts, policies = batch
    Tally.batch += 1
    namespace = f"fuzz-{Tally.batch}"
    cluster.kubectl("create", "namespace", namespace)
    accepted: list[tuple[str, str]] = []
    try:
        for index, spec in enumerate(experts):
            doc = {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "ModelExpert",
                "metadata": {"name": f"fz-{index}"},
                "spec": spec,
            }
            if create(cluster, namespace, doc) is None:
                accepted.append(("modelexpert", f"fz-{index}"))
        for index, spec in enumerate(policies):
            doc = {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": f"rp-{index}"},
                "spec": spec,
            }
            if create(cluster, namespace, doc) is None:
                accepted.append(("routingpolicy", f"rp-{index}"))
        Tally.accepted += len(accepted)
        Tally.refused += EXPERTS + POLICIES - len(accepted)

        def untruthful() -> dict[str, list[str]]:
            found = {
                f"{kind}/{name}": problems
                for kind, name in accepted
                if (problems := truth_problems(cluster, namespace, kind, name))
            }
            return found

        deadline = time.monotonic() + 90
        remaining = untruthful()
        while remaining and time.monotonic() < deadline:
            time.sleep(1)
            remaining = untruthful()
        log = fuzz_operator.log_path.read_text(errors="replace")
        assert "Traceback" not in log
        assert failed_reconciles(fuzz_operator) == 0, [
            line for line in log.splitlines() if "reconcile failed" in line
        ][:10]
        details = {
            key: (
                problems,
                get_json(cluster, key.split("/")[0], key.split("/")[1], "-n", namespace),
            )
            for key, problems in remaining.items()
        }
        assert not remaining, json.dumps(details, indent=1, default=str)[:6000]
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    print(f"fuzz batch {Tally.batch}: {len(accepted)} accepted, totals {vars(Tally)}")


def test_fuzz_namespaces_are_cleaned_up(
    cluster: LocalCluster, fuzz_operator: OperatorProcess
) -> None:
    """Runs after the fuzz batches: the operator releases every object (finalizers removed),
    so the namespaces go away, and some objects were accepted at all."""
    assert Tally.accepted > 0, "the API server refused every generated object"
    for index in range(1, Tally.batch + 1):
        wait_for(
            lambda index=index: get_json(cluster, "namespace", f"fuzz-{index}") is None,
            f"namespace fuzz-{index} deleted",
            180,
        )
