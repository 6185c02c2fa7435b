"""The classifier chain: stages in order; unsure, slow or failing stages hand over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from modelflock.router.classify.features import (
    Decision,
    Features,
    Outcome,
    StageFailure,
    StageOutcome,
    Verdict,
)
from modelflock.router.classify.rules import IntentRule, classify_rules
from modelflock.router.upstream import UpstreamFailure

log = logging.getLogger(__name__)


class ModelStage(Protocol):
    name: str
    timeout: float

    async def decide(self, f: Features) -> Verdict: ...


class RulesStage:
    name = "rules"

    def __init__(self, rules: Sequence[IntentRule]) -> None:
        self.rules = tuple(rules)


Stage = RulesStage | ModelStage


def failure_of(exc: Exception) -> tuple[Outcome, str]:
    """What an exception out of a model stage means: the expert is unavailable (connect,
    HTTP status), or answered something the stage cannot use."""
    if isinstance(exc, StageFailure):
        return exc.reason, exc.detail
    if isinstance(exc, UpstreamFailure):
        reason: Outcome = "bad_response" if exc.kind == "protocol" else "unavailable"
        return reason, exc.detail
    if isinstance(exc, OSError):
        return "unavailable", str(exc) or type(exc).__name__
    # KeyError/TypeError/ValueError/IndexError: an answer of the wrong shape.
    return "bad_response", f"{type(exc).__name__}: {exc}"[:200]


class ClassifierChain:
    def __init__(self, stages: Sequence[Stage], default_intent: str) -> None:
        self.stages = list(stages)
        self.default_intent = default_intent

    async def _ask(self, stage: ModelStage, f: Features) -> StageOutcome:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(stage.timeout):
                verdict = await stage.decide(f)
        except TimeoutError:
            detail = f"no answer within {stage.timeout * 1000:g} ms"
            return StageOutcome(stage.name, "timeout", time.perf_counter() - t0, detail=detail)
        except Exception as exc:  # a failing stage hands over, and says why
            outcome, detail = failure_of(exc)
            log.info("classifier stage %s: %s (%s)", stage.name, outcome, detail)
            return StageOutcome(stage.name, outcome, time.perf_counter() - t0, detail=detail)
        outcome = "decided" if verdict.intent is not None else "unsure"
        return StageOutcome(
            stage.name,
            outcome,
            time.perf_counter() - t0,
            intent=verdict.intent or verdict.guess or "",
            confidence=verdict.confidence,
        )

    async def classify(self, f: Features) -> Decision:
        start = time.perf_counter()
        trail: list[StageOutcome] = []
        for stage in self.stages:
            if isinstance(stage, RulesStage):
                t0 = time.perf_counter()
                intent = classify_rules(stage.rules, f)  # synchronous: microseconds
                outcome = StageOutcome(
                    stage.name,
                    "decided" if intent is not None else "unsure",
                    time.perf_counter() - t0,
                    intent or "",
                )
            else:
                outcome = await self._ask(stage, f)
            trail.append(outcome)
            if outcome.outcome == "decided":
                return Decision(
                    outcome.intent, stage.name, time.perf_counter() - start, tuple(trail)
                )
        degraded = any(o.outcome not in ("decided", "unsure") for o in trail)
        return Decision(
            self.default_intent,
            "degraded" if degraded else "default",
            time.perf_counter() - start,
            tuple(trail),
        )
