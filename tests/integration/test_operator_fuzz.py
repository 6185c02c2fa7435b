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


def repair_expert(spec: dict[str, Any]) -> dict[str, Any]:
    """Makes a generated spec satisfy the CRD's CEL rules (which the schema strategy does not
    model), so that most of them are accepted; the API server still has the last word."""
    spec = dict(spec)
    engine = spec.get("engine", "vllm")
    if engine == "external":
        spec.setdefault("external", {"baseURL": "https://api.example.com/v1", "model": "m"})
    else:
        spec.pop("external", None)
        spec["model"] = {"name": "org/model", **(spec.get("model") or {})}
        spec.setdefault("nodePool", "l4")
    if engine != "vllm" and "model" in spec:
        spec["model"] = {k: v for k, v in spec["model"].items() if k != "adapters"}
    scaling = spec.get("autoscaling")
    if scaling and scaling.get("minReplicas", 1) > scaling.get("maxReplicas", 4):
        spec["autoscaling"] = {**scaling, "minReplicas": scaling.get("maxReplicas", 4)}
    return spec


def repair_policy(spec: dict[str, Any]) -> dict[str, Any]:
    """The same for a RoutingPolicy: references stay inside spec.experts, a route has exactly
    one of expert and cascade, match intents exist, rule stages name no expert."""
    spec = dict(spec)
    experts = list(spec["experts"])
    known = set(experts)
    classifier = dict(spec.get("classifier") or {})
    stages = []
    for stage in classifier.get("stages") or []:
        stage = dict(stage)
        if stage.get("type") == "rules":
            stage.pop("expert", None)
        elif stage.get("expert") not in known:
            stage["expert"] = experts[0]
        stages.append(stage)
    if "stages" in classifier:
        classifier["stages"] = stages
    intents = {i["name"] for i in classifier.get("intents") or []}
    if "defaultIntent" in classifier:
        intents.add(classifier["defaultIntent"])
    routes = []
    for route in spec.get("routes") or []:
        route = dict(route)
        if "cascade" in route and "expert" not in route and len(experts) >= 2:
            cascade = dict(route["cascade"])
            chain = [e for e in cascade["experts"] if e in known]
            cascade["experts"] = chain if len(chain) >= 2 else experts[:2]
            route["cascade"] = cascade
        else:
            route.pop("cascade", None)
            if route.get("expert") not in known:
                route["expert"] = experts[0]
        if "fallbacks" in route:
            route["fallbacks"] = [e for e in route["fallbacks"] if e in known]
        match = dict(route.get("match") or {})
        if "intents" in match and "intents" in classifier:
            match["intents"] = [i for i in match["intents"] if i in intents]
            if not match["intents"]:
                del match["intents"]
        if "match" in route:
            route["match"] = match
        routes.append(route)
    spec["routes"] = routes or [{"name": "all", "expert": experts[0]}]
    if classifier or "classifier" in spec:
        spec["classifier"] = classifier
    if "baseline" in spec and spec["baseline"] not in known:
        spec["baseline"] = experts[-1]
    gateway = dict(spec.get("gateway") or {})
    if gateway.get("replicas") and not gateway.get("apiKeys"):
        gateway["allowUnauthenticated"] = True
        spec["gateway"] = gateway
    return spec


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
    ).map(repair_expert)


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
    ).map(repair_policy)


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


def failures_since(process: OperatorProcess, offset: int) -> list[str]:
    """Failed reconciles and tracebacks logged since `offset`, except refusals to write into
    a namespace being deleted (the previous batch's, while its objects wind down)."""
    with process.log_path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [
        line
        for line in lines
        if (
            "reconcile failed" in line
            or "Traceback" in line
            or line.split(" ", 3)[2:3] == ["ERROR"]
        )
        and "because it is being terminated" not in line
    ]


class Tally:
    """Counts across the examples (printed, and checked by the last test)."""

    batch = 0
    accepted = 0
    refused = 0
    reasons: dict[str, int] = {}


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
    refusals: list[str] = []
    offset = fuzz_operator.log_path.stat().st_size
    try:
        for index, spec in enumerate(experts):
            doc = {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "ModelExpert",
                "metadata": {"name": f"fz-{index}"},
                "spec": spec,
            }
            if (refused := create(cluster, namespace, doc)) is None:
                accepted.append(("modelexpert", f"fz-{index}"))
            else:
                refusals.append(refused.splitlines()[-1][:120])
        for index, spec in enumerate(policies):
            doc = {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": f"rp-{index}"},
                "spec": spec,
            }
            if (refused := create(cluster, namespace, doc)) is None:
                accepted.append(("routingpolicy", f"rp-{index}"))
            else:
                refusals.append(refused.splitlines()[-1][:120])
        Tally.accepted += len(accepted)
        Tally.refused += EXPERTS + POLICIES - len(accepted)
        for reason in refusals:
            Tally.reasons[reason] = Tally.reasons.get(reason, 0) + 1

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
        assert failures_since(fuzz_operator, offset) == []
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
    print(
        f"fuzz batch {Tally.batch}: {len(accepted)} of {EXPERTS + POLICIES} accepted; totals: "
        f"{Tally.accepted} accepted, {Tally.refused} refused {Tally.reasons}"
    )


def test_fuzz_namespaces_are_cleaned_up(
    cluster: LocalCluster, fuzz_operator: OperatorProcess
) -> None:
    """Runs after the fuzz batches: the operator releases every object (finalizers removed),
    so the namespaces go away, and some objects were accepted at all."""
    # Most generated objects must get through, or the fuzzing tests little.
    assert Tally.accepted >= (Tally.accepted + Tally.refused) / 2, Tally.reasons
    for index in range(1, Tally.batch + 1):
        wait_for(
            lambda index=index: get_json(cluster, "namespace", f"fuzz-{index}") is None,
            f"namespace fuzz-{index} deleted",
            180,
        )
