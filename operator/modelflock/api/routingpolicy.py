"""RoutingPolicy: which experts a workload may use and how each request picks one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from modelflock.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    DECIMAL_PATTERN,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    DecimalString,
    SecretKeyRef,
)
from modelflock.api.evaluation import SPEC_RULES as EVALUATION_RULES
from modelflock.api.evaluation import EvaluationSpec, EvaluationStatus
from modelflock.api.modelexpert import ObjectMeta

KIND = "RoutingPolicy"
PLURAL = "routingpolicies"
# Children: <name>-router (gateway Deployment/Service), <name>-router-config, <name>-router-token.
MAX_NAME_LENGTH = 40
MAX_EXPERTS = 32
MAX_INTENTS = 32
MAX_ROUTES = 32

NAME_ITEMS: JsonDict = {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN}
CascadeCheck = Literal["truncated", "empty", "refusal", "invalidJSON", "lowConfidence"]


def _default_cascade_checks() -> list[CascadeCheck]:
    return ["truncated", "empty", "refusal"]


class HeaderMatch(ApiModel):
    """Matches a request header exactly (name case-insensitive)."""

    name: str = Field(description="Header name.", min_length=1, max_length=128)
    value: str = Field(description="Exact header value.", max_length=1024)


class Intent(ApiModel):
    """A kind of request the classifier can recognise."""

    name: str = Field(
        description="Intent name, referenced by routes.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    description: str = Field(
        default="",
        max_length=1024,
        description="What the intent covers; shown to the llm classifier.",
    )
    keywords: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Case-insensitive words or phrases that select this intent (rules stage).",
        json_schema_extra={"items": {"type": "string", "maxLength": 128}},
    )
    patterns: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Regular expressions over the prompt that select this intent (rules stage).",
        json_schema_extra={"items": {"type": "string", "maxLength": 512}},
    )
    min_prompt_chars: int | None = Field(
        default=None,
        ge=0,
        description="Rules stage: select this intent only for prompts at least this long.",
    )
    models: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Requested model names (the request's model field) that select this intent.",
        json_schema_extra={"items": {"type": "string", "maxLength": 256}},
    )
    headers: list[HeaderMatch] = Field(
        default_factory=list,
        max_length=8,
        description="Request headers that select this intent.",
    )
    examples: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Example prompts; the embedding stage compares requests with them.",
        json_schema_extra={"items": {"type": "string", "maxLength": 4096}},
    )


class ClassifierStage(ApiModel):
    """One stage of the classifier chain; a stage that is unsure hands over to the next."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'rules' ? !has(self.expert) : has(self.expert)",
                    "message": "embedding and llm stages name an expert; rules stages do not",
                    "fieldPath": ".expert",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    type: Literal["rules", "embedding", "llm"] = Field(
        description="rules (keywords, regex, length, model, headers), embedding (nearest example)"
        " or llm (a small expert picks one label)."
    )
    expert: str | None = Field(
        default=None,
        description="Expert that computes embeddings (embedding) or picks the label (llm).",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    timeout_milliseconds: int = Field(
        default=250, ge=1, le=60_000, description="Time budget of this stage."
    )
    min_confidence: DecimalString = Field(
        default="0.5",
        pattern=DECIMAL_PATTERN,
        description="Embedding stage: decide only when the calibrated probability that the"
        ' best intent is right is at least this (quoted decimal, e.g. "0.6"). The scale is'
        " fitted to the embedding model when the policy loads (held-out scores of the policy's"
        " own examples), so one value means the same for every embedding model. Below it the"
        " stage is unsure and the next stage decides.",
    )


class ExamplesSource(ApiModel):
    """A ConfigMap key holding example prompts, one JSON object per line:
    {"prompt": "...", "intent": "..."} (the format of a labelled evaluation file)."""

    config_map: str = Field(
        description="ConfigMap in the policy's namespace.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
    )
    key: str = Field(
        description="Key of the ConfigMap whose value is the JSONL text.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class Classifier(ApiModel):
    """How the intent of a request is decided, cheapest stage first."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.defaultIntent == 'default' || !has(self.intents)"
                    " || size(self.intents) == 0"
                    " || self.intents.exists(i, i.name == self.defaultIntent)",
                    "message": "defaultIntent must name one of classifier.intents (or be the"
                    " implicit 'default')",
                    "fieldPath": ".defaultIntent",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    stages: list[ClassifierStage] = Field(
        default_factory=lambda: [ClassifierStage(type="rules")],
        min_length=1,
        max_length=3,
        description="Stages in order; the first confident answer wins.",
    )
    intents: list[Intent] = Field(
        default_factory=list,
        max_length=MAX_INTENTS,
        description="Intents the classifier chooses from.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    default_intent: str = Field(
        default="default",
        description="Intent used when no stage is confident; one of intents when any are defined.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    examples_from: list[ExamplesSource] = Field(
        default_factory=list,
        max_length=8,
        description="ConfigMaps with more example prompts (JSONL lines {prompt, intent}),"
        " added to the intents' inline examples; for hundreds of examples per intent.",
    )

    @model_validator(mode="after")
    def _default_intent_defined(self) -> Classifier:
        names = [i.name for i in self.intents]
        if names and self.default_intent != "default" and self.default_intent not in names:
            raise ValueError(
                f"defaultIntent {self.default_intent!r} must name one of classifier.intents"
                f" ({', '.join(names)})"
            )
        return self


class RouteMatch(ApiModel):
    """When a route applies; all given lists must match (each list: any of its items)."""

    intents: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Intents this route serves.",
        json_schema_extra={"items": NAME_ITEMS},
    )
    models: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Requested model names this route serves.",
        json_schema_extra={"items": {"type": "string", "maxLength": 256}},
    )
    headers: list[HeaderMatch] = Field(
        default_factory=list, max_length=8, description="Headers the request must carry."
    )


class Cascade(ApiModel):
    """Try the first expert; escalate to the next when a check fails (non-streaming requests)."""

    experts: list[str] = Field(
        min_length=2,
        max_length=4,
        description="Experts from smallest to largest.",
        json_schema_extra={"items": NAME_ITEMS},
    )
    checks: list[CascadeCheck] = Field(
        default_factory=_default_cascade_checks,
        max_length=5,
        description="Checks that trigger escalation: truncated, empty, refusal, invalidJSON,"
        " lowConfidence.",
    )
    refusal_patterns: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Extra regular expressions that mark an answer as a refusal or unsure.",
        json_schema_extra={"items": {"type": "string", "maxLength": 512}},
    )
    min_confidence: DecimalString = Field(
        default="0.5",
        pattern=DECIMAL_PATTERN,
        description="lowConfidence: escalate when the mean token probability is below this.",
    )
    handoff: Literal["none", "draft", "context"] = Field(
        default="none",
        description="What an escalation gives the next expert: none (the bare request), draft"
        " (the rejected answer), context (the draft and the passages retrieval found).",
    )
    handoff_max_tokens: int = Field(
        default=512, ge=16, le=32_768, description="Bound of the handed-over text (estimated)."
    )


class RouteRetrieval(ApiModel):
    """Look the request up in a KnowledgeBase before any expert is called."""

    knowledge_base: str = Field(
        description="Name of a KnowledgeBase (same namespace).",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    mode: Literal["answer", "augment"] = Field(
        default="answer",
        description="answer: reply from the passages, no LLM (below minScore the route's"
        " experts answer); augment: add the passages to the expert's request as context.",
    )
    min_score: str = Field(
        default="0.5",
        pattern=DECIMAL_PATTERN,
        description="Cosine similarity the best passage needs (0..1).",
    )
    top_k: int = Field(default=3, ge=1, le=20, description="Passages retrieved.")


class Route(ApiModel):
    """Sends matching requests to one expert or a cascade, with fallbacks."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.expert) != has(self.cascade)",
                    "message": "a route names exactly one of expert or cascade",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    name: str = Field(
        description="Route name (metrics and headers).",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="When the route applies; empty matches all."
    )
    expert: str | None = Field(
        default=None,
        description="The expert that serves this route.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    cascade: Cascade | None = Field(default=None, description="Small-to-large escalation.")
    fallbacks: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Experts to try when the chosen one is cold, overloaded or failing.",
        json_schema_extra={"items": NAME_ITEMS},
    )
    retrieval: RouteRetrieval | None = Field(
        default=None, description="Answer from, or add context from, a KnowledgeBase first."
    )


class RouterDefaults(ApiModel):
    """Timeouts and limits of the router."""

    request_timeout_seconds: int = Field(
        default=120, ge=1, le=3600, description="Whole-request budget."
    )
    connect_timeout_seconds: int = Field(default=3, ge=1, le=60, description="Upstream connect.")
    max_attempts: int = Field(
        default=3, ge=1, le=8, description="Experts tried per request (escalations + fallbacks)."
    )
    cold_start_wait_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="How long a request waits for a cold expert without fallback to wake up.",
    )
    max_waiting_requests: int = Field(
        default=64, ge=0, le=100_000, description="Requests held while experts wake up."
    )
    overload_queue_depth: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description="Queue per replica above which an expert counts as overloaded.",
    )
    max_body_bytes: int = Field(
        default=4_194_304, ge=1024, le=104_857_600, description="Largest request body accepted."
    )
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="OpenAI requests in progress per router; more are answered 503 with"
        " Retry-After. Each takes up to 128 KiB of the container's memory (docs/router.md).",
    )
    max_buffered_bytes: int = Field(
        default=33_554_432,
        ge=1_048_576,
        le=17_179_869_184,
        description="Memory budget of a router for request bodies, their parsed JSON and"
        " buffered answers; the default fits the default 128Mi memory limit.",
    )
    max_answer_bytes: int = Field(
        default=16_777_216,
        ge=1024,
        le=1_073_741_824,
        description="Largest non-streaming answer a router reads from an expert.",
    )


