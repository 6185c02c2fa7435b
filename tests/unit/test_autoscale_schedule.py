"""Scheduled minimums: the floor in force at a time of day (table), how decide() applies it,
and the API field's validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from modelflock.api.modelexpert import Autoscaling, ModelExpertSpec, ScheduledMinimum
from modelflock.autoscale.algorithm import (
    Observation,
    PodLoad,
    Reason,
    ScalerMemory,
    ScalingPolicy,
    decide,
)
from modelflock.autoscale.schedule import DEFAULT_LEAD_SECONDS, Schedule, scheduled_floor
from modelflock.controller.expert import scaling_policy, schedule
from modelflock.operator_config import OperatorConfig
from modelflock.render.checks import check_expert

WEEKDAYS = frozenset(range(5))
OFFICE = Schedule(start=time(9, 0), end=time(17, 0), min_replicas=2, days=WEEKDAYS)
BERLIN = Schedule(
    start=time(9, 0), end=time(17, 0), min_replicas=3, days=WEEKDAYS, time_zone="Europe/Berlin"
)
NIGHT = Schedule(start=time(22, 0), end=time(2, 0), min_replicas=1, days=frozenset({4}))  # Fri


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time in the week of Monday 2026-11-30 (day 0 = Monday), UTC."""
    return datetime(2026, 11, 30, hour, minute, second, tzinfo=UTC) + timedelta(days=day)


@dataclass(frozen=True)
class FloorCase:
    name: str
    schedules: tuple[Schedule, ...]
    now: datetime | None
    cold_start: float | None
    floor: int
    says: str = ""


FLOORS = [
    FloorCase("no schedule", (), utc(0, 10), 300.0, 0),
    FloorCase("no wall clock", (OFFICE,), None, 300.0, 0),
    FloorCase("inside the window", (OFFICE,), utc(0, 10), 300.0, 2, "in schedule 0"),
    FloorCase("before the lead", (OFFICE,), utc(0, 8, 54, 59), 300.0, 0),
    FloorCase("one cold start before start", (OFFICE,), utc(0, 8, 55), 300.0, 2, "warming up"),
    FloorCase("a short cold start warms later", (OFFICE,), utc(0, 8, 58), 45.0, 0),
    FloorCase("unknown cold start: the default lead", (OFFICE,), utc(0, 8, 55), None, 2),
    FloorCase("the floor ends at end", (OFFICE,), utc(0, 17), 300.0, 0),
    FloorCase("a minute before end", (OFFICE,), utc(0, 16, 59), 300.0, 2, "until Mon 17:00"),
    FloorCase("not on Saturday", (OFFICE,), utc(5, 10), 300.0, 0),
    FloorCase(
        "Monday's warm-up on Sunday night",
        (Schedule(start=time(0, 2), end=time(6, 0), min_replicas=1, days=frozenset({0})),),
        utc(-1, 23, 58),
        300.0,
        1,
        "warming up",
    ),
    # Berlin is UTC+1 in winter: 09:00 there is 08:00 UTC.
    FloorCase("time zone", (BERLIN,), utc(0, 8, 30), 300.0, 3, "Europe/Berlin"),
    FloorCase("time zone, after its end", (BERLIN,), utc(0, 16, 30), 300.0, 0),
    FloorCase("overnight: the evening it starts", (NIGHT,), utc(4, 23), 60.0, 1),
    FloorCase("overnight: past midnight", (NIGHT,), utc(5, 1, 59), 60.0, 1, "until Sat 02:00"),
    FloorCase("overnight: ended", (NIGHT,), utc(5, 2), 60.0, 0),
    FloorCase("overnight: not on Thursday night", (NIGHT,), utc(3, 23), 60.0, 0),
    FloorCase("overlapping windows: the highest", (OFFICE, BERLIN), utc(0, 10), 300.0, 3),
    FloorCase("overlapping windows: only one open", (OFFICE, BERLIN), utc(0, 16, 30), 0.0, 2),
]


@pytest.mark.parametrize("case", FLOORS, ids=[c.name for c in FLOORS])
def test_scheduled_floor(case: FloorCase) -> None:
    floor, why, _ = scheduled_floor(case.schedules, case.now, case.cold_start)
    assert floor == case.floor
    assert (why == "") == (floor == 0)
    assert case.says in why


