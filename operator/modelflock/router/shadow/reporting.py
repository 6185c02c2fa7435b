"""Reporting shadow counters to the operator (flock API), as deltas since the last report.

Deltas, not totals: a router that restarts starts from zero without taking anything back, and
the operator adds up any number of routers. A report that fails is retried with the next one
(the delta grows), numbered: `sequence` counts attempts, `acknowledged` is the last one
answered, so the operator can take off what it applied from an attempt whose answer was lost.
The operator answers with the policy's spend today, which feeds the budget shared by all of
the policy's routers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelflock.evaluation.stats import Tally
from modelflock.evaluation.wire import TallyKey, tally_wire
from modelflock.router.config import Evaluation
from modelflock.router.shadow.budget import DailyBudget
from modelflock.router.shadow.metrics import ShadowMetrics

log = logging.getLogger(__name__)

_HEARTBEAT_SECONDS = 60.0  # report even without news this often (to learn the policy's spend)


def report_body(
    router: str,
    tallies: dict[TallyKey, Tally],
    sent: dict[TallyKey, Tally],
    dropped: int,
    day: str,
    spent: float,
    sequence: int = 0,
    acknowledged: int = 0,
) -> dict[str, Any]:
    results = []
    for key, tally in sorted(tallies.items()):
        before = sent.get(key)
        change = tally if before is None else tally.without(before)  # counters only grow
        if change.samples:
            results.append(tally_wire(key, change))
    return {
        "router": router,
        "sequence": sequence,
        "acknowledged": acknowledged,
        "day": day,
        "spentUSD": spent,
        "dropped": dropped,
        "results": results,
    }


class ShadowReporter:
    """Sends the counters' deltas every `report_interval_seconds` of the evaluation config."""

    def __init__(
        self,
        router_id: str,
        metrics: ShadowMetrics,
        budget: DailyBudget,
        evaluation: Callable[[], Evaluation | None],
        post: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]],
        clock: Callable[[], float],
    ) -> None:
        self.router_id = router_id
        self.metrics = metrics
        self.budget = budget
        self._evaluation = evaluation
        self._post = post
        self._clock = clock
        self.sent: dict[TallyKey, Tally] = {}
        self.sent_dropped = 0
        self._last = -1e18
        self.reports = 0
        self.sequence = 0  # of the last attempt
        self.acknowledged = 0  # the last attempt the operator answered

    async def report_once(self) -> bool:
        """One report if there is news (or the heartbeat is due); True when the operator took
        it."""
        tallies = self.metrics.tallies()
        dropped = self.metrics.dropped_total()
        spent = self.budget.unreported
        body = report_body(
            self.router_id,
            tallies,
            self.sent,
            dropped - self.sent_dropped,
            self.budget.day,
            spent,
            self.sequence + 1,
            self.acknowledged,
        )
        news = bool(body["results"]) or body["dropped"] or spent
        if not news and self._clock() - self._last < _HEARTBEAT_SECONDS:
            return False
        self.sequence += 1
        answer = await self._post(body)
        if answer is None:
            return False
        self.acknowledged = self.sequence
        self._last = self._clock()
        self.sent, self.sent_dropped = tallies, dropped
        self.reports += 1
        policy_spent = answer.get("spentTodayUSD")
        if isinstance(policy_spent, int | float | str):
            try:
                self.budget.acknowledged(
                    str(answer.get("day", body["day"])), spent, float(policy_spent)
                )
            except ValueError:
                log.warning("the operator's evaluation answer has a bad spentTodayUSD")
        self.metrics.spent.values[()] = self.budget.spent
        return True

    async def run(self) -> None:
        while True:
            evaluation = self._evaluation()
            interval = evaluation.report_interval_seconds if evaluation else 10.0
            await asyncio.sleep(interval)
            if evaluation is None and not self.metrics.samples.values:
                continue
            try:
                await self.report_once()
            except Exception:  # the reporter must survive anything
                log.exception("evaluation report failed")
