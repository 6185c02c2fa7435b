"""The router container and its volumes — shared by the injected sidecar and the gateway — and
the gateway's Deployment and Service. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelflock.api.routingpolicy import NetworkPeer, RoutingPolicySpec
from modelflock.render.policy import (
    CLIENT_KEYS_DIR,
    CONFIG_DIR,
    CONFIG_KEY,
    GATEWAY_CONFIG_KEY,
    SECRETS_DIR,
    client_key_secrets,
    config_map_name,
    token_secret_name,
)

Manifest = dict[str, Any]
POLICY_LABEL = "modelflock.io/routing-policy"
SIDECAR_NAME = "modelflock-router"
BASE_URL_ENV = "OPENAI_BASE_URL"
# Pods whose router serves metrics on port `mf-metrics` (the chart's PodMonitor selects them).
ROUTER_METRICS_LABEL = "modelflock.io/router-metrics"
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _volume_name(secret: str, prefix: str = "mf-key-") -> str:
    return f"{prefix}{secret}"[:63].rstrip("-")


def _secret_volumes(secrets: Sequence[tuple[str, str]], prefix: str) -> list[Manifest]:
    keys_by_secret: dict[str, list[str]] = {}
    for secret, key in secrets:
        keys_by_secret.setdefault(secret, []).append(key)
    return [
        {
            "name": _volume_name(secret, prefix),
            "secret": {
                "secretName": secret,
                "items": [{"key": k, "path": k} for k in sorted(keys)],
            },
        }
        for secret, keys in sorted(keys_by_secret.items())
    ]


def router_volumes(
    policy: str,
    secrets: Sequence[tuple[str, str]],
    client_keys: Sequence[tuple[str, str]] = (),
) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "mf-router-config", "configMap": {"name": config_map_name(policy)}},
        {"name": "mf-router-token", "secret": {"secretName": token_secret_name(policy)}},
    ]
    return (
        volumes + _secret_volumes(secrets, "mf-key-") + _secret_volumes(client_keys, "mf-client-")
    )


def router_container(
    policy: str,
    spec: RoutingPolicySpec,
    image: str,
    secrets: Sequence[tuple[str, str]],
    host: str,
    port: int,
    metrics_port: int,
    config_key: str = CONFIG_KEY,
    client_keys: Sequence[tuple[str, str]] = (),
) -> Manifest:
    mounts: list[Manifest] = [
        {"name": "mf-router-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "mf-router-token", "mountPath": "/etc/modelflock/token", "readOnly": True},
    ]
    mounts += [
        {"name": _volume_name(s), "mountPath": f"{SECRETS_DIR}/{s}", "readOnly": True}
        for s in sorted({secret for secret, _ in secrets})
    ]
    mounts += [
        {
            "name": _volume_name(s, "mf-client-"),
            "mountPath": f"{CLIENT_KEYS_DIR}/{s}",
            "readOnly": True,
        }
        for s in sorted({secret for secret, _ in client_keys})
    ]
    return {
        "name": SIDECAR_NAME,
        "image": image,
        "args": [
            "router",
            f"--config={CONFIG_DIR}/{config_key}",
            f"--host={host}",
            f"--port={port}",
            f"--metrics-port={metrics_port}",
            # Probes and Prometheus reach it on the pod IP (the gateway's NetworkPolicy
            # decides who else may).
            "--metrics-host=0.0.0.0",
        ],
        "ports": [
            {"name": "mf-router", "containerPort": port, "protocol": "TCP"},
            {"name": "mf-metrics", "containerPort": metrics_port, "protocol": "TCP"},
        ],
        "env": [{"name": "MODELFLOCK_POLICY", "value": policy}],
        "resources": {
            "requests": {"cpu": spec.sidecar.cpu, "memory": spec.sidecar.memory},
            "limits": {"memory": spec.sidecar.memory},
        },
        # Probes go to the metrics listener: it is on the pod IP even when the API is not.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "mf-metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "mf-metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 6,
        },
        "securityContext": RESTRICTED,
        "volumeMounts": mounts,
    }


def sidecar_container(
    policy: str, spec: RoutingPolicySpec, image: str, secrets: Sequence[tuple[str, str]]
) -> Manifest:
    """The injected router: localhost only, so only the application in the pod can reach it."""
    return router_container(
        policy, spec, image, secrets, "127.0.0.1", spec.sidecar.port, spec.sidecar.metrics_port
    )


def gateway_name(policy: str) -> str:
    return f"{policy}-router"


def gateway_labels(policy: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelflock-router",
        "app.kubernetes.io/instance": policy,
        "app.kubernetes.io/component": "gateway",
        "app.kubernetes.io/part-of": "modelflock",
        "app.kubernetes.io/managed-by": "modelflock",
        POLICY_LABEL + "-gateway": policy,
        ROUTER_METRICS_LABEL: "gateway",
    }


def render_gateway(
    policy: str,
    namespace: str,
    owner: Manifest,
    spec: RoutingPolicySpec,
    image: str,
    secrets: Sequence[tuple[str, str]],
) -> list[Manifest]:
    labels = gateway_labels(policy)
    selector = gateway_selector(policy)
    client_keys = client_key_secrets(spec.gateway)
    container = router_container(
        policy,
        spec,
        image,
        secrets,
        "0.0.0.0",
        spec.gateway.port,
        spec.gateway.metrics_port,
        GATEWAY_CONFIG_KEY,
        client_keys,
    )
    meta = {
        "name": gateway_name(policy),
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner],
    }
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.gateway.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.gateway.metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": router_volumes(policy, secrets, client_keys),
                },
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {
                    "name": "http",
                    "port": spec.gateway.port,
                    "targetPort": "mf-router",
                    "protocol": "TCP",
                }
            ],
        },
    }
    manifests = [deployment, service]
    if spec.gateway.network_policy.enabled:
        manifests.append(gateway_network_policy(policy, namespace, owner, spec))
    return manifests


def gateway_selector(policy: str) -> dict[str, str]:
    return {POLICY_LABEL + "-gateway": policy, "app.kubernetes.io/component": "gateway"}


def _peer(peer: NetworkPeer) -> Manifest:
    found: Manifest = {"podSelector": {"matchLabels": dict(peer.pod_selector or {})}}
    if peer.namespace_selector is not None:
        found["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector)}
    return found


def gateway_network_policy(
    policy: str, namespace: str, owner: Manifest, spec: RoutingPolicySpec
) -> Manifest:
    """Ingress to the gateway's pods: its API port and its metrics port each from pods of this
    namespace plus the peers the spec names; nothing else (kubelet probes come from the node,
    which network plugins let through)."""
    rules = spec.gateway.network_policy
    same_namespace: Manifest = {"podSelector": {}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": gateway_name(policy),
            "namespace": namespace,
            "labels": gateway_labels(policy),
            "ownerReferences": [owner],
        },
        "spec": {
            "podSelector": {"matchLabels": gateway_selector(policy)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [same_namespace, *(_peer(p) for p in rules.allow_from)],
                    "ports": [{"protocol": "TCP", "port": spec.gateway.port}],
                },
                {
                    "from": [same_namespace, *(_peer(p) for p in rules.metrics_from)],
                    "ports": [{"protocol": "TCP", "port": spec.gateway.metrics_port}],
                },
            ],
        },
    }
