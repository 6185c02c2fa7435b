"""Reports the classifier's stage failures to the operator (POST …/classifier, see
docs/discovery.md), which turns them into the policy's ClassifierDegraded condition.
The router still never talks to the Kubernetes API."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping

from modelflock.render.classifier_health import ClassifierReport, StageReport
from modelflock.router.accounting import RouterMetrics
from modelflock.router.config import Discovery as DiscoveryConfig
from modelflock.router.discovery import DiscoveryClient

log = logging.getLogger(__name__)

Counts = dict[tuple[str, ...], float]  # (stage, outcome or reason) -> count


def stage_counts(metrics: RouterMetrics) -> tuple[Counts, Counts]:
    """(answers per stage and outcome, failures per stage and reason) so far."""
    answers = {key: float(sum(counts)) for key, (counts, _) in metrics.stage_seconds.values.items()}
    return answers, dict(metrics.stage_failures.values)


def build_report(
    router: str,
    window: float,
    before: tuple[Counts, Counts],
    after: tuple[Counts, Counts],
    last_failure: Mapping[str, str],
) -> ClassifierReport:
    """What changed between two readings of the counters, per stage (pure)."""
    stages: dict[str, StageReport] = {}
    for key, count in after[0].items():
        stage, delta = key[0], int(count - before[0].get(key, 0.0))
        if stage == "rules" or delta <= 0:
            continue  # rules cannot fail; only model stages are reported
        entry = stages.setdefault(stage, StageReport(stage=stage, answered=0))
        stages[stage] = entry.model_copy(update={"answered": entry.answered + delta})
    for key, count in after[1].items():
        (stage, reason), delta = key, int(count - before[1].get(key, 0.0))
        if delta <= 0:
            continue
        entry = stages.setdefault(stage, StageReport(stage=stage, answered=delta))
        stages[stage] = entry.model_copy(
            update={
                "failures": {**entry.failures, reason: delta},
                "last_failure": last_failure.get(stage, "")[:300],
            }
        )
    return ClassifierReport(router=router, window_seconds=window, stages=list(stages.values()))


class ClassifierReporter:
    def __init__(
        self,
        discovery: DiscoveryClient,
        config: Callable[[], DiscoveryConfig | None],
        metrics: RouterMetrics,
    ) -> None:
        self._discovery = discovery
        self._config = config
        self._metrics = metrics
        # Unique per router process: sidecars of one policy report separately.
        self.router_id = f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self._before = stage_counts(metrics)
        self._since = time.monotonic()
        self._last_failing = False
        self.sent = 0

    async def report_once(self) -> None:
        cfg = self._config()
        if cfg is None:
            return
        after, now = stage_counts(self._metrics), time.monotonic()
        report = build_report(
            self.router_id,
            max(now - self._since, 0.001),
            self._before,
            after,
            self._metrics.last_stage_failure,
        )
        if not report.stages and not self._last_failing:
            return  # nothing happened and nothing to clear: keep the operator quiet
        if not await self._discovery.report_classifier(report.model_dump_json(by_alias=True)):
            return  # the counts stay: the next report covers this window too
        self._before, self._since = after, now
        self._last_failing = report.failing
        self.sent += 1

    async def run(self) -> None:
        while True:
            cfg = self._config()
            await asyncio.sleep(cfg.classifier_report_seconds if cfg else 10.0)
            try:
                await self.report_once()
            except Exception:  # the reporter must survive anything
                log.exception("classifier report failed")
