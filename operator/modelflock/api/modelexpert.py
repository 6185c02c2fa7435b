"""ModelExpert: one specialised model, its engine, GPU pool, scaling and price."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from modelflock.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    DECIMAL_PATTERN,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    DecimalString,
    SecretKeyRef,
)

KIND = "ModelExpert"
PLURAL = "modelexperts"
# Children are named after the expert (Deployment, Service, pods with a hash suffix),
# so the name must leave room inside the 63-character DNS label limit.
MAX_NAME_LENGTH = 42

Engine = Literal["vllm", "tgi", "external"]
Quantization = Literal["none", "awq", "gptq", "fp8", "int8", "int4", "bitsandbytes", "eetq"]
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# A non-negative Kubernetes quantity, written as a number or a string ("500m", "32Gi").
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
# Default autoscaling settings; bench/autoscale_sim.py is how they were chosen.
DEFAULT_TARGET_QUEUE_DEPTH = 2
DEFAULT_SCALE_UP_STABILIZATION_SECONDS = 0
DEFAULT_BURST_HEADROOM = 1.0
DEFAULT_STALE_METRICS_SECONDS = 60
DEFAULT_TOLERANCE_PERCENT = 10
DEFAULT_MAX_SCALE_UP_STEP = 4
DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS = 600
MAX_SCHEDULES = 16
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
# An IANA time zone name's shape (Europe/Berlin, America/Argentina/Buenos_Aires, UTC,
# Etc/GMT+5). Whether the zone exists is checked by the operator (render/checks.py) against
# its time zone database: the API server has none.
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


class LoraAdapter(ApiModel):
    """A LoRA adapter served by the same vLLM engine under its own model name."""

    name: str = Field(
        description="Model name clients use to reach this adapter.",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    source: str = Field(
        description="Where the adapter weights live: a Hugging Face id or a pvc:// / s3:// URI.",
        min_length=1,
        max_length=512,
    )


class ModelSource(ApiModel):
    """Which weights the engine serves and how."""

    name: str | None = Field(
        default=None,
        description=(
            "Model to load: a Hugging Face id (org/model) or a pvc://claim/path or s3://bucket/path"
            " URI. Required for vllm and tgi."
        ),
        min_length=1,
        max_length=512,
    )
    revision: str | None = Field(
        default=None,
        description="Revision (branch, tag or commit) of the model repository to load.",
        max_length=128,
    )
    served_name: str | None = Field(
        default=None,
        description="Model name the engine answers to in the OpenAI API. Default: the expert's name.",
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
    )
    parameters: str | None = Field(
        default=None,
        description=(
            "Size hint such as 8B, 70B or 500M, used to check that the weights fit in the node"
            " pool's GPU memory before anything is scheduled."
        ),
        pattern=r"^[0-9]+(\.[0-9]+)?[MB]$",
        max_length=16,
    )
    quantization: Quantization = Field(
        default="none",
        description="Weight quantization; also used by the GPU memory estimate.",
    )
    max_context_length: int | None = Field(
        default=None,
        ge=256,
        le=10_000_000,
        description="Maximum context length in tokens (vLLM --max-model-len, TGI --max-total-tokens).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, passed to the engine as HF_TOKEN.",
    )
    adapters: list[LoraAdapter] = Field(
        default_factory=list,
        max_length=16,
        description="LoRA adapters to serve alongside the base model (vLLM only).",
    )


class GpuResources(ApiModel):
    """Accelerators and optional CPU/memory for each replica."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per replica; also the default tensor-parallel size. 0 runs on CPU.",
    )
    cpu: Quantity | None = Field(
        default=None,
        description="CPU request and limit per replica, as a Kubernetes quantity (e.g. 4, 500m).",
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit per replica, as a Kubernetes quantity (e.g. 32Gi).",
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (see core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class Placement(ApiModel):
    """Per-expert scheduling overrides, merged over the node pool's own placement."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra node labels the engine pods require.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations for the engine pods.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 Affinity for the engine pods, used as given.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the engine pods.", max_length=253
    )
    runtime_class_name: str | None = Field(
        default=None, description="RuntimeClass of the engine pods (e.g. nvidia).", max_length=253
    )


class EnvVar(ApiModel):
    """An environment variable for the engine container: a literal value or a Secret key."""

    name: str = Field(
        description="Variable name.",
        min_length=1,
        max_length=256,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
    )
    value: str | None = Field(default=None, description="Literal value.", max_length=32768)
    secret_key_ref: SecretKeyRef | None = Field(
        default=None, description="Take the value from this Secret key instead."
    )


class WeightsCache(ApiModel):
    """Where downloaded weights are kept between restarts."""

    type: Literal["pvc", "emptyDir"] = Field(
        description="pvc mounts an existing PersistentVolumeClaim; emptyDir a pod-local volume."
    )
    claim_name: str | None = Field(
        default=None,
        description="PersistentVolumeClaim to mount (type pvc).",
        max_length=253,
    )
    size_limit: str | None = Field(
        default=None,
        description="Size limit of the emptyDir (type emptyDir), a Kubernetes quantity.",
        pattern=QUANTITY_PATTERN,
    )


class ScheduledMinimum(ApiModel):
    """A floor above minReplicas in known busy hours, from one cold start before start to end."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.start != self.end",
                    "message": "start and end must differ (end before start: the window runs"
                    " past midnight)",
                    "fieldPath": ".end",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        max_length=7,
        description="Days the window starts on (Mon..Sun). Default: every day.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    start: str = Field(
        description='Local time the replicas must be ready, "HH:MM" (24 h).',
        pattern=CLOCK_PATTERN,
        max_length=5,
    )
    end: str = Field(
        description='Local time the floor ends, "HH:MM" (24 h); then the normal scale-down'
        " rules apply. Before start: the window ends the next day (overnight).",
        pattern=CLOCK_PATTERN,
        max_length=5,
    )
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone of start and end, e.g. Europe/Berlin (daylight saving"
        " time followed). Default: UTC. A zone the operator does not know is reported in the"
        " Ready and Degraded conditions (UnknownTimeZone) and its schedule is ignored.",
        min_length=1,
        max_length=64,
        pattern=TIME_ZONE_PATTERN,
    )
    min_replicas: int = Field(
        ge=0,
        le=1000,
        description="Fewest replicas during the window (at most maxReplicas).",
    )

    @model_validator(mode="after")
    def _window(self) -> ScheduledMinimum:
        if self.start == self.end:
            raise ValueError(
                "start and end must differ (end before start: the window runs past midnight)"
            )
        return self


class Autoscaling(ApiModel):
    """Queue-depth autoscaling; when disabled, spec.replicas rules."""

    enabled: bool = Field(
        default=True, description="Scale on queue depth (true) or keep spec.replicas."
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0 allows scale to zero; routers then wake the expert on demand.",
    )
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas.")
    target_queue_depth: int = Field(
        default=DEFAULT_TARGET_QUEUE_DEPTH,
        ge=1,
        le=10_000,
        description="Waiting requests per replica tolerated on top of full batches; more"
        " scales up.",
    )
    tolerance_percent: int = Field(
        default=DEFAULT_TOLERANCE_PERCENT,
        ge=0,
        le=90,
        description="Scale down only when the load is more than this share below what the"
        " replicas hold (as the HPA's tolerance), so small load changes cause no scale events.",
    )
    max_scale_up_step: int = Field(
        default=DEFAULT_MAX_SCALE_UP_STEP,
        ge=1,
        le=100,
        description="Most replicas added in one decision.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=DEFAULT_SCALE_UP_STABILIZATION_SECONDS,
        ge=0,
        le=3600,
        description="Window before scaling up (0: at once when the queue crosses the target).",
    )
    scale_down_stabilization_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Scale down only to the highest recommendation seen over this window."
        " Unset: two of the expert's own cold starts (as measured from its pods), within"
        " 300..600 s, and 300 s until a cold start was seen.",
    )
    burst_headroom: float = Field(
        default=DEFAULT_BURST_HEADROOM,
        ge=0,
        le=10,
        description="Square-root staffing: replicas hold the load L (requests in flight at full"
        " batches) plus burstHeadroom x sqrt(L), so the headroom is relatively smaller the"
        " larger the load. 0 provisions for the load alone.",
    )
    stale_metrics_seconds: int = Field(
        default=DEFAULT_STALE_METRICS_SECONDS,
        ge=0,
        le=86_400,
        description="A ready pod whose metrics cannot be read is assumed as busy as the others"
        " and holds scale-down for this long; after that it no longer does.",
    )
    scale_to_zero_after_seconds: int = Field(
        default=DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS,
        ge=0,
        le=604_800,
        description="With minReplicas 0: idle time (no queue, no router demand) before scaling to zero.",
    )
    metric_source: Literal["scrape", "prometheus"] = Field(
        default="scrape",
        description="scrape reads each ready pod's /metrics; prometheus queries the configured server.",
    )
    capacity_hint: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Requests one replica runs at once (its effective batch), if a load test"
        " measured it. Only a starting point: the autoscaler learns the real value from"
        " saturated replicas and the KV cache in use, and then uses that. Without it (and"
        " without a KV-cache metric), the first wake from zero and the first scale-up before"
        " any replica was saturated add one replica at a time.",
    )
    schedules: list[ScheduledMinimum] = Field(
        default_factory=list,
        max_length=MAX_SCHEDULES,
        description="Scheduled minimums for known busy hours (e.g. office hours): each holds at"
        " least its minReplicas from one learned cold start before its start until its end;"
        " overlapping windows hold the highest.",
    )

    @model_validator(mode="after")
    def _schedules_within_max(self) -> Autoscaling:
        for i, s in enumerate(self.schedules):
            if s.min_replicas > self.max_replicas:
                raise ValueError(
                    f"schedules[{i}].minReplicas ({s.min_replicas}) must be less than or equal"
                    f" to maxReplicas ({self.max_replicas})"
                )
        return self


