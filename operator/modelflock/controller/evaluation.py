"""The operator's memory of shadow evaluation: the routers' reports summed per policy.

Routers report deltas (modelflock.evaluation.wire); adding them up gives the policy's totals
across any number of routers and router restarts. The totals live in status.evaluation too,
so a restarted operator continues from its status (`seed`). Everything here runs on the
event loop (the flock API handler and the policy worker), so no lock is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from modelflock.api.evaluation import EvaluationStatus
from modelflock.evaluation.stats import Tally
from modelflock.evaluation.wire import Report, TallyKey
from modelflock.render.evaluation import tally_of

ObjectKey = tuple[str, str]
MAX_KEYS = 512  # (route, served, candidate, judge) per policy; more are ignored
TRIGGER_GAP_SECONDS = 5.0  # reports refresh the status at most this often per policy


@dataclass
class PolicyEvaluation:
    totals: dict[TallyKey, Tally] = field(default_factory=dict)
    day: str | None = None
    spent: float = 0.0
    dropped: int = 0
    last_report: datetime | None = None
    seeded: bool = False
    last_trigger: float = float("-inf")  # monotonic; in the future while one is scheduled

    def _add_spend(self, day: str | None, amount: float) -> None:
        if day is None:
            return
        if self.day is None or day > self.day:
            self.day, self.spent = day, 0.0
        if day == self.day:
            self.spent += amount  # spend reported for an earlier day is history

    def _add(self, key: TallyKey, tally: Tally) -> None:
        if key in self.totals:
            self.totals[key] = self.totals[key] + tally
        elif len(self.totals) < MAX_KEYS:
            self.totals[key] = tally


class EvaluationStore:
    def __init__(self) -> None:
        self.policies: dict[ObjectKey, PolicyEvaluation] = {}

    def get(self, key: ObjectKey) -> PolicyEvaluation:
        state = self.policies.get(key)
        if state is None:
            state = self.policies[key] = PolicyEvaluation()
        return state

    def add(self, key: ObjectKey, report: Report, now: datetime) -> PolicyEvaluation:
        state = self.get(key)
        for tally_key, tally in report.results.items():
            state._add(tally_key, tally)
        state._add_spend(report.day, report.spent)
        state.dropped += report.dropped
        state.last_report = now
        return state

    def seed(self, key: ObjectKey, status: EvaluationStatus | None) -> PolicyEvaluation:
        """Once per policy and operator process: add what the status already holds."""
        state = self.get(key)
        if state.seeded:
            return state
        state.seeded = True
        if status is None:
            return state
        for result in status.results:
            state._add(*tally_of(result))
        state._add_spend(status.day, float(status.spent_today_usd))
        state.dropped += status.dropped
        if status.last_report_time and (
            state.last_report is None or status.last_report_time > state.last_report
        ):
            state.last_report = status.last_report_time
        return state

    def trigger_delay(self, key: ObjectKey, now: float) -> float | None:
        """When a report should wake the policy worker: 0.0 at once, a positive delay when the
        last wake-up was less than `TRIGGER_GAP_SECONDS` ago (one trailing wake-up, so the
        last report of a burst reaches the status within the gap, not at the next resync), or
        None when a wake-up is already scheduled and will include this report."""
        state = self.get(key)
        if state.last_trigger > now:
            return None
        due = max(now, state.last_trigger + TRIGGER_GAP_SECONDS)
        state.last_trigger = due
        return due - now

    def forget(self, key: ObjectKey) -> None:
        self.policies.pop(key, None)
