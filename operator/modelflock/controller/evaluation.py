"""The operator's memory of shadow evaluation: the routers' reports summed per policy.

Routers report deltas (modelflock.evaluation.wire); adding them up gives the policy's totals
across any number of routers and router restarts. The totals live in status.evaluation too,
so a restarted operator continues from its status (`seed`). Everything here runs on the
event loop (the flock API handler and the policy worker), so no lock is needed.

A report whose answer was lost is sent again, grown by what came since, under the next
sequence number. `Unacknowledged` keeps, per router, what each applied report added until
the router says it got the answer, and `fresh_part` takes that away from a resent report.
What an operator restart forgets is at most the reports applied in its last moments and not
yet answered (counted again once, if their answer was lost as well).
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
MAX_ROUTERS = 256  # routers remembered per policy for resent reports (least recent forgotten)
MAX_UNACKNOWLEDGED = 32  # applied reports kept per router until it confirms their answer


@dataclass(frozen=True)
class Applied:
    """What one report added to a policy's totals."""

    day: str
    spent: float
    dropped: int
    results: dict[TallyKey, Tally]


@dataclass
class Unacknowledged:
    """One router's applied reports (by sequence) whose answer it has not confirmed yet."""

    applied: dict[int, Applied] = field(default_factory=dict)


def fresh_part(report: Report, pending: dict[int, Applied]) -> Applied:
    """The part of `report` not already applied: a router resends, after a lost answer,
    everything since the last report it got an answer for (`report.acknowledged`), so what
    the operator applied from it after that comes off (spend only within the same day)."""
    resent = [a for seq, a in pending.items() if seq > report.acknowledged]
    results = {}
    for key, tally in report.results.items():
        for earlier in resent:
            if key in earlier.results:
                tally = tally.without(earlier.results[key])
        if tally.samples:
            results[key] = tally
    spent = report.spent - sum(a.spent for a in resent if a.day == report.day)
    dropped = report.dropped - sum(a.dropped for a in resent)
    return Applied(report.day, max(spent, 0.0), max(dropped, 0), results)


@dataclass
class PolicyEvaluation:
    totals: dict[TallyKey, Tally] = field(default_factory=dict)
    day: str | None = None
    spent: float = 0.0
    dropped: int = 0
    last_report: datetime | None = None
    seeded: bool = False
    routers: dict[str, Unacknowledged] = field(default_factory=dict)
    last_trigger: float = float("-inf")  # monotonic; in the future while one is scheduled

    def _add_spend(self, day: str | None, amount: float) -> None:
        if day is None:
            return
        if self.day is None or day > self.day:
            self.day, self.spent = day, 0.0
        if day == self.day:
            self.spent += amount  # spend reported for an earlier day is history

    def take(self, report: Report) -> Applied:
        """The part of `report` to add (all of it for a router that sends no sequence), and
        the router's memory of unanswered reports brought up to date."""
        if report.sequence is None:
            return Applied(report.day, report.spent, report.dropped, dict(report.results))
        memory = self.routers.pop(report.router, None) or Unacknowledged()
        memory.applied = {s: a for s, a in memory.applied.items() if s > report.acknowledged}
        fresh = fresh_part(report, memory.applied)
        memory.applied.setdefault(report.sequence, fresh)  # a duplicate adds nothing more
        while len(memory.applied) > MAX_UNACKNOWLEDGED:
            del memory.applied[min(memory.applied)]
        self.routers[report.router] = memory  # re-inserted: the dict is in order of last report
        while len(self.routers) > MAX_ROUTERS:
            del self.routers[next(iter(self.routers))]
        return fresh

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
        fresh = state.take(report)
        for tally_key, tally in fresh.results.items():
            state._add(tally_key, tally)
        state._add_spend(fresh.day, fresh.spent)
        state.dropped += fresh.dropped
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
