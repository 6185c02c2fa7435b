"""Scheduled minimums: a floor on an expert's replicas during known busy hours (pure).

Office hours are known in advance, so replicas can be ready when they begin instead of
waiting a cold start after the first request (as KEDA's cron scaler or a cloud autoscaler's
scheduled minimum do). A window is `start`..`end` local time in its time zone on the listed
days; `end` at or before `start` means the window runs past midnight into the next day (the
day listed is the day it starts). The floor is in force from one cold start before `start`,
so the replicas are ready at `start`, until `end`; then the normal scale-down rules apply.
Once in force, a window holds its floor until its end (the caller keeps `Floor.started`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Until a cold start was seen, replicas are started this long before a window.
DEFAULT_LEAD_SECONDS = 300.0


def known_time_zone(name: str) -> bool:
    """Whether the time zone database knows `name` (e.g. Europe/Berlin)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Schedule:
    """One window: `days` are weekday numbers (0 = Monday) on which it starts."""

    start: time
    end: time
    min_replicas: int
    days: frozenset[int] = frozenset(range(7))
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if not self.days or not self.days <= frozenset(range(7)):
            raise ValueError("days must be a non-empty subset of 0..6 (Monday = 0)")
        if self.start == self.end:
            raise ValueError("start and end must differ")
        if not known_time_zone(self.time_zone):
            raise ValueError(f"unknown time zone {self.time_zone!r}")

    @property
    def overnight(self) -> bool:
        return self.end < self.start

    def describe(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.time_zone}"

    def window(self, day: date) -> tuple[datetime, datetime]:
        """The window that starts on `day` (local), as UTC instants."""
        zone = ZoneInfo(self.time_zone)
        begin = datetime.combine(day, self.start, tzinfo=zone)
        finish = datetime.combine(day + timedelta(days=int(self.overnight)), self.end, tzinfo=zone)
        return begin.astimezone(UTC), finish.astimezone(UTC)


class Floor(NamedTuple):
    """The replicas the schedules hold now, why ("" for none), and the windows whose floor
    has come into force and not ended yet (kept by the caller for the next call)."""

    minimum: int
    reason: str
    started: tuple[tuple[Schedule, datetime], ...] = ()


def scheduled_floor(
    schedules: Sequence[Schedule],
    now: datetime | None,
    cold_start_seconds: float | None,
    started: Sequence[tuple[Schedule, datetime]] = (),
) -> Floor:
    """The floor the schedules hold at `now` (an aware datetime).

    A window holds its minimum from one cold start before its start (so the replicas are
    ready then) until its end; overlapping windows hold the highest minimum. `started` are
    the windows (schedule, start as UTC) already in force at an earlier call: they stay in
    force until their end even if the cold start learned meanwhile is shorter (a new
    expert's first pods), so a warm-up is never undone; a schedule no longer listed drops.
    """
    if not schedules or now is None:
        return Floor(0, "")
    lead = timedelta(
        seconds=DEFAULT_LEAD_SECONDS if cold_start_seconds is None else max(0.0, cold_start_seconds)
    )
    before = set(started)
    at = now.astimezone(UTC)
    best, why = 0, ""
    in_force: list[tuple[Schedule, datetime]] = []
    for i, s in enumerate(schedules):
        local = at.astimezone(ZoneInfo(s.time_zone)).date()
        # Yesterday's overnight window may still run; tomorrow's may be warming up already.
        for day in (local - timedelta(days=1), local, local + timedelta(days=1)):
            if day.weekday() not in s.days:
                continue
            begin, finish = s.window(day)
            if not (begin - lead <= at or (s, begin) in before) or at >= finish:
                continue
            in_force.append((s, begin))
            if s.min_replicas > best:
                best = s.min_replicas
                state = "warming up for" if at < begin else "in"
                why = (
                    f"{state} schedule {i} ({s.describe()}): at least {s.min_replicas} replicas"
                    f" until {finish.astimezone(ZoneInfo(s.time_zone)):%a %H:%M}"
                )
    return Floor(best, why, tuple(in_force))
