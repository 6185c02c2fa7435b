"""The leader-election loop: read the Lease, decide (leader.decision), write, sleep.

`is_leader()` is the fence every write of the operator asks first. It is computed from the
time of the last successful renewal, not from a flag the loop sets, so a loop stuck in a slow
request still stops the writes once `renewDeadline` passes. It is safe to call from any
thread (the controllers run in their own thread and event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from modelflock.controller.kube import Conflict, api_error_message
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
from modelflock.leader.lease import LeaseStore
from modelflock.operator_config import LeaderElection

log = logging.getLogger("modelflock.leader")


class Elector:
    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        settings: LeaderElection,
        on_api_ok: Callable[[], None] = lambda: None,
        on_api_error: Callable[[str], bool] = lambda _: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.identity = identity
        self.settings = settings
        self._on_api_ok = on_api_ok
        self._on_api_error = on_api_error
        self._clock = clock
        self._record: LeaseRecord | None = None
        self._observation: Observation | None = None
        # Monotonic time when the last successful write *started*: the Lease is valid for
        # others from when they see it, which is later, so the fence errs on the safe side.
        self._renewed_at: float | None = None
        self._holder_logged = ""
        self._announced = False  # "leading" was logged for the current term
        self._last_error = ""

    def is_leader(self) -> bool:
        return still_leading(self._renewed_at, self._clock(), self.settings.renew_deadline_seconds)

    def firmly_leading(self) -> bool:
        """Leading with at least half the renew deadline left: worth starting the controllers
        (a renewal that took most of the deadline, as while an API server comes back, is not)."""
        margin = self.settings.renew_deadline_seconds / 2
        return still_leading(
            self._renewed_at, self._clock() + margin, self.settings.renew_deadline_seconds
        )

    @property
    def holder(self) -> str:
        """The holder as last read ("" if none or unknown)."""
        return self._record.holder if self._record is not None else ""

    async def step(self) -> float:
        """One attempt; returns how long to sleep before the next."""
        retry = self.settings.retry_period_seconds
        started = self._clock()
        try:
            record = await self.store.read()
            self._on_api_ok()
            self._last_error = ""
            self._observation = observe(self._observation, record, started)
            decision = decide(record, self.identity, self._observation, started)
            if decision.action is Action.WAIT:
                self._record = record
                self._renewed_at = None  # someone else holds it: stop writing now
                self._note_holder(record)
                return min(retry, decision.wait_seconds) * random.uniform(1.0, 1.2)
            wanted = next_record(
                record,
                self.identity,
                decision.action,
                self.settings.lease_duration_seconds,
                datetime.now(UTC),
            )
            self._record = await self.store.write(wanted)
            self._renewed_at = started
            if not self.firmly_leading():
                return 0.0  # the round trip was slow: renew again at once
            if not self._announced:
                log.info("leading %s as %s: %s", self.store.where, self.identity, decision.reason)
        except Conflict:
            # Another candidate wrote first: read again at once, it may be free again.
            self._observation = None
            return retry * random.uniform(0.2, 0.5)
        except Exception as error:
            message = api_error_message(error)
            # The same refusal (e.g. RBAC) is logged once, not at every retry.
            if self._on_api_error(message) and message != self._last_error:
                log.warning("cannot read or write %s: %s", self.store.where, message)
            self._last_error = message
        finally:
            self._announced = (self._announced and self.is_leader()) or self.firmly_leading()
        return retry

    def _note_holder(self, record: LeaseRecord | None) -> None:
        holder = record.holder if record is not None else ""
        if holder != self._holder_logged:
            self._holder_logged = holder
            log.info("standing by: %s holds %s", holder or "nobody", self.store.where)

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and renew until `stop` is set (the caller then releases the Lease)."""
        while not stop.is_set():
            delay = await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def release(self) -> None:
        """Stop leading on purpose: an empty holder lets a standby take over at once."""
        record = self._record
        self._renewed_at = None
        if record is None or record.holder != self.identity:
            return
        try:
            self._record = await self.store.write(released(record, datetime.now(UTC)))
            log.info("released %s", self.store.where)
        except Exception as error:
            log.warning("could not release %s: %s", self.store.where, api_error_message(error))
