"""The rules stage: keywords, regexes, prompt length, requested model, headers (microseconds)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from modelflock.router.classify.features import Features
from modelflock.router.config import Intent


@dataclass(frozen=True)
class IntentRule:
    intent: str
    keywords: re.Pattern[str] | None  # one alternation for all keywords of the intent
    patterns: tuple[re.Pattern[str], ...]
    min_chars: int | None
    models: frozenset[str]
    headers: tuple[tuple[str, str], ...]

    @property
    def has_signal(self) -> bool:
        return bool(self.keywords or self.patterns or self.models or self.headers)


def _keyword_regex(keyword: str) -> str:
    """Whole words: a word boundary only at edges that are word characters, so "python"
    does not match "pythonic" while "c++", "def " or "tl;dr" still match."""
    prefix = r"(?<!\w)" if keyword[:1].isalnum() or keyword[:1] == "_" else ""
    suffix = r"(?!\w)" if keyword[-1:].isalnum() or keyword[-1:] == "_" else ""
    return f"{prefix}{re.escape(keyword)}{suffix}"


def compile_rule(intent: Intent) -> IntentRule:
    keywords = None
    if intent.keywords:
        ordered = sorted(intent.keywords, key=len, reverse=True)
        alternation = "|".join(_keyword_regex(k) for k in ordered)
        keywords = re.compile(f"(?:{alternation})", re.IGNORECASE)
    return IntentRule(
        intent=intent.name,
        keywords=keywords,
        patterns=tuple(re.compile(p) for p in intent.patterns),
        min_chars=intent.min_prompt_chars,
        models=frozenset(intent.models),
        headers=tuple((h.name, h.value) for h in intent.headers),
    )


def compile_rules(intents: Sequence[Intent]) -> tuple[IntentRule, ...]:
    """Rules in intent order; intents with neither signals nor a length bound never match."""
    rules = (compile_rule(i) for i in intents)
    return tuple(r for r in rules if r.has_signal or r.min_chars is not None)


def rule_matches(rule: IntentRule, f: Features) -> bool:
    """Any signal matches, and the prompt is at least `min_chars` long when that is set."""
    if rule.min_chars is not None and f.total_chars < rule.min_chars:
        return False
    if not rule.has_signal:
        return True  # a pure length rule, e.g. "long-context"
    if f.model in rule.models:
        return True
    if any(f.headers.get(name) == value for name, value in rule.headers):
        return True
    if rule.keywords is not None and rule.keywords.search(f.text):
        return True
    return any(p.search(f.text) for p in rule.patterns)


def classify_rules(rules: Sequence[IntentRule], f: Features) -> str | None:
    """The first intent whose rule matches, or None (unsure: the next stage decides)."""
    for rule in rules:
        if rule_matches(rule, f):
            return rule.intent
    return None
