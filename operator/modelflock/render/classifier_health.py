"""Classifier health: what routers report to the operator (the flock API's `classifier`
endpoint, docs/discovery.md) and what becomes the policy's `ClassifierDegraded` condition.

One-way, as everything else: routers count their stages' failures and POST a small report;
the operator keeps the recent reports per policy and folds them into the status. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

FailureReason = str  # timeout | unavailable | bad_response | warming
REPORT_MAX_AGE_SECONDS = 120.0
_REASON_WORDS = {
    "timeout": "Timeout",
    "unavailable": "Unavailable",
    "bad_response": "BadResponse",
    "warming": "ExamplesNotReady",
}
_PHRASES = {
    "timeout": "timed out",
    "unavailable": "found the expert unavailable",
    "bad_response": "got a bad response",
    "warming": "had no embedded examples yet",
}


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class StageReport(_Wire):
    stage: str = Field(max_length=16)
    answered: int = Field(ge=0, description="requests the stage saw in the window")
    failures: dict[str, int] = Field(default_factory=dict, max_length=8)
    last_failure: str = Field(default="", max_length=300)


class ClassifierReport(_Wire):
    """POST …/routingpolicies/{policy}/classifier, sent by each router every few seconds."""

    router: str = Field(min_length=1, max_length=128, description="router instance id")
    window_seconds: float = Field(gt=0, le=3600)
    stages: list[StageReport] = Field(default_factory=list, max_length=8)

    @property
    def failing(self) -> bool:
        return any(sum(s.failures.values()) for s in self.stages)


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, the condition's reason
    message: str


def _camel(stage: str) -> str:
    return stage[:1].upper() + stage[1:]


def report_problems(reports: Iterable[tuple[float, ClassifierReport]], now: float) -> list[Problem]:
    """Failures in reports younger than REPORT_MAX_AGE_SECONDS, summed over routers, per
    stage and reason; the most frequent first."""
    answered: dict[str, int] = {}
    failed: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], str] = {}
    routers: dict[tuple[str, str], set[str]] = {}
    for received, report in reports:
        if now - received > REPORT_MAX_AGE_SECONDS:
            continue
        for item in report.stages:
            answered[item.stage] = answered.get(item.stage, 0) + item.answered
            for reason, count in item.failures.items():
                if count <= 0 or reason not in _REASON_WORDS:
                    continue
                key = (item.stage, reason)
                failed[key] = failed.get(key, 0) + count
                routers.setdefault(key, set()).add(report.router)
                if item.last_failure.startswith(reason):
                    last[key] = item.last_failure
    problems = []
    for (stage, reason), count in sorted(failed.items(), key=lambda kv: -kv[1]):
        detail = last.get((stage, reason), "")
        message = (
            f"{stage} stage {_PHRASES[reason]} on {count} of {answered.get(stage, count)}"
            f" requests in the last {REPORT_MAX_AGE_SECONDS:g}s"
            f" ({len(routers[(stage, reason)])} router(s) reporting)"
            + (f"; last: {detail}" if detail else "")
        )
        problems.append(Problem(f"{_camel(stage)}{_REASON_WORDS[reason]}", message))
    return problems


def keep_recent(
    reports: Mapping[str, tuple[float, ClassifierReport]], now: float
) -> dict[str, tuple[float, ClassifierReport]]:
    return {r: v for r, v in reports.items() if now - v[0] <= REPORT_MAX_AGE_SECONDS}
