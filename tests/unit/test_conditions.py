"""Conditions follow the Kubernetes conventions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelflock.api.common import Condition, ConditionStatus
from modelflock.api.conditions import find_condition, is_true, remove_condition, set_condition

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def _ready(status: ConditionStatus, at: datetime = T0, generation: int = 1) -> Condition:
    return Condition(
        type="Ready",
        status=status,
        reason="R",
        message="m",
        last_transition_time=at,
        observed_generation=generation,
    )


@pytest.mark.parametrize(
    ("before", "new_status", "expected_transition"),
    [
        (None, "True", T1),  # new condition: now
        ("True", "True", T0),  # same status: kept, even with a new reason
        ("True", "False", T1),  # flipped: now
        ("False", "Unknown", T1),
        ("Unknown", "Unknown", T0),
    ],
)
def test_transition_time(
    before: ConditionStatus | None, new_status: ConditionStatus, expected_transition: datetime
) -> None:
    existing = [] if before is None else [_ready(before)]
    result = set_condition(
        existing,
        type="Ready",
        status=new_status,
        reason="Other",
        message="new",
        observed_generation=2,
        now=T1,
    )
    (ready,) = result
    assert ready.last_transition_time == expected_transition
    assert ready.reason == "Other" and ready.message == "new"
    assert ready.observed_generation == 2


def test_other_conditions_keep_their_order_and_content() -> None:
    degraded = Condition(
        type="Degraded",
        status="False",
        reason="AsExpected",
        last_transition_time=T0,
        observed_generation=1,
    )
    result = set_condition(
        [degraded, _ready("False")],
        type="Ready",
        status="True",
        reason="AllReady",
        message="",
        observed_generation=3,
        now=T1,
    )
    assert [c.type for c in result] == ["Degraded", "Ready"]
    assert result[0] == degraded
    assert is_true(result, "Ready") and not is_true(result, "Degraded")
    assert not is_true(result, "Progressing")


def test_find_and_remove() -> None:
    conditions = [_ready("True")]
    assert find_condition(conditions, "Ready") == conditions[0]
    assert find_condition(conditions, "Nope") is None
    assert remove_condition(conditions, "Ready") == []
