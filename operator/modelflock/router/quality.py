"""The quality section of `modelflock report`: shadow-evaluation counters → a table and
recommendations (pure). Sources: a router's /metrics, or a RoutingPolicy's status.evaluation
(the operator's sum over all of the policy's routers)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelflock.api.evaluation import EvaluationResult, EvaluationThresholds
from modelflock.evaluation.stats import JudgeKind, Tally, Thresholds, decide, describe, percent
from modelflock.evaluation.wire import TallyKey
from modelflock.render.evaluation import tally_of

_P = "modelflock_router_shadow_"
_OUTCOME_FIELD = {
    "win": "wins",
    "tie": "ties",
    "loss": "losses",
    "agree": "agreements",
    "disagree": "disagreements",
}


def tallies_from_metrics(text: str) -> dict[TallyKey, Tally]:
    """Tallies per (route, served, candidate, judge) from a router's exposition text."""
    counts: dict[TallyKey, dict[str, float]] = defaultdict(dict)
    judges: dict[tuple[str, str, str], str] = {}
    extra: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            key3 = (labels.get("route", ""), labels.get("expert", ""), labels.get("candidate", ""))
            if s.name == f"{_P}samples_total":
                judge, field = labels.get("judge", ""), _OUTCOME_FIELD.get(labels["outcome"])
                if field is None:
                    continue
                judges[key3] = judge
                entry = counts[(*key3, judge)]
                entry[field] = entry.get(field, 0.0) + s.value
            elif s.name == f"{_P}cost_usd_total":
                extra[key3][f"{labels['role']}_cost"] = s.value
            elif s.name == f"{_P}latency_seconds_sum":
                extra[key3][f"{labels['role']}_seconds"] = s.value
    result: dict[TallyKey, Tally] = {}
    for key, fields in counts.items():
        key3 = key[:3]
        if judges.get(key3) != key[3]:
            continue
        ints = {f: int(v) for f, v in fields.items()}
        money = extra.get(key3, {})
        result[key] = Tally(
            samples=sum(ints.values()),
            wins=ints.get("wins", 0),
            ties=ints.get("ties", 0),
            losses=ints.get("losses", 0),
            agreements=ints.get("agreements", 0),
            disagreements=ints.get("disagreements", 0),
            served_cost=money.get("served_cost", 0.0),
            candidate_cost=money.get("candidate_cost", 0.0),
            judge_cost=money.get("judge_cost", 0.0),
            served_seconds=money.get("served_seconds", 0.0),
            candidate_seconds=money.get("candidate_seconds", 0.0),
        )
    return result


def tallies_from_policy(policy: Mapping[str, Any]) -> tuple[dict[TallyKey, Tally], Thresholds]:
    """Tallies and thresholds from a RoutingPolicy object (`kubectl get rp NAME -o json`)."""
    results = ((policy.get("status") or {}).get("evaluation") or {}).get("results") or []
    tallies = dict(tally_of(EvaluationResult.model_validate(r)) for r in results)
    spec = (policy.get("spec") or {}).get("evaluation") or {}
    t = EvaluationThresholds.model_validate(spec.get("thresholds") or {})
    thresholds = Thresholds(t.min_samples, float(t.match_target), float(t.loss_limit))
    return tallies, thresholds


def _kind(judge: str) -> JudgeKind:
    return "pairwise" if judge == "pairwise" else "similarity"


def _outcomes(tally: Tally, judge: str) -> str:
    if judge == "pairwise":
        return f"{tally.wins}/{tally.ties}/{tally.losses}"
    return f"{tally.agreements}/{tally.disagreements}"


def recommendations(tallies: Mapping[TallyKey, Tally], thresholds: Thresholds) -> list[str]:
    """The actionable sentences (MoveDown, Escalate), most samples first."""
    lines = []
    for key, tally in sorted(tallies.items(), key=lambda kv: (-kv[1].samples, kv[0])):
        decision = decide(tally, thresholds)
        if decision.recommendation in ("MoveDown", "Escalate"):
            lines.append(describe(*key[:3], _kind(key[3]), tally, decision, thresholds))
    return lines


def format_quality(tallies: Mapping[TallyKey, Tally], thresholds: Thresholds) -> str:
    header = (
        "route",
        "served",
        "candidate",
        "judge",
        "samples",
        "w/t/l | agree/not",
        "rate (95% CI)",
        "cost ratio",
        "$/q served",
        "$/q cand.",
        "judge $",
        "latency s/c",
        "recommendation",
    )
    lines = [header]
    for key, t in sorted(tallies.items(), key=lambda kv: kv[0]):
        route, served, candidate, judge = key
        decision = decide(t, thresholds)
        rate = decision.rate
        what = "match" if decision.question == "downsize" else "lost"
        ratio = t.cost_ratio
        lines.append(
            (
                route,
                served,
                candidate,
                judge,
                str(t.samples),
                _outcomes(t, judge),
                f"{what} {percent(rate.estimate)} [{percent(rate.lower)}, {percent(rate.upper)}]",
                "-" if ratio is None else f"{ratio:.2f}",
                f"{t.mean(t.served_cost):.8f}",
                f"{t.mean(t.candidate_cost):.8f}",
                f"{t.judge_cost:.6f}",
                f"{t.mean(t.served_seconds):.2f}/{t.mean(t.candidate_seconds):.2f}",
                decision.recommendation,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
    advice = recommendations(tallies, thresholds)
    rules = (
        f"(at least {thresholds.min_samples} samples; move down when a cheaper candidate's match"
        f" rate is surely ≥ {percent(thresholds.match_target)}, escalate when the served expert"
        f" surely loses ≥ {percent(thresholds.loss_limit)} to a reference)"
    )
    body = "\n".join(f"  - {line}" for line in advice) if advice else "  none yet"
    return f"{table}\n\nRecommendations {rules}:\n{body}"
