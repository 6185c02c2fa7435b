"""The Helm chart: lint, render, and what renders (no cluster needed, but the pinned helm binary
is: tests/cluster/build.sh caches it; a missing helm fails these tests, it never skips them)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelflock.operator_config import parse_operator_config

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelflock"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
KUBE_VERSION = "v1.36.3"
RELEASE, NAMESPACE = "modelflock", "modelflock"
KEEP_LINES = "  annotations:\n    helm.sh/resource-policy: keep\n"
WEBHOOK_ARGS = ["--webhook-cert-dir", "/tls", "--webhook-port", "9443"]
OPERATOR_ARGS = [
    "operator",
    "--config",
    "/etc/modelflock/config.yaml",
    "--all-namespaces",
    *WEBHOOK_ARGS,
    "--liveness-port",
    "8081",
]
# Registry host names must not appear: images are referenced by repository only.
REGISTRY_HOSTS = re.compile(
    r"\b(docker\.io|ghcr\.io|quay\.io|gcr\.io|registry\.k8s\.io|nvcr\.io|ecr\.aws|azurecr\.io|"
    r"registry\.hub\.docker\.com|pkg\.dev)\b"
)


def find_helm() -> Path:
    """The helm that tests/cluster/build.sh pins and caches (or $MODELFLOCK_HELM)."""
    override = os.environ.get("MODELFLOCK_HELM")
    if override:
        return Path(override)
    build = (REPO / "tests" / "cluster" / "build.sh").read_text()
    match = re.search(r"^HELM_VERSION=(\S+)$", build, re.MULTILINE)
    assert match, "HELM_VERSION not found in tests/cluster/build.sh"
    cache = Path(os.environ.get("MODELFLOCK_CACHE", Path.home() / ".cache" / "modelflock"))
    found = sorted(cache.glob(f"*-helm-{match.group(1)}/bin/helm"))
    if not found:
        pytest.fail(
            f"helm {match.group(1)} not found under {cache}: run tests/cluster/build.sh first",
            pytrace=False,
        )
    return found[-1]


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    # Keep helm's config/cache away from the user's, and never reach for a repository.
    return {
        **os.environ,
        "HELM_BIN": str(find_helm()),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


def helm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [env["HELM_BIN"], *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def template_text(env: dict[str, str], *extra: str) -> str:
    return helm(
        env,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *extra,
    ).stdout


def template_failure(env: dict[str, str], *extra: str) -> str:
    """Renders with settings that must be refused; returns helm's error output."""
    result = helm(
        env,
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        *extra,
        check=False,
    )
    assert result.returncode != 0, "helm accepted values it should refuse"
    return result.stderr


def render(env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template_text(env, *extra)) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def crd_texts(text: str) -> dict[str, str]:
    """The rendered CRD documents as text, keyed by CRD name, without helm's Source comment."""
    out = {}
    for chunk in text.split("\n---\n"):
        lines = [ln for ln in chunk.splitlines(keepends=True) if not ln.startswith("# Source:")]
        body = "".join(lines)
        if not body.endswith("\n"):
            body += "\n"  # the newline went into the separator
        doc = yaml.safe_load(body)
        if doc and doc.get("kind") == "CustomResourceDefinition":
            out[doc["metadata"]["name"]] = body
    return out


@pytest.fixture(scope="module")
def default_docs(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm_env)


@pytest.fixture(scope="module")
def full_docs(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm_env, "-f", str(FULL_VALUES))


