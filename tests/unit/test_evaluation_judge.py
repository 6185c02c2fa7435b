"""The judge prompt, verdict parsing, order randomisation and the simulated judge/quality."""

from __future__ import annotations

import pytest

from modelflock.evaluation.judge import (
    DEFAULT_RUBRIC,
    cosine,
    judge_messages,
    judge_payload,
    pairwise_outcome,
    parse_verdict,
    read_sections,
    similarity_outcome,
)
from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.generate import judge_verdict, parse_job, plan_output
from modelflock.sim.text import answer_quality, is_degraded


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A", "A"),
        ("b", "B"),
        ("TIE", "TIE"),
        ("tie.", "TIE"),
        ("Answer B is better", "B"),
        ("  A\n", "A"),
        ("Both are fine", None),
        ("", None),
        ("ABBA", None),  # a word boundary is required
    ],
)
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    ("verdict", "candidate_first", "outcome"),
    [
        ("A", True, "win"),
        ("A", False, "loss"),
        ("B", True, "loss"),
        ("B", False, "win"),
        ("TIE", True, "tie"),
        ("TIE", False, "tie"),
    ],
)
def test_random_order_is_undone(verdict: str, candidate_first: bool, outcome: str) -> None:
    assert pairwise_outcome(verdict, candidate_first) == outcome  # type: ignore[arg-type]


def test_prompt_sections_round_trip() -> None:
    messages = judge_messages(DEFAULT_RUBRIC, "What is 2+2?", "four", "five\nor six")
    assert messages[0] == {"role": "system", "content": DEFAULT_RUBRIC}
    text = "\n".join(m["content"] for m in messages)
    assert read_sections(text) == {"question": "What is 2+2?", "a": "four", "b": "five\nor six"}
    assert read_sections("just a question") is None


def test_vllm_judges_are_constrained_to_the_verdicts() -> None:
    vllm = judge_payload("j", "vllm", "r", "q", "a", "b")
    assert vllm["structured_outputs"] == {"choice": ["A", "B", "TIE"]}
    assert "structured_outputs" not in judge_payload("j", "external", "r", "q", "a", "b")
    assert vllm["temperature"] == 0


def test_long_sections_are_cut() -> None:
    text = judge_messages("r", "q" * 20_000, "a", "b")[1]["content"]
    assert len(text) < 17_000
    assert "…(cut)" in text


@pytest.mark.parametrize(
    ("a", "b", "value"),
    [([1.0, 0.0], [1.0, 0.0], 1.0), ([1.0, 0.0], [0.0, 1.0], 0.0), ([0.0, 0.0], [1.0, 0.0], 0.0)],
)
def test_cosine(a: list[float], b: list[float], value: float) -> None:
    assert cosine(a, b) == pytest.approx(value)


def test_cosine_refuses_different_sizes() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        cosine([1.0], [1.0, 0.0])


def test_similarity_threshold_is_inclusive() -> None:
    assert similarity_outcome(0.85, 0.85) == "agree"
    assert similarity_outcome(0.8499, 0.85) == "disagree"


def ask(prompt: str, behaviour: Behaviour) -> str:
    job = parse_job({"model": "m", "messages": [{"role": "user", "content": prompt}]}, True, "m")
    return plan_output(SimSettings(model="m", output_tokens=12), behaviour, job).text


PROMPTS = [f"Summarize ticket number {i} for the on-call engineer." for i in range(2000)]


def test_degraded_rate_is_the_share_of_prompts_degraded() -> None:
    for rate in (0.0, 0.1, 0.3, 1.0):
        share = sum(is_degraded(p, rate) for p in PROMPTS) / len(PROMPTS)
        assert share == pytest.approx(rate, abs=0.03)


def test_degradation_is_nested_across_engines() -> None:
    """A better engine degrades a subset of what a worse one degrades (same prompts)."""
    good, bad = Behaviour(degraded_rate=0.05), Behaviour(degraded_rate=0.3)
    for prompt in PROMPTS[:300]:
        if is_degraded(prompt, 0.05):
            assert is_degraded(prompt, 0.3)
        assert (ask(prompt, good) == ask(prompt, Behaviour())) == (not is_degraded(prompt, 0.05))
        assert answer_quality(ask(prompt, bad)) == (0.0 if is_degraded(prompt, 0.3) else 1.0)


def test_good_answers_agree_across_engines_of_different_lengths() -> None:
    prompt = PROMPTS[0]
    short = plan_output(
        SimSettings(model="m", output_tokens=8),
        Behaviour(),
        parse_job({"model": "m", "prompt": prompt}, False, "m"),
    ).text
    long = plan_output(
        SimSettings(model="m", output_tokens=24),
        Behaviour(),
        parse_job({"model": "m", "prompt": prompt}, False, "m"),
    ).text
    assert long.startswith(short)


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ("the model answers with data", "banana weather nonsense filler", "A"),
        ("unclear guess", "a short and useful sentence", "B"),
        ("the model answers", "a short sentence", "TIE"),
        ("banana", "nonsense", "TIE"),
        ("", "the result", "B"),
    ],
)
def test_simulated_judge_scores_deterministically(a: str, b: str, verdict: str) -> None:
    text = "\n".join(m["content"] for m in judge_messages(DEFAULT_RUBRIC, "q?", a, b))
    assert judge_verdict(text) == verdict
    assert ask(text, Behaviour(judge=True)) == verdict


def test_judge_mode_answers_other_prompts_normally() -> None:
    assert judge_verdict("hello") is None
    assert ask("hello", Behaviour(judge=True)) == ask("hello", Behaviour())
