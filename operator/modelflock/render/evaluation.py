"""Shadow evaluation, pure: spec.evaluation → the router config's `evaluation` section, and
the routers' aggregated counters → status.evaluation with recommendations.

Per-route settings are resolved here, so the router only sees routes it samples, each with
its candidates and rate: a disabled route, a rate of 0 or no candidates leave a route out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from modelflock.api.evaluation import (
    MAX_RESULTS,
    EvaluationResult,
    EvaluationStatus,
    EvaluationThresholds,
)
from modelflock.api.routingpolicy import RoutingPolicySpec
from modelflock.evaluation.stats import JudgeKind, Tally, Thresholds, decide, describe
from modelflock.evaluation.wire import TallyKey


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


def _money(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".") or "0"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def thresholds_of(spec: RoutingPolicySpec) -> Thresholds:
    t = spec.evaluation.thresholds if spec.evaluation else EvaluationThresholds()
    return Thresholds(
        min_samples=t.min_samples,
        match_target=float(t.match_target),
        loss_limit=float(t.loss_limit),
    )


def tally_of(result: EvaluationResult) -> tuple[TallyKey, Tally]:
    """A status result back into counters (an operator restart continues from its status)."""
    key = (result.route, result.expert, result.candidate, result.judge)
    return key, Tally(
        samples=result.samples,
        wins=result.wins,
        ties=result.ties,
        losses=result.losses,
        agreements=result.agreements,
        disagreements=result.disagreements,
        served_cost=float(result.served_cost_usd),
        candidate_cost=float(result.candidate_cost_usd),
        judge_cost=float(result.judge_cost_usd),
        served_seconds=float(result.served_seconds),
        candidate_seconds=float(result.candidate_seconds),
    )


def evaluation_result(key: TallyKey, tally: Tally, thresholds: Thresholds) -> EvaluationResult:
    route, expert, candidate, judge = key
    kind: JudgeKind = "pairwise" if judge == "pairwise" else "similarity"
    decision = decide(tally, thresholds)
    return EvaluationResult(
        route=route,
        expert=expert,
        candidate=candidate,
        judge=kind,
        samples=tally.samples,
        wins=tally.wins,
        ties=tally.ties,
        losses=tally.losses,
        agreements=tally.agreements,
        disagreements=tally.disagreements,
        served_cost_usd=_money(tally.served_cost),
        candidate_cost_usd=_money(tally.candidate_cost),
        judge_cost_usd=_money(tally.judge_cost),
        served_seconds=_seconds(tally.served_seconds),
        candidate_seconds=_seconds(tally.candidate_seconds),
        rate=f"{decision.rate.estimate:.4f}",
        rate_lower=f"{decision.rate.lower:.4f}",
        rate_upper=f"{decision.rate.upper:.4f}",
        recommendation=decision.recommendation,
        message=describe(route, expert, candidate, kind, tally, decision, thresholds)[:1024],
    )


def evaluation_status(
    spec: RoutingPolicySpec,
    totals: Mapping[TallyKey, Tally],
    day: str | None,
    spent: float,
    dropped: int,
    last_report: datetime | None,
) -> EvaluationStatus | None:
    """status.evaluation: results of the policy's current routes, most samples first, at most
    MAX_RESULTS; None when evaluation is off and nothing was ever measured."""
    if spec.evaluation is None and not totals:
        return None
    routes = {r.name for r in spec.routes}
    thresholds = thresholds_of(spec)
    kept = sorted(
        ((k, t) for k, t in totals.items() if k[0] in routes and t.samples > 0),
        key=lambda item: (-item[1].samples, item[0]),
    )[:MAX_RESULTS]
    return EvaluationStatus(
        results=[evaluation_result(k, t, thresholds) for k, t in kept],
        day=day,
        spent_today_usd=_money(spent),
        dropped=dropped,
        last_report_time=last_report,
    )


def recommendation_changes(
    before: EvaluationStatus | None, after: EvaluationStatus | None
) -> list[EvaluationResult]:
    """Results whose recommendation changed (a first result counts when it recommends)."""
    old = {
        (r.route, r.expert, r.candidate): r.recommendation
        for r in (before.results if before else [])
    }
    changed = []
    for result in after.results if after else []:
        previous = old.get((result.route, result.expert, result.candidate), "NeedMoreSamples")
        if result.recommendation != previous:
            changed.append(result)
    return changed
