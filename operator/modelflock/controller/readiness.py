"""Readiness of the operator pod: the Service sends routers' flock-API calls and the API
server's admission requests to the pod, so it is ready only when those listeners accept
connections (GET /readyz on the flock API port; the chart's readinessProbe)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

# A listener bound to every address is checked on loopback.
_WILDCARDS = {"", "0.0.0.0", "::"}
CONNECT_SECONDS = 1.0


@dataclass(frozen=True)
class Listener:
    """A TCP listener the operator must have open before it takes traffic."""

    name: str
    host: str
    port: int

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.host in _WILDCARDS else self.host


async def accepts(listener: Listener) -> bool:
    """Whether a TCP connection to the listener succeeds within CONNECT_SECONDS."""
    try:
        async with asyncio.timeout(CONNECT_SECONDS):
            _, writer = await asyncio.open_connection(listener.connect_host, listener.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def not_ready(listeners: Sequence[Listener]) -> list[str]:
    """What keeps the operator from being ready: one line per listener that is not up."""
    results = await asyncio.gather(*(accepts(listener) for listener in listeners))
    return [
        f"{listener.name} listener {listener.connect_host}:{listener.port} is not accepting connections"
        for listener, ok in zip(listeners, results, strict=True)
        if not ok
    ]
