"""Condition handling with Kubernetes semantics.

`set_condition` keeps `lastTransitionTime` unless the status flips and always stamps the
generation it was computed from; `is_true` reads a condition back. Pure: callers pass `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from modelflock.api.common import Condition, ConditionStatus


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of `type` set; other conditions keep their order."""
    previous = find_condition(conditions, type)
    transition = (
        previous.last_transition_time if previous is not None and previous.status == status else now
    )
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type else c for c in conditions]


def find_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def is_true(conditions: Sequence[Condition], type: str) -> bool:
    found = find_condition(conditions, type)
    return found is not None and found.status == "True"


def remove_condition(conditions: Sequence[Condition], type: str) -> list[Condition]:
    return [c for c in conditions if c.type != type]
