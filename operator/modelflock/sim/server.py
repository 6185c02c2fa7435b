"""Start and stop a simulated engine; `running_sim` is the in-process API for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.handlers import add_routes
from modelflock.sim.state import SIM_STATE, SimState, SimStats


def build_app(settings: SimSettings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_STATE] = SimState.from_settings(settings)
    add_routes(app)
    return app


class SimServer:
    """One simulated engine listening on host:port (port 0: a free port)."""

    def __init__(self, settings: SimSettings) -> None:
        self.app = build_app(settings)
        # Cancel the handler when the client disconnects, as the real engines abort requests.
        # A short shutdown: stop() is how tests kill an engine, streams included.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2
        )
        self.host = ""
        self.port = 0
        self._stopped = False

    @property
    def state(self) -> SimState:
        return self.app[SIM_STATE]

    @property
    def stats(self) -> SimStats:
        return self.state.stats

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        address: Any = self._runner.addresses[0]
        self.host, self.port = address[0], int(address[1])

    def set_behaviour(self, **changes: Any) -> Behaviour:
        self.state.behaviour = Behaviour.model_validate(
            {**self.state.behaviour.model_dump(), **changes}
        )
        return self.state.behaviour

    async def stop(self) -> None:
        """Close the listener and every connection (tests use this to 'kill' an engine)."""
        if not self._stopped:
            self._stopped = True
            await self._runner.cleanup()


@asynccontextmanager
async def running_sim(
    settings: SimSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SimServer]:
    server = SimServer(settings or SimSettings())
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()