def test_daylight_saving_time_is_followed() -> None:
    # Europe/Berlin: UTC+2 in summer, so 09:00 there is 07:00 UTC on a Monday in July.
    july = datetime(2026, 7, 6, 7, 0, tzinfo=UTC)
    assert scheduled_floor((BERLIN,), july, 0.0).minimum == 3
    assert scheduled_floor((BERLIN,), july.replace(hour=6, minute=59), 0.0).minimum == 0


def test_a_started_warm_up_holds_when_the_learned_cold_start_shrinks() -> None:
    # A new expert: no cold start seen, so the warm-up starts the default lead early.
    lead = timedelta(seconds=DEFAULT_LEAD_SECONDS)
    first = scheduled_floor((OFFICE,), utc(0, 9) - lead, None)
    assert first.minimum == 2 and first.started == ((OFFICE, utc(0, 9)),)
    # Its first pods show a 45 s cold start: the warm-up is not undone...
    later = utc(0, 8, 57)
    assert scheduled_floor((OFFICE,), later, 45.0).minimum == 0
    held = scheduled_floor((OFFICE,), later, 45.0, first.started)
    assert held.minimum == 2 and held.started == first.started
    # ...until the window ends, and not for a schedule that is no longer listed.
    assert scheduled_floor((OFFICE,), utc(0, 17), 45.0, first.started) == (0, "", ())
    other = Schedule(start=time(9, 0), end=time(17, 0), min_replicas=1, days=WEEKDAYS)
    assert scheduled_floor((other,), later, 45.0, first.started).minimum == 0


def test_schedule_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="differ"):
        Schedule(start=time(9, 0), end=time(9, 0), min_replicas=1)
    with pytest.raises(ValueError, match="days"):
        Schedule(start=time(9, 0), end=time(10, 0), min_replicas=1, days=frozenset())
    with pytest.raises(Exception, match="Mars"):
        Schedule(start=time(9, 0), end=time(10, 0), min_replicas=1, time_zone="Mars/Olympus")


# ------------------------------------------------------------------------ in decide()
def _policy(**kw: Any) -> ScalingPolicy:
    base: dict[str, Any] = {"min_replicas": 0, "max_replicas": 4, "schedules": (OFFICE,)}
    base.update(kw)
    return ScalingPolicy(**base)


IDLE_LONG = ScalerMemory(last_load_at=0.0, capacity_per_replica=10.0, cold_start_seconds=300.0)


def test_window_wakes_an_expert_at_zero_with_its_reason() -> None:
    obs = Observation(now=100_000.0, current_replicas=0, wall_clock=utc(0, 8, 56))
    d = decide(_policy(), obs, IDLE_LONG)
    assert d.desired_replicas == 2
    assert d.reason is Reason.SCHEDULED_MINIMUM
    assert "warming up for schedule 0" in d.message


def test_outside_the_window_the_same_expert_stays_at_zero() -> None:
    obs = Observation(now=100_000.0, current_replicas=0, wall_clock=utc(0, 8, 50))
    d = decide(_policy(), obs, IDLE_LONG)
    assert (d.desired_replicas, d.reason) == (0, Reason.SCALED_TO_ZERO)


def test_load_above_the_floor_wins() -> None:
    # 4 replicas of 10 each with a queue: the load asks for more than the floor of 2.
    obs = Observation(
        now=100_000.0,
        current_replicas=4,
        ready=tuple(PodLoad(5.0, 10.0) for _ in range(4)),
        wall_clock=utc(0, 10),
    )
    d = decide(_policy(), obs, IDLE_LONG)
    assert d.desired_replicas == 4
    assert d.reason is not Reason.SCHEDULED_MINIMUM


def test_floor_holds_replicas_the_load_would_give_back() -> None:
    obs = Observation(
        now=100_000.0,
        current_replicas=2,
        ready=(PodLoad(0.0, 1.0), PodLoad(0.0, 0.0)),
        wall_clock=utc(0, 10),
    )
    policy = _policy(scale_down_window_seconds=0)
    inside = decide(policy, obs, IDLE_LONG)
    assert (inside.desired_replicas, inside.reason) == (2, Reason.SCHEDULED_MINIMUM)
    # At the end, the normal rules apply: one replica holds the single request.
    after = decide(policy, Observation(**{**_fields(obs), "wall_clock": utc(0, 17)}), IDLE_LONG)
    assert after.desired_replicas == 1


