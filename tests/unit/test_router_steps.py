"""The pure decisions of Dispatcher.run's steps: admission, escalation, context."""

from __future__ import annotations

from typing import Any

import pytest

from modelflock.router.balance import Health
from modelflock.router.checks import compile_checks
from modelflock.router.config import Cascade
from modelflock.router.dispatch import with_context
from modelflock.router.job import Answer
from modelflock.router.steps import Admission, admission, escalation_check


@pytest.mark.parametrize(
    ("health", "has_next", "cold_start", "budget", "expected"),
    [
        ("ok", True, 60.0, 10.0, "go"),
        ("ok", False, 60.0, 0.0, "go"),
        ("cold", True, 60.0, 10.0, "skip-cold"),  # a later expert exists, start too slow
        ("cold", True, 5.0, 10.0, "wait"),  # fits in the budget: worth waiting for
        ("cold", False, 60.0, 10.0, "wait"),  # the last one: wait whatever it takes
        ("cold", False, 60.0, 0.0, "wait"),
        ("overloaded", True, 60.0, 10.0, "skip-overloaded"),
        ("overloaded", False, 60.0, 10.0, "go"),  # nobody else: queue there
    ],
)
def test_admission(
    health: Health, has_next: bool, cold_start: float, budget: float, expected: Admission
) -> None:
    assert admission(health, has_next, cold_start, budget) == expected


def _answer(content: str, finish: str = "stop", status: int = 200) -> Answer:
    payload = {"choices": [{"message": {"content": content}, "finish_reason": finish}]}
    return Answer(status, b"", "application/json", payload)


CHECKS = compile_checks(Cascade(experts=["a", "b", "c"], checks=["truncated", "empty"]))


@pytest.mark.parametrize(
    ("answer", "checks", "index", "cascade_len", "expected"),
    [
        (_answer("fine"), CHECKS, 0, 3, None),
        (_answer("cut", "length"), CHECKS, 0, 3, "truncated"),
        (_answer("cut", "length"), CHECKS, 1, 3, "truncated"),
        (_answer("cut", "length"), CHECKS, 2, 3, None),  # the last cascade expert: kept
        (_answer("cut", "length"), CHECKS, 3, 3, None),  # a fallback: never escalated
        (_answer("", status=400), CHECKS, 0, 3, None),  # the client's error: passed on
        (_answer(""), CHECKS, 0, 3, "empty"),
        (_answer("cut", "length"), None, 0, 3, None),  # streams carry no checks
    ],
)
def test_escalation_check(
    answer: Answer, checks: Any, index: int, cascade_len: int, expected: str | None
) -> None:
    assert escalation_check(answer, checks, False, index, cascade_len) == expected


@pytest.mark.parametrize(
    ("body", "kind", "expected"),
    [
        (
            {"messages": [{"role": "user", "content": "q"}]},
            "chat",
            {
                "messages": [
                    {"role": "system", "content": "A\n\nB"},
                    {"role": "user", "content": "q"},
                ]
            },
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "q"},
                ]
            },
            "chat",
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "system", "content": "A\n\nB"},
                    {"role": "user", "content": "q"},
                ]
            },
        ),
        ({"prompt": "q"}, "completion", {"prompt": "A\n\nB\n\nq"}),
        ({"prompt": ["q", "r"]}, "completion", {"prompt": "A\n\nB\n\nq\nr"}),
    ],
)
def test_context_goes_in_front(body: dict[str, Any], kind: str, expected: dict[str, Any]) -> None:
    original = repr(body)
    assert with_context(body, kind, ["A", "B"]) == expected
    assert repr(body) == original  # the client's body is not changed in place
