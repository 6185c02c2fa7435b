"""What the classifiers look at, and the decision they produce."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Features:
    text: str  # the last user message (chat) or the prompt (completions)
    total_chars: int
    model: str  # the requested model name
    headers: Mapping[str, str]  # case-insensitive lookups (http_server.Headers)


@dataclass(frozen=True)
class StageOutcome:
    stage: str  # rules | embedding | llm
    outcome: str  # decided | unsure | timeout | error
    seconds: float


@dataclass(frozen=True)
class Decision:
    intent: str
    classifier: str  # the stage that decided, or "default"
    seconds: float
    trail: tuple[StageOutcome, ...] = field(default=())