class SidecarSpec(ApiModel):
    """Injection of the router as a sidecar into application pods."""

    inject: bool = Field(
        default=True,
        description="Inject into pods labelled modelflock.io/routing-policy=<this policy>.",
    )
    port: int = Field(default=8787, ge=1024, le=65535, description="localhost port of the router.")
    metrics_port: int = Field(
        default=8788,
        ge=1024,
        le=65535,
        description="Port on the pod IP for /metrics and the probes (the API stays on localhost).",
    )
    cpu: int | str = Field(default="100m", description="CPU request of the sidecar.")
    memory: int | str = Field(default="128Mi", description="Memory request and limit.")


class ClientKey(ApiModel):
    """A bearer key that clients of the gateway present (one per team or application)."""

    name: str = Field(
        description="Name of the key, shown in metrics (modelflock_router_client_requests_total"
        "{key}); never its value.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    secret_ref: SecretKeyRef = Field(description="Secret key holding the bearer key.")


class NetworkPeer(ApiModel):
    """Pods allowed to connect: those matching both selectors (an absent one matches all)."""

    namespace_selector: dict[str, str] | None = Field(
        default=None,
        max_length=16,
        description="matchLabels of the namespaces; absent: this policy's namespace only.",
    )
    pod_selector: dict[str, str] | None = Field(
        default=None, max_length=16, description="matchLabels of the pods; absent: all pods."
    )


class GatewayNetworkPolicy(ApiModel):
    """The NetworkPolicy the operator renders for the gateway's pods."""

    enabled: bool = Field(
        default=True,
        description="Render a NetworkPolicy: without one any pod of the cluster can reach the"
        " gateway (and spend its experts' keys).",
    )
    allow_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Who may call the API port besides pods of this namespace.",
    )
    metrics_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Who may scrape the metrics port besides pods of this namespace (e.g."
        " Prometheus' namespace).",
    )


