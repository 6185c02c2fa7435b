"""The operator configuration: GPU node pools, engine images, defaults.

Read from a YAML file (the Helm chart renders it into a ConfigMap). A bad file stops the
operator at start with a message naming the key (`load_operator_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modelflock.api.modelexpert import Toleration


class ConfigModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class NodePool(ConfigModel):
    """A named set of identical GPU nodes."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpu_resource_name: str = "nvidia.com/gpu"
    gpu_memory_gib: int = Field(alias="gpuMemoryGiB", ge=1, le=4096)
    gpus_per_node: int = Field(ge=1, le=64)


class EngineImages(ConfigModel):
    """Pinned images per engine, and the router's (also the operator's) image."""

    vllm: str = "vllm/vllm-openai:v0.11.0"
    tgi: str = "huggingface/text-generation-inference:3.3.6"
    router: str = "modelflock/modelflock:0.1.0"


class AutoscalerSettings(ConfigModel):
    interval_seconds: float = Field(default=5.0, gt=0, le=300)
    scrape_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    metric_source: Literal["scrape", "prometheus"] = "scrape"
    prometheus_url: str | None = None


class LeaderElection(ConfigModel):
    """Who may write: one leader per Lease (coordination.k8s.io), the other replicas stand by.

    Same semantics as client-go's leader election: the leader renews every `retryPeriodSeconds`
    and stops writing when it could not renew for `renewDeadlineSeconds`; a standby takes the
    Lease when its record has not changed for `leaseDurationSeconds` (measured on its own clock).
    """

    lease_name: str = Field(
        default="modelflock-operator",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    lease_namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the Lease; default: the operator's own namespace "
        "(POD_NAMESPACE, else the service account's namespace, else `default`).",
    )
    lease_duration_seconds: float = Field(default=15.0, ge=1, le=300)
    renew_deadline_seconds: float = Field(default=10.0, gt=0, le=300)
    retry_period_seconds: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElection:
        if not self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "renewDeadlineSeconds must be below leaseDurationSeconds"
                " (the leader stops writing before a standby may take over)"
            )
        if not self.retry_period_seconds * 1.2 < self.renew_deadline_seconds:
            raise ValueError(
                "retryPeriodSeconds x 1.2 must be below renewDeadlineSeconds"
                " (several renewals must fit in the deadline)"
            )
        return self


class OperatorConfig(ConfigModel):
    node_pools: list[NodePool] = Field(default_factory=list)
    images: EngineImages = Field(default_factory=EngineImages)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    resync_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Level-based repair interval per object."
    )
    flock_api_port: int = Field(default=8090, ge=0, le=65535)
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    bind_address: str = "0.0.0.0"
    operator_url: str | None = Field(
        default=None,
        description="URL routers use to reach the flock API (e.g. http://modelflock.modelflock:8090).",
    )
    service_domain: str = Field(
        default="svc.cluster.local", description="Cluster DNS suffix for Service URLs."
    )
    watch_namespaces: list[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    ] = Field(
        default_factory=list,
        max_length=100,
        description="Namespaced mode: serve only these namespaces (empty: as the command line "
        "says, --all-namespaces or --namespace).",
    )
    leader_election: LeaderElection = Field(default_factory=LeaderElection)
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Bound on every Kubernetes API request."
    )

    @model_validator(mode="after")
    def _unique_pools(self) -> OperatorConfig:
        names = [p.name for p in self.node_pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"nodePools: duplicate pool names {duplicates}")
        namespaces = self.watch_namespaces
        repeated = sorted({n for n in namespaces if namespaces.count(n) > 1})
        if repeated:
            raise ValueError(f"watchNamespaces: repeated namespaces {repeated}")
        return self

    def pool(self, name: str | None) -> NodePool | None:
        return next((p for p in self.node_pools if p.name == name), None)


class ConfigError(Exception):
    """The operator configuration is unusable; the message names the key."""


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_operator_config(data: Any, source: str = "config") -> OperatorConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None


def load_operator_config(path: Path | None) -> OperatorConfig:
    if path is None:
        return OperatorConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_operator_config(data, str(path))
