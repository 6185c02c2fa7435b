"""The classifier chain: stages in order; unsure, slow or failing stages hand over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from modelflock.router.classify.features import Decision, Features, StageOutcome
from modelflock.router.classify.rules import IntentRule, classify_rules

log = logging.getLogger(__name__)


class ModelStage(Protocol):
    name: str
    timeout: float

    async def decide(self, f: Features) -> str | None: ...


class RulesStage:
    name = "rules"

    def __init__(self, rules: Sequence[IntentRule]) -> None:
        self.rules = tuple(rules)


Stage = RulesStage | ModelStage


class ClassifierChain:
    def __init__(self, stages: Sequence[Stage], default_intent: str) -> None:
        self.stages = list(stages)
        self.default_intent = default_intent

    async def classify(self, f: Features) -> Decision:
        start = time.perf_counter()
        trail: list[StageOutcome] = []
        for stage in self.stages:
            t0 = time.perf_counter()
            intent: str | None = None
            outcome = "unsure"
            if isinstance(stage, RulesStage):
                intent = classify_rules(stage.rules, f)  # synchronous: microseconds
            else:
                try:
                    async with asyncio.timeout(stage.timeout):
                        intent = await stage.decide(f)
                except TimeoutError:
                    outcome = "timeout"
                except Exception as exc:  # any failure of a stage only means: unsure
                    log.info("classifier stage %s failed: %s", stage.name, exc)
                    outcome = "error"
            if intent is not None:
                outcome = "decided"
            trail.append(StageOutcome(stage.name, outcome, time.perf_counter() - t0))
            if intent is not None:
                return Decision(intent, stage.name, time.perf_counter() - start, tuple(trail))
        return Decision(self.default_intent, "default", time.perf_counter() - start, tuple(trail))
