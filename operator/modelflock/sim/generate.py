"""Parse OpenAI requests and plan the simulated answer: pure functions, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelflock.evaluation.judge import read_sections
from modelflock.openai_text import message_text
from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.text import (
    REFUSAL_TEXT,
    answer_quality,
    count_tokens,
    degraded_words,
    generate_words,
    is_degraded,
)

# The simulated judge calls a tie unless one answer is clearly better.
JUDGE_MARGIN = 0.5


class BadRequest(Exception):
    """An invalid request: answered with an OpenAI-shaped error."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Job:
    chat: bool
    model: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    json_mode: bool


@dataclass(frozen=True)
class Output:
    tokens: list[str]  # pieces whose concatenation is the answer text
    finish_reason: str
    logprob: float  # every generated token's logprob (the sim is uniformly sure or unsure)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        parts = []
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise BadRequest("each message needs a 'role'", param="messages")
            parts.append(message_text(message.get("content")))
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    raise BadRequest("'prompt' must be a string or a list of strings", param="prompt")


def parse_job(body: object, chat: bool, served_model: str) -> Job:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required", param="model")
    if model != served_model:
        raise BadRequest(
            f"The model `{model}` does not exist.",
            status=404,
            param="model",
            code="model_not_found",
        )
    text = _prompt_text(body, chat)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer", param="max_tokens")
    stream_options = body.get("stream_options") or {}
    logprobs_field = body.get("logprobs")
    if chat:
        logprobs = bool(logprobs_field)
        top_field = body.get("top_logprobs")
        top = top_field if isinstance(top_field, int) else 0
    else:
        logprobs = isinstance(logprobs_field, int) and not isinstance(logprobs_field, bool)
        top = logprobs_field if isinstance(logprobs_field, int) and logprobs else 0
    response_format = body.get("response_format") or {}
    json_mode = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    return Job(
        chat=chat,
        model=model,
        prompt_text=text,
        prompt_tokens=count_tokens(text),
        max_tokens=max_tokens,
        stream=bool(body.get("stream")),
        include_usage=isinstance(stream_options, dict)
        and bool(stream_options.get("include_usage")),
        logprobs=logprobs,
        top_logprobs=top,
        json_mode=json_mode,
    )


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if text else []


def plan_output(settings: SimSettings, behaviour: Behaviour, job: Job) -> Output:
    """The answer for `job` under `behaviour`: deterministic in the prompt."""
    wanted = (
        settings.output_tokens
        if job.max_tokens is None
        else min(job.max_tokens, settings.output_tokens)
    )
    finish = (
        "length"
        if job.max_tokens is not None and job.max_tokens < settings.output_tokens
        else "stop"
    )
    logprob = -2.5 if behaviour.mode == "low_confidence" else -0.01
    for needle, reply in behaviour.replies.items():
        if needle in job.prompt_text:
            return Output(_pieces(reply), "stop", logprob)
    if behaviour.judge:
        verdict = judge_verdict(job.prompt_text)
        if verdict is not None:
            return Output([verdict], "stop", logprob)
    mode = behaviour.mode
    if mode == "refuse":
        return Output(_pieces(REFUSAL_TEXT), "stop", logprob)
    if mode == "empty":
        return Output([], "stop", logprob)
    if mode == "echo":
        return Output(_pieces(job.prompt_text), "stop", logprob)
    if is_degraded(job.prompt_text, behaviour.degraded_rate):
        words = degraded_words(job.prompt_text, max(wanted, 1))
    else:
        words = generate_words(job.prompt_text, max(wanted, 1))
    if mode == "truncate":
        return Output(_pieces(" ".join(words)), "length", logprob)
    if mode == "invalid_json":
        return Output(_pieces('{"answer": "' + " ".join(words)), "stop", logprob)
    if job.json_mode:
        return Output(_pieces(json.dumps({"answer": " ".join(words)})), "stop", logprob)
    return Output(_pieces(" ".join(words[:wanted])), finish, logprob)


def judge_verdict(prompt_text: str) -> str | None:
    """The simulated judge: A, B or TIE by the answers' quality; None if not a judge prompt."""
    sections = read_sections(prompt_text)
    if sections is None:
        return None
    a, b = answer_quality(sections["a"]), answer_quality(sections["b"])
    if abs(a - b) < JUDGE_MARGIN:
        return "TIE"
    return "A" if a > b else "B"
