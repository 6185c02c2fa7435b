"""What the Prometheus Operator makes of the chart's ServiceMonitor and PodMonitor: the
Prometheus scrape configuration it generates, written out here so a real Prometheus can run it.

Source of the rules: prometheus-operator v0.93.0, pkg/prometheus/promcfg.go —
`generateServiceMonitorConfig` and `generatePodMonitorConfig` (read, not copied; the field
order and values below follow them). Covered: what the chart's monitors use (selector
matchLabels and matchExpressions with the default "relabel" selector mechanism, namespace
selectors, port by name, path, interval, scrape timeout, honorLabels), for a Prometheus 2.x
with one shard and no scrape class, enforced namespace label or pod target labels. Not
covered (the chart does not use them): TLS/auth settings, jobLabel, targetLabels, relabelings
of the monitor itself, limits, sharding across several shards.

Service discovery: the generated jobs discover targets with `kubernetes_sd_configs` (role
`endpoints` for a ServiceMonitor, `pod` for a PodMonitor). The tests cannot let Prometheus
dial pod or service IPs (only 127.0.0.0/8 is allowed, and EndpointSlices refuse loopback
addresses), so `with_file_sd` swaps discovery for a file of targets that carry the
`__meta_kubernetes_*` labels Kubernetes SD attaches to such a target (label names from
Prometheus' kubernetes_sd_config documentation), built from the real API objects. The
relabelling itself, where the namespace label is won or lost, is Prometheus' own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Doc = dict[str, Any]


def sanitize(name: str) -> str:
    """Label names in meta labels: every character outside [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _sd_config(role: str, namespace_selector: Mapping[str, Any], own_namespace: str) -> Doc:
    config: Doc = {"role": role}
    if namespace_selector.get("any"):
        return config  # every namespace: no `namespaces` field
    names = namespace_selector.get("matchNames") or [own_namespace]
    config["namespaces"] = {"names": list(names)}
    return config


def _selector_relabelings(selector: Mapping[str, Any], kind: str) -> list[Doc]:
    """keep/drop rules for a label selector on service (`kind="service"`) or pod labels."""
    rules: list[Doc] = []
    for key in sorted(selector.get("matchLabels") or {}):
        value = selector["matchLabels"][key]
        rules.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_{kind}_label_{sanitize(key)}",
                    f"__meta_kubernetes_{kind}_labelpresent_{sanitize(key)}",
                ],
                "regex": f"({value});true",
            }
        )
    for expression in selector.get("matchExpressions") or []:
        key, operator = sanitize(expression["key"]), expression["operator"]
        values = "|".join(expression.get("values") or [])
        if operator in ("In", "NotIn"):
            rules.append(
                {
                    "action": "keep" if operator == "In" else "drop",
                    "source_labels": [
                        f"__meta_kubernetes_{kind}_label_{key}",
                        f"__meta_kubernetes_{kind}_labelpresent_{key}",
                    ],
                    "regex": f"({values});true",
                }
            )
        elif operator in ("Exists", "DoesNotExist"):
            rules.append(
                {
                    "action": "keep" if operator == "Exists" else "drop",
                    "source_labels": [f"__meta_kubernetes_{kind}_labelpresent_{key}"],
                    "regex": "true",
                }
            )
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    return rules


def _endpoint_fields(config: Doc, endpoint: Mapping[str, Any]) -> None:
    for field, key in (
        ("interval", "scrape_interval"),
        ("scrapeTimeout", "scrape_timeout"),
        ("path", "metrics_path"),
        ("scheme", "scheme"),
    ):
        if endpoint.get(field):
            config[key] = endpoint[field]


