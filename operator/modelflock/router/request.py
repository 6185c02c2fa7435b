"""Parse and check an incoming OpenAI request (pure): what the router needs to route it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from modelflock.openai_text import message_text
from modelflock.router.errors import RequestError

Kind = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True)
class ParsedRequest:
    kind: Kind
    body: dict[str, Any]
    model: str
    prompt: str  # text the classifiers look at: the last user message, or the prompt
    total_chars: int
    stream: bool
    wants_usage: bool  # the client itself asked for stream usage
    wants_logprobs: bool
    wants_json: bool


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array", "messages")
    last_user, total = "", 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, "each message must be an object with a 'role'", "messages")
        text = message_text(message.get("content"))
        total += len(text)
        if message["role"] == "user":
            last_user = text
    return last_user, total


def _completion_prompt(body: dict[str, Any]) -> tuple[str, int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    if not isinstance(prompt, str):
        raise RequestError(400, "'prompt' must be a string or an array of strings", "prompt")
    return prompt, len(prompt)


def _embedding_input(body: dict[str, Any]) -> tuple[str, int]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return value, len(value)
    if isinstance(value, list) and value:
        text = " ".join(v for v in value if isinstance(v, str))
        return text, len(text)
    raise RequestError(400, "'input' must be a non-empty string or array", "input")


def parse_request(raw: bytes, kind: Kind) -> ParsedRequest:
    """Validate the fields routing depends on; the rest is the engine's business."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required and must be a string", "model")
    if kind == "chat":
        prompt, total = _chat_prompt(body)
    elif kind == "completion":
        prompt, total = _completion_prompt(body)
    else:
        prompt, total = _embedding_input(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) or (stream and kind == "embedding"):
        raise RequestError(400, "'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    response_format = body.get("response_format")
    wants_json = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    logprobs = body.get("logprobs")
    return ParsedRequest(
        kind=kind,
        body=body,
        model=model,
        prompt=prompt,
        total_chars=total,
        stream=stream,
        wants_usage=wants_usage,
        wants_logprobs=bool(logprobs) and logprobs is not None,
        wants_json=wants_json,
    )
