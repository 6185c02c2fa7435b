"""A bare aiohttp pass-through (no routing, no accounting): the floor the router is
measured against in router_bench.py, on the same machine at the same moment.

    python bench/bare_proxy.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[SESSION].post(
        f"{request.app[UPSTREAM]}{request.path}",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as up:
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return web.Response(
                body=await up.read(), status=up.status, content_type="application/json"
            )
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def main() -> None:
    app = web.Application()
    app[UPSTREAM] = sys.argv[1].rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/health", lambda _: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