class ExternalApi(ApiModel):
    """An OpenAI-compatible API outside the cluster (engine external)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.baseURL.startsWith('https://')"
                    " || (has(self.allowPlainHttp) && self.allowPlainHttp)",
                    "message": "baseURL must be https:// (the API key would travel in clear);"
                    " set allowPlainHttp to accept http://",
                    "fieldPath": ".baseURL",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    base_url: str = Field(
        alias="baseURL",
        description="Base URL of the OpenAI-compatible API, e.g. https://api.example.com/v1.",
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
    )
    model: str = Field(
        description="Model name sent upstream in place of the one the client asked for.",
        min_length=1,
        max_length=256,
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key; the key never appears in config, status or logs.",
    )
    allow_plain_http: bool = Field(
        default=False,
        description="Accept an http:// baseURL, which sends the API key in clear: only for an API"
        " reached over a trusted network (e.g. a proxy on the same node).",
    )

    @model_validator(mode="after")
    def _https_unless_allowed(self) -> ExternalApi:
        if not self.base_url.startswith("https://") and not self.allow_plain_http:
            raise ValueError(
                "external.baseURL must be https:// (the API key would travel in clear);"
                " set external.allowPlainHttp to accept http://"
            )
        return self


class Cost(ApiModel):
    """Prices, as decimal strings in your currency per million tokens."""

    input_per_million: DecimalString = Field(
        default="0",
        description='Price of one million input (prompt) tokens, e.g. "0.15".',
        pattern=DECIMAL_PATTERN,
        max_length=24,
    )
    output_per_million: DecimalString = Field(
        default="0",
        description='Price of one million output (generated) tokens, e.g. "0.60".',
        pattern=DECIMAL_PATTERN,
        max_length=24,
    )


class ModelExpertSpec(ApiModel):
    """Desired state of one expert."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.engine == 'external' ? has(self.external) : !has(self.external)",
                    "message": "external settings are required when engine is external and"
                    " not allowed otherwise",
                    "fieldPath": ".external",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.engine == 'external' || (has(self.model) && has(self.model.name))",
                    "message": "model.name is required for engines vllm and tgi",
                    "fieldPath": ".model.name",
                    "reason": "FieldValueRequired",
                },
                {
                    "rule": "self.engine == 'vllm' || !has(self.model) || !has(self.model.adapters)"
                    " || size(self.model.adapters) == 0",
                    "message": "LoRA adapters are supported with engine vllm only",
                    "fieldPath": ".model.adapters",
                    "reason": "FieldValueForbidden",
                },
                {
                    "rule": "self.engine == 'external' || has(self.nodePool)"
                    " || (has(self.resources) && has(self.resources.gpus)"
                    " && self.resources.gpus == 0)",
                    "message": "nodePool is required for engines that use GPUs",
                    "fieldPath": ".nodePool",
                    "reason": "FieldValueRequired",
                },
            ]
        }
    }

    engine: Engine = Field(description="Serving engine: vllm, tgi, or external (an API outside).")
    tier: str = Field(
        default="medium",
        description="Size tier label such as small, medium, large, frontier.",
        min_length=1,
        max_length=32,
        pattern=DNS_LABEL_PATTERN,
    )
    capabilities: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="What the expert is good at: code, chat, creative, summarize, reasoning, classify, embed…",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 32, "pattern": DNS_LABEL_PATTERN},
            "x-kubernetes-list-type": "set",
        },
    )
    model: ModelSource | None = Field(default=None, description="The weights to serve.")
    resources: GpuResources = Field(
        default_factory=GpuResources, description="GPUs and optional CPU/memory per replica."
    )
    node_pool: str | None = Field(
        default=None,
        description="Name of a GPU node pool from the operator configuration.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    placement: Placement | None = Field(
        default=None, description="Per-expert scheduling overrides on top of the node pool's."
    )
    image: str | None = Field(
        default=None,
        description="Engine image; default: the operator's pinned image for the engine.",
        max_length=512,
    )
    engine_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine command-line arguments, appended as given.",
        json_schema_extra={"items": {"type": "string", "maxLength": 1024}},
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment for the engine."
    )
    cache: WeightsCache | None = Field(default=None, description="Weights cache volume.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Replicas when autoscaling is disabled (the scale subresource writes here).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Queue-depth autoscaling. Absent: enabled with the defaults below.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be less than or equal to maxReplicas",
                    "fieldPath": ".minReplicas",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.schedules)"
                    " || self.schedules.all(s, s.minReplicas <= self.maxReplicas)",
                    "message": "schedules[].minReplicas must be less than or equal to maxReplicas",
                    "fieldPath": ".schedules",
                    "reason": "FieldValueInvalid",
                },
            ]
        },
    )
    external: ExternalApi | None = Field(
        default=None, description="The external API (engine external only)."
    )
    cost: Cost | None = Field(default=None, description="Prices per million tokens.")

    def effective_autoscaling(self) -> Autoscaling:
        return self.autoscaling if self.autoscaling is not None else Autoscaling()

    def served_model_name(self, expert_name: str) -> str:
        if self.engine == "external" and self.external is not None:
            return self.external.model
        if self.model is not None and self.model.served_name:
            return self.model.served_name
        return expert_name


