"""The llm stage: a small classifier expert picks exactly one intent label."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelflock.router.classify.features import Features
from modelflock.router.config import Intent

# (messages, allowed labels) -> the expert's answer text
AskFn = Callable[[list[dict[str, Any]], list[str]], Awaitable[str]]

_PROMPT_LIMIT = 4000  # characters of the user prompt shown to the classifier


def classifier_messages(
    intents: Sequence[Intent], labels: Sequence[str], text: str
) -> list[dict[str, Any]]:
    lines = [f"- {i.name}: {i.description}".rstrip(": ") for i in intents]
    system = (
        "Classify the user's request. Answer with exactly one label and nothing else.\n"
        "Labels:\n" + "\n".join(lines) + "\nAllowed answers: " + ", ".join(labels)
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": text[:_PROMPT_LIMIT]},
    ]


def parse_label(answer: str, labels: Sequence[str]) -> str | None:
    """Strict: the whole answer is one label (quotes, case and a final period tolerated),
    or a JSON object/string naming one. Anything else is unsure."""
    text = answer.strip()
    if text.startswith(("{", '"')):
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            value = value.get("intent", value.get("label"))
        if isinstance(value, str):
            text = value.strip()
    candidate = re.sub(r"^[\s'\"`]+|[\s'\"`.]+$", "", text).lower()
    by_lower = {label.lower(): label for label in labels}
    return by_lower.get(candidate)


class LlmStage:
    name = "llm"

    def __init__(
        self, intents: Sequence[Intent], labels: Sequence[str], ask: AskFn, timeout: float
    ) -> None:
        self._intents = list(intents)
        self._labels = list(labels)
        self._ask = ask
        self.timeout = timeout

    async def decide(self, f: Features) -> str | None:
        if not f.text:
            return None
        answer = await self._ask(
            classifier_messages(self._intents, self._labels, f.text), self._labels
        )
        return parse_label(answer, self._labels)
