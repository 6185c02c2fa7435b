"""Cascade checks (pure): is a non-streaming answer good enough, or should we escalate?"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelflock.router.config import DEFAULT_REFUSAL_PATTERNS, Cascade
from modelflock.router.usage import UncheckedAnswer


@dataclass(frozen=True)
class CompiledChecks:
    checks: frozenset[str]
    refusal: tuple[re.Pattern[str], ...]  # separate: user patterns may carry inline flags
    min_confidence: float


def compile_checks(cascade: Cascade) -> CompiledChecks:
    patterns = [*DEFAULT_REFUSAL_PATTERNS, *cascade.refusal_patterns]
    return CompiledChecks(
        checks=frozenset(cascade.checks),
        refusal=tuple(re.compile(p, re.IGNORECASE) for p in patterns),
        min_confidence=float(cascade.min_confidence),
    )


def answer_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def token_logprobs(choice: dict[str, Any]) -> list[float]:
    """Token logprobs of a chat (`logprobs.content[].logprob`) or completion answer."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        return [
            float(t["logprob"])
            for t in content
            if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
        ]
    values = logprobs.get("token_logprobs")
    if isinstance(values, list):
        return [float(v) for v in values if isinstance(v, int | float)]
    return []


def mean_probability(logprobs: Sequence[float]) -> float | None:
    if not logprobs:
        return None
    return sum(math.exp(lp) for lp in logprobs) / len(logprobs)


def failed_check(body: object, checks: CompiledChecks, wants_json: bool) -> str | None:
    """The first check the answer fails (truncated, empty, refusal, invalidJSON,
    lowConfidence), or None when it passes (or could not be parsed within the router's
    memory budget: then it is passed through unchecked)."""
    if isinstance(body, UncheckedAnswer):
        return None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("choices"), list)
        or not body["choices"]
        or not isinstance(body["choices"][0], dict)
    ):
        return "empty" if "empty" in checks.checks else None
    choice: dict[str, Any] = body["choices"][0]
    text = answer_text(choice)
    c = checks.checks
    if "truncated" in c and choice.get("finish_reason") == "length":
        return "truncated"
    if "empty" in c and not text.strip():
        return "empty"
    if "refusal" in c and any(p.search(text) for p in checks.refusal):
        return "refusal"
    if "invalidJSON" in c and wants_json:
        try:
            json.loads(text)
        except ValueError:
            return "invalidJSON"
    if "lowConfidence" in c:
        probability = mean_probability(token_logprobs(choice))
        if probability is not None and probability < checks.min_confidence:
            return "lowConfidence"
    return None
