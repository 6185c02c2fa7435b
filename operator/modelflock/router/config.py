"""The router's configuration file (YAML or JSON): what the RoutingPolicy controller renders.

camelCase keys (as in the RoutingPolicy spec it is rendered from); snake_case in Python.
Everything is checked at load: unknown keys, dangling expert/intent names and bad regexes
are refused, so a config that loads cannot fail later on a lookup.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modelflock.validation import describe

CascadeCheck = Literal["truncated", "empty", "refusal", "invalidJSON", "lowConfidence"]

DEFAULT_REFUSAL_PATTERNS = (
    r"\b(I'?m|I am) (sorry|unable|not able)\b",
    r"\bI (cannot|can't|can not) (help|assist|answer|do that)\b",
    r"\bI('m| am) not (sure|certain)\b",
    r"\bI don'?t know\b",
    r"\bas an AI\b",
)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _number_as_decimal(value: object) -> object:
    """YAML reads an unquoted 0.5 as a float: accept numbers and keep them as exact decimal
    strings (the config never does float arithmetic on them)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return value


def _decimal(value: str) -> str:
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.[0-9]{1,9})?", value):
        raise ValueError(f"expected a decimal string such as '0.15', got {value!r}")
    return value


Regex = Annotated[str, AfterValidator(_regex)]
DecimalString = Annotated[str, BeforeValidator(_number_as_decimal), AfterValidator(_decimal)]
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Listen(Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)


class Prices(Model):
    """USD per million tokens, as decimal strings (never floats in a spec)."""

    input_per_million: DecimalString = "0"
    output_per_million: DecimalString = "0"

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (
            Decimal(self.input_per_million) * input_tokens
            + Decimal(self.output_per_million) * output_tokens
        ) / 1_000_000


class Expert(Model):
    name: Name
    engine: Literal["vllm", "tgi", "external"] = "vllm"
    urls: list[str] = Field(min_length=1, description="Service URL(s), e.g. http://code-7b:8000")
    model: str = Field(min_length=1, description="served model name, or the external model")
    api_key_file: Path | None = Field(default=None, description="mounted Secret file")
    prices: Prices = Field(default_factory=Prices)
    tier: str = "medium"
    capabilities: list[str] = Field(default_factory=list)
    cold_start_seconds: float = Field(default=60.0, ge=0)
    allow_plain_http: bool = Field(
        default=False, description="accept http:// URLs although an API key is sent to them"
    )

    @model_validator(mode="after")
    def _key_only_over_https(self) -> Expert:
        keyed = self.engine == "external" or self.api_key_file is not None
        plain = [u for u in self.urls if not u.startswith("https://")]
        if keyed and plain and not self.allow_plain_http:
            raise ValueError(
                f"expert {self.name}: {plain[0]} is not https:// and the expert's API key would"
                " travel in clear; set allowPlainHttp: true to accept it"
            )
        return self

    @property
    def pinned(self) -> bool:
        """Only ever called at its configured URLs: discovery may not redirect an expert that
        holds an API key, nor an external one."""
        return self.engine == "external" or self.api_key_file is not None


class HeaderMatch(Model):
    name: str = Field(min_length=1)
    value: str


class Intent(Model):
    name: Name
    description: str = ""
    keywords: list[str] = Field(default_factory=list)
    patterns: list[Regex] = Field(default_factory=list)
    min_prompt_chars: int | None = Field(default=None, ge=0)
    models: list[str] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)


class ClassifierStage(Model):
    type: Literal["rules", "embedding", "llm"]
    expert: str | None = None
    timeout_milliseconds: int = Field(default=250, ge=1, le=60_000)
    min_confidence: DecimalString = "0.5"

    @model_validator(mode="after")
    def _expert_iff_model_stage(self) -> ClassifierStage:
        if (self.type == "rules") != (self.expert is None):
            raise ValueError("embedding and llm stages name an expert; rules stages do not")
        return self


class Classifier(Model):
    stages: list[ClassifierStage] = Field(
        default_factory=lambda: [ClassifierStage(type="rules")], min_length=1
    )
    intents: list[Intent] = Field(default_factory=list)
    default_intent: str = "default"


class RouteMatch(Model):
    """All given lists must match; within a list any item matches; empty matches all."""

    intents: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)


def _default_checks() -> list[CascadeCheck]:
    return ["truncated", "empty", "refusal"]


Handoff = Literal["none", "draft", "context"]


