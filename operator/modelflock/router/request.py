"""Parse and check an incoming OpenAI request (pure): what the router needs to route it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

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


# Upper bounds of what CPython's json module takes to parse a document (measured on 3.11, see
# docs/router.md "Memory and overload"): per container, member or element, and per byte of
# string (a non-ASCII character, or one \u escape beyond Latin-1, makes a whole string 4 bytes
# per character, and the decoded text exists alongside the objects while parsing).
_BYTES_PER_VALUE = 64
_ASCII_FACTOR = 3
_WIDE_FACTOR = 10


def parse_cost(raw: bytes) -> int:
    """Upper bound of the memory `parse_request(raw)` and re-encoding the body for the engine
    hold, from byte counts alone (C speed: no parse)."""
    values = raw.count(b",") + raw.count(b"{") + raw.count(b"[") + 1
    narrow = raw.isascii() and b"\\u" not in raw
    return (_ASCII_FACTOR if narrow else _WIDE_FACTOR) * len(raw) + _BYTES_PER_VALUE * values


def _not_a_number(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# One decoder for every request (json.loads with hooks builds a new one per call).
_STANDARD = json.JSONDecoder(parse_constant=_not_a_number, parse_float=_finite)


def parse_json(raw: bytes) -> object:
    """Standard JSON (UTF-8) only: NaN, Infinity and numbers that overflow to infinity are
    refused (the router would forward them as non-standard JSON), and so is nesting deeper
    than the parser's recursion limit."""
    try:
        return _STANDARD.decode(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("the JSON nests too deeply") from None


def parse_request(raw: bytes, kind: Kind) -> ParsedRequest:
    """Validate the fields routing depends on; the rest is the engine's business."""
    try:
        body = parse_json(raw)
    except ValueError as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
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