# ---- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_lint_strict(helm_env: dict[str, str], values: Path | None) -> None:
    args = ["lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    if values:
        args += ["-f", str(values)]
    result = helm(helm_env, *args)
    assert "0 chart(s) failed" in result.stdout


def test_helm_is_the_pinned_version(helm_env: dict[str, str]) -> None:
    assert helm(helm_env, "version", "--short").stdout.startswith("v3.21.")


def test_helm_defaults_to_the_control_planes_kubernetes_version(helm_env: dict[str, str]) -> None:
    """tests/cluster/build.sh stamps the Kubernetes version into helm, as helm's releases do:
    without it helm assumes 1.20 and refuses the chart (kubeVersion >=1.29) unless every
    command passes --kube-version."""
    docs = [
        d
        for d in yaml.safe_load_all(
            helm(helm_env, "template", RELEASE, str(CHART), "--namespace", NAMESPACE).stdout
        )
        if d
    ]
    assert "Deployment" in kinds(docs)
    assert "0 chart(s) failed" in helm(helm_env, "lint", "--strict", str(CHART)).stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("home", "icon", "description", "kubeVersion"):
        assert chart.get(key), key
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"] and all(m.get("name") for m in chart["maintainers"])
    assert chart["icon"].startswith(("https://", "data:image/"))


def test_chart_pins_app_version_and_has_no_dependencies() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert "dependencies" not in chart  # helm must never reach for a chart repository
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "modelflock/modelflock"


# ---- CRDs ------------------------------------------------------------------------------------


def test_chart_crd_copies_are_byte_identical_to_crds() -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert sources, "no CRDs in crds/"
    assert copies.keys() == sources.keys(), "run hack/render-manifests.sh"
    for name, data in sources.items():
        assert copies[name] == data, f"files/crds/{name} differs from crds/{name}"


def test_rendered_crds_are_the_crds_plus_the_keep_annotation(helm_env: dict[str, str]) -> None:
    sources = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        text = path.read_text()
        sources[yaml.safe_load(text)["metadata"]["name"]] = text
    kept = crd_texts(template_text(helm_env))
    assert kept.keys() == sources.keys()
    for name, text in kept.items():
        doc = yaml.safe_load(text)
        assert doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert text.replace(KEEP_LINES, "", 1) == sources[name]
    # crds.keep=false: the documents are byte for byte the files in crds/.
    plain = crd_texts(template_text(helm_env, "--set", "crds.keep=false"))
    assert plain == sources


def test_crds_can_be_left_out(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "crds.enabled=false")
    assert "CustomResourceDefinition" not in kinds(docs)
    assert "Deployment" in kinds(docs)


# ---- what renders ----------------------------------------------------------------------------


def test_default_objects(default_docs: list[dict[str, Any]]) -> None:
    assert kinds(default_docs) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "Pod",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    for doc in default_docs:
        meta = doc["metadata"]
        if doc["kind"] == "CustomResourceDefinition":
            continue
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "modelflock"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"):
            assert meta["namespace"] == NAMESPACE


def test_full_objects(full_docs: list[dict[str, Any]]) -> None:
    assert kinds(full_docs) == sorted(
        [
            "Certificate",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Issuer",
            "MutatingWebhookConfiguration",
            "Pod",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


# Exactly what the code uses (tests/integration/test_operator_rbac.py runs the operator with
# these and fails on any "forbidden"). No Secret is ever listed or watched (finding 11).
EXPECTED_RULES = {
    ("modelflock.io", "modelexperts"): {"get", "list", "watch", "patch"},
    ("modelflock.io", "routingpolicies"): {"get", "list", "watch", "patch"},
    ("modelflock.io", "knowledgebases"): {"get", "list", "watch", "patch"},
    ("modelflock.io", "modelexperts/status"): {"patch"},
    ("modelflock.io", "routingpolicies/status"): {"patch"},
    ("modelflock.io", "knowledgebases/status"): {"patch"},
    ("modelflock.io", "modelexperts/scale"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "secrets"): {"get", "create", "patch"},
    ("", "events"): {"create"},
}
LEADER_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["modelflock-operator"],
        "verbs": ["get", "update"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
]


def granted_rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames/nonResourceURLs
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_is_least_privilege(default_docs: list[dict[str, Any]]) -> None:
    role = one(default_docs, "ClusterRole")
    assert granted_rules(role) == EXPECTED_RULES
    binding = one(default_docs, "ClusterRoleBinding")
    account = one(default_docs, "ServiceAccount")
    subjects = [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == subjects
    # Leader election: the Lease by name, and the leader label on its own namespace's pods.
    election = one(default_docs, "Role")
    assert election["metadata"] == {
        **election["metadata"],
        "name": "modelflock-leader-election",
        "namespace": NAMESPACE,
    }
    assert election["rules"] == LEADER_RULES
    election_binding = one(default_docs, "RoleBinding")
    assert election_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "modelflock-leader-election",
    }
    assert election_binding["subjects"] == subjects


def test_namespaced_mode_uses_roles_only(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "watchNamespaces={team-a,team-b}")
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds(docs))
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"
    }
    assert set(roles) == {
        ("team-a", "modelflock"),
        ("team-b", "modelflock"),
        (NAMESPACE, "modelflock-leader-election"),
    }
    assert granted_rules(roles[("team-a", "modelflock")]) == EXPECTED_RULES
    bindings = {
        (d["metadata"]["namespace"], d["roleRef"]["name"])
        for d in docs
        if d["kind"] == "RoleBinding"
    }
    assert bindings == {
        ("team-a", "modelflock"),
        ("team-b", "modelflock"),
        (NAMESPACE, "modelflock-leader-election"),
    }
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" not in container["args"]
    config = parse_operator_config(operator_config(docs), "namespaced chart")
    assert config.watch_namespaces == ["team-a", "team-b"]
    [hook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["team-a", "team-b"],
            }
        ]
    }
    # An explicit selector still wins.
    docs = render(
        helm_env,
        "--set",
        "watchNamespaces={team-a}",
        "--set",
        "webhook.namespaceSelector.matchLabels.inject=yes",
    )
    [hook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"] == {"matchLabels": {"inject": "yes"}}
    failed = template_failure(helm_env, "--set", "watchNamespaces={Team_A}")
    assert "watchNamespaces" in failed


def test_rbac_and_service_account_switches(helm_env: dict[str, str]) -> None:
    docs = render(
        helm_env,
        "--set",
        "rbac.create=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=existing",
    )
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & set(
        kinds(docs)
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing"
    failed = template_failure(helm_env, "--set", "serviceAccount.create=false")
    assert "serviceAccount.name must name an existing ServiceAccount" in failed


def test_operator_deployment(default_docs: list[dict[str, Any]]) -> None:
    deployment = one(default_docs, "Deployment")
    spec = deployment["spec"]
    # Two replicas elect a leader; rolling updates are safe (a stopping leader hands over).
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == spec["selector"]["matchLabels"]
    )
    budget = one(default_docs, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    assert set(spec["selector"]["matchLabels"].items()) <= set(
        spec["template"]["metadata"]["labels"].items()
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["image"] == "modelflock/modelflock:0.1.0"
    assert container["command"] == ["modelflock"]
    assert container["args"] == OPERATOR_ARGS
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "metrics": 8080,
        "flock-api": 8090,
        "liveness": 8081,
        "webhook": 9443,
    }
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "liveness"}
    # The leader is ready once its flock API and webhook listener are up; a standby is ready.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "liveness"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/modelflock"]]["configMap"]["name"] == "modelflock-config"
    tls = volumes[mounts["/tls"]]["secret"]
    assert tls["secretName"] == "modelflock-webhook-tls"
    assert {i["key"] for i in tls["items"]} == {"tls.crt", "tls.key"}
    assert "/tmp" in mounts  # the root filesystem is read-only
    config = one(default_docs, "ConfigMap")
    annotations = spec["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert config["metadata"]["name"] == "modelflock-config"


def test_webhook_disabled_drops_its_flags_port_and_certificate(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "webhook.enabled=false")
    assert not {"MutatingWebhookConfiguration", "Secret"} & set(kinds(docs))
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert not set(WEBHOOK_ARGS) & set(container["args"])
    assert "webhook" not in {p["name"] for p in container["ports"]}
    assert "webhook" not in {p["name"] for p in one(docs, "Service")["spec"]["ports"]}


def test_service_ports(default_docs: list[dict[str, Any]]) -> None:
    service = one(default_docs, "Service")
    assert service["metadata"]["name"] == "modelflock"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "metrics": (8080, "metrics"),
        "flock-api": (8090, "flock-api"),
        "webhook": (9443, "webhook"),
    }
    # The leader only (it labels its own pod): standbys serve neither webhook nor flock API.
    pod_labels = one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = dict(service["spec"]["selector"])
    assert selector.pop("modelflock.io/leader") == "true"
    assert "modelflock.io/leader" not in pod_labels
    assert set(selector.items()) <= set(pod_labels.items())


def operator_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = one(docs, "ConfigMap", "modelflock-config")
    data: dict[str, Any] = yaml.safe_load(config["data"]["config.yaml"])
    return data


def test_default_operator_config_is_valid(default_docs: list[dict[str, Any]]) -> None:
    data = operator_config(default_docs)
    config = parse_operator_config(data, "chart default")
    assert config.operator_url == "http://modelflock.modelflock.svc:8090"
    assert config.images.router == "modelflock/modelflock:0.1.0"
    assert config.flock_api_port == 8090 and config.metrics_port == 8080
    assert config.autoscaler.metric_source == "scrape"
    assert config.autoscaler.prometheus_url is None
    assert config.node_pools == []
    assert config.watch_namespaces == []
    election = config.leader_election
    assert (election.lease_name, election.lease_namespace) == ("modelflock-operator", NAMESPACE)
    assert (
        election.lease_duration_seconds,
        election.renew_deadline_seconds,
        election.retry_period_seconds,
    ) == (15, 10, 2)


def test_full_operator_config_is_valid(full_docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(FULL_VALUES.read_text())
    config = parse_operator_config(operator_config(full_docs), "chart full values")
    assert [p.name for p in config.node_pools] == ["l4", "h100"]
    assert config.pool("h100") is not None and config.pool("h100").gpus_per_node == 8  # type: ignore[union-attr]
    assert config.autoscaler.metric_source == "prometheus"
    assert config.autoscaler.prometheus_url == values["autoscaler"]["prometheusUrl"]
    assert config.resync_seconds == 60
    assert config.operator_url == values["operatorUrl"]


def test_operator_config_matches_the_example_file(helm_env: dict[str, str]) -> None:
    """deploy/operator-config.example.yaml, fed through the chart's values, renders the same."""
    example = yaml.safe_load((REPO / "deploy" / "operator-config.example.yaml").read_text())
    values = {
        "nodePools": example["nodePools"],
        "images": example["images"],
        "autoscaler": example["autoscaler"],
        "resyncSeconds": example["resyncSeconds"],
        "operatorUrl": example["operatorUrl"],
        "leaderElection": {
            key: value
            for key, value in example["leaderElection"].items()
            if key != "leaseNamespace"  # the release namespace
        },
    }
    path = Path(helm_env["HELM_CONFIG_HOME"]).parent / "example-values.yaml"
    path.write_text(yaml.safe_dump(values))
    rendered = parse_operator_config(operator_config(render(helm_env, "-f", str(path))))
    assert rendered == parse_operator_config(example)


@pytest.mark.parametrize(
    "setting",
    [
        "imagePullSecrets[0].name=corp-registry",  # the Kubernetes form every chart takes
        "imagePullSecrets[0]=corp-registry",  # plain names keep working
    ],
)
def test_image_pull_secrets(helm_env: dict[str, str], setting: str) -> None:
    docs = render(helm_env, "--set", setting)
    for kind in ("Deployment", "Pod"):
        doc = one(docs, kind)
        pod = doc["spec"]["template"]["spec"] if kind == "Deployment" else doc["spec"]
        assert pod["imagePullSecrets"] == [{"name": "corp-registry"}], kind
    failed = template_failure(helm_env, "--set", "imagePullSecrets[0].namespace=x")
    assert "values don't meet the specifications of the schema" in failed


def test_image_digest(helm_env: dict[str, str]) -> None:
    digest = "sha256:" + "ab" * 32
    docs = render(helm_env, "--set", f"image.digest={digest}", "--set", "image.tag=0.1.0")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"modelflock/modelflock@{digest}"
    # The routers the operator injects run the same image, pinned the same way.
    assert parse_operator_config(operator_config(docs)).images.router == container["image"]
    failed = template_failure(helm_env, "--set", "image.digest=latest")
    assert "values don't meet the specifications of the schema" in failed


def test_helm_test_pod(default_docs: list[dict[str, Any]], helm_env: dict[str, str]) -> None:
    pod = one(default_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "modelflock/modelflock:0.1.0"
    assert "http://modelflock.modelflock.svc:8090/readyz" in container["args"][0]
    # Restricted like the operator (it runs in the same namespace).
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "Pod" not in kinds(render(helm_env, "--set", "tests.enabled=false"))


def test_prometheus_source_needs_a_url(helm_env: dict[str, str]) -> None:
    failed = template_failure(helm_env, "--set", "autoscaler.metricSource=prometheus")
    assert "autoscaler.prometheusUrl is required" in failed


@pytest.mark.parametrize(
    "setting",
    [
        "image.tag=latest",
        "webhook.failurePolicy=Sometimes",
        "autoscaler.metricSource=guess",
        "nodePools[0].name=Bad_Name",
        "unknownKey=1",
        "crds.enabled=maybe",
    ],
)
def test_schema_refuses_bad_values(helm_env: dict[str, str], setting: str) -> None:
    failed = template_failure(helm_env, "--set", setting)
    assert "values don't meet the specifications of the schema" in failed


# ---- the webhook -----------------------------------------------------------------------------


def webhook(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [hook] = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    result: dict[str, Any] = hook
    return result


def test_webhook_configuration(default_docs: list[dict[str, Any]]) -> None:
    hook = webhook(default_docs)
    assert hook["name"] == "sidecar.modelflock.io"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["service"] == {
        "name": "modelflock",
        "namespace": NAMESPACE,
        "path": "/inject-sidecar",
        "port": 9443,
    }
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": "modelflock.io/routing-policy", "operator": "Exists"}]
    }
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]


def openssl(*args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_self_signed_certificate_matches_ca_bundle(
    default_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    secret = one(default_docs, "Secret", "modelflock-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca_bundle = base64.b64decode(webhook(default_docs)["clientConfig"]["caBundle"])
    assert ca_bundle == data["ca.crt"]
    (tmp_path / "ca.crt").write_bytes(ca_bundle)
    (tmp_path / "tls.crt").write_bytes(data["tls.crt"])
    assert "tls.crt: OK" in openssl(
        "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")
    )
    text = openssl("x509", "-noout", "-text", "-in", str(tmp_path / "tls.crt"))
    assert "DNS:modelflock.modelflock.svc" in text
    # The key belongs to the certificate.
    pub_cert = openssl("x509", "-noout", "-pubkey", "-in", str(tmp_path / "tls.crt"))
    pub_key = openssl("pkey", "-pubout", stdin=data["tls.key"])
    assert pub_cert == pub_key


def test_cert_manager_mode(full_docs: list[dict[str, Any]]) -> None:
    assert "Secret" not in kinds(full_docs)
    configuration = one(full_docs, "MutatingWebhookConfiguration")
    certificate = one(full_docs, "Certificate")
    issuer = one(full_docs, "Issuer")
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    assert "caBundle" not in webhook(full_docs)["clientConfig"]
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert issuer["spec"] == {"selfSigned": {}}
    assert "modelflock.modelflock.svc" in certificate["spec"]["dnsNames"]
    pod = one(full_docs, "Deployment")["spec"]["template"]["spec"]
    [tls] = [v for v in pod["volumes"] if v["name"] == "webhook-tls"]
    assert tls["secret"]["secretName"] == certificate["spec"]["secretName"]


def test_cert_manager_with_own_issuer(helm_env: dict[str, str]) -> None:
    docs = render(
        helm_env,
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.certManager.issuerRef.name=corp-ca",
        "--set",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert "Issuer" not in kinds(docs)
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


# ---- monitoring ------------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Sample names the operator and the router really export (their registries, not a copy
    of the names), so alerts and dashboard panels cannot drift from the code."""
    from prometheus_client import CollectorRegistry

    from modelflock.controller.metrics import OperatorMetrics
    from modelflock.router.accounting import RouterMetrics

    operator_registry = CollectorRegistry()
    OperatorMetrics(operator_registry)
    names = set()
    for registry in (operator_registry, RouterMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bmodelflock_[a-z_]+", text))


def test_service_monitor_scrapes_the_metrics_port(full_docs: list[dict[str, Any]]) -> None:
    monitor = one(full_docs, "ServiceMonitor")
    service = one(full_docs, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The operator's series name the expert's namespace themselves: honorLabels keeps it
    # (otherwise it becomes exported_namespace and the target's namespace replaces it).
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(
        service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_pod_monitor_scrapes_every_router(full_docs: list[dict[str, Any]]) -> None:
    monitor = one(full_docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "modelflock.io/router-metrics", "operator": "Exists"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "mf-metrics"


def test_prometheus_rules(full_docs: list[dict[str, Any]]) -> None:
    rule = one(full_docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "ModelFlockExpertDegraded",
        "ModelFlockQueueAboveTarget",
        "ModelFlockRouterErrorRate",
    }
    assert (
        'modelflock_experts{condition="Degraded",status="True"}'
        in (alerts["ModelFlockExpertDegraded"]["expr"])
    )
    queue = alerts["ModelFlockQueueAboveTarget"]["expr"]
    assert "modelflock_autoscaler_queue_depth" in queue
    assert "modelflock_autoscaler_target_queue_depth" in queue
    errors = alerts["ModelFlockRouterErrorRate"]["expr"]
    assert 'modelflock_router_requests_total{code=~"5.."}' in errors
    assert "> 0.05" in errors
    # Prometheus templating survives helm's ({{ $labels.x }} is escaped in the chart).
    assert "{{ $labels.expert }}" in alerts["ModelFlockExpertDegraded"]["annotations"]["summary"]
    assert used_metrics(json.dumps(rule)) <= exported_metric_names()


def test_dashboard(full_docs: list[dict[str, Any]]) -> None:
    config = one(full_docs, "ConfigMap", "modelflock-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["modelflock.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "modelflock_autoscaler_queue_depth",
        "modelflock_autoscaler_desired_replicas",
        "modelflock_router_requests_total",
        "modelflock_router_cost_usd_total",
        "modelflock_router_baseline_cost_usd_total",
        "modelflock_router_escalations_total",
        "modelflock_router_fallbacks_total",
        "modelflock_router_shadow_samples_total",
        "modelflock_router_shadow_cost_usd_total",
        "modelflock_router_shadow_dropped_total",
    ):
        assert metric in exprs, metric
    assert "by (route, expert)" in exprs
    quality = next(p for p in dashboard["panels"] if p.get("repeat") == "route")
    assert quality["title"].endswith("$route (last hour of samples)")
    assert used_metrics(exprs) <= exported_metric_names()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---- values, docs, manifests -----------------------------------------------------------------


def values_keys() -> Iterator[tuple[str, list[str], int]]:
    """(dotted path, the comment block above it, line number) for every key in values.yaml."""
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            yield ".".join(k for _, k in stack), comments, number
        comments = []


def test_values_are_documented_key_by_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    undocumented = []
    for path, comments, number in values_keys():
        node = schema
        for part in path.split(".")[:-1]:
            node = node.get("properties", {}).get(part, {})
        if "properties" not in node:
            continue  # inside a free-form map (resources, security contexts): Kubernetes' own
        assert path.split(".")[-1] in node["properties"], f"{path} missing from the schema"
        if not comments or not re.match(rf"# {re.escape(path)}\b", comments[0]):
            undocumented.append(f"values.yaml:{number}: {path}")
    assert not undocumented, "each key's comment must start with its name:\n" + "\n".join(
        undocumented
    )


def test_no_registry_host_names() -> None:
    paths = [
        *CHART.rglob("*"),
        REPO / "Dockerfile",
        REPO / "docs" / "install.md",
        *(REPO / "deploy" / "manifests").glob("*"),
        *(REPO / "deploy" / "kustomize").rglob("*"),
    ]
    offenders = [
        str(p.relative_to(REPO))
        for p in paths
        if p.is_file() and REGISTRY_HOSTS.search(p.read_text(errors="replace"))
    ]
    assert not offenders


def test_plain_manifests_are_up_to_date(helm_env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(REPO / "hack" / "render-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**helm_env, "HELM": helm_env["HELM_BIN"]},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_plain_manifests_content() -> None:
    text = (REPO / "deploy" / "manifests" / "modelflock.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "modelflock",
            "labels": {
                "app.kubernetes.io/part-of": "modelflock",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    found = kinds([d for d in docs if d])
    assert "Secret" not in found  # no private key in git: cert-manager issues it
    assert "Pod" not in found  # the `helm test` hook is not a GitOps object
    assert {"Certificate", "Issuer", "MutatingWebhookConfiguration", "Deployment"} <= set(found)
    assert found.count("CustomResourceDefinition") == 3


# ---- the bundled pgvector (off by default) ---------------------------------------------------


def test_bundled_pgvector(default_docs: list[dict[str, Any]], helm_env: dict[str, str]) -> None:
    assert not [d for d in default_docs if "pgvector" in d["metadata"]["name"]]
    docs = render(
        helm_env, "--set", "pgvector.enabled=true", "--set", "pgvector.auth.secretName=pg-auth"
    )
    service = one(docs, "Service", "modelflock-pgvector")
    assert service["spec"]["ports"][0]["port"] == 5432
    stateful = one(docs, "StatefulSet", "modelflock-pgvector")
    assert stateful["spec"]["replicas"] == 1
    assert (
        stateful["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    )
    pod = stateful["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["image"] == "pgvector/pgvector:pg16"
    env = {e["name"]: e for e in container["env"]}
    # Passwords only from the Secret, never in the rendered objects.
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "pg-auth",
        "key": "password",
    }
    assert env["READER_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "readerPassword"
    assert env["POSTGRES_DB"]["value"] == "modelflock"
    assert env["READER_USER"]["value"] == "modelflock_reader"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["init"] == "/docker-entrypoint-initdb.d"
    [claim] = stateful["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    script = one(docs, "ConfigMap", "modelflock-pgvector-init")["data"]["10-modelflock.sh"]
    for statement in (
        "CREATE EXTENSION IF NOT EXISTS vector;",
        """CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';""",
        "GRANT USAGE ON SCHEMA public TO",
    ):
        assert statement in script
    # A Secret is required; names must be SQL identifiers.
    failed = template_failure(helm_env, "--set", "pgvector.enabled=true")
    assert "pgvector.auth.secretName is required" in failed
    failed = template_failure(helm_env, "--set", "pgvector.auth.readerUsername=x; drop")
    assert "values don't meet the specifications of the schema" in failed
