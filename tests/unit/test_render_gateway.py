"""The gateway as the operator renders it (issue 14): client keys from Secrets, a NetworkPolicy
that is namespace-local by default, the ops listener's exposure decided by the same policy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelflock.api.routingpolicy import GatewaySpec, RoutingPolicySpec
from modelflock.render.policy import GATEWAY_CONFIG_KEY, render_gateway_config
from modelflock.render.router_pod import render_gateway, sidecar_container
from modelflock.router.config import RouterConfig

OWNER = {"apiVersion": "modelflock.io/v1alpha1", "kind": "RoutingPolicy", "name": "p", "uid": "u"}
KEYS = [
    {"name": "team-a", "secretRef": {"name": "gw-keys", "key": "team-a"}},
    {"name": "team-b", "secretRef": {"name": "gw-keys", "key": "team-b"}},
]


def spec(**gateway: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {
            "experts": ["small"],
            "routes": [{"name": "all", "expert": "small"}],
            "gateway": {"replicas": 1, "apiKeys": KEYS, **gateway},
        }
    )


def kinds(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


@pytest.mark.parametrize(
    ("gateway", "error"),
    [
        ({"replicas": 1}, "needs apiKeys"),
        ({"replicas": 1, "allowUnauthenticated": True}, None),
        ({"replicas": 0}, None),
        ({"replicas": 2, "apiKeys": KEYS}, None),
    ],
)
def test_a_gateway_needs_keys_unless_explicitly_open(
    gateway: dict[str, Any], error: str | None
) -> None:
    if error is None:
        GatewaySpec.model_validate(gateway)
    else:
        with pytest.raises(ValidationError, match=error):
            GatewaySpec.model_validate(gateway)


def test_the_gateway_config_requires_the_client_keys_and_names_only_files() -> None:
    base = {
        "listen": {"host": "127.0.0.1", "port": 8787},
        "experts": [{"name": "small", "urls": ["http://small:8000"], "model": "small"}],
        "routes": [{"name": "all", "expert": "small"}],
    }
    rendered = render_gateway_config(base, spec().gateway)
    assert rendered["listen"] == {"host": "0.0.0.0", "port": 8787}
    assert rendered["auth"] == {
        "keys": [
            {"name": "team-a", "file": "/etc/modelflock/client-keys/gw-keys/team-a"},
            {"name": "team-b", "file": "/etc/modelflock/client-keys/gw-keys/team-b"},
        ]
    }
    RouterConfig.model_validate(rendered)  # the router accepts what the operator renders
    open_gateway = spec(apiKeys=[], allowUnauthenticated=True).gateway
    assert "auth" not in render_gateway_config(base, open_gateway)
    assert "auth" not in base  # the sidecars' config is left alone


def test_the_gateway_mounts_the_client_key_secrets_and_reads_its_own_config() -> None:
    found = kinds(render_gateway("p", "team", OWNER, spec(), "img", [("frontier", "api-key")]))
    pod = found["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert f"--config=/etc/modelflock/router/{GATEWAY_CONFIG_KEY}" in container["args"]
    assert "--metrics-host=0.0.0.0" in container["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mf-client-gw-keys"]["secret"] == {
        "secretName": "gw-keys",
        "items": [{"key": "team-a", "path": "team-a"}, {"key": "team-b", "path": "team-b"}],
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["mf-client-gw-keys"] == "/etc/modelflock/client-keys/gw-keys"
    assert mounts["mf-key-frontier"] == "/etc/modelflock/secrets/frontier"
    annotations = found["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8788"  # the ops listener, not the API
    # The sidecar stays on localhost, with the sidecars' config and no client keys.
    sidecar = sidecar_container("p", spec(), "img", [])
    assert "--config=/etc/modelflock/router/router.yaml" in sidecar["args"]
    assert not any("client" in m["name"] for m in sidecar["volumeMounts"])


@pytest.mark.parametrize(
    ("network", "api_from", "metrics_from"),
    [
        ({}, [{"podSelector": {}}], [{"podSelector": {}}]),
        (
            {
                "allowFrom": [
                    {"namespaceSelector": {"team": "web"}, "podSelector": {"app": "shop"}}
                ],
                "metricsFrom": [
                    {"namespaceSelector": {"kubernetes.io/metadata.name": "monitoring"}}
                ],
            },
            [
                {"podSelector": {}},
                {
                    "podSelector": {"matchLabels": {"app": "shop"}},
                    "namespaceSelector": {"matchLabels": {"team": "web"}},
                },
            ],
            [
                {"podSelector": {}},
                {
                    "podSelector": {"matchLabels": {}},
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    },
                },
            ],
        ),
    ],
    ids=["namespace-local", "named-peers"],
)
def test_the_network_policy_admits_this_namespace_and_named_peers_only(
    network: dict[str, Any], api_from: list[Any], metrics_from: list[Any]
) -> None:
    found = kinds(render_gateway("p", "team", OWNER, spec(networkPolicy=network), "img", []))
    policy = found["NetworkPolicy"]
    assert policy["metadata"]["name"] == "p-router" and policy["metadata"]["namespace"] == "team"
    assert policy["metadata"]["ownerReferences"] == [OWNER]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    pod_labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selected.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    api, metrics = policy["spec"]["ingress"]
    assert api == {"from": api_from, "ports": [{"protocol": "TCP", "port": 8787}]}
    assert metrics == {"from": metrics_from, "ports": [{"protocol": "TCP", "port": 8788}]}


def test_no_network_policy_when_disabled() -> None:
    found = kinds(
        render_gateway("p", "team", OWNER, spec(networkPolicy={"enabled": False}), "img", [])
    )
    assert set(found) == {"Deployment", "Service"}


def test_rendered_manifests_name_no_key_values() -> None:
    text = yaml.safe_dump(render_gateway("p", "team", OWNER, spec(), "img", []))
    assert "team-a" in text  # the Secret key names, as paths
    assert "sk-" not in text
