"""The daily budget of shadow samples, shared by a policy's routers through the operator.

Each router adds what its samples cost; the operator sums the routers' reports and answers
with the policy's spend for the day, so the cap holds across sidecars. Between reports a
router counts its own unreported spend on top; the overshoot is bounded by what the routers
spend in one report interval (plus the samples in flight when the cap is reached).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class DailyBudget:
    def __init__(self, limit: Callable[[], float], clock: Callable[[], float]) -> None:
        self._limit = limit
        self._clock = clock
        self.day = utc_day(clock())
        self.reported = 0.0  # the policy's spend today as the operator last said
        self.unreported = 0.0  # this router's spend not yet acknowledged by the operator

    def _roll(self) -> None:
        day = utc_day(self._clock())
        if day != self.day:
            self.day, self.reported, self.unreported = day, 0.0, 0.0

    @property
    def spent(self) -> float:
        self._roll()
        return self.reported + self.unreported

    def allows(self) -> bool:
        return self.spent < self._limit()

    def spend(self, amount: float) -> None:
        self._roll()
        self.unreported += amount

    def acknowledged(self, day: str, sent: float, policy_spent: float) -> None:
        """The operator took a report holding `sent` of our spend and says the policy spent
        `policy_spent` on `day` (ours included)."""
        self._roll()
        if day != self.day:
            return  # a report across midnight: today starts from zero anyway
        self.unreported = max(0.0, self.unreported - sent)
        self.reported = policy_spent
