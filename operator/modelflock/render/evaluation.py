"""RoutingPolicy.spec.evaluation → the router config's `evaluation` section (pure).

Per-route settings are resolved here, so the router only sees routes it samples, each with
its candidates and rate: a disabled route, a rate of 0 or no candidates leave a route out.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from modelflock.api.routingpolicy import RoutingPolicySpec


def render_evaluation(spec: RoutingPolicySpec) -> dict[str, Any] | None:
    evaluation = spec.evaluation
    if evaluation is None or not evaluation.enabled:
        return None
    overrides = {r.name: r for r in evaluation.routes}
    routes: list[dict[str, Any]] = []
    for route in spec.routes:
        override = overrides.get(route.name)
        if override is not None and not override.enabled:
            continue
        candidates = list(evaluation.candidates)
        rate = evaluation.sample_rate
        if override is not None:
            candidates = list(override.candidates) or candidates
            rate = override.sample_rate if override.sample_rate is not None else rate
        if candidates and Decimal(rate) > 0:
            routes.append({"name": route.name, "sampleRate": rate, "candidates": candidates})
    judge = evaluation.judge
    return {
        "judge": {
            "type": judge.type,
            "expert": judge.expert,
            "rubric": judge.rubric,
            "minSimilarity": judge.min_similarity,
            "timeoutSeconds": judge.timeout_seconds,
        },
        "routes": routes,
        "dailyBudgetUSD": evaluation.daily_budget_usd,
        "maxConcurrent": evaluation.max_concurrent,
        "wakeColdCandidates": evaluation.wake_cold_candidates,
    }
