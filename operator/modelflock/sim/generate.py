"""Parse OpenAI requests and plan the simulated answer: pure functions, no I/O."""

from __future__ import annotations

import json
import re
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
    # Constrained decoding: the answer must be one of `choices` (vLLM structured outputs
    # `choice` / `guided_choice`), or a JSON object whose `choice_key` is one of them (TGI's
    # grammar: response_format {"type": "json", "value": <schema with an enum>}).
    choices: tuple[str, ...] = ()
    choice_key: str | None = None
    user_text: str = ""  # the last user message (chat)


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


def _string_list(value: object, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"'{param}' must be a non-empty list of strings", param=param)
    return tuple(value)


def _enum_property(schema: object) -> tuple[str, tuple[str, ...]] | None:
    """The one string property of a JSON schema restricted to an enum, if there is one."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return None
    for key, prop in schema["properties"].items():
        if isinstance(prop, dict) and isinstance(prop.get("enum"), list):
            return str(key), _string_list(prop["enum"], f"response_format.value.{key}.enum")
    return None


def parse_constraint(body: dict[str, Any], flavour: str) -> tuple[tuple[str, ...], str | None]:
    """(choices, JSON key or None) the engine must honour; ((), None) when unconstrained.

    What each engine reads: vLLM `structured_outputs: {choice: [...]}` (and the older
    `guided_choice`) and refuses TGI's `response_format` type "json"; TGI reads
    `response_format: {type: "json", value: schema}` and ignores vLLM's fields."""
    response_format = body.get("response_format")
    tgi_format = isinstance(response_format, dict) and response_format.get("type") in (
        "json",
        "regex",
    )
    if flavour == "vllm":
        if tgi_format:
            raise BadRequest(
                "response_format.type must be one of text, json_object, json_schema",
                param="response_format",
            )
        outputs = body.get("structured_outputs")
        if outputs is not None:
            if not isinstance(outputs, dict) or "choice" not in outputs:
                raise BadRequest("structured_outputs must be an object", param="structured_outputs")
            return _string_list(outputs["choice"], "structured_outputs.choice"), None
        if body.get("guided_choice") is not None:
            return _string_list(body["guided_choice"], "guided_choice"), None
        return (), None
    if tgi_format and isinstance(response_format, dict) and response_format["type"] == "json":
        found = _enum_property(response_format.get("value"))
        if found is not None:
            key, choices = found
            return choices, key
    return (), None


def parse_job(body: object, chat: bool, served_model: str, flavour: str = "vllm") -> Job:
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
    choices, choice_key = parse_constraint(body, flavour) if chat else ((), None)
    user_text = ""
    if chat:
        for message in body["messages"]:
            if message.get("role") == "user":
                user_text = message_text(message.get("content"))
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
        choices=choices,
        choice_key=choice_key,
        user_text=user_text,
    )


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if text else []


_LABEL_LINE = re.compile(r"^- ([a-z0-9-]+): (.*)$", re.MULTILINE)
_WORDS = re.compile(r"[a-z0-9]+")


def pick_choice(job: Job, behaviour: Behaviour) -> str:
    """A label for a constrained request: a canned reply that is one of the choices, else the
    choice whose name and description (the router's "- label: description" lines) share the
    most words with the user's message, else the first."""
    for needle, reply in behaviour.replies.items():
        if needle in job.user_text and reply in job.choices:
            return reply
    described = dict(_LABEL_LINE.findall(job.prompt_text))
    words = set(_WORDS.findall(job.user_text.lower()))

    def overlap(label: str) -> int:
        return len(words & set(_WORDS.findall(f"{label} {described.get(label, '')}".lower())))

    return max(job.choices, key=lambda label: (overlap(label), -job.choices.index(label)))


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
    if behaviour.judge:
        verdict = judge_verdict(job.prompt_text)
        if verdict is not None and (not job.choices or verdict in job.choices):
            return Output([verdict], "stop", logprob)
    if job.choices and behaviour.constraints == "honour":
        label = pick_choice(job, behaviour)
        text = label if job.choice_key is None else json.dumps({job.choice_key: label})
        return Output(_pieces(text), "stop", logprob)
    for needle, reply in behaviour.replies.items():
        if needle in job.prompt_text:
            return Output(_pieces(reply), "stop", logprob)
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