class ModelExpertStatus(ApiModel):
    """Observed state of one expert, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Ready, Progressing and Degraded, with reasons.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    replicas: int | None = Field(default=None, description="Engine pods that exist.")
    ready_replicas: int | None = Field(default=None, description="Engine pods that are ready.")
    desired_replicas: int | None = Field(
        default=None, description="Replicas the operator wants (autoscaler or spec.replicas)."
    )
    replica_summary: str | None = Field(default=None, description="ready/desired, for printing.")
    queue_depth: int | None = Field(
        default=None, description="Requests waiting across ready replicas at the last scrape."
    )
    endpoint: str | None = Field(
        default=None, description="URL of the OpenAI-compatible API inside the cluster."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the engine pods (for the scale subresource)."
    )
    last_scale_time: datetime | None = Field(
        default=None, description="When the autoscaler last changed the replica count."
    )
    last_scale_reason: str | None = Field(
        default=None, description="Reason of the autoscaler's last decision."
    )
    capacity_per_replica: float | None = Field(
        default=None,
        description="Requests one replica runs at once, as the autoscaler learned it from"
        " saturated replicas; an operator restart starts from it instead of from nothing.",
    )
    service_seconds: float | None = Field(
        default=None,
        description="Seconds a request runs in a full batch, as the autoscaler learned it;"
        " with capacityPerReplica it turns an arrival rate into replicas (kept across restarts).",
    )
    cold_start_seconds: float | None = Field(
        default=None,
        description="Longest time a pod of this expert was seen loading; sizes the scale-down"
        " window and the backlog drain (kept across restarts).",
    )


class ObjectMeta(ApiModel):
    """The parts of metadata the operator reads."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


class ModelExpert(ApiModel):
    """A specialised model served by vLLM or TGI on a GPU node pool, or an external API."""

    api_version: Literal["modelflock.io/v1alpha1"] = "modelflock.io/v1alpha1"
    kind: Literal["ModelExpert"] = "ModelExpert"
    metadata: ObjectMeta
    spec: ModelExpertSpec
    status: ModelExpertStatus | None = None