# One shard: the hashmod/keep pair the operator always appends ($(SHARD) is 0).
_SHARDING = [
    {
        "source_labels": ["__address__"],
        "target_label": "__tmp_hash",
        "modulus": 1,
        "action": "hashmod",
    },
    {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"},
]
_RUNNING = {
    "action": "drop",
    "source_labels": ["__meta_kubernetes_pod_phase"],
    "regex": "(Failed|Succeeded)",
}
_JOB_TO_TMP = {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}


def service_monitor_scrape_configs(monitor: Mapping[str, Any]) -> list[Doc]:
    """The scrape configs (one per endpoint) generated for a ServiceMonitor."""
    meta, spec = monitor["metadata"], monitor["spec"]
    configs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        config: Doc = {
            "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "kubernetes_sd_configs": [
                _sd_config("endpoints", spec.get("namespaceSelector") or {}, meta["namespace"])
            ],
        }
        _endpoint_fields(config, endpoint)
        relabel: list[Doc] = [_JOB_TO_TMP]
        relabel += _selector_relabelings(spec.get("selector") or {}, "service")
        if endpoint.get("port"):
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                    "regex": endpoint["port"],
                }
            )
        target = [
            "__meta_kubernetes_endpoint_address_target_kind",
            "__meta_kubernetes_endpoint_address_target_name",
        ]
        relabel += [
            {
                "source_labels": target,
                "separator": ";",
                "regex": "Node;(.*)",
                "replacement": "${1}",
                "target_label": "node",
            },
            {
                "source_labels": target,
                "separator": ";",
                "regex": "Pod;(.*)",
                "replacement": "${1}",
                "target_label": "pod",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            _RUNNING,
            {
                "source_labels": ["__meta_kubernetes_service_name"],
                "target_label": "job",
                "replacement": "${1}",
            },
        ]
        if endpoint.get("port"):
            relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
        relabel += _SHARDING
        config["relabel_configs"] = relabel
        configs.append(config)
    return configs


def pod_monitor_scrape_configs(monitor: Mapping[str, Any]) -> list[Doc]:
    """The scrape configs (one per podMetricsEndpoint) generated for a PodMonitor."""
    meta, spec = monitor["metadata"], monitor["spec"]
    configs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        config: Doc = {
            "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{index}",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "kubernetes_sd_configs": [
                _sd_config("pod", spec.get("namespaceSelector") or {}, meta["namespace"])
            ],
        }
        _endpoint_fields(config, endpoint)
        relabel: list[Doc] = [_JOB_TO_TMP, _RUNNING]
        relabel += _selector_relabelings(spec.get("selector") or {}, "pod")
        if endpoint.get("port"):
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": endpoint["port"],
                }
            )
        relabel += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        ]
        if endpoint.get("port"):
            relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
        relabel += _SHARDING
        config["relabel_configs"] = relabel
        configs.append(config)
    return configs


# ---- the discovery side, for file_sd ---------------------------------------------------------


def _label_meta(prefix: str, labels: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in labels.items():
        out[f"{prefix}_label_{sanitize(key)}"] = value
        out[f"{prefix}_labelpresent_{sanitize(key)}"] = "true"
    return out


def _pod_meta(
    pod: Mapping[str, Any], container: Mapping[str, Any], port: Mapping[str, Any]
) -> dict[str, str]:
    meta = pod["metadata"]
    labels = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_phase": (pod.get("status") or {}).get("phase", "Running"),
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
    }
    labels.update(_label_meta("__meta_kubernetes_pod", meta.get("labels") or {}))
    return labels


def _container_port(pod: Mapping[str, Any], port_name: str) -> tuple[Doc, Doc]:
    for container in pod["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return container, port
    raise LookupError(f"pod {pod['metadata']['name']} has no container port {port_name!r}")


def endpoints_target(
    address: str, service: Mapping[str, Any], pod: Mapping[str, Any], port_name: str
) -> Doc:
    """A file_sd target group as role `endpoints` discovers the Service port `port_name`
    backed by `pod` (served at `address`, host:port)."""
    container, port = _container_port(pod, _target_port_name(service, port_name))
    labels = _pod_meta(pod, container, port)
    service_meta = service["metadata"]
    labels.update(
        {
            "__meta_kubernetes_service_name": service_meta["name"],
            "__meta_kubernetes_endpoints_name": service_meta["name"],
            "__meta_kubernetes_endpoint_port_name": port_name,
            "__meta_kubernetes_endpoint_port_protocol": "TCP",
            "__meta_kubernetes_endpoint_ready": "true",
            "__meta_kubernetes_endpoint_address_target_kind": "Pod",
            "__meta_kubernetes_endpoint_address_target_name": pod["metadata"]["name"],
        }
    )
    labels.update(_label_meta("__meta_kubernetes_service", service_meta.get("labels") or {}))
    return {"targets": [address], "labels": labels}


def _target_port_name(service: Mapping[str, Any], port_name: str) -> str:
    for port in service["spec"]["ports"]:
        if port["name"] == port_name:
            return str(port["targetPort"])
    raise LookupError(f"service {service['metadata']['name']} has no port {port_name!r}")


def pod_target(address: str, pod: Mapping[str, Any], port_name: str) -> Doc:
    """A file_sd target group as role `pod` discovers the container port `port_name`."""
    container, port = _container_port(pod, port_name)
    return {"targets": [address], "labels": _pod_meta(pod, container, port)}


def with_file_sd(config: Mapping[str, Any], path: str) -> Doc:
    """The generated scrape config with Kubernetes discovery replaced by a target file."""
    out = {k: v for k, v in config.items() if k != "kubernetes_sd_configs"}
    out["file_sd_configs"] = [{"files": [path], "refresh_interval": "1s"}]
    return out
