"""The operator's /readyz: ready only when every listener it serves accepts connections
(real sockets and real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from aiohttp import ClientSession, web

from modelflock.controller.flockapi import flock_app
from modelflock.controller.readiness import Listener, not_ready


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_listeners_are_checked_by_connecting() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = _closed_port()
    try:
        up = Listener("webhook", "127.0.0.1", port)
        down = Listener("webhook", "0.0.0.0", closed)  # wildcard binds are checked on loopback
        assert await not_ready([]) == []
        assert await not_ready([up]) == []
        assert await not_ready([up, down]) == [
            f"webhook listener 127.0.0.1:{closed} is not accepting connections"
        ]
    finally:
        server.close()
        await server.wait_closed()


async def test_readyz_follows_the_webhook_listener() -> None:
    webhook_port = _closed_port()
    ctx = SimpleNamespace(
        readiness_listeners=(Listener("webhook", "127.0.0.1", webhook_port),), policy_access={}
    )
    runner = web.AppRunner(flock_app(ctx))  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with ClientSession() as http:
            async with http.get(base + "/readyz") as answer:
                assert answer.status == 503
                assert "webhook listener" in await answer.text()
            async with http.get(base + "/healthz") as answer:
                assert answer.status == 200  # alive all the same: not a reason to restart
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", webhook_port)
            try:
                async with http.get(base + "/readyz") as answer:
                    assert answer.status == 200
            finally:
                server.close()
                await server.wait_closed()
    finally:
        await runner.cleanup()
