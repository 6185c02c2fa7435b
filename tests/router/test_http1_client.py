"""The router's upstream HTTP/1.1 client against real servers on 127.0.0.1: keep-alive reuse,
framing (length, chunked, end of connection), stale pooled connections, cancellation that the
engine sees, flow control, TLS, and errors that say what went wrong."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from modelflock.router import http1
from modelflock.router.http1 import (
    Http1Client,
    UpstreamConnectionError,
    UpstreamProtocolError,
    encode_headers,
    split_url,
)
from modelflock.sim import SimSettings, running_sim
from support import make_webhook_certs

JSON = encode_headers({"Content-Type": "application/json"})
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server speaking whatever `handler` writes; yields its URL and a connection count."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def answer_once(data: bytes, linger: float = 0.0) -> RawHandler:
    """A server handler that reads one request, writes `data`, and closes after `linger` s."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(linger)

    return reply


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_sequential_requests_reuse_one_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()

    client = Http1Client()
    async with raw_server(answer) as (url, accepted):
        for _ in range(5):
            resp = await client.post(f"{url}/v1/x", b"{}", JSON)
            assert (resp.status, resp.content_type, await resp.read()) == (200, "text/plain", b"ok")
        assert len(accepted) == 1
    client.close()


async def test_engine_sim_answer_and_request_head() -> None:
    async with running_sim(SimSettings(model="m")) as sim:
        client = Http1Client()
        resp = await client.post(f"{sim.url}/v1/chat/completions", CHAT, JSON)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert b'"chat.completion"' in await resp.read()
        client.close()


async def test_request_head_carries_host_length_and_headers() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    client = Http1Client()
    async with raw_server(answer) as (url, _):
        headers = encode_headers({"Authorization": "Bearer k", "Content-Type": "application/json"})
        resp = await client.post(f"{url}/v1/chat/completions?x=1", b"{}", headers)
        assert resp.status == 204 and await resp.read() == b""
    request = seen[0]
    assert request.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert f"Host: {url.removeprefix('http://')}\r\n".encode() in request
    assert b"Content-Length: 2\r\n" in request and b"Authorization: Bearer k\r\n" in request
    assert request.endswith(b"\r\n\r\n{}")
    client.close()


@pytest.mark.parametrize(
    "answer, body",
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!", b"old!"),
    ],
    ids=["chunked", "end-of-connection", "http-1.0"],
)
async def test_body_framing(answer: bytes, body: bytes) -> None:
    client = Http1Client()
    async with raw_server(answer_once(answer)) as (url, _):
        for _ in range(2):  # the server closes after each answer: the next one reconnects
            resp = await client.post(url, b"{}", JSON)
            assert await resp.read() == body
    client.close()


async def test_stale_pooled_connection_is_retried_once_on_a_new_one() -> None:
    """The engine closes an idle keep-alive connection just as the next request goes out."""
    served = 0

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(served).encode())
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_request(reader)  # the next request on this connection: dropped unanswered

    client = Http1Client()
    async with raw_server(reply) as (url, accepted):
        assert await (await client.post(url, b"{}", JSON)).read() == b"1"
        assert await (await client.post(url, b"{}", JSON)).read() == b"2"
        assert len(accepted) == 2
    client.close()


async def test_connection_lost_mid_answer_is_an_error_not_a_short_body() -> None:
    client = Http1Client()
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    async with raw_server(answer_once(short)) as (url, _):
        resp = await client.post(url, b"{}", JSON)
        with pytest.raises(UpstreamConnectionError, match="closed the connection"):
            await resp.read()
    client.close()