class Cascade(Model):
    experts: list[str] = Field(min_length=2)
    checks: list[CascadeCheck] = Field(default_factory=_default_checks)
    refusal_patterns: list[Regex] = Field(default_factory=list)
    min_confidence: DecimalString = "0.5"
    # What an escalation gives the next expert: none (the bare request), draft (the rejected
    # answer), context (the draft and the passages retrieval found, even below minScore).
    handoff: Handoff = "none"
    handoff_max_tokens: int = Field(default=512, ge=16, le=32_768)


class Retrieval(Model):
    """Answer from (or add context from) a knowledge base before any expert is called."""

    knowledge_base: Name
    mode: Literal["answer", "augment"] = "answer"
    min_score: DecimalString = "0.5"
    top_k: int = Field(default=3, ge=1, le=20)


class KnowledgeBase(Model):
    """A pgvector table the router reads with read-only credentials."""

    name: Name
    secret_dir: Path = Field(description="mounted Secret: host, port, dbname, username, password")
    table: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,47}$")
    dimensions: int = Field(ge=2, le=16_000)
    expert: str = Field(description="the embedding expert for queries")
    query_timeout_milliseconds: int = Field(default=250, ge=10, le=60_000)
    embed_timeout_milliseconds: int = Field(default=1000, ge=10, le=60_000)
    ef_search: int = Field(default=40, ge=1, le=1000)
    retry_after_seconds: float = Field(
        default=2.0, gt=0, description="after a store failure, skip the store this long"
    )


class Route(Model):
    name: Name
    match: RouteMatch = Field(default_factory=RouteMatch)
    expert: str | None = None
    cascade: Cascade | None = None
    fallbacks: list[str] = Field(default_factory=list)
    retrieval: Retrieval | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.expert is None) == (self.cascade is None):
            raise ValueError(f"route {self.name}: name exactly one of expert or cascade")
        return self

    @property
    def primary(self) -> list[str]:
        return list(self.cascade.experts) if self.cascade else [str(self.expert)]


class Defaults(Model):
    request_timeout_seconds: float = Field(default=120, gt=0)
    connect_timeout_seconds: float = Field(default=3, gt=0)
    first_byte_timeout_seconds: float = Field(
        default=60, gt=0, description="streams: until the first chunk"
    )
    max_attempts: int = Field(default=3, ge=1, le=8)
    cold_start_wait_seconds: float = Field(default=60, ge=0)
    max_waiting_requests: int = Field(default=64, ge=0)
    overload_queue_depth: int = Field(default=16, ge=1, description="queue per ready replica")
    max_body_bytes: int = Field(default=4_194_304, ge=1024)
    # Memory and overload bounds (docs/router.md, "Memory and overload"); the listener's
    # limits apply at start only.
    max_concurrent_requests: int = Field(
        default=128, ge=1, description="OpenAI requests in progress; more: 503 + Retry-After"
    )
    max_buffered_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="request bodies, their parsed JSON and buffered answers, all requests",
    )
    max_answer_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="largest non-streaming answer read"
    )
    max_connections: int = Field(default=1024, ge=1)
    header_timeout_seconds: float = Field(default=10, gt=0)
    body_timeout_seconds: float = Field(default=60, gt=0)
    write_timeout_seconds: float = Field(
        default=30, gt=0, description="a client that takes no answer bytes this long is cut off"
    )


class Discovery(Model):
    """The operator's flock API (docs/discovery.md); absent: use the experts' Service URLs."""

    url: str = Field(description="e.g. http://modelflock-operator.modelflock:8090")
    token_file: Path
    namespace: str
    policy: str
    interval_seconds: float = Field(default=2.0, gt=0)
    demand_interval_seconds: float = Field(default=3.0, gt=0)
    wake_on_fallback: bool = Field(
        default=True, description="also report demand for a cold expert whose request fell back"
    )
    classifier_report_seconds: float = Field(
        default=10.0, gt=0, description="how often classifier stage failures are reported"
    )
    ca_file: Path | None = Field(default=None, description="CA bundle to verify an https:// url")
    allow_plain_http: bool = Field(
        default=False, description="send the token to an http:// url (in clear)"
    )

    @model_validator(mode="after")
    def _token_only_over_https(self) -> Discovery:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"discovery.url must be http(s)://, got {self.url!r}")
        if self.url.startswith("http://") and not self.allow_plain_http:
            raise ValueError(
                "discovery.url is http:// and the policy token would travel in clear; use"
                " https:// (with caFile) or set allowPlainHttp: true"
            )
        return self


class EvaluationJudge(Model):
    type: Literal["expert", "similarity"]
    expert: str
    rubric: str = ""
    min_similarity: DecimalString = "0.85"
    timeout_seconds: float = Field(default=60, gt=0)


class EvaluationRoute(Model):
    """A sampled route with its resolved candidates (the operator resolves the defaults)."""

    name: Name
    sample_rate: DecimalString
    candidates: list[str] = Field(min_length=1)


