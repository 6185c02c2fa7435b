"""The router's aiohttp application: shared client session, state holder, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from modelflock.router.accounting import RouterMetrics
from modelflock.router.appkeys import (
    CONFIG_PATH,
    DISCOVERY,
    DISPATCHER,
    HOLDER,
    METRICS,
    UPSTREAM,
)
from modelflock.router.discovery import DiscoveryClient
from modelflock.router.dispatch import Dispatcher
from modelflock.router.handlers import add_ops_routes, add_routes
from modelflock.router.http1 import Http1Client
from modelflock.router.state import StateHolder, load_files
from modelflock.router.upstream import Upstream

# Bodies are checked against the configured limit before they are read (413).
_MAX_CLIENT_BODY = 1 << 30


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    config, _, _ = await asyncio.to_thread(load_files, app[CONFIG_PATH])
    connect = config.defaults.connect_timeout_seconds
    # aiohttp's client only for the operator's discovery API; experts get the leaner
    # Http1Client (keep-alive pools per endpoint, no proxies from the environment).
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect),
    )
    discovery = DiscoveryClient(
        session,
        config=lambda: app[HOLDER].current.config.discovery,
        overload_depth=lambda: app[HOLDER].current.config.defaults.overload_queue_depth,
    )
    client = Http1Client(connect_timeout=connect)
    upstream = Upstream(client, discovery)
    holder = await asyncio.to_thread(
        StateHolder, app[CONFIG_PATH], upstream, lambda r: metrics.reloads.inc((r,))
    )
    app[HOLDER], app[UPSTREAM], app[DISCOVERY] = holder, upstream, discovery
    app[DISPATCHER] = Dispatcher(upstream, metrics)
    holder.start()
    await discovery.poll_once()  # start with live endpoints when the operator answers
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(holder.watch()), loop.create_task(discovery.run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await discovery.close()
        await holder.close()
        client.close()
        await session.close()


def build_app(config_path: Path) -> web.Application:
    app = web.Application(client_max_size=_MAX_CLIENT_BODY)
    app[CONFIG_PATH] = config_path
    app[METRICS] = RouterMetrics()
    app.cleanup_ctx.append(_lifecycle)
    add_routes(app)
    return app


def build_ops_app(main: web.Application) -> web.Application:
    """Metrics and probes only, for a second listener: a sidecar keeps the OpenAI API on
    localhost, while Prometheus and the kubelet reach these on the pod IP."""
    ops = web.Application()
    ops[METRICS] = main[METRICS]
    add_ops_routes(ops)
    return ops


class RouterServer:
    """The router listening on host:port (port 0: a free port); used by the CLI and tests."""

    def __init__(self, config_path: Path) -> None:
        self.app = build_app(config_path)
        # A client that disconnects cancels its handler, and with it the upstream request.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        self._ops_runner: web.AppRunner | None = None
        self.host, self.port = "", 0
        self.ops_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        address = self._runner.addresses[0]
        self.host, self.port = str(address[0]), int(address[1])

    async def start_ops(self, host: str, port: int) -> None:
        """Serve /metrics, /healthz and /readyz on a second address as well."""
        self._ops_runner = web.AppRunner(build_ops_app(self.app), access_log=None)
        await self._ops_runner.setup()
        await web.TCPSite(self._ops_runner, host, port, reuse_address=True).start()
        self.ops_port = int(self._ops_runner.addresses[0][1])

    async def stop(self) -> None:
        if self._ops_runner is not None:
            await self._ops_runner.cleanup()
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def running_router(
    config_path: Path, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RouterServer]:
    server = RouterServer(config_path)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()
