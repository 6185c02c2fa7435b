"""RoutingPolicy controller, sidecar injection through the real API server, and gateway mode."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster

from modelflock.router.config import parse_config
from support import (
    FRONTIER_EXPERT,
    OperatorProcess,
    apply,
    condition,
    flock_post,
    fresh_namespace,
    get_json,
    model_expert,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "routing"
SECRET_VALUE = "sk-do-not-leak-4242"


def expert(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": f"org/{name}", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"enabled": False},
        "replicas": 1,
        "cost": {"inputPerMillion": "0.10", "outputPerMillion": "0.20"},
    }
    base.update(spec)
    return model_expert(name, base)


def policy(name: str, experts: list[str], **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "experts": experts,
        "baseline": experts[-1],
        "classifier": {
            "intents": [{"name": "code", "keywords": ["python"]}, {"name": "chat"}],
            "defaultIntent": "chat",
        },
        "routes": [
            {
                "name": "code",
                "match": {"intents": ["code"]},
                "expert": experts[0],
                "fallbacks": [experts[-1]],
            },
            {"name": "chat", "expert": experts[-1]},
        ],
    }
    base.update(spec)
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": base,
    }


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as name:
        _populate(cluster)
        yield name


def _populate(cluster: LocalCluster) -> None:
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "frontier-key",
        "-n",
        NS,
        f"--from-literal=api-key={SECRET_VALUE}",
    )
    apply(cluster, NS, expert("code-7b"))
    apply(cluster, NS, FRONTIER_EXPERT)
    apply(cluster, NS, policy("portfolio", ["code-7b", "frontier"]))


def get_policy(cluster: LocalCluster, name: str) -> Any:
    return get_json(cluster, "routingpolicy", name, "-n", NS)


def router_config(cluster: LocalCluster, policy_name: str) -> tuple[str, dict[str, Any]]:
    cm = get_json(cluster, "configmap", f"{policy_name}-router-config", "-n", NS)
    assert cm is not None, "router ConfigMap missing"
    return cm["metadata"]["resourceVersion"], cm


def ready_policy(cluster: LocalCluster, name: str) -> Any:
    obj = get_policy(cluster, name)
    ok = (
        condition(obj, "Ready").get("status") == "True"
        and condition(obj, "ResolvedRefs").get("status") == "True"
        and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    )
    return obj if ok else None


def test_policy_renders_router_config_and_status(cluster: LocalCluster) -> None:
    obj = wait_for(
        lambda: (
            (o := ready_policy(cluster, "portfolio")) and o["status"]["expertsReady"] == "2/2" and o
        ),
        "policy Ready with both experts ready",
        60,
    )
    status = obj["status"]
    assert status["configMapName"] == "portfolio-router-config"
    assert {e["name"]: e["ready"] for e in status["experts"]} == {"code-7b": True, "frontier": True}

    _, cm = router_config(cluster, "portfolio")
    text = cm["data"]["router.yaml"]
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "RoutingPolicy"
    assert cm["metadata"]["annotations"]["modelflock.io/config-hash"] == status["configHash"]
    config = parse_config(text)  # the router accepts exactly what the operator renders
    code = config.expert("code-7b")
    assert code.urls == [f"http://code-7b.{NS}.svc.cluster.local:8000/v1"]
    assert code.model == "code-7b" and code.prices.input_per_million == "0.10"
    frontier = config.expert("frontier")
    assert frontier.engine == "external" and frontier.model == "frontier-large"
    assert str(frontier.api_key_file) == "/etc/modelflock/secrets/frontier-key/api-key"
    assert config.baseline == "frontier"
    assert config.discovery is not None and config.discovery.policy == "portfolio"
    assert SECRET_VALUE not in text and SECRET_VALUE not in json.dumps(obj)
    token = get_json(cluster, "secret", "portfolio-router-token", "-n", NS)
    assert token["metadata"]["ownerReferences"][0]["name"] == "portfolio"
    printed = cluster.kubectl("get", "rp", "portfolio", "-n", NS)
    assert "2/2" in printed and "True" in printed


def test_config_is_stable_and_follows_expert_changes(cluster: LocalCluster) -> None:
    wait_for(lambda: ready_policy(cluster, "portfolio"), "policy Ready", 60)
    version, _ = router_config(cluster, "portfolio")
    time.sleep(7)  # more than one resync period of the operator
    assert router_config(cluster, "portfolio")[0] == version, (
        "unchanged inputs rewrote the ConfigMap"
    )

    apply(
        cluster, NS, expert("code-7b", cost={"inputPerMillion": "0.07", "outputPerMillion": "0.20"})
    )
    wait_for(
        lambda: (
            parse_config(router_config(cluster, "portfolio")[1]["data"]["router.yaml"])
            .expert("code-7b")
            .prices.input_per_million
            == "0.07"
        ),
        "new price in the router config",
        30,
    )
    hash_now = get_policy(cluster, "portfolio")["status"]["configHash"]
    assert (
        hash_now
        == router_config(cluster, "portfolio")[1]["metadata"]["annotations"][
            "modelflock.io/config-hash"
        ]
    )


def test_missing_expert_is_named_and_resolves_when_created(cluster: LocalCluster) -> None:
    apply(cluster, NS, policy("early", ["later-7b", "frontier"]))
    obj = wait_for(
        lambda: (
            (o := get_policy(cluster, "early"))
            and condition(o, "ResolvedRefs").get("status") == "False"
            and o
        ),
        "ResolvedRefs False",
        30,
    )
    assert "later-7b" in condition(obj, "ResolvedRefs")["message"]
    apply(cluster, NS, expert("later-7b"))
    wait_for(lambda: ready_policy(cluster, "early"), "policy Ready once the expert exists", 60)

    cluster.kubectl("delete", "modelexpert", "later-7b", "-n", NS, "--wait=true")
    obj = wait_for(
        lambda: (
            (o := get_policy(cluster, "early"))
            and condition(o, "ResolvedRefs").get("status") == "False"
            and o
        ),
        "ResolvedRefs False after delete",
        30,
    )
    assert "later-7b" in condition(obj, "ResolvedRefs")["message"]
    apply(cluster, NS, expert("later-7b"))
    wait_for(lambda: ready_policy(cluster, "early"), "Ready again after recreate", 60)


def test_gateway_mode_creates_and_removes_deployment_and_service(cluster: LocalCluster) -> None:
    keys = [{"name": "team-a", "secretRef": {"name": "gw-keys", "key": "team-a"}}]
    gateway = {"replicas": 2, "port": 8787, "apiKeys": keys}
    apply(cluster, NS, policy("gw", ["code-7b", "frontier"], gateway=gateway))
    deployment = wait_for(
        lambda: get_json(cluster, "deployment", "gw-router", "-n", NS), "gateway Deployment", 30
    )
    service = get_json(cluster, "service", "gw-router", "-n", NS)
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--host=0.0.0.0" in container["args"]
    assert "--config=/etc/modelflock/router/gateway.yaml" in container["args"]
    assert any(
        v.get("configMap", {}).get("name") == "gw-router-config"
        for v in deployment["spec"]["template"]["spec"]["volumes"]
    )
    assert service["spec"]["ports"][0]["port"] == 8787
    # Who may reach it: this namespace only, by default.
    network = wait_for(
        lambda: get_json(cluster, "networkpolicy", "gw-router", "-n", NS), "NetworkPolicy", 30
    )
    assert [rule["from"] for rule in network["spec"]["ingress"]] == [[{"podSelector": {}}]] * 2
    config = get_json(cluster, "configmap", "gw-router-config", "-n", NS)
    gateway_config = yaml.safe_load(config["data"]["gateway.yaml"])
    assert gateway_config["auth"]["keys"][0]["name"] == "team-a"
    assert "auth" not in yaml.safe_load(config["data"]["router.yaml"])  # not for sidecars
    # The API server refuses a gateway without keys (unless explicitly open).
    refused = cluster.run_kubectl(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "-n",
        NS,
        "-f",
        "-",
        input=json.dumps(policy("gw", ["code-7b", "frontier"], gateway={"replicas": 1})),
    )
    assert refused.returncode != 0 and "apiKeys" in refused.stderr
    apply(cluster, NS, policy("gw", ["code-7b", "frontier"], gateway={"replicas": 0}))
    wait_for(
        lambda: (
            get_json(cluster, "deployment", "gw-router", "-n", NS) is None
            and get_json(cluster, "service", "gw-router", "-n", NS) is None
            and get_json(cluster, "networkpolicy", "gw-router", "-n", NS) is None
        ),
        "gateway removed",
        30,
    )


def _flock(
    operator: OperatorProcess, path: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{operator.flock_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_flock_api_shows_each_router_only_its_policy(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    wait_for(lambda: ready_policy(cluster, "portfolio"), "portfolio Ready", 60)
    apply(cluster, NS, expert("other-7b"))
    apply(cluster, NS, policy("other", ["other-7b", "frontier"]))
    wait_for(lambda: get_json(cluster, "secret", "other-router-token", "-n", NS), "other token", 30)
    token = base64.b64decode(
        get_json(cluster, "secret", "portfolio-router-token", "-n", NS)["data"]["token"]
    ).decode()
    base = f"/flock/v1/namespaces/{NS}/routingpolicies"

    def endpoints() -> Any:
        code, doc = _flock(operator, f"{base}/portfolio/endpoints", token)
        return doc if code == 200 and doc["experts"].get("code-7b", {}).get("endpoints") else None

    doc = wait_for(endpoints, "code-7b endpoints", 30)
    assert set(doc["experts"]) <= {"code-7b", "frontier"} and "other-7b" not in doc["experts"]
    url = doc["experts"]["code-7b"]["endpoints"][0]["url"]
    host = url.removeprefix("http://").split(":")[0]
    assert ipaddress.ip_address(host) in ipaddress.ip_network(cluster.pod_cidr), url
    assert _flock(operator, f"{base}/other/endpoints", token)[0] == 401
    assert _flock(operator, f"{base}/portfolio/endpoints", "wrong")[0] == 401
    assert (
        _flock(operator, f"{base}/portfolio/demand", token, {"expert": "other-7b", "waiting": 1})[0]
        == 403
    )
    assert (
        _flock(operator, f"{base}/portfolio/demand", token, {"expert": "code-7b", "waiting": 1})[0]
        == 202
    )
    # Bodies are bounded whether or not they declare their length, and bad JSON is a 400.
    demand = f"{base}/portfolio/demand"
    assert flock_post(operator, demand, token, [b'{"expert": "code-7b", "pad": "'] * 300) == 413
    assert flock_post(operator, demand, token, b"[" * 5000 + b"]" * 5000) == 413
    assert flock_post(operator, demand, token, b"[" * 4000) == 400
    assert flock_post(operator, f"{base}/portfolio/retrieval", token, [b"[" * 2000] * 2) == 400


@pytest.fixture(scope="module")
def webhook(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[None]:
    assert operator.webhook_dir is not None
    ca = base64.b64encode((operator.webhook_dir / "ca.crt").read_bytes()).decode()
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "modelflock-test-sidecar"},
        "webhooks": [
            {
                "name": "sidecar.modelflock.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{operator.webhook_port}/inject-sidecar",
                    "caBundle": ca,
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {
                    "matchExpressions": [
                        {"key": "modelflock.io/routing-policy", "operator": "Exists"}
                    ]
                },
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                # Fail in tests, so a broken webhook cannot pass unnoticed.
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    yield
    cluster.kubectl("delete", "mutatingwebhookconfiguration", "modelflock-test-sidecar")


def app_pod(
    name: str, policy_name: str | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    labels = {"app": "chatbot"}
    if policy_name:
        labels["modelflock.io/routing-policy"] = policy_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "annotations": annotations or {},
        },
        "spec": {
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [
                {"name": "app", "image": "chatbot:1", "env": [{"name": "A", "value": "1"}]}
            ],
        },
    }


def create(cluster: LocalCluster, pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    result = cluster.run_kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"]["containers"] if c["name"] == "modelflock-router"]


def test_labelled_pod_gets_exactly_one_sidecar(cluster: LocalCluster, webhook: None) -> None:
    wait_for(lambda: ready_policy(cluster, "portfolio"), "portfolio Ready", 60)
    pod, _ = create(cluster, app_pod("with-router", "portfolio"))
    (sidecar,) = sidecars(pod)
    assert "--config=/etc/modelflock/router/router.yaml" in sidecar["args"]
    assert "--host=127.0.0.1" in sidecar["args"]
    # (the ServiceAccount admission plugin adds its token mount to every container afterwards)
    mounts = {
        m["mountPath"] for m in sidecar["volumeMounts"] if "serviceaccount" not in m["mountPath"]
    }
    assert mounts == {
        "/etc/modelflock/router",
        "/etc/modelflock/token",
        "/etc/modelflock/secrets/frontier-key",
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["mf-router-config"]["configMap"]["name"] == "portfolio-router-config"
    assert volumes["mf-router-token"]["secret"]["secretName"] == "portfolio-router-token"
    assert volumes["mf-key-frontier-key"]["secret"]["items"] == [
        {"key": "api-key", "path": "api-key"}
    ]
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    # The API stays on localhost; metrics and probes are on the pod IP (port mf-metrics).
    assert sidecar["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "mf-metrics",
        "scheme": "HTTP",
    }
    assert "--metrics-port=8788" in sidecar["args"]
    assert pod["metadata"]["labels"]["modelflock.io/router-metrics"] == "sidecar"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8787/v1" and env["A"] == "1"

    # Re-admission of an already injected pod spec adds nothing.
    again = app_pod("with-router-again", "portfolio")
    again["spec"] = {
        k: v for k, v in pod["spec"].items() if k in {"containers", "volumes", "tolerations"}
    }
    again["spec"]["containers"] = [
        {
            k: v
            for k, v in c.items()
            if k in {"name", "image", "env", "args", "volumeMounts", "ports"}
        }
        for c in again["spec"]["containers"]
    ]
    again["spec"]["volumes"] = [
        v for v in again["spec"]["volumes"] if not v["name"].startswith("kube-api-access")
    ]
    for c in again["spec"]["containers"]:
        c["volumeMounts"] = [
            m for m in c.get("volumeMounts", []) if not m["name"].startswith("kube-api-access")
        ]
    second, _ = create(cluster, again)
    assert len(sidecars(second)) == 1
    assert len([v for v in second["spec"]["volumes"] if v["name"] == "mf-router-config"]) == 1


def test_unlabelled_and_opted_out_pods_are_untouched(cluster: LocalCluster, webhook: None) -> None:
    plain, _ = create(cluster, app_pod("plain"))
    assert not sidecars(plain)
    opted_out, _ = create(
        cluster, app_pod("opted-out", "portfolio", {"modelflock.io/inject": "false"})
    )
    assert not sidecars(opted_out)
    assert "OPENAI_BASE_URL" not in json.dumps(opted_out["spec"])


def test_pod_naming_a_missing_policy_is_admitted_with_a_warning(
    cluster: LocalCluster, webhook: None
) -> None:
    pod, stderr = create(cluster, app_pod("no-policy", "does-not-exist"))
    assert not sidecars(pod)
    assert "does-not-exist" in stderr and "Warning" in stderr


def test_router_config_file_is_yaml_the_router_loads(cluster: LocalCluster) -> None:
    _, cm = router_config(cluster, "portfolio")
    data = yaml.safe_load(cm["data"]["router.yaml"])
    assert data["listen"] == {"host": "127.0.0.1", "port": 8787}
    assert [r["name"] for r in data["routes"]] == ["code", "chat"]
