"""The router container and its volumes — shared by the injected sidecar and the gateway — and
the gateway's Deployment and Service. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelflock.api.routingpolicy import RoutingPolicySpec
from modelflock.render.policy import (
    CONFIG_DIR,
    CONFIG_KEY,
    SECRETS_DIR,
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


def _volume_name(secret: str) -> str:
    return f"mf-key-{secret}"[:63].rstrip("-")


def router_volumes(policy: str, secrets: Sequence[tuple[str, str]]) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "mf-router-config", "configMap": {"name": config_map_name(policy)}},
        {"name": "mf-router-token", "secret": {"secretName": token_secret_name(policy)}},
    ]
    keys_by_secret: dict[str, list[str]] = {}
    for secret, key in secrets:
        keys_by_secret.setdefault(secret, []).append(key)
    for secret, keys in sorted(keys_by_secret.items()):
        volumes.append(
            {
                "name": _volume_name(secret),
                "secret": {
                    "secretName": secret,
                    "items": [{"key": k, "path": k} for k in sorted(keys)],
                },
            }
        )
    return volumes


def router_container(
    policy: str,
    spec: RoutingPolicySpec,
    image: str,
    secrets: Sequence[tuple[str, str]],
    host: str,
    port: int,
    metrics_port: int,
) -> Manifest:
    mounts: list[Manifest] = [
        {"name": "mf-router-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "mf-router-token", "mountPath": "/etc/modelflock/token", "readOnly": True},
    ]
    mounts += [
        {"name": _volume_name(s), "mountPath": f"{SECRETS_DIR}/{s}", "readOnly": True}
        for s in sorted({secret for secret, _ in secrets})
    ]
    return {
        "name": SIDECAR_NAME,
        "image": image,
        "args": [
            "router",
            f"--config={CONFIG_DIR}/{CONFIG_KEY}",
            f"--host={host}",
            f"--port={port}",
            f"--metrics-port={metrics_port}",
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
    selector = {POLICY_LABEL + "-gateway": policy, "app.kubernetes.io/component": "gateway"}
    container = router_container(
        policy, spec, image, secrets, "0.0.0.0", spec.gateway.port, spec.gateway.metrics_port
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
                        "prometheus.io/port": str(spec.gateway.port),
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
                    "volumes": router_volumes(policy, secrets),
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
    return [deployment, service]