async def test_garbage_is_a_protocol_error() -> None:
    client = Http1Client()
    async with raw_server(answer_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", linger=1)) as (url, _):
        with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
            await client.post(url, b"{}", JSON)
    client.close()


async def test_refused_and_unreachable_say_where() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = Http1Client(connect_timeout=1)
    with pytest.raises(UpstreamConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        await client.post(f"http://127.0.0.1:{port}/v1/x", b"{}", JSON)
    with pytest.raises(ValueError, match="not an http"):
        await client.post("ftp://127.0.0.1/x", b"", JSON)
    with pytest.raises(ValueError, match="HEAD is not supported"):  # it would wait for a body
        await client.request("HEAD", f"http://127.0.0.1:{port}/")


async def test_cancelling_a_request_closes_it_for_the_engine() -> None:
    """A timeout (or a client gone) must reach the engine, so it aborts the generation."""
    async with running_sim(
        SimSettings(model="m", decode_seconds_per_token=0.2, output_tokens=50)
    ) as sim:
        client = Http1Client()
        stream = CHAT.replace(b'"max_tokens": 4', b'"max_tokens": 50, "stream": true')
        resp = await client.post(f"{sim.url}/v1/chat/completions", stream, JSON)
        assert resp.status == 200 and await resp.readany()
        resp.close()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(f"{sim.url}/v1/chat/completions", CHAT.replace(b"4", b"50"), JSON)
        for _ in range(50):
            if sim.stats.disconnected >= 2:
                break
            await asyncio.sleep(0.1)
        assert sim.stats.disconnected == 2
        assert sim.stats.in_flight == 0
        client.close()


async def test_large_streamed_body_arrives_whole_with_flow_control() -> None:
    payload = bytes(range(256)) * 40_000  # ~10 MiB, far above the pause threshold

    async def big(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse()
        await out.prepare(request)
        for i in range(0, len(payload), 65536):
            await out.write(payload[i : i + 65536])
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/big", big)
    async with aiohttp_server(app) as url:
        client = Http1Client()
        resp = await client.post(f"{url}/big", b"", JSON)
        received = bytearray()
        while chunk := await resp.readany():
            received += chunk
            await asyncio.sleep(0)  # a slow reader
        assert bytes(received) == payload
        client.close()


async def test_tls_upstream(tmp_path: Path) -> None:
    certs = make_webhook_certs(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs / "tls.crt", certs / "tls.key")

    async def hello(request: web.Request) -> web.StreamResponse:
        return web.json_response({"host": request.host, "secure": request.secure})

    app = web.Application()
    app.router.add_post("/v1/models", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    port = runner.addresses[0][1]
    try:
        trusting = Http1Client(ssl_context=ssl.create_default_context(cafile=certs / "ca.crt"))
        resp = await trusting.post(f"https://127.0.0.1:{port}/v1/models", b"", JSON)
        assert await resp.read() == f'{{"host": "127.0.0.1:{port}", "secure": true}}'.encode()
        trusting.close()
        with pytest.raises(UpstreamConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await Http1Client().post(f"https://127.0.0.1:{port}/v1/models", b"", JSON)
    finally:
        await runner.cleanup()


def test_urls_and_headers() -> None:
    origin, target = split_url("https://api.example.test/v1/chat/completions?a=b")
    assert (origin.scheme, origin.host, origin.port) == ("https", "api.example.test", 443)
    assert (origin.host_header, target) == (b"api.example.test", b"/v1/chat/completions?a=b")
    origin, target = split_url("http://[::1]:8000")
    assert (origin.host, origin.host_header, target) == ("::1", b"[::1]:8000", b"/")
    with pytest.raises(ValueError, match="invalid header 'X'"):
        encode_headers({"X": "a\r\nInjected: 1"})


async def test_a_connection_released_with_reading_paused_serves_the_next_answer() -> None:
    """An answer whose unread body crossed the flow-control mark as it completed is released
    without reading it: its connection goes back to the pool, and must read again."""
    big = b"y" * (http1._HIGH_WATER + 100)  # the pause mark is crossed by the last bytes

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(1)

    client = Http1Client()
    async with raw_server(answer) as (url, accepted):
        resp = await client.post(url, b"{}", JSON)
        await asyncio.sleep(0.3)  # the whole answer arrives; nobody reads it
        resp.release()
        async with asyncio.timeout(2):
            assert await (await client.post(url, b"{}", JSON)).read() == b"ok"
        assert len(accepted) == 1
    client.close()


async def test_pools_of_endpoints_that_went_away_are_dropped() -> None:
    """Endpoints come and go with pods: the client keeps no pool for one it cannot reach."""

    client = Http1Client()
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(answer_once(closing)) as (url, _):
        for _ in range(3):
            assert await (await client.post(url, b"{}", JSON)).read() == b"ok"
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamConnectionError):
        await client.post(f"http://127.0.0.1:{port}/", b"", JSON)
    await asyncio.sleep(0.05)
    assert client._pools == {}
    client.close()


async def test_concurrent_requests_share_the_pool_and_closing_the_client_closes_all() -> None:
    async with running_sim(SimSettings(model="m", decode_seconds_per_token=0.01)) as sim:
        client = Http1Client()
        url = f"{sim.url}/v1/chat/completions"

        async def one() -> bytes:
            return await (await client.post(url, CHAT, JSON)).read()

        answers = await asyncio.gather(*(one() for _ in range(20)))
        assert all(b'"chat.completion"' in a for a in answers)
        (pool,) = client._pools.values()
        assert len(pool.idle) == 20 and not pool.busy
        await asyncio.gather(*(one() for _ in range(20)))  # served by the same 20
        assert len(pool.idle) == 20
        client.close()
        assert client._pools == {}
