"""The state of one simulated engine, held on its aiohttp app (no module globals)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.embedders import Embedder, make_embedder
from modelflock.sim.metrics import EngineCounters, Gauges
from modelflock.sim.queueing import BatchQueue


@dataclass
class SimStats:
    """What tests assert on: requests seen, finished, failed and abandoned by the client."""

    requests: int = 0
    completed: int = 0
    errors: int = 0
    disconnected: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


@dataclass
class SimState:
    settings: SimSettings
    behaviour: Behaviour
    queue: BatchQueue
    embedder: Embedder
    counters: EngineCounters = field(default_factory=EngineCounters)
    stats: SimStats = field(default_factory=SimStats)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    # The last chat request bodies, as received: tests assert on the router's wire format.
    recent_chats: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=16))

    @classmethod
    def from_settings(cls, settings: SimSettings) -> SimState:
        return cls(
            settings=settings,
            behaviour=settings.behaviour.model_copy(),
            queue=BatchQueue(settings.max_batch),
            embedder=make_embedder(
                settings.embedding_model,
                settings.embedding_dim,
                settings.embedding_runtime,
                settings.embedding_threads,
            ),
        )

    def gauges(self) -> Gauges:
        capacity = self.settings.kv_capacity_tokens
        return Gauges(
            waiting=self.queue.waiting,
            running=self.queue.running,
            kv_usage=min(1.0, self.queue.kv_tokens / capacity),
            kv_tokens=self.queue.kv_tokens,
            kv_capacity=capacity,
        )


SIM_STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)
