"""What the classifiers look at, and the decision they produce."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# decided / unsure: the stage answered. The others: it could not answer, and say why.
Outcome = Literal["decided", "unsure", "timeout", "unavailable", "bad_response", "warming"]
FAILURES: frozenset[str] = frozenset({"timeout", "unavailable", "bad_response", "warming"})


@dataclass(frozen=True)
class Features:
    text: str  # the last user message (chat) or the prompt (completions)
    total_chars: int
    model: str  # the requested model name
    headers: Mapping[str, str]  # case-insensitive lookups (http_server.Headers)


class StageFailure(Exception):
    """A stage could not answer: its expert is unavailable, answered nonsense, or the
    stage's examples are still being embedded (`warming`)."""

    def __init__(self, reason: Literal["unavailable", "bad_response", "warming"], detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Verdict:
    """What a model stage answered: an intent (None: unsure) and, when it has one, how sure."""

    intent: str | None
    confidence: float | None = None
    guess: str | None = None  # unsure: the best intent all the same (for evaluation)


@dataclass(frozen=True)
class StageOutcome:
    stage: str  # rules | embedding | llm
    outcome: Outcome
    seconds: float
    intent: str = ""  # what the stage decided (or, when unsure, its best guess if it has one)
    detail: str = ""  # why a stage failed (no prompt text in it)
    confidence: float | None = None  # embedding: calibrated probability of its best intent


@dataclass(frozen=True)
class Decision:
    intent: str
    # The stage that decided; "default" when every stage answered unsure; "degraded" when the
    # default intent was used because at least one stage could not answer.
    classifier: str
    seconds: float
    trail: tuple[StageOutcome, ...] = field(default=())

    @property
    def failures(self) -> tuple[StageOutcome, ...]:
        return tuple(o for o in self.trail if o.outcome in FAILURES)
