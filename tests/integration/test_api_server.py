"""The CRDs against a real kube-apiserver: established, examples apply, bad input is refused
by the API server itself with the field named, explain and scale work."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster

from support import fresh_namespace, wait_for

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
NS = "api-tests"


@pytest.fixture(scope="module")
def namespace(cluster: LocalCluster) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as name:
        yield name


def _apply(cluster: LocalCluster, doc: dict[str, Any], *extra: str) -> tuple[bool, str]:
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "-n",
        NS,
        *extra,
        "-f",
        "-",
        input=json.dumps(doc),
        check=False,
    )
    ok = "error" not in out.lower() and "invalid" not in out.lower()
    return ok, out


def test_crds_are_established(cluster: LocalCluster) -> None:
    for name in (
        "modelexperts.modelflock.io",
        "routingpolicies.modelflock.io",
        "knowledgebases.modelflock.io",
    ):
        status = cluster.kubectl(
            "get",
            "crd",
            name,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}'
            '{" "}{.status.conditions[?(@.type=="NamesAccepted")].status}',
        )
        assert status == "True True"


@pytest.mark.parametrize(
    "path",
    sorted([*EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("secrets/*.yaml")]),
    ids=lambda p: p.name,
)
def test_every_example_applies(cluster: LocalCluster, namespace: str, path: Path) -> None:
    for extra in (("--dry-run=server",), ()):
        out = cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=tests",
            "-n",
            namespace,
            *extra,
            "-f",
            str(path),
        )
        assert "serverside-applied" in out, out
    for doc in yaml.safe_load_all(path.read_text()):
        got = json.loads(
            cluster.kubectl(
                "get", doc["kind"].lower(), doc["metadata"]["name"], "-n", namespace, "-o", "json"
            )
        )
        assert got["metadata"]["name"] == doc["metadata"]["name"]


VALID_EXPERT: dict[str, Any] = {
    "apiVersion": "modelflock.io/v1alpha1",
    "kind": "ModelExpert",
    "metadata": {"name": "bad"},
    "spec": {
        "engine": "vllm",
        "model": {"name": "org/model", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    },
}
VALID_POLICY: dict[str, Any] = {
    "apiVersion": "modelflock.io/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "bad"},
    "spec": {
        "experts": ["a", "b"],
        "classifier": {"intents": [{"name": "code"}], "defaultIntent": "code"},
        "routes": [{"name": "r", "match": {"intents": ["code"]}, "expert": "a"}],
    },
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()


def _window(**fields: Any) -> dict[str, Any]:
    """A valid spec.autoscaling.schedules entry with `fields` changed."""
    return {"start": "09:00", "end": "17:00", "minReplicas": 1, **fields}


# (id, manifest, text the API server's message must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("wrong-engine", _with(VALID_EXPERT, "spec.engine", "llamacpp"), "spec.engine"),
    # Found by the fuzz test: a malformed quantity used to reach the Deployment (SSA 500).
    (
        "bad-cpu-quantity",
        _with(VALID_EXPERT, "spec.resources.cpu", "4 cores"),
        "spec.resources.cpu",
    ),
    ("negative-memory", _with(VALID_EXPERT, "spec.resources.memory", -1), "spec.resources.memory"),
    (
        "min-above-max",
        _with(VALID_EXPERT, "spec.autoscaling.minReplicas", 3),
        "spec.autoscaling.minReplicas",
    ),
    (
        "schedule-min-above-max",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [_window(minReplicas=3)]),
        "spec.autoscaling.schedules",
    ),
    (
        "schedule-bad-start",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [_window(start="9:00")]),
        "spec.autoscaling.schedules[0].start",
    ),
    (
        "schedule-start-equals-end",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [_window(end="09:00")]),
        "spec.autoscaling.schedules[0].end",
    ),
    (
        "schedule-bad-day",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [_window(days=["Monday"])]),
        "spec.autoscaling.schedules[0].days[0]",
    ),
    (
        "schedule-bad-time-zone",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [_window(timeZone="Europe Berlin")]),
        "spec.autoscaling.schedules[0].timeZone",
    ),
    (
        "schedule-without-min",
        _with(VALID_EXPERT, "spec.autoscaling.schedules", [{"start": "09:00", "end": "17:00"}]),
        "spec.autoscaling.schedules[0].minReplicas",
    ),
    ("missing-model", _with(VALID_EXPERT, "spec.model", DELETE), "spec.model.name"),
    ("external-without-settings", _with(VALID_EXPERT, "spec.engine", "external"), "spec.external"),
    (
        "external-without-baseurl",
        _with(
            _with(_with(VALID_EXPERT, "spec.engine", "external"), "spec.model", DELETE),
            "spec.external",
            {"model": "m"},
        ),
        "spec.external.baseURL",
    ),
    (
        "external-bad-baseurl",
        _with(
            _with(_with(VALID_EXPERT, "spec.engine", "external"), "spec.model", DELETE),
            "spec.external",
            {"model": "m", "baseURL": "ftp://x"},
        ),
        "spec.external.baseURL",
    ),
    (
        "external-plain-http-key",
        _with(
            _with(_with(VALID_EXPERT, "spec.engine", "external"), "spec.model", DELETE),
            "spec.external",
            {"model": "m", "baseURL": "http://api.example/v1"},
        ),
        "spec.external.baseURL",
    ),
    (
        "vllm-with-external",
        _with(VALID_EXPERT, "spec.external", {"baseURL": "https://a.example", "model": "m"}),
        "spec.external",
    ),
    ("negative-replicas", _with(VALID_EXPERT, "spec.replicas", -1), "spec.replicas"),
    ("too-many-gpus", _with(VALID_EXPERT, "spec.resources", {"gpus": 65}), "spec.resources.gpus"),
    ("name-too-long", _with(VALID_EXPERT, "metadata.name", "x" * 50), "metadata.name"),
    (
        "bad-price",
        _with(VALID_EXPERT, "spec.cost", {"inputPerMillion": "1.2.3"}),
        "spec.cost.inputPerMillion",
    ),
    (
        "float-price",
        _with(VALID_EXPERT, "spec.cost", {"inputPerMillion": 0.5}),
        "spec.cost.inputPerMillion",
    ),
    (
        "bad-parameters",
        _with(VALID_EXPERT, "spec.model.parameters", "seven billion"),
        "spec.model.parameters",
    ),
    (
        "adapters-on-tgi",
        _with(
            _with(VALID_EXPERT, "spec.engine", "tgi"),
            "spec.model.adapters",
            [{"name": "a", "source": "org/a"}],
        ),
        "spec.model.adapters",
    ),
    ("gpus-without-pool", _with(VALID_EXPERT, "spec.nodePool", DELETE), "spec.nodePool"),
    ("bad-tier", _with(VALID_EXPERT, "spec.tier", "Very Large"), "spec.tier"),
    ("unknown-route-target", _with(VALID_POLICY, "spec.routes.0.expert", "zzz"), "spec.routes"),
    ("unknown-fallback", _with(VALID_POLICY, "spec.routes.0.fallbacks", ["zzz"]), "spec.routes"),
    (
        "route-with-both",
        _with(VALID_POLICY, "spec.routes.0.cascade", {"experts": ["a", "b"]}),
        "spec.routes[0]",
    ),
    (
        "cascade-of-one",
        _with(
            _with(VALID_POLICY, "spec.routes.0.expert", DELETE),
            "spec.routes.0.cascade",
            {"experts": ["a"]},
        ),
        "spec.routes[0].cascade.experts",
    ),
    (
        "unknown-intent",
        _with(VALID_POLICY, "spec.routes.0.match.intents", ["poetry"]),
        "spec.routes",
    ),
    (
        "unknown-check",
        _with(
            _with(VALID_POLICY, "spec.routes.0.expert", DELETE),
            "spec.routes.0.cascade",
            {"experts": ["a", "b"], "checks": ["vibes"]},
        ),
        "spec.routes[0].cascade.checks[0]",
    ),
    ("baseline-not-listed", _with(VALID_POLICY, "spec.baseline", "zzz"), "spec.baseline"),
    ("no-experts", _with(VALID_POLICY, "spec.experts", []), "spec.experts"),
    (
        "llm-stage-without-expert",
        _with(VALID_POLICY, "spec.classifier.stages", [{"type": "llm"}]),
        "spec.classifier.stages[0].expert",
    ),
    ("policy-name-too-long", _with(VALID_POLICY, "metadata.name", "p" * 45), "metadata.name"),
    (
        "undefined-default-intent",
        _with(VALID_POLICY, "spec.classifier.defaultIntent", "chat"),
        "spec.classifier.defaultIntent",
    ),
    (
        "float-min-confidence",
        _with(
            VALID_POLICY,
            "spec.classifier.stages",
            [{"type": "rules"}, {"type": "embedding", "expert": "a", "minConfidence": 0.5}],
        ),
        "spec.classifier.stages[1].minConfidence",
    ),
    (
        "snake-case-key",
        _with(VALID_POLICY, "spec.classifier.default_intent", "code"),
        "spec.classifier.default_intent",
    ),
    (
        "examples-from-bad-configmap-name",
        _with(
            VALID_POLICY, "spec.classifier.examplesFrom", [{"configMap": "Bad_Name", "key": "k"}]
        ),
        "spec.classifier.examplesFrom[0].configMap",
    ),
]


def test_the_valid_bases_are_valid(cluster: LocalCluster, namespace: str) -> None:
    for doc in (VALID_EXPERT, VALID_POLICY):
        ok, out = _apply(cluster, doc, "--dry-run=server")
        assert ok, out


@pytest.mark.parametrize(("case", "doc", "field"), INVALID, ids=[c for c, _, _ in INVALID])
def test_invalid_manifest_is_rejected_by_the_api_server(
    cluster: LocalCluster, namespace: str, case: str, doc: dict[str, Any], field: str
) -> None:
    ok, out = _apply(cluster, doc, "--dry-run=server")
    assert not ok, f"{case} was accepted: {out}"
    assert any(
        marker in out
        for marker in (
            "is invalid",
            "Invalid value",
            "Unsupported value",
            "expected string",
            "unknown field",
            "field not declared in schema",
        )
    ), out
    assert field in out, f"{case}: message does not name {field}: {out}"


def test_explain_shows_documented_autoscaling_fields(cluster: LocalCluster) -> None:
    # The API server publishes a new CRD's schema to OpenAPI some seconds after the CRD is
    # Established; until then explain answers "couldn't find resource" (seen when this test
    # ran first in a session).
    out = wait_for(
        lambda: cluster.kubectl("explain", "modelexpert.spec.autoscaling"),
        "kubectl explain to know the ModelExpert schema",
        60,
        1.0,
    )
    for name in (
        "minReplicas",
        "maxReplicas",
        "targetQueueDepth",
        "scaleToZeroAfterSeconds",
        "schedules",
    ):
        assert name in out
    assert "Waiting requests per replica" in out


def test_scale_subresource(cluster: LocalCluster, namespace: str) -> None:
    doc = _with(_with(VALID_EXPERT, "metadata.name", "scaled"), "spec.autoscaling.enabled", False)
    ok, out = _apply(cluster, doc)
    assert ok, out
    cluster.kubectl("scale", "-n", namespace, "modelexpert/scaled", "--replicas=3")
    replicas = cluster.kubectl(
        "get", "-n", namespace, "mx", "scaled", "-o", "jsonpath={.spec.replicas}"
    )
    assert replicas == "3"
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/modelflock.io/v1alpha1/namespaces/{namespace}/modelexperts/scaled/scale",
        )
    )
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3


def test_short_names_and_category(cluster: LocalCluster, namespace: str) -> None:
    out = cluster.kubectl("get", "modelflock", "-n", namespace)
    assert "modelexpert.modelflock.io/" in out and "routingpolicy.modelflock.io/" in out
    assert "NAME" in cluster.kubectl("get", "mx", "-n", namespace)
    assert "NAME" in cluster.kubectl("get", "rp", "-n", namespace)
