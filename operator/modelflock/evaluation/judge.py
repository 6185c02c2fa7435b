"""The judge's prompt and verdicts (pure).

Pairwise LLM-as-judge: the judge expert sees the question and two answers, labelled A and B in
an order drawn at random for every sample (judges favour a position; randomising turns that
bias into noise instead of a systematic lean toward one expert), and answers A, B or TIE.
Similarity: the cosine of the two answers' embeddings against a threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

Verdict = Literal["A", "B", "TIE"]
Outcome = Literal["win", "tie", "loss", "agree", "disagree"]  # from the candidate's side
VERDICTS: tuple[Verdict, ...] = ("A", "B", "TIE")

DEFAULT_RUBRIC = (
    "You are a strict, impartial judge of answers to a user's request. Judge correctness first,"
    " then completeness and relevance, then clarity. Ignore length unless it hides errors."
    " Do not let the order of the answers influence you."
)
# The sections of the user message; the simulated engine's judge mode reads them back.
QUESTION = "[QUESTION]"
ANSWER_A = "[ANSWER A]"
ANSWER_B = "[ANSWER B]"
END = "[END]"
INSTRUCTION = "Which answer is better? Reply with exactly one word: A, B or TIE."
MAX_SECTION_CHARS = 16_000  # the judge's context is finite; long texts are cut (and said so)

_VERDICT = re.compile(r"\b(TIE|A|B)\b", re.IGNORECASE)


def _cut(text: str) -> str:
    if len(text) <= MAX_SECTION_CHARS:
        return text
    return text[:MAX_SECTION_CHARS] + " …(cut)"


def judge_messages(rubric: str, question: str, first: str, second: str) -> list[dict[str, str]]:
    """Chat messages asking the judge to compare `first` (A) with `second` (B)."""
    user = (
        f"{QUESTION}\n{_cut(question)}\n{END}\n"
        f"{ANSWER_A}\n{_cut(first)}\n{END}\n"
        f"{ANSWER_B}\n{_cut(second)}\n{END}\n"
        f"{INSTRUCTION}"
    )
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def judge_payload(
    model: str, engine: str, rubric: str, question: str, first: str, second: str
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": judge_messages(rubric, question, first, second),
        "max_tokens": 4,
        "temperature": 0,
    }
    if engine == "vllm":
        # Constrained decoding: the judge can only answer one of the verdicts.
        payload["structured_outputs"] = {"choice": list(VERDICTS)}
    return payload


def read_sections(text: str) -> dict[str, str] | None:
    """The question and both answers from a judge prompt; None when it is not one."""
    found: dict[str, str] = {}
    for marker in (QUESTION, ANSWER_A, ANSWER_B):
        start = text.find(marker + "\n")
        if start < 0:
            return None
        start += len(marker) + 1
        end = text.find("\n" + END, start)
        if end < 0:
            return None
        found[marker] = text[start:end]
    return {"question": found[QUESTION], "a": found[ANSWER_A], "b": found[ANSWER_B]}


def parse_verdict(text: str) -> Verdict | None:
    """The first A, B or TIE in the judge's answer (case-insensitive); None otherwise."""
    match = _VERDICT.search(text)
    if match is None:
        return None
    word = match.group(1).upper()
    return "TIE" if word == "TIE" else "A" if word == "A" else "B"


def pairwise_outcome(verdict: Verdict, candidate_first: bool) -> Outcome:
    """The verdict from the candidate's side, undoing the random order."""
    if verdict == "TIE":
        return "tie"
    candidate = "A" if candidate_first else "B"
    return "win" if verdict == candidate else "loss"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"embeddings of different sizes: {len(a)} and {len(b)}")
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def similarity_outcome(similarity: float, threshold: float) -> Outcome:
    return "agree" if similarity >= threshold else "disagree"
