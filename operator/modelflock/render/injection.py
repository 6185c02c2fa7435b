"""Sidecar injection as a pure function: pod in, the pod's new containers and volumes out."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelflock.render.router_pod import (
    BASE_URL_ENV,
    POLICY_LABEL,
    ROUTER_METRICS_LABEL,
    SIDECAR_NAME,
)

OPT_OUT_ANNOTATION = "modelflock.io/inject"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class SidecarPlan:
    """What the operator renders per RoutingPolicy for the webhook to add to pods."""

    container: Manifest
    volumes: list[Manifest]
    port: int


@dataclass(frozen=True)
class Injection:
    """The result: new containers/volumes (None: leave the pod alone) and warnings for the user."""

    containers: list[Manifest] | None = None
    volumes: list[Manifest] | None = None
    labels: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)


def policy_of(pod: Mapping[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    value = labels.get(POLICY_LABEL)
    return str(value) if value else None


def inject_sidecar(pod: Mapping[str, Any], plan: SidecarPlan | None) -> Injection:
    meta = pod.get("metadata", {})
    policy = policy_of(pod)
    if policy is None:
        return Injection()
    annotations = meta.get("annotations") or {}
    if str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() in {"false", "no", "0", "off"}:
        return Injection()
    spec = pod.get("spec", {})
    containers: list[Manifest] = copy.deepcopy(list(spec.get("containers") or []))
    if any(c.get("name") == SIDECAR_NAME for c in containers):
        return Injection()  # already injected: re-admission is a no-op
    if plan is None:
        return Injection(
            warnings=[
                f"RoutingPolicy {policy!r} not found in this namespace: the ModelFlock router was"
                " not injected (create the policy and recreate the pod)"
            ]
        )
    base_url = f"http://127.0.0.1:{plan.port}/v1"
    for container in containers:
        env = list(container.get("env") or [])
        if not any(e.get("name") == BASE_URL_ENV for e in env):
            env.append({"name": BASE_URL_ENV, "value": base_url})
        if not any(e.get("name") == "MODELFLOCK_ROUTER_URL" for e in env):
            env.append({"name": "MODELFLOCK_ROUTER_URL", "value": base_url})
        container["env"] = env
    containers.append(copy.deepcopy(plan.container))
    volumes: list[Manifest] = copy.deepcopy(list(spec.get("volumes") or []))
    taken = {v.get("name") for v in volumes}
    volumes += [copy.deepcopy(v) for v in plan.volumes if v["name"] not in taken]
    labels = {**(meta.get("labels") or {}), ROUTER_METRICS_LABEL: "sidecar"}
    return Injection(containers=containers, volumes=volumes, labels=labels)
