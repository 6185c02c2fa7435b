"""The router's HTTP/1.1 server, byte by byte over real sockets on 127.0.0.1: keep-alive,
pipelining, request framing and limits, streaming, disconnects, methods, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from modelflock.router.http_server import Headers, HttpServer, Reply, Request, Result

LIMIT = 1000


class App:
    """Handlers that record what they saw."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.refusals: list[int] = []

    async def echo(self, request: Request) -> Result:
        self.seen.append(request)
        body = json.dumps(
            {
                "path": request.path,
                "query": request.query,
                "body": request.body.decode(),
                "x": request.headers.get("X-Test"),
            }
        )
        return Reply(200, body.encode(), {"Content-Type": "application/json"})

    async def slow(self, request: Request) -> Result:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Reply(200, b"late", {"Content-Type": "text/plain"})

    async def stream(self, request: Request) -> Result:
        out = await request.stream(200, {"Content-Type": "text/event-stream"})
        for i in range(3):
            await out.write(b"data: %d\n\n" % i)
        return out

    async def slow_big(self, request: Request) -> Result:
        await self.release.wait()
        return Reply(200, b"x" * 8_000_000, {"Content-Type": "text/plain"})

    async def broken(self, request: Request) -> Result:
        raise RuntimeError("bug")

    async def broken_stream(self, request: Request) -> Result:
        out = await request.stream(200, {"Content-Type": "text/event-stream"})
        await out.write(b"data: 0\n\n")
        raise RuntimeError("bug mid-stream")

    async def firehose(self, request: Request) -> Result:
        """Streams until the client stops reading (then waits on back-pressure)."""
        out = await request.stream(200, {"Content-Type": "application/octet-stream"})
        try:
            while True:
                await out.write(b"x" * 65536)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise

    async def fallback(self, request: Request) -> Result:
        return Reply(404, b"nope", {"Content-Type": "text/plain"})


