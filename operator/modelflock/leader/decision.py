"""Leader election decisions, pure: what a candidate does with the Lease it just read.

The rules are client-go's (`k8s.io/client-go/tools/leaderelection`), so a ModelFlock Lease
behaves like every other controller's:

- nobody holds the Lease (absent, or released with an empty holder): take it;
- we hold it: renew it (also right after a restart with the same identity: the process that
  held it before is gone, since an identity is one pod);
- someone else holds it: wait until its record has not changed for `leaseDuration`, measured
  on *our* monotonic clock from when we first saw that record (never by comparing our wall
  clock with the holder's `renewTime`: clocks of two machines may disagree), then take it;
- a leader that has not renewed for `renewDeadline` (< `leaseDuration`) stops writing at
  once, before any standby can have taken over.

Every write is an update with the resourceVersion that was read, so of two candidates that
decide to take the same Lease, one gets a conflict and stays a standby.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a coordination.k8s.io/v1 Lease that election uses."""

    holder: str  # "" when released
    lease_duration_seconds: float
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str

    def version_key(self) -> tuple[str, str]:
        """What identifies one renewal: any write changes the resourceVersion."""
        return (self.holder, self.resource_version)


@dataclass(frozen=True)
class Observation:
    """A record version, and when (monotonic seconds) this candidate first saw it."""

    key: tuple[str, str]
    first_seen: float


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """Remember when the current record version appeared; an unchanged record keeps its time."""
    key = record.version_key() if record is not None else ("", "")
    if previous is not None and previous.key == key:
        return previous
    return Observation(key=key, first_seen=now)


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    TAKE = "take"  # free or expired: update it to hold it (a new term)
    RENEW = "renew"  # ours: update renewTime
    WAIT = "wait"  # someone else's and still fresh


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    # For WAIT: seconds until the other holder's lease expires if it stays silent.
    wait_seconds: float = 0.0


def decide(
    record: LeaseRecord | None,
    identity: str,
    observation: Observation,
    now: float,
) -> Decision:
    """What to do with the Lease as read just now (`observation` from `observe`)."""
    if record is None:
        return Decision(Action.CREATE, "no Lease yet")
    if record.holder == identity:
        return Decision(Action.RENEW, "we hold the Lease")
    if not record.holder:
        return Decision(Action.TAKE, "the Lease was released")
    silent = now - observation.first_seen
    left = record.lease_duration_seconds - silent
    if left <= 0:
        return Decision(
            Action.TAKE,
            f"{record.holder} has not renewed for {silent:.1f}s"
            f" (lease duration {record.lease_duration_seconds:g}s)",
        )
    return Decision(Action.WAIT, f"{record.holder} leads", wait_seconds=left)


def still_leading(last_renewed: float | None, now: float, renew_deadline: float) -> bool:
    """Whether a leader may still write: it renewed (or acquired) within `renew_deadline`."""
    return last_renewed is not None and now - last_renewed < renew_deadline


def next_record(
    record: LeaseRecord | None,
    identity: str,
    action: Action,
    lease_duration_seconds: float,
    now: datetime,
) -> LeaseRecord:
    """The Lease fields to write for CREATE, TAKE or RENEW."""
    if action is Action.RENEW and record is not None:
        return LeaseRecord(
            holder=identity,
            lease_duration_seconds=lease_duration_seconds,
            acquire_time=record.acquire_time or now,
            renew_time=now,
            transitions=record.transitions,
            resource_version=record.resource_version,
        )
    if action is Action.CREATE or record is None:
        return LeaseRecord(identity, lease_duration_seconds, now, now, 0, "")
    if action is Action.TAKE:
        return LeaseRecord(
            holder=identity,
            lease_duration_seconds=lease_duration_seconds,
            acquire_time=now,
            renew_time=now,
            transitions=record.transitions + 1,
            resource_version=record.resource_version,
        )
    raise ValueError(f"nothing to write for {action}")


def released(record: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a leader writes when it stops on purpose: no holder, so a standby takes the
    Lease at its next try instead of waiting for the lease duration (client-go does the same)."""
    return LeaseRecord(
        holder="",
        lease_duration_seconds=1,
        acquire_time=record.acquire_time,
        renew_time=now,
        transitions=record.transitions,
        resource_version=record.resource_version,
    )
