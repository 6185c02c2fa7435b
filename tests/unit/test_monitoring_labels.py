"""The chart's ServiceMonitor and PodMonitor, as the Prometheus Operator turns them into a scrape
configuration (tests/monitoring/promop.py), run by a real Prometheus against the operator's and
the router's own metric registries served on 127.0.0.1: the series must keep the namespace the
experts live in (the operator's gauges name it themselves) and the router pod's namespace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from test_chart import FULL_VALUES, NAMESPACE, find_helm, one, render

from modelflock.controller.metrics import OperatorMetrics
from modelflock.render.router_pod import ROUTER_METRICS_LABEL, SIDECAR_NAME
from modelflock.router.accounting import RouterMetrics
from monitoring.prometheus import (
    free_port,
    running_prometheus,
    scrape_config_file,
    write_targets,
)
from monitoring.promop import (
    endpoints_target,
    pod_monitor_scrape_configs,
    pod_target,
    service_monitor_scrape_configs,
    with_file_sd,
)

EXPERTS_NS = "llm"
FAST = [
    "--set",
    "metrics.serviceMonitor.interval=1s",
    "--set",
    "metrics.serviceMonitor.scrapeTimeout=1s",
    "--set",
    "metrics.podMonitor.interval=1s",
    "--set",
    "metrics.podMonitor.scrapeTimeout=1s",
]


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_BIN": str(find_helm()),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


@pytest.fixture(scope="module")
def docs(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return render(helm_env, "-f", str(FULL_VALUES), *FAST)


def serve(registry: Any) -> Iterator[int]:
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def operator_port() -> Iterator[int]:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.experts.labels(EXPERTS_NS, "writer-70b", "Degraded", "True").set(1)
    metrics.queue_depth.labels(EXPERTS_NS, "code-7b").set(12)
    metrics.queue_depth.labels("team-b", "code-7b").set(0)
    metrics.reconciles.labels("ModelExpert", "ok").inc()
    yield from serve(registry)


@pytest.fixture
def router_port() -> Iterator[int]:
    metrics = RouterMetrics()
    metrics.requests.inc(("code", "code-7b", "code", "200"))
    metrics.cost.inc(("code", "code-7b"), 0.002)
    yield from serve(metrics.registry)


def operator_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod the chart's Deployment makes, as the API server would show it running."""
    template = deployment["spec"]["template"]
    return {
        "metadata": {
            "name": deployment["metadata"]["name"] + "-5d8f7c9b6-x2x4q",
            "namespace": deployment["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
        "status": {"phase": "Running"},
    }


def sidecar_pod(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """An application pod with the injected router (its container name and metrics port)."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8000}]},
                {
                    "name": SIDECAR_NAME,
                    "ports": [
                        {"name": "mf-router", "containerPort": 8787},
                        {"name": "mf-metrics", "containerPort": 8788},
                    ],
                },
            ]
        },
        "status": {"phase": "Running"},
    }


def test_generated_scrape_configs_keep_the_experts_namespace(
    docs: list[dict[str, Any]], operator_port: int, router_port: int, tmp_path: Path
) -> None:
    service = one(docs, "Service")
    pod = operator_pod(one(docs, "Deployment"))
    operator_jobs = service_monitor_scrape_configs(one(docs, "ServiceMonitor"))
    router_jobs = pod_monitor_scrape_configs(one(docs, "PodMonitor"))

    operator_targets = tmp_path / "operator.json"
    write_targets(
        operator_targets,
        [
            endpoints_target(f"127.0.0.1:{operator_port}", service, pod, "metrics"),
            # The same Service's other ports, and another Service: dropped by the relabelling.
            endpoints_target(f"127.0.0.2:{operator_port}", service, pod, "flock-api"),
            endpoints_target(
                f"127.0.0.3:{operator_port}",
                {**service, "metadata": {**service["metadata"], "labels": {"app": "other"}}},
                pod,
                "metrics",
            ),
        ],
    )
    router_targets = tmp_path / "routers.json"
    app = sidecar_pod(EXPERTS_NS, "chat-app-7c9d", {ROUTER_METRICS_LABEL: "sidecar"})
    write_targets(
        router_targets,
        [
            pod_target(f"127.0.0.1:{router_port}", app, "mf-metrics"),
            pod_target(f"127.0.0.4:{router_port}", app, "http"),  # not the metrics port
            # A pod without the router-metrics label is not scraped.
            pod_target(
                f"127.0.0.5:{router_port}", sidecar_pod(EXPERTS_NS, "plain", {}), "mf-metrics"
            ),
        ],
    )
    config = scrape_config_file(
        [with_file_sd(j, str(operator_targets)) for j in operator_jobs]
        + [with_file_sd(j, str(router_targets)) for j in router_jobs]
    )
    with running_prometheus(tmp_path / "prometheus", config) as prometheus:
        prometheus.wait_for(
            lambda: (
                prometheus.query("modelflock_experts")
                and prometheus.query("modelflock_router_requests_total")
            ),
            "operator and router series",
            30,
        )
        active = {t["labels"]["instance"]: t for t in prometheus.targets()}
        assert set(active) == {f"127.0.0.1:{operator_port}", f"127.0.0.1:{router_port}"}

        [degraded] = prometheus.query('modelflock_experts{condition="Degraded"}')
        labels = degraded["metric"]
        assert labels["namespace"] == EXPERTS_NS, labels  # not the operator's namespace
        assert "exported_namespace" not in labels
        assert labels["service"] == service["metadata"]["name"]
        assert labels["job"] == service["metadata"]["name"]
        assert labels["endpoint"] == "metrics"
        # Same-named experts in two namespaces stay two series.
        queues = prometheus.query("modelflock_autoscaler_queue_depth")
        assert {q["metric"]["namespace"] for q in queues} == {EXPERTS_NS, "team-b"}
        # Series the operator does not label with a namespace get its own (the target's).
        [reconciles] = prometheus.query("modelflock_reconciles_total")
        assert reconciles["metric"]["namespace"] == NAMESPACE

        [requests] = prometheus.query("modelflock_router_requests_total")
        router = requests["metric"]
        assert router["namespace"] == EXPERTS_NS
        assert router["pod"] == "chat-app-7c9d"
        assert router["container"] == SIDECAR_NAME
        assert router["job"] == f"{NAMESPACE}/{one(docs, 'PodMonitor')['metadata']['name']}"
    assert [j["honor_labels"] for j in operator_jobs] == [True]