@contextlib.asynccontextmanager
async def serving(keepalive: float = 0.5) -> AsyncIterator[tuple[HttpServer, App]]:
    app = App()
    server = HttpServer(
        {
            ("POST", "/echo"): app.echo,
            ("GET", "/echo"): app.echo,
            ("GET", "/slow"): app.slow,
            ("GET", "/slow-big"): app.slow_big,
            ("GET", "/stream"): app.stream,
            ("GET", "/broken"): app.broken,
            ("GET", "/broken-stream"): app.broken_stream,
            ("GET", "/firehose"): app.firehose,
        },
        app.fallback,
        max_body=lambda: LIMIT,
        keepalive_timeout=keepalive,
        on_refusal=app.refusals.append,
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server, app
    finally:
        app.release.set()
        await server.stop(grace=1)


async def exchange(server: HttpServer, data: bytes, wait: float = 2.0) -> bytes:
    """Send raw bytes, read until the server closes or `wait` passes without more bytes."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    received = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            received += chunk
    writer.close()
    return received


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_keep_alive_and_pipelined_requests_answer_in_order() -> None:
    async with serving() as (server, app):
        data = post("/echo?a=1", b"one") + post("/echo", b"two", "X-Test: yes\r\n")
        raw = await exchange(server, data, wait=0.3)
        assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert raw.index(b'"body": "one"') < raw.index(b'"body": "two"')
        assert b'"query": "a=1"' in raw and b'"x": "yes"' in raw
        assert b"Connection: close" not in raw  # still open after both
        assert [r.body for r in app.seen] == [b"one", b"two"]


async def test_chunked_request_body_is_reassembled() -> None:
    async with serving() as (server, _app):
        raw = await exchange(
            server,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
            wait=0.3,
        )
        assert b'"body": "abcdefg"' in raw


@pytest.mark.parametrize(
    "request_bytes",
    [
        post("/echo", b"x" * (LIMIT + 1)),
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"200\r\n" + b"y" * 512 + b"\r\n") * 3,
    ],
    ids=["content-length", "chunked"],
)
async def test_body_over_the_limit_is_413_and_not_handled(request_bytes: bytes) -> None:
    async with serving() as (server, app):
        raw = await exchange(server, request_bytes)
        assert raw.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
        assert b"Connection: close" in raw
        body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert "exceeds the limit of 1000" in body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"
        assert app.seen == [] and app.refusals == [413]


async def test_nothing_pipelined_behind_a_refused_request_is_served() -> None:
    async with serving() as (server, app):
        raw = await exchange(server, post("/echo", b"x" * (LIMIT + 1)) + post("/echo", b"next"))
        assert raw.startswith(b"HTTP/1.1 413 ") and raw.count(b"HTTP/1.1") == 1
        assert app.seen == []


async def test_expect_100_continue_only_for_acceptable_bodies() -> None:
    async with serving() as (server, _):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        big = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        assert (await exchange(server, big)).startswith(b"HTTP/1.1 413 ")


async def test_oversized_head_is_431_and_garbage_is_400() -> None:
    async with serving() as (server, app):
        huge = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert (await exchange(server, huge)).startswith(b"HTTP/1.1 431 ")
        garbage = await exchange(server, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"malformed HTTP request" in garbage
        assert app.refusals == [431, 400]


async def test_http_1_0_keep_alive_is_confirmed_and_kept() -> None:
    async with serving() as (server, _):
        request = b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        raw = await exchange(server, request * 2, wait=0.3)
        assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert raw.count(b"Connection: keep-alive\r\n") == 2 and b"Connection: close" not in raw


async def test_http_1_0_closes_after_the_answer() -> None:
    async with serving() as (server, _):
        raw = await exchange(server, b"GET /echo HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in raw
        streamed = await exchange(server, b"GET /stream HTTP/1.0\r\n\r\n")
        assert streamed.endswith(b"data: 0\n\ndata: 1\n\ndata: 2\n\n")  # no chunk framing
        assert b"Transfer-Encoding" not in streamed


async def test_streams_are_chunked_and_read_by_a_real_client() -> None:
    async with serving() as (server, _):
        raw = await exchange(server, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n", wait=0.3)
        assert b"Transfer-Encoding: chunked\r\n" in raw
        assert raw.endswith(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{server.host}:{server.port}/stream") as resp:
                assert await resp.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            async with session.get(f"http://{server.host}:{server.port}/echo") as resp:
                assert resp.status == 200  # same connection, after a stream


async def test_client_disconnect_cancels_the_handler() -> None:
    async with serving() as (server, app):
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        async with asyncio.timeout(2):
            await app.cancelled.wait()
        assert server.in_flight == 0


async def test_methods_paths_head_and_handler_errors() -> None:
    async with serving() as (server, _):
        wrong = await exchange(
            server, b"DELETE /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert wrong.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert b"Allow: GET, POST\r\n" in wrong
        missing = await exchange(
            server, b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert missing.startswith(b"HTTP/1.1 404 ") and missing.endswith(b"nope")
        head = await exchange(
            server, b"HEAD /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        broken = await exchange(
            server, b"GET /broken HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert broken.startswith(b"HTTP/1.1 500 ") and b"internal error" in broken


async def test_idle_keep_alive_connections_are_closed() -> None:
    async with serving() as (server, _):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readuntil(b"}")
        async with asyncio.timeout(3):  # keepalive_timeout 0.5 s, swept every 0.25 s
            assert await reader.read() == b""
        writer.close()


async def test_stop_lets_in_flight_requests_finish() -> None:
    async with serving() as (server, app):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.1)
        with pytest.raises(OSError):  # no new connections
            await asyncio.open_connection(server.host, server.port)
        app.release.set()
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"late")
        assert b"Connection: close" in answer
        await stopping
        writer.close()


def test_headers_ignore_case() -> None:
    headers = Headers({"x-tenant": "a"})
    assert headers.get("X-Tenant") == "a" and "X-TENANT" in headers and headers["x-TeNaNt"] == "a"
    assert headers.get("missing") is None


async def test_body_far_over_the_limit_gets_the_413_not_a_reset() -> None:
    """The refusal is read by a client still sending its body (no RST from unread bytes)."""
    async with serving() as (server, app):
        for _ in range(3):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(post("/echo", b"x" * 4_000_000))
            with contextlib.suppress(OSError):
                await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 413 ")
            writer.close()
        assert app.seen == [] and app.refusals == [413] * 3


async def test_nothing_pipelined_behind_a_closing_answer_is_handled() -> None:
    """Stopping: the answer in flight says `Connection: close`; the request pipelined behind
    it must not run (its client will retry it elsewhere), even while that answer is still
    being sent to a slow reader."""
    async with serving() as (server, app):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /slow-big HTTP/1.1\r\nHost: t\r\n\r\n" + post("/echo", b"two"))
        await writer.drain()
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.1)
        app.release.set()
        await asyncio.sleep(0.2)  # the 8 MB answer is still in the server's send buffer
        async with asyncio.timeout(5):
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"x" * 100)
        assert app.seen == []  # the request behind the closing answer never ran
        await stopping
        writer.close()


async def test_a_refusal_behind_pipelined_requests_comes_after_their_answers() -> None:
    async with serving() as (server, app):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
            + post("/echo", b"two")
            + post("/echo", b"x" * (LIMIT + 1))
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        app.release.set()
        async with asyncio.timeout(3):
            raw = await reader.read()
        writer.close()
        answers = raw.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"200", b"413"]
        assert answers[0].endswith(b"late") and b'"body": "two"' in answers[1]
        assert [r.body for r in app.seen] == [b"two"] and app.refusals == [413]


@pytest.mark.parametrize("behind", [False, True], ids=["alone", "behind-a-request"])
async def test_a_connection_is_refused_once(behind: bool) -> None:
    async with serving() as (server, app):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        first = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" if behind else b""
        big = post("/echo", b"x" * (LIMIT + 1))
        writer.write(first + big + big)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(big + b"GARBAGE\r\n\r\n")  # later bytes are not parsed at all
        await asyncio.sleep(0.1)
        app.release.set()
        async with asyncio.timeout(3):
            raw = await reader.read()
        writer.close()
        assert raw.count(b"HTTP/1.1 413 ") == 1 and app.refusals == [413]


async def test_requests_after_connection_close_are_ignored_not_refused() -> None:
    async with serving() as (server, app):
        raw = await exchange(
            server,
            b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + post("/echo", b"two"),
        )
        assert raw.count(b"HTTP/1.1 ") == 1 and raw.startswith(b"HTTP/1.1 200 ")
        assert len(app.seen) == 1 and app.refusals == []


async def test_100_continue_waits_for_the_answers_ahead_of_it() -> None:
    async with serving() as (server, app):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        with pytest.raises(TimeoutError):  # not before the answer to GET /slow
            await asyncio.wait_for(reader.read(1), 0.3)
        app.release.set()
        async with asyncio.timeout(3):
            first = await reader.readuntil(b"late")
            assert first.startswith(b"HTTP/1.1 200 ")
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_http_1_0_stream_pipelined_before_an_http_1_1_request_is_not_chunked() -> None:
    async with serving() as (server, _):
        raw = await exchange(
            server,
            b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
            wait=0.5,
        )
        assert b"Transfer-Encoding" not in raw
        assert raw.endswith(b"\r\n\r\ndata: 0\n\ndata: 1\n\ndata: 2\n\n")


async def test_a_request_still_arriving_is_not_swept_as_idle() -> None:
    async with serving(keepalive=1.0) as (server, _):  # swept every 0.5 s
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(post("/echo", b"one"))
        await reader.readuntil(b"}")
        await asyncio.sleep(0.8)
        writer.write(post("/echo", b"abcd")[:-2])
        await asyncio.sleep(0.4)
        writer.write(b"c")
        await asyncio.sleep(0.4)  # 1.6 s after the last answer, 0.4 s after the last byte
        writer.write(b"d")
        async with asyncio.timeout(2):
            assert b'"body": "abcd"' in await reader.readuntil(b"}")
        writer.close()


async def test_head_of_a_streamed_answer_has_no_body() -> None:
    async with serving() as (server, _):
        raw = await exchange(
            server, b"HEAD /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\n")
        assert b"data" not in raw


async def test_stop_ends_a_stream_to_a_client_that_stopped_reading() -> None:
    async with serving() as (server, app):
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /firehose HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # the socket buffers fill up; the handler waits to write
        assert server.in_flight == 1
        await server.stop(grace=0.2)
        async with asyncio.timeout(2):
            await app.cancelled.wait()
        assert server.in_flight == 0
        writer.close()
