"""A bare pass-through built from one HTTP server and one HTTP client, for http_stacks.py.

    python bench/stack_proxy.py SERVER CLIENT UPSTREAM_URL PORT
    SERVER: aiohttp | uvicorn | modelflock      CLIENT: aiohttp | modelflock

No parsing, routing or accounting: the request body goes to UPSTREAM_URL + path as is, and
the answer comes back as is. Only the stacks differ, so their cost can be compared.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop

from modelflock.router.http1 import Http1Client, encode_headers
from modelflock.router.http_server import HttpServer, Reply, Request, Result

Forward = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
JSON = {"Content-Type": "application/json"}


def make_client(kind: str, upstream: str) -> Forward:
    if kind == "modelflock":
        client = Http1Client()
        headers = encode_headers(JSON)

        async def via_http1(path: str, body: bytes) -> tuple[int, bytes]:
            resp = await client.post(upstream + path, body, headers)
            return resp.status, await resp.read()

        return via_http1
    sessions: list[aiohttp.ClientSession] = []

    async def via_aiohttp(path: str, body: bytes) -> tuple[int, bytes]:
        if not sessions:
            sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        async with sessions[0].post(upstream + path, data=body, headers=JSON) as resp:
            return resp.status, await resp.read()

    return via_aiohttp


def serve_aiohttp(forward: Forward, port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        status, body = await forward(request.path, await request.read())
        return web.Response(status=status, body=body, headers=JSON)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/health", health)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def serve_uvicorn(forward: Forward, port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/health":
            status, out = 200, b"ok"
        else:
            status, out = await forward(scope["path"], body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": out})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


def serve_modelflock(forward: Forward, port: int) -> None:
    async def handle(request: Request) -> Result:
        status, body = await forward(request.path, request.body)
        return Reply(status, body, JSON)

    async def health(_: Request) -> Result:
        return Reply(200, b"ok", {"Content-Type": "text/plain"})

    async def main() -> None:
        server = HttpServer(
            {("POST", "/v1/chat/completions"): handle, ("GET", "/health"): health},
            health,
            max_body=lambda: 1 << 20,
        )
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def main() -> None:
    server, client, upstream, port = sys.argv[1:5]
    forward = make_client(client, upstream.rstrip("/"))
    {"aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn, "modelflock": serve_modelflock}[server](
        forward, int(port)
    )


if __name__ == "__main__":
    main()