class Evaluation(Model):
    """Shadow evaluation (docs/evaluation.md); routes not listed are never sampled."""

    judge: EvaluationJudge
    routes: list[EvaluationRoute] = Field(default_factory=list)
    daily_budget_usd: DecimalString = Field(default="1", alias="dailyBudgetUSD")
    max_concurrent: int = Field(default=2, ge=1)
    wake_cold_candidates: bool = False
    report_interval_seconds: float = Field(default=10.0, gt=0)


class ClientKey(Model):
    """A bearer key clients present; its name goes into metrics, its value nowhere."""

    name: Name
    file: Path = Field(description="mounted Secret file holding the key")


class Auth(Model):
    """Client authentication (the gateway): requests need `Authorization: Bearer <a key>`."""

    keys: list[ClientKey] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Auth:
        if len({k.name for k in self.keys}) != len(self.keys):
            raise ValueError("auth key names must be unique")
        return self


class RouterConfig(Model):
    listen: Listen = Field(default_factory=Listen)
    models: list[str] = Field(
        default_factory=lambda: ["auto"], description="virtual model names that mean: route for me"
    )
    experts: list[Expert] = Field(min_length=1)
    classifier: Classifier = Field(default_factory=Classifier)
    routes: list[Route] = Field(min_length=1)
    baseline: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    discovery: Discovery | None = None
    evaluation: Evaluation | None = None
    auth: Auth | None = None
    knowledge_bases: list[KnowledgeBase] = Field(default_factory=list)
    reload_interval_seconds: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        experts = {e.name for e in self.experts}
        if len(experts) != len(self.experts):
            raise ValueError("expert names must be unique")
        defined = [i.name for i in self.classifier.intents]
        default = self.classifier.default_intent
        if defined and default != "default" and default not in defined:
            raise ValueError(
                f"classifier.defaultIntent {self.classifier.default_intent!r} must name one of"
                f" classifier.intents ({', '.join(defined)})"
            )
        intents = set(defined) | {self.classifier.default_intent}
        named: list[tuple[str, str]] = []
        for route in self.routes:
            named += [(f"route {route.name}", e) for e in route.primary + route.fallbacks]
            for intent in route.match.intents:
                if intent not in intents:
                    raise ValueError(f"route {route.name}: unknown intent {intent!r}")
        named += [
            (f"classifier stage {s.type}", s.expert) for s in self.classifier.stages if s.expert
        ]
        if self.baseline:
            named.append(("baseline", self.baseline))
        if self.evaluation is not None:
            named.append(("evaluation judge", self.evaluation.judge.expert))
            routes = {r.name for r in self.routes}
            for sampled in self.evaluation.routes:
                if sampled.name not in routes:
                    raise ValueError(f"evaluation: unknown route {sampled.name!r}")
                if float(sampled.sample_rate) > 1:
                    raise ValueError(f"evaluation route {sampled.name}: sampleRate above 1")
                named += [(f"evaluation route {sampled.name}", c) for c in sampled.candidates]
        named += [(f"knowledge base {kb.name}", kb.expert) for kb in self.knowledge_bases]
        bases = {kb.name for kb in self.knowledge_bases}
        if len(bases) != len(self.knowledge_bases):
            raise ValueError("knowledge base names must be unique")
        for route in self.routes:
            if route.retrieval and route.retrieval.knowledge_base not in bases:
                raise ValueError(
                    f"route {route.name}: unknown knowledge base {route.retrieval.knowledge_base!r}"
                )
        for where, name in named:
            if name not in experts:
                raise ValueError(f"{where}: unknown expert {name!r}")
        for stage in self.classifier.stages:
            if (
                stage.type == "embedding"
                and "embed" not in self.expert(str(stage.expert)).capabilities
            ):
                raise ValueError(
                    f"classifier stage embedding: expert {stage.expert!r} lacks the 'embed'"
                    " capability (it must serve /v1/embeddings)"
                )
        if len({r.name for r in self.routes}) != len(self.routes):
            raise ValueError("route names must be unique")
        return self

    def expert(self, name: str) -> Expert:
        return next(e for e in self.experts if e.name == name)


def parse_config(text: str) -> RouterConfig:
    """YAML (JSON is YAML too) → validated config; raises ValueError with the reason."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("the router config must be a mapping")
    try:
        # Aliases only: a snake_case key (default_intent) is an unknown key, as documented.
        return RouterConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as error:
        raise ValueError(f"invalid router config:\n{describe(error)}") from None


def load_config(path: Path) -> RouterConfig:
    return parse_config(path.read_text())