class GatewaySpec(ApiModel):
    """A standalone router Deployment and Service for clients that cannot take a sidecar."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.replicas) || self.replicas == 0"
                    " || (has(self.apiKeys) && size(self.apiKeys) > 0)"
                    " || (has(self.allowUnauthenticated) && self.allowUnauthenticated)",
                    "message": "a gateway needs apiKeys (or allowUnauthenticated: true)",
                    "fieldPath": ".apiKeys",
                    "reason": "FieldValueRequired",
                }
            ]
        }
    }

    replicas: int = Field(default=0, ge=0, le=100, description="Gateway replicas; 0: no gateway.")
    port: int = Field(default=8787, ge=1024, le=65535, description="Service port.")
    metrics_port: int = Field(
        default=8788, ge=1024, le=65535, description="Port for /metrics and the probes."
    )
    api_keys: list[ClientKey] = Field(
        default_factory=list,
        max_length=32,
        description="Bearer keys the gateway accepts (Authorization: Bearer <key>); requests"
        " without one of them get 401.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Serve requests without a key (no apiKeys needed)."
    )
    network_policy: GatewayNetworkPolicy = Field(
        default_factory=GatewayNetworkPolicy,
        description="Who may reach the gateway; by default pods of this namespace only.",
    )

    @model_validator(mode="after")
    def _authenticated(self) -> GatewaySpec:
        if self.replicas and not self.api_keys and not self.allow_unauthenticated:
            raise ValueError("a gateway needs apiKeys (or allowUnauthenticated: true)")
        return self


class RoutingPolicySpec(ApiModel):
    """Desired routing across a set of experts."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.routes.all(r, !has(r.expert) || r.expert in self.experts)",
                    "message": "every route's expert must be listed in spec.experts",
                    "fieldPath": ".routes",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.routes.all(r, !has(r.cascade)"
                    " || r.cascade.experts.all(e, e in self.experts))",
                    "message": "every cascade expert must be listed in spec.experts",
                    "fieldPath": ".routes",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.routes.all(r, !has(r.fallbacks)"
                    " || r.fallbacks.all(e, e in self.experts))",
                    "message": "every fallback expert must be listed in spec.experts",
                    "fieldPath": ".routes",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.baseline) || self.baseline in self.experts",
                    "message": "baseline must be listed in spec.experts",
                    "fieldPath": ".baseline",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.classifier) || !has(self.classifier.stages)"
                    " || self.classifier.stages.all(s, !has(s.expert) || s.expert in self.experts)",
                    "message": "classifier stage experts must be listed in spec.experts",
                    "fieldPath": ".classifier.stages",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.classifier) || !has(self.classifier.intents)"
                    " || self.routes.all(r, !has(r.match) || !has(r.match.intents)"
                    " || r.match.intents.all(i, i == self.classifier.defaultIntent"
                    " || self.classifier.intents.exists(x, x.name == i)))",
                    "message": "route match intents must be defined in classifier.intents",
                    "fieldPath": ".routes",
                    "reason": "FieldValueInvalid",
                },
                *EVALUATION_RULES,
            ]
        }
    }

    experts: list[str] = Field(
        min_length=1,
        max_length=MAX_EXPERTS,
        description="Names of the ModelExperts (same namespace) this policy may use.",
        json_schema_extra={"items": NAME_ITEMS, "x-kubernetes-list-type": "set"},
    )
    classifier: Classifier = Field(
        default_factory=Classifier, description="How the intent of a request is decided."
    )
    routes: list[Route] = Field(
        min_length=1,
        max_length=MAX_ROUTES,
        description="Routes in order; the first whose match fits the request is used.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    baseline: str | None = Field(
        default=None,
        description="Expert whose prices give the counterfactual cost (savings) of each request.",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    defaults: RouterDefaults = Field(
        default_factory=RouterDefaults, description="Timeouts, retries and limits."
    )
    sidecar: SidecarSpec = Field(default_factory=SidecarSpec, description="Sidecar injection.")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="Standalone gateway.")
    evaluation: EvaluationSpec | None = Field(
        default=None, description="Shadow evaluation of candidate experts (docs/evaluation.md)."
    )


class ExpertReadiness(ApiModel):
    """Readiness of one named expert, as the policy sees it."""

    name: str = Field(description="Expert name.")
    found: bool = Field(description="Whether the ModelExpert exists.")
    ready: bool = Field(description="Whether its Ready condition is True.")
    ready_replicas: int = Field(default=0, description="Its ready replicas.")


class RoutingPolicyStatus(ApiModel):
    """Observed state of a policy."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="ResolvedRefs and Ready.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    experts: list[ExpertReadiness] = Field(
        default_factory=list,
        max_length=MAX_EXPERTS,
        description="Per-expert readiness.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    experts_ready: str | None = Field(default=None, description="ready/total, for printing.")
    config_map_name: str | None = Field(default=None, description="The rendered router config.")
    config_hash: str | None = Field(default=None, description="SHA-256 of the rendered config.")
    evaluation: EvaluationStatus | None = Field(
        default=None, description="Shadow evaluation results and recommendations."
    )


class RoutingPolicy(ApiModel):
    """Which experts a workload may use and how each request is routed to one."""

    api_version: Literal["modelflock.io/v1alpha1"] = "modelflock.io/v1alpha1"
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    metadata: ObjectMeta
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
