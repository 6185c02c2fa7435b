"""The simulated engine's request parsing and answer planning."""

from __future__ import annotations

import json

import pytest

from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.generate import BadRequest, parse_job, plan_output
from modelflock.sim.text import REFUSAL_TEXT, embed

SETTINGS = SimSettings(model="m", output_tokens=8)


def chat(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello there"}], **extra}


def test_answer_is_deterministic_and_has_the_configured_length() -> None:
    job = parse_job(chat(), True, "m")
    a = plan_output(SETTINGS, Behaviour(), job)
    b = plan_output(SETTINGS, Behaviour(), job)
    assert a == b
    assert len(a.tokens) == 8
    assert a.finish_reason == "stop"
    assert a.text == "".join(a.tokens)


def test_max_tokens_below_the_answer_length_truncates() -> None:
    out = plan_output(SETTINGS, Behaviour(), parse_job(chat(max_tokens=3), True, "m"))
    assert (len(out.tokens), out.finish_reason) == (3, "length")


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("refuse", lambda o: o.text == REFUSAL_TEXT),
        ("empty", lambda o: o.text == ""),
        ("truncate", lambda o: o.finish_reason == "length"),
        ("low_confidence", lambda o: o.logprob < -1),
    ],
)
def test_failure_modes_shape_the_answer(mode: str, check: object) -> None:
    out = plan_output(SETTINGS, Behaviour(mode=mode), parse_job(chat(), True, "m"))  # type: ignore[arg-type]
    assert check(out)  # type: ignore[operator]


def test_json_mode_gives_valid_json_unless_told_otherwise() -> None:
    job = parse_job(chat(response_format={"type": "json_object"}), True, "m")
    assert json.loads(plan_output(SETTINGS, Behaviour(), job).text)["answer"]
    with pytest.raises(ValueError):
        json.loads(plan_output(SETTINGS, Behaviour(mode="invalid_json"), job).text)


def test_replies_answer_matching_prompts_exactly() -> None:
    job = parse_job(chat(), True, "m")
    assert plan_output(SETTINGS, Behaviour(replies={"hello": "code"}), job).text == "code"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([], 400),
        ({"messages": []}, 400),
        ({"model": "m", "messages": []}, 400),
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400),
    ],
)
def test_bad_requests_are_refused(body: object, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        parse_job(body, True, "m")
    assert err.value.status == status


def test_stream_options_and_logprobs_are_read() -> None:
    job = parse_job(
        chat(stream=True, stream_options={"include_usage": True}, logprobs=True, top_logprobs=2),
        True,
        "m",
    )
    assert (job.stream, job.include_usage, job.logprobs, job.top_logprobs) == (True, True, True, 2)
    completion = parse_job({"model": "m", "prompt": "hi", "logprobs": 1}, False, "m")
    assert completion.logprobs and completion.top_logprobs == 1


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_deterministic_and_similar_for_similar_text() -> None:
    a = embed("write a python function to sort a list", 64)
    b = embed("python function that sorts a list", 64)
    c = embed("poem about the autumn sea", 64)
    assert a == embed("write a python function to sort a list", 64)
    assert abs(cosine(a, a) - 1) < 1e-9
    assert cosine(a, b) > cosine(a, c) + 0.2
