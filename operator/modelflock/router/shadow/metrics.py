"""Metrics of shadow evaluation (part of the router's registry), and the tallies they hold."""

from __future__ import annotations

from modelflock.evaluation.stats import Tally
from modelflock.router.metrics_core import Counter, Exporter, Gauge, Histogram

_P = "modelflock_router_shadow_"
_KEY = ("route", "expert", "candidate")
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
Key = tuple[str, str, str]  # route, served expert, candidate


class ShadowMetrics:
    """Counters of shadow evaluation, exported with the router's metrics."""

    def __init__(self) -> None:
        self.samples = Counter(
            f"{_P}samples",
            "Judged shadow samples by outcome (pairwise win/tie/loss from the candidate's"
            " side; similarity agree/disagree).",
            (*_KEY, "judge", "outcome"),
        )
        self.dropped = Counter(
            f"{_P}dropped",
            "Sampled requests not replayed, by reason (budget, concurrency, cold, overloaded,"
            " judge-unavailable, candidate-error, judge-error, timeout).",
            (*_KEY, "reason"),
        )
        self.cost = Counter(
            f"{_P}cost_usd",
            "Cost on the sampled prompts: role=served (the answer the client got),"
            " candidate (its replay), judge (judging it).",
            (*_KEY, "role"),
        )
        self.latency = Histogram(
            f"{_P}latency_seconds",
            "Latency of the served answer and of the candidate's, on the sampled prompts.",
            (*_KEY, "role"),
            _LATENCY,
        )
        self.in_flight = Gauge(f"{_P}in_flight", "Shadow samples running now.", ())
        self.spent = Gauge(
            f"{_P}budget_spent_usd",
            "The policy's spend on samples today as this router knows it.",
            (),
        )
        self.limit = Gauge(f"{_P}budget_limit_usd", "The daily budget of samples.", ())

    def exporter(self) -> Exporter:
        return Exporter(
            [v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram)]
        )

    def tallies(self) -> dict[tuple[str, str, str, str], Tally]:
        """Cumulative tallies per (route, served, candidate, judge) from the counters."""
        counts: dict[tuple[str, str, str, str], dict[str, float]] = {}
        judges: dict[Key, str] = {}
        for (route, served, candidate, judge, outcome), value in self.samples.values.items():
            judges[(route, served, candidate)] = judge
            entry = counts.setdefault((route, served, candidate, judge), {})
            entry[outcome] = entry.get(outcome, 0.0) + value
        money: dict[Key, dict[str, float]] = {}
        for (route, served, candidate, role), value in self.cost.values.items():
            money.setdefault((route, served, candidate), {})[role] = value
        seconds: dict[Key, dict[str, float]] = {}
        for (route, served, candidate, role), (_, total) in self.latency.values.items():
            seconds.setdefault((route, served, candidate), {})[role] = total[0]
        result: dict[tuple[str, str, str, str], Tally] = {}
        for key4, outcomes in counts.items():
            key = key4[:3]
            if judges.get(key) != key4[3]:
                continue  # the judge changed: costs belong to the current one
            cost, secs = money.get(key, {}), seconds.get(key, {})
            result[key4] = Tally(
                samples=int(sum(outcomes.values())),
                wins=int(outcomes.get("win", 0)),
                ties=int(outcomes.get("tie", 0)),
                losses=int(outcomes.get("loss", 0)),
                agreements=int(outcomes.get("agree", 0)),
                disagreements=int(outcomes.get("disagree", 0)),
                served_cost=cost.get("served", 0.0),
                candidate_cost=cost.get("candidate", 0.0),
                judge_cost=cost.get("judge", 0.0),
                served_seconds=secs.get("served", 0.0),
                candidate_seconds=secs.get("candidate", 0.0),
            )
        return result

    def dropped_total(self) -> int:
        return int(sum(self.dropped.values.values()))
