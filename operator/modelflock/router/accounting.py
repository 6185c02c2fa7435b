"""Prometheus metrics of the router, in a registry of its own (no process globals)."""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry

from modelflock.router.metrics_core import Counter, Exporter, Gauge, Histogram
from modelflock.router.shadow.metrics import ShadowMetrics

_LATENCY = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_P = "modelflock_router_"
# The values these labels can take (handlers.py, state.py).
ShedReason = Literal["overloaded", "memory"]
AuthFailureReason = Literal["missing", "invalid"]
SHED_REASONS: tuple[ShedReason, ...] = get_args(ShedReason)
AUTH_FAILURE_REASONS: tuple[AuthFailureReason, ...] = get_args(AuthFailureReason)
RELOAD_RESULTS = ("success", "error")
_RE = ("route", "expert")


class RouterMetrics:
    """Label values are passed as tuples in the order of the label names below."""

    def __init__(self) -> None:
        self.requests = Counter(
            f"{_P}requests", "Requests answered, by status code.", (*_RE, "intent", "code")
        )
        self.errors = Counter(f"{_P}errors", "Requests that ended in an error.", (*_RE, "kind"))
        self.latency = Histogram(
            f"{_P}request_duration_seconds", "Time from request to the last byte.", _RE, _LATENCY
        )
        self.ttfb = Histogram(
            f"{_P}time_to_first_byte_seconds",
            "Time from request to the first response byte.",
            _RE,
            _LATENCY,
        )
        self.tokens = Counter(f"{_P}tokens", "Tokens served.", (*_RE, "direction"))
        self.cost = Counter(f"{_P}cost_usd", "Cost of the answers at the expert's prices.", _RE)
        self.baseline_cost = Counter(
            f"{_P}baseline_cost_usd",
            "What the same tokens would have cost at the baseline expert's prices.",
            _RE,
        )
        self.escalations = Counter(
            f"{_P}escalations",
            "Cascade escalations.",
            ("route", "from_expert", "to_expert", "check"),
        )
        self.fallbacks = Counter(
            f"{_P}fallbacks",
            "Experts skipped or failed over, by reason.",
            ("route", "expert", "reason"),
        )
        self.attempts = Counter(
            f"{_P}upstream_attempts", "Upstream calls by outcome.", ("expert", "outcome")
        )
        self.decisions = Counter(
            f"{_P}classifier_decisions", "Intent decisions.", ("classifier", "intent")
        )
        self.stage_seconds = Histogram(
            f"{_P}classifier_stage_seconds",
            "Time spent per classifier stage.",
            ("stage", "outcome"),
            _LATENCY,
        )
        self.stage_failures = Counter(
            f"{_P}classifier_stage_failures",
            "Classifier stages that could not answer, by reason (timeout, unavailable,"
            " bad_response, warming).",
            ("stage", "reason"),
        )
        self.examples_ready = Gauge(
            f"{_P}classifier_examples_ready",
            "Example vectors of the embedding stage ready for the current config (0 while they"
            " are being embedded: the stage answers `warming` meanwhile).",
            ("stage",),
        )
        # The last failure of each stage, for the report to the operator (not exported).
        self.last_stage_failure: dict[str, str] = {}
        self.waiting = Gauge(
            f"{_P}waiting_requests", "Requests held for a cold expert.", ("expert",)
        )
        self.retrievals = Counter(
            f"{_P}retrievals",
            "Knowledge base lookups by outcome (hit, miss, unavailable).",
            ("route", "knowledge_base", "outcome"),
        )
        self.retrieval_seconds = Histogram(
            f"{_P}retrieval_duration_seconds",
            "Time to embed the query and search the knowledge base.",
            ("route", "knowledge_base"),
            _LATENCY,
        )
        self.retrieval_embedding_cost = Counter(
            f"{_P}retrieval_embedding_cost_usd",
            "Cost of embedding queries for knowledge base lookups.",
            ("route", "knowledge_base"),
        )
        self.retrieval_saved = Counter(
            f"{_P}retrieval_saved_usd",
            "Baseline cost of the answers given from a knowledge base, less their cost.",
            ("route", "knowledge_base"),
        )
        self.handoffs = Counter(
            f"{_P}handoffs", "Escalations that handed context over, by mode.", ("route", "mode")
        )
        self.handoff_tokens = Counter(
            f"{_P}handoff_tokens",
            "Tokens (estimated) of the context handed to the bigger expert.",
            ("route", "mode"),
        )
        self.reloads = Counter(f"{_P}config_reloads", "Config reloads.", ("result",))
        self.in_flight = Gauge(f"{_P}in_flight_requests", "Requests in progress.", ())
        self.client_requests = Counter(
            f"{_P}client_requests",
            "Authenticated requests by client key name (gateway; never the key).",
            ("key",),
        )
        self.auth_failures = Counter(
            f"{_P}auth_failures", "Requests refused 401, by reason.", ("reason",)
        )
        self.shed = Counter(
            f"{_P}shed_requests",
            "Requests answered 503 + Retry-After to protect the router (overloaded: the"
            " concurrency cap; memory: the memory budget).",
            ("reason",),
        )
        # Closed label sets start at zero, so rate() and increase() see their first event.
        for shed in SHED_REASONS:
            self.shed.inc((shed,), 0.0)
        for refused in AUTH_FAILURE_REASONS:
            self.auth_failures.inc((refused,), 0.0)
        for result in RELOAD_RESULTS:
            self.reloads.inc((result,), 0.0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            Exporter([v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram)])
        )
        self.shadow = ShadowMetrics()  # shadow evaluation (router/shadow)
        self.registry.register(self.shadow.exporter())
