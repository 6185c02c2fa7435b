"""Load-aware endpoint choice and expert health (pure), plus this router's in-flight counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Health = Literal["ok", "cold", "overloaded"]


@dataclass(frozen=True)
class EndpointLive:
    url: str
    ready: bool = True
    queue_depth: int | None = None
    running: int | None = None


@dataclass(frozen=True)
class ExpertLive:
    """One expert as the operator's discovery API last described it."""

    ready_replicas: int
    desired_replicas: int
    cold_start_seconds: float | None
    endpoints: tuple[EndpointLive, ...]


@dataclass
class Outstanding:
    """Requests this router has in flight per endpoint URL."""

    counts: dict[str, int] = field(default_factory=dict)
    turn: int = 0  # rotates ties so equal endpoints share the load

    def acquire(self, url: str) -> None:
        self.counts[url] = self.counts.get(url, 0) + 1

    def release(self, url: str) -> None:
        left = self.counts.get(url, 1) - 1
        if left:
            self.counts[url] = left
        else:
            self.counts.pop(url, None)


def expert_health(live: ExpertLive | None, overload_queue_depth: int) -> Health:
    """cold: no ready replica; overloaded: queue per ready replica above the threshold."""
    if live is None:
        return "ok"  # no discovery data: trust the Service
    if live.ready_replicas <= 0 or not any(e.ready for e in live.endpoints):
        return "cold"
    queue = sum(e.queue_depth or 0 for e in live.endpoints if e.ready)
    if queue / live.ready_replicas > overload_queue_depth:
        return "overloaded"
    return "ok"


def choose_endpoint(endpoints: Sequence[EndpointLive], outstanding: Outstanding) -> str:
    """Least loaded: our in-flight requests plus the engine's reported queue; ties rotate."""
    ready = [e for e in endpoints if e.ready] or list(endpoints)
    if len(ready) == 1:
        return ready[0].url
    counts = outstanding.counts
    loads = [counts.get(e.url, 0) + (e.queue_depth or 0) for e in ready]
    lowest = min(loads)
    best = [e.url for e, load in zip(ready, loads, strict=True) if load == lowest]
    outstanding.turn += 1
    return best[outstanding.turn % len(best)]
