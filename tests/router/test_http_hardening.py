"""The router's HTTP server against hostile clients, over real sockets on 127.0.0.1 (issue 14):
header floods, upgrades, slow heads and bodies, connection floods, clients that stop reading."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from modelflock.router.budget import MemoryBudget
from modelflock.router.http_server import HttpServer, Limits, Reply, Request, Result

BIG = 1_000_000


class App:
    def __init__(self) -> None:
        self.handled: list[str] = []
        self.stream_ended = asyncio.Event()

    async def echo(self, request: Request) -> Result:
        self.handled.append(request.path)
        return Reply(200, request.headers.get("x-rep", "").encode(), {"Content-Type": "text/plain"})

    async def big(self, request: Request) -> Result:
        self.handled.append(request.path)
        return Reply(200, b"x" * BIG, {"Content-Type": "text/plain"})

    async def firehose(self, request: Request) -> Result:
        out = await request.stream(200, {"Content-Type": "application/octet-stream"})
        try:
            while True:
                await out.write(b"x" * 65536)
        finally:
            self.stream_ended.set()

    async def fallback(self, request: Request) -> Result:
        self.handled.append(request.path)
        return Reply(404, b"nope", {"Content-Type": "text/plain"})


@contextlib.asynccontextmanager
async def serving(
    limits: Limits, budget: MemoryBudget | None = None
) -> AsyncIterator[tuple[HttpServer, App, list[int]]]:
    app, refusals = App(), []
    server = HttpServer(
        {
            ("GET", "/echo"): app.echo,
            ("POST", "/echo"): app.echo,
            ("GET", "/big"): app.big,
            ("GET", "/firehose"): app.firehose,
        },
        app.fallback,
        max_body=lambda: 10_000,
        on_refusal=refusals.append,
        limits=limits,
        budget=budget,
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server, app, refusals
    finally:
        await server.stop(grace=0.5)


async def until(done: Callable[[], bool], seconds: float) -> None:
    for _ in range(int(seconds / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


async def read_all(reader: asyncio.StreamReader, seconds: float = 3.0) -> bytes:
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def test_a_flood_of_one_byte_headers_is_431_at_once() -> None:
    """60,000 `a:` lines are 240 KB on the wire but 60,000 bytes of names: counted on the
    wire and by number, they are refused without joining anything."""
    async with serving(Limits()) as (server, app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        started = time.perf_counter()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + b"a:\r\n" * 60_000 + b"\r\n")
        answer = await read_all(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert time.perf_counter() - started < 2.0
        assert app.handled == [] and refusals == [431]


async def test_too_many_header_fields_is_431_and_repeats_are_joined() -> None:
    async with serving(Limits(max_headers=20)) as (server, _app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /echo HTTP/1.1\r\nHost: t\r\n"
            + b"X-Rep: v\r\n" * 3
            + b"Connection: close\r\n\r\n"
        )
        ok = await read_all(reader)
        writer.close()
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nv, v, v")
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + b"X-Rep: v\r\n" * 20 + b"\r\n")
        refused = await read_all(reader)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 431 ") and b"header fields" in refused
        assert refusals == [431]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Content-Length: 2\r\n\r\nhiGET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["h2c", "websocket-with-body"],
)
async def test_an_upgrade_is_ignored_with_exactly_one_answer(request_bytes: bytes) -> None:
    """A connection-reusing proxy must never see a second, unasked-for answer."""
    async with serving(Limits()) as (server, app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(request_bytes)
        answer = await read_all(reader)
        writer.close()
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in answer
        assert app.handled == ["/echo"] and refusals == []


async def test_connect_is_refused_before_any_handler_with_one_answer() -> None:
    async with serving(Limits()) as (server, app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n\x16\x03\x01")
        answer = await read_all(reader)
        writer.close()
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 400 ")
        assert app.handled == [] and refusals == [400]


async def test_a_slow_head_is_cut_at_the_head_timeout() -> None:
    """One byte every 0.2 s keeps a connection busy forever unless the head has a deadline."""
    async with serving(Limits(head_timeout=0.6)) as (server, app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        started = time.perf_counter()
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 40:
                if time.perf_counter() - started > 1.5:
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
        answer = await read_all(reader, 3.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.perf_counter() - started < 3.5
        assert app.handled == [] and refusals == [408]


async def test_a_partial_body_is_cut_at_the_body_timeout() -> None:
    async with serving(Limits(body_timeout=0.5)) as (server, app, refusals):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
        started = time.perf_counter()
        answer = await read_all(reader, 3.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.perf_counter() - started < 2.0
        assert app.handled == [] and refusals == [408]


async def test_connections_over_the_cap_get_503_and_close() -> None:
    async with serving(Limits(max_connections=3)) as (server, _app, refusals):
        held = [await asyncio.open_connection(server.host, server.port) for _ in range(3)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        answer = await read_all(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in answer
        assert refusals == [503]
        # The connections within the cap still work.
        r, w = held[0]
        w.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert (await read_all(r)).startswith(b"HTTP/1.1 200 ")
        for _, w in held:
            w.close()


async def test_a_pipelining_client_that_never_reads_holds_one_answer_not_all() -> None:
    """Reading stops while answers wait to be sent, and the connection is aborted once the
    client has not read for the write timeout."""
    async with serving(Limits(write_timeout=1.0)) as (server, app, _):
        reader, writer = await asyncio.open_connection(server.host, server.port, limit=1 << 16)
        # The client's receive window is left as is; its reader never reads.
        writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 40)
        await writer.drain()
        await asyncio.sleep(0.5)
        buffered = sum(
            c.transport.get_write_buffer_size() for c in server.connections if c.transport
        )
        assert buffered <= 2 * BIG, buffered  # before: 40 answers, 40 MB in the send buffer
        assert len(app.handled) <= 8, len(app.handled)
        await until(lambda: not server.connections, 4.0)
        assert server.in_flight == 0
        writer.close()
        del reader


async def test_a_stream_to_a_client_that_stopped_reading_ends_at_the_write_timeout() -> None:
    async with serving(Limits(write_timeout=0.5)) as (server, app, _):
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /firehose HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(4):
            await app.stream_ended.wait()
        await until(lambda: not (server.connections or server.in_flight), 2.0)
        writer.close()


async def test_a_body_over_the_memory_budget_is_503_before_it_is_read() -> None:
    budget = MemoryBudget(8_000)
    async with serving(Limits(), budget) as (server, app, refusals):
        assert budget.take(4_000)  # another request holds half of it
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6000\r\n\r\n")
        answer = await read_all(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in answer
        assert app.handled == [] and refusals == [503]
        budget.give(4_000)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6000\r\n\r\n" + b"y" * 6000
        )
        assert (await read_all(reader, 1.0)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        assert budget.used == 0  # given back when the request ended
