"""Prometheus metrics of the router, in a registry of its own (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0, 120.0)
_PREFIX = "modelflock_router_"


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        route_expert = ["route", "expert"]
        self.requests = Counter(f"{_PREFIX}requests", "Requests answered, by status code.",
                                [*route_expert, "intent", "code"], registry=r)
        self.errors = Counter(f"{_PREFIX}errors", "Requests that ended in an error.",
                              [*route_expert, "kind"], registry=r)
        self.latency = Histogram(f"{_PREFIX}request_duration_seconds",
                                 "Time from request to the last byte.", route_expert,
                                 buckets=_LATENCY, registry=r)
        self.ttfb = Histogram(f"{_PREFIX}time_to_first_byte_seconds",
                              "Time from request to the first response byte.", route_expert,
                              buckets=_LATENCY, registry=r)
        self.tokens = Counter(f"{_PREFIX}tokens", "Tokens served.",
                              [*route_expert, "direction"], registry=r)
        self.cost = Counter(f"{_PREFIX}cost_usd", "Cost of the answers at the expert's prices.",
                            route_expert, registry=r)
        self.baseline_cost = Counter(
            f"{_PREFIX}baseline_cost_usd",
            "What the same tokens would have cost at the baseline expert's prices.",
            route_expert, registry=r)
        self.escalations = Counter(f"{_PREFIX}escalations", "Cascade escalations.",
                                   ["route", "from_expert", "to_expert", "check"], registry=r)
        self.fallbacks = Counter(f"{_PREFIX}fallbacks",
                                 "Experts skipped or failed over, by reason.",
                                 ["route", "expert", "reason"], registry=r)
        self.attempts = Counter(f"{_PREFIX}upstream_attempts", "Upstream calls by outcome.",
                                ["expert", "outcome"], registry=r)
        self.decisions = Counter(f"{_PREFIX}classifier_decisions", "Intent decisions.",
                                 ["classifier", "intent"], registry=r)
        self.stage_seconds = Histogram(f"{_PREFIX}classifier_stage_seconds",
                                       "Time spent per classifier stage.",
                                       ["stage", "outcome"], buckets=_LATENCY, registry=r)
        self.waiting = Gauge(f"{_PREFIX}waiting_requests",
                             "Requests held for a cold expert.", ["expert"], registry=r)
        self.reloads = Counter(f"{_PREFIX}config_reloads", "Config reloads.", ["result"],
                               registry=r)
        self.in_flight = Gauge(f"{_PREFIX}in_flight_requests", "Requests in progress.",
                               registry=r)
