"""The llm stage: a small classifier expert picks exactly one intent label."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelflock.router.classify.features import Features, StageFailure, Verdict
from modelflock.router.config import Intent

# (messages, allowed labels) -> the expert's answer text
AskFn = Callable[[list[dict[str, Any]], list[str]], Awaitable[str]]
MAX_TOKENS = 16  # a label, or TGI's {"intent": "..."} object

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


def label_schema(labels: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": list(labels)}},
        "required": ["intent"],
        "additionalProperties": False,
    }


def label_request(
    engine: str, model: str, messages: list[dict[str, Any]], labels: Sequence[str]
) -> dict[str, Any]:
    """The chat request that asks for exactly one label, constrained where the engine can:
    vLLM's structured outputs (`choice`), TGI's grammar (`response_format` with a JSON
    schema whose `intent` is an enum). External APIs get the plain instruction."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if engine == "vllm":
        payload["structured_outputs"] = {"choice": list(labels)}
    elif engine == "tgi":
        payload["response_format"] = {"type": "json", "value": label_schema(labels)}
    return payload


def answer_text(body: object) -> str:
    """The text of a chat completion, or StageFailure(bad_response) naming what is missing."""
    try:
        content = body["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise StageFailure(
            "bad_response", "not a chat completion (no choices[0].message)"
        ) from None
    if not isinstance(content, str):
        raise StageFailure("bad_response", "the answer has no text content")
    return content


class LlmStage:
    name = "llm"

    def __init__(
        self, intents: Sequence[Intent], labels: Sequence[str], ask: AskFn, timeout: float
    ) -> None:
        self._intents = list(intents)
        self._labels = list(labels)
        self._ask = ask
        self.timeout = timeout

    async def decide(self, f: Features) -> Verdict:
        if not f.text:
            return Verdict(None)
        answer = await self._ask(
            classifier_messages(self._intents, self._labels, f.text), self._labels
        )
        label = parse_label(answer, self._labels)
        if label is None:
            # The request allowed only the labels: anything else is a broken answer (an engine
            # ignoring the constraint, a truncated JSON object), not an unsure one.
            raise StageFailure(
                "bad_response", f"the answer ({len(answer)} characters) is not one of the labels"
            )
        return Verdict(label)
