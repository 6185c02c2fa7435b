"""Leader election decisions (modelflock.leader.decision): table-driven, no cluster."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelflock.leader.decision import (
    Action,
    LeaseRecord,
    Observation,
    decide,
    next_record,
    observe,
    released,
    still_leading,
)
from modelflock.leader.lease import format_micro_time, lease_manifest, record_from_lease

T0 = datetime(2026, 11, 29, 21, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 29, 21, 0, 5, 123456, tzinfo=UTC)


def record(holder: str = "b", version: str = "7", duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, T0, T0, 3, version)


@pytest.mark.parametrize(
    ("lease", "first_seen", "now", "action", "wait"),
    [
        (None, 0.0, 0.0, Action.CREATE, 0.0),
        (record(holder="a"), 0.0, 100.0, Action.RENEW, 0.0),  # ours, even if silent for long
        (record(holder=""), 0.0, 0.0, Action.TAKE, 0.0),  # released
        (record(), 10.0, 10.0, Action.WAIT, 15.0),  # just seen
        (record(), 10.0, 24.9, Action.WAIT, 0.1),  # almost expired
        (record(), 10.0, 25.0, Action.TAKE, 0.0),  # silent for the whole duration
        (record(duration=4), 10.0, 14.5, Action.TAKE, 0.0),  # the holder's duration counts
    ],
)
def test_decide(
    lease: LeaseRecord | None, first_seen: float, now: float, action: Action, wait: float
) -> None:
    observation = Observation(("b", "7") if lease else ("", ""), first_seen)
    decision = decide(lease, "a", observation, now)
    assert decision.action is action
    assert decision.wait_seconds == pytest.approx(wait)


def test_expiry_is_measured_from_when_the_record_last_changed_on_our_clock() -> None:
    """A renewal (new resourceVersion) restarts the clock; the holder's wall-clock renewTime
    is never compared with ours."""
    seen = observe(None, record(version="7"), now=100.0)
    seen = observe(seen, record(version="7"), now=110.0)
    assert seen.first_seen == 100.0
    assert decide(record(version="7"), "a", seen, 115.0).action is Action.TAKE
    renewed = observe(seen, record(version="8"), now=114.0)
    assert renewed.first_seen == 114.0
    assert decide(record(version="8"), "a", renewed, 115.0).action is Action.WAIT
    # A new holder with the same version string is a different record too.
    assert observe(seen, record(holder="c", version="7"), now=120.0).first_seen == 120.0


@pytest.mark.parametrize(
    ("last", "now", "deadline", "leading"),
    [
        (None, 5.0, 10.0, False),  # never renewed
        (0.0, 9.99, 10.0, True),
        (0.0, 10.0, 10.0, False),  # the deadline itself is too late
        (50.0, 51.0, 10.0, True),
    ],
)
def test_still_leading(last: float | None, now: float, deadline: float, leading: bool) -> None:
    assert still_leading(last, now, deadline) is leading


def test_next_record_per_action() -> None:
    old = record(holder="b", version="7")
    created = next_record(None, "a", Action.CREATE, 15, T1)
    assert (created.holder, created.transitions, created.resource_version) == ("a", 0, "")
    assert created.acquire_time == created.renew_time == T1
    taken = next_record(old, "a", Action.TAKE, 15, T1)
    assert (taken.holder, taken.transitions, taken.resource_version) == ("a", 4, "7")
    assert taken.acquire_time == T1
    ours = LeaseRecord("a", 15, T0, T0, 4, "9")
    renewed = next_record(ours, "a", Action.RENEW, 15, T1)
    assert (renewed.acquire_time, renewed.renew_time, renewed.transitions) == (T0, T1, 4)
    assert renewed.resource_version == "9"
    with pytest.raises(ValueError, match="nothing to write"):
        next_record(old, "a", Action.WAIT, 15, T1)


def test_released_record_frees_the_lease_for_the_next_candidate() -> None:
    ours = LeaseRecord("a", 15, T0, T0, 4, "9")
    free = released(ours, T1)
    assert free.holder == "" and free.resource_version == "9" and free.transitions == 4
    seen = observe(None, free, now=0.0)
    assert decide(free, "b", seen, 0.0).action is Action.TAKE


def test_lease_manifest_round_trip() -> None:
    original = LeaseRecord("pod-a", 15, T0, T1, 2, "")
    manifest = lease_manifest("modelflock-operator", "modelflock", original)
    assert manifest["spec"]["renewTime"] == "2026-11-29T21:00:05.123456Z"
    assert format_micro_time(T0) == "2026-11-29T21:00:00.000000Z"
    manifest["metadata"]["resourceVersion"] = "42"
    back = record_from_lease(manifest)
    assert back == LeaseRecord("pod-a", 15, T0, T1, 2, "42")
    # Sub-second durations never become 0 (which the API server would refuse).
    assert (
        lease_manifest("x", "y", LeaseRecord("a", 0.4, None, None, 0, ""))["spec"][
            "leaseDurationSeconds"
        ]
        == 1
    )


def test_a_lease_without_spec_reads_as_free() -> None:
    back = record_from_lease({"metadata": {"resourceVersion": "3"}})
    assert back.holder == "" and back.resource_version == "3"
    assert decide(back, "a", observe(None, back, 0.0), 0.0).action is Action.TAKE