def _fields(obs: Observation) -> dict[str, Any]:
    return {name: getattr(obs, name) for name in obs.__slots__}


def test_decide_keeps_a_started_warm_up_in_its_memory() -> None:
    new = ScalerMemory(last_load_at=0.0, capacity_per_replica=10.0)  # no cold start seen
    start = decide(_policy(), Observation(100_000.0, 0, wall_clock=utc(0, 8, 55)), new)
    assert start.desired_replicas == 2 and start.memory.scheduled == ((OFFICE, utc(0, 9)),)
    # The pods became ready after 45 s: the lead is now 45 s, the warm-up still holds.
    ready = Observation(
        100_050.0, 2, ready=(PodLoad(0, 0), PodLoad(0, 0)), wall_clock=utc(0, 8, 55, 50)
    )
    learned = dataclasses.replace(start.memory, cold_start_seconds=45.0)
    d = decide(_policy(), ready, learned)
    assert (d.desired_replicas, d.reason) == (2, Reason.SCHEDULED_MINIMUM)
    # Without the memory of the started window, the replicas would go and come back.
    forgot = dataclasses.replace(learned, scheduled=())
    assert decide(_policy(), ready, forgot).desired_replicas == 0


def test_floor_capped_by_max_and_not_by_the_step() -> None:
    obs = Observation(now=100_000.0, current_replicas=0, wall_clock=utc(0, 10))
    big = Schedule(start=time(9, 0), end=time(17, 0), min_replicas=6)
    d = decide(_policy(max_replicas=6, max_scale_up_step=1, schedules=(big,)), obs, IDLE_LONG)
    assert d.desired_replicas == 6


def test_policy_refuses_a_floor_above_max() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        _policy(max_replicas=1)


# ------------------------------------------------------------------------- the API field
def _autoscaling(**entry: Any) -> dict[str, Any]:
    return {"maxReplicas": 3, "schedules": [{"start": "09:00", "end": "17:00", **entry}]}


def test_api_entry_defaults_and_conversion() -> None:
    spec = Autoscaling.model_validate(_autoscaling(minReplicas=2, days=["Mon", "Fri"]))
    entry = spec.schedules[0]
    assert entry.time_zone == "UTC"
    assert schedule(entry) == Schedule(
        start=time(9, 0), end=time(17, 0), min_replicas=2, days=frozenset({0, 4})
    )
    every_day = ScheduledMinimum.model_validate(
        {"start": "22:00", "end": "02:00", "minReplicas": 1}
    )
    assert schedule(every_day).days == frozenset(range(7)) and schedule(every_day).overnight


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {"minReplicas": 4},
            "schedules[0].minReplicas (4) must be less than or equal to maxReplicas",
        ),
        ({"minReplicas": 1, "timeZone": "Europe Berlin"}, "timeZone"),
        ({"minReplicas": 1, "start": "25:00"}, "start"),
        ({"minReplicas": 1, "end": "9:00"}, "end"),
        ({"minReplicas": 1, "end": "09:00"}, "start and end must differ"),
        ({"minReplicas": 1, "days": ["Monday"]}, "days"),
        ({"minReplicas": 1, "days": []}, "days"),
        ({"start": "09:00"}, "minReplicas"),
    ],
)
def test_api_refuses_bad_entries_naming_the_field(entry: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as error:
        Autoscaling.model_validate(_autoscaling(**entry))
    assert says in str(error.value)


def test_unknown_time_zone_is_reported_and_its_schedule_ignored() -> None:
    spec = ModelExpertSpec.model_validate(
        {
            "engine": "vllm",
            "model": {"name": "org/m", "parameters": "7B"},
            "nodePool": "l4",
            "autoscaling": {
                "schedules": [
                    {
                        "start": "09:00",
                        "end": "17:00",
                        "minReplicas": 1,
                        "timeZone": "Europe/Berln",
                    },
                    {"start": "09:00", "end": "17:00", "minReplicas": 2},
                ]
            },
        }
    )
    config = OperatorConfig.model_validate(
        {"nodePools": [{"name": "l4", "gpusPerNode": 1, "gpuMemoryGiB": 24}]}
    )
    (problem,) = check_expert(spec, config)
    assert problem.reason == "UnknownTimeZone" and not problem.blocking
    assert "spec.autoscaling.schedules[0].timeZone 'Europe/Berln'" in problem.message
    assert [s.min_replicas for s in scaling_policy(spec).schedules] == [2]
