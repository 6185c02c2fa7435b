"""The router's HTTP/1.1 server: an asyncio protocol around the httptools request parser.

Why not aiohttp's (or uvicorn's) server: measured side by side as pass-throughs with the same
upstream client on one core of this kind of machine, this server added about half the
latency of aiohttp's at concurrency 1 and served about 30% more requests per second at 32
(docs/router.md, "Benchmark and the HTTP stack"). It implements what the router's listeners
need, no more:

- keep-alive and pipelining (requests on one connection are answered in order), HTTP/1.0;
- request bodies by Content-Length or chunked, refused with 413 beyond the limit before they
  are read (and `Expect: 100-continue` answered only when the body is acceptable), or with
  503 when the memory budget cannot hold them now; request heads over 64 KiB (bytes on the
  wire) or with more than `max_headers` fields get 431; bytes that are not HTTP get 400 and
  the connection closes;
- a request head must arrive within `head_timeout` and its body within `body_timeout` (408);
  connections beyond `max_connections` get 503; `Upgrade` is ignored (one answer, then the
  connection closes) and `CONNECT` is refused (400) before any handler runs;
- an answer the client does not read within `write_timeout` aborts the connection, and no
  further request is read or served while an answer waits to be sent;
- complete responses (`Reply`) and streamed ones (`Request.stream`: chunked encoding, with
  back-pressure from the client's socket);
- a client that disconnects cancels its handler (the router then closes the upstream
  request too); idle keep-alive connections close after `keepalive_timeout`;
- stopping: no new connections, in-flight requests get a grace period, then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from modelflock.router.budget import MemoryBudget

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
_MAX_PIPELINED = 16  # queued requests per connection before reading pauses
# After a refusal, what the client still sends is read and dropped this long before closing:
# closing with unread bytes resets the connection, and the client could lose the refusal.
_LINGER_SECONDS = 2.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_RETRY = {"Retry-After": "1"}


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server; fixed when the server starts."""

    max_head_bytes: int = MAX_HEAD_BYTES  # request line and headers, as bytes on the wire
    max_headers: int = 100
    head_timeout: float = 10.0  # from a request's first byte to the end of its head
    body_timeout: float = 60.0  # from the end of the head to the end of the body
    write_timeout: float = 30.0  # an answer not taken by the client for this long: abort
    max_connections: int = 1024


class Headers(dict[str, str]):
    """Request headers by lower-case name (repeated ones joined with ", "); lookups ignore case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Reply:
    """A complete response."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class Stream:
    """A response whose head is sent and whose body follows in pieces (chunked encoding)."""

    def __init__(self, connection: _Connection, chunked: bool, head_only: bool = False) -> None:
        self._connection = connection
        self._chunked = chunked
        self._head_only = head_only  # the answer to HEAD: no body
        self.ended = False

    async def write(self, data: bytes) -> None:
        """Send a piece; waits while the client's socket buffer is full. A client that is
        gone raises ConnectionResetError."""
        if not data or self._head_only:
            return
        connection = self._connection
        if connection.closed:
            raise ConnectionResetError("the client closed the connection")
        connection.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        await connection.drain()

    async def finish_with(self, data: bytes) -> None:
        """A last piece, then the end: sent when the client is reading; a client that is not
        (its socket buffer full) is cut off at once instead of being waited for."""
        if self._connection.writing_paused():
            self._connection.abort()
            raise ConnectionResetError("the client stopped reading")
        await self.write(data)
        await self.end()

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._chunked and not self._head_only and not self._connection.closed:
            self._connection.write(b"0\r\n\r\n")
            await self._connection.drain()


Result = Reply | Stream
Handler = Callable[["Request"], Awaitable[Result]]


class Request:
    """One parsed request; `body` is complete when the handler runs."""

    __slots__ = (
        "_connection",
        "body",
        "headers",
        "held",
        "http11",
        "keep_alive",
        "method",
        "path",
        "query",
        "streamed",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        connection: _Connection,
    ) -> None:
        path, _, query = target.decode("latin-1").partition("?")
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = connection.http11  # this request's version (the next one may differ)
        self.streamed = False
        self.held = 0  # bytes of the server's memory budget this request holds
        self._connection = connection

    def hold(self, size: int) -> bool:
        """Take `size` more bytes of the memory budget until the request ends; False when
        they are not free (the caller sheds the request). True when there is no budget."""
        budget = self._connection.budget
        if budget is None or budget.take(size):
            self.held += size
            return True
        return False

    async def stream(self, status: int, headers: Mapping[str, str]) -> Stream:
        """Send the head of a streamed response now; write the body with the Stream."""
        self.streamed = True
        chunked = self.http11
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        if not chunked:
            self.keep_alive = False  # HTTP/1.0: the body ends with the connection
        self._connection.write(_head(status, headers, framing, self.keep_alive))
        await self._connection.drain()
        return Stream(self._connection, chunked, self.method == "HEAD")


def _head(
    status: int, headers: Mapping[str, str] | None, framing: bytes, keep_alive: bool
) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), framing]
    if headers:
        lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()]
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def error_body(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An OpenAI-shaped error body."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def _error_reply(status: int, message: str) -> bytes:
    kind = "service_unavailable" if status == 503 else "invalid_request_error"
    body = error_body(status, message, kind)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if status == 503:
        headers.update(_RETRY)
    return _head(status, headers, b"", False) + body


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self.budget = server.budget
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.http11 = True
        self.idle_since = self._loop.time()
        self._url = b""
        self._head_size = 0  # bytes of the current head, counted as on the wire
        self._in_head = True  # between the end of a message and the end of the next head
        self._head_wire = 0
        self._header_list: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_held = 0  # memory budget taken for the body being read
        self._limit = 0
        self._upgrade = False  # an Upgrade the server ignores: the connection closes after
        self._refused = False  # the current request was answered early (413/431): discard it
        # After a refusal (or a request that closes the connection) nothing more from this
        # connection is read or served, not even requests pipelined behind it in the same
        # read (the parser goes on through the buffer).
        self._done_reading = False
        self._refusal: bytes | None = None  # sent once the answers ahead of it are
        self._continue = False  # a "100 Continue" waits for the answers ahead of it
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        # Reading pauses while requests queue up or answers wait to be sent (either holds
        # memory for a client that is not keeping up).
        self._paused_reading = False
        self._writable: asyncio.Future[None] | None = None
        # When the head or body being read must be complete (0: nothing being read); checked
        # by the server's sweep, not a timer per request (a timer each would cost more than
        # the rest of the bookkeeping).
        self.deadline = 0.0
        self.deadline_for = ""

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        server = self._server
        if len(server.connections) >= self._limits.max_connections:
            self.closed = True
            if server.on_refusal is not None:
                server.on_refusal(503)
            limit = self._limits.max_connections
            self.transport.write(_error_reply(503, f"the server holds {limit} connections"))
            self.transport.close()
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed or self._done_reading:
            return
        self.idle_since = self._loop.time()  # a request still arriving is not idle
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the upgrade was refused or ignored when its head was complete
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
            return
        if in_head and self._in_head and not self._done_reading:
            # Bytes of a head still incomplete, as they came on the wire (the callbacks see
            # names and values only, without separators or whitespace).
            self._head_wire += len(data)
            if self._head_wire > self._limits.max_head_bytes:
                self._refuse(431, f"request head exceeds {self._limits.max_head_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self._server.connections.discard(self)
        if self._body_held and self.budget is not None:
            self.budget.give(self._body_held)
            self._body_held = 0
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: so is its request
        for request in self._queue:
            self._server.release(request)
        self._queue.clear()
        if self._writable is not None and not self._writable.done():
            # Wake a writer waiting in drain(); it sees `closed` (no exception is stored in a
            # future nobody may await: that would log "exception was never retrieved").
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()
        self._update_reading()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._update_reading()

    def writing_paused(self) -> bool:
        return self._writable is not None and not self._writable.done()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        pause = self.writing_paused() or len(self._queue) >= _MAX_PIPELINED
        if pause and not self._paused_reading:
            self._paused_reading = True
            transport.pause_reading()
        elif not pause and self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()

    # -- deadlines: a head and a body must arrive in time --
    def _arm(self, seconds: float, what: str) -> None:
        self.deadline = self.idle_since + seconds  # the time of the bytes just received
        self.deadline_for = what

    def _disarm(self) -> None:
        self.deadline = 0.0

    def timed_out(self) -> None:
        """The sweep found the head or body late: 408, and the connection closes."""
        what = self.deadline_for
        seconds = self._limits.head_timeout if what == "head" else self._limits.body_timeout
        self.deadline = 0.0
        if not self.closed:
            self._refuse(408, f"the request {what} did not arrive within {seconds:g} s")

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._url = b""
        self._head_size = 0
        self._in_head = True
        self._header_list = []
        self._body = []
        self._body_size = 0
        self._upgrade = False
        self._refused = self._done_reading
        if not self._refused:
            self._arm(self._limits.head_timeout, "head")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url) + 16)  # method, version, spaces, line end

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_list.append((name, value))
        self._grow_head(len(name) + len(value) + 4)  # ": " and the line end at least
        if len(self._header_list) > self._limits.max_headers and not self._refused:
            self._refuse(431, f"more than {self._limits.max_headers} header fields")

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        limit = self._limits.max_head_bytes
        if self._head_size > limit and not self._refused:
            self._refuse(431, f"request head exceeds {limit} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_wire = 0
        if self._refused:
            return
        parser = self._parser
        self.http11 = parser.get_http_version() == "1.1"
        if parser.should_upgrade():
            if parser.get_method() == b"CONNECT":
                self._refuse(400, "CONNECT is not supported")
                return
            self._upgrade = True  # served as a plain request; the connection then closes
        self._limit = self._server.max_body()
        length, expect, chunked = None, False, False
        for name, value in self._header_list:
            lower = name.lower()
            if lower == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
            elif lower == b"expect" and value.lower() == b"100-continue":
                expect = True
            elif lower == b"transfer-encoding":
                chunked = True
        if length is not None and length > self._limit:
            self._refuse(413, f"request body of {length} bytes exceeds the limit of {self._limit}")
            return
        if length and not self._hold_body(length):
            return
        if length or chunked:
            self._arm(self._limits.body_timeout, "body")
        else:
            self._disarm()
        if expect and self.http11:
            if self._task is None:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:  # answers to pipelined requests go first, in order
                self._continue = True

    def _hold_body(self, size: int) -> bool:
        """Take the body's bytes from the memory budget before reading them; 503 if not free."""
        budget = self.budget
        if budget is None:
            return True
        if budget.take(size):
            self._body_held += size
            return True
        self._refuse(503, "the router's memory budget is taken by other requests; retry")
        return False

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_size += len(body)
        if self._body_size > self._limit:
            self._refuse(413, f"request body exceeds the limit of {self._limit} bytes")
            return
        if self._body_size > self._body_held and not self._hold_body(
            self._body_size - self._body_held
        ):
            return  # chunked: taken as it arrives
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._continue = False  # the body came anyway
        self._in_head = True
        self._disarm()
        if self._refused or self._done_reading:
            return
        # Repeated fields are joined once, at the end (RFC 9110 5.3): linear in the head.
        values: dict[str, str] = {}
        repeated: dict[str, list[str]] | None = None
        for name, value in self._header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key in values:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(key, [values[key]]).append(text)
            else:
                values[key] = text
        if repeated:
            for key, parts in repeated.items():
                values[key] = ", ".join(parts)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        method = self._parser.get_method().decode("latin-1")
        keep_alive = self._parser.should_keep_alive() and not self._upgrade
        request = Request(method, self._url, Headers(values), body, keep_alive, self)
        request.held, self._body_held = self._body_held, 0
        # Nothing after a request that closes the connection is served (RFC 9112 9.6); llhttp
        # would call it a malformed request.
        self._done_reading = not keep_alive
        self._queue.append(request)
        self._update_reading()
        if self._task is None:
            self._next()

    # -- serving --
    def _refuse(self, status: int, message: str) -> None:
        """Answer once the requests ahead of this one are (at once if none) and close: the
        rest of this request is not read."""
        if self._done_reading:  # refused already, or after a request that closes
            return
        self._refused = self._done_reading = True
        self._disarm()
        if self._body_held and self.budget is not None:
            self.budget.give(self._body_held)
            self._body_held = 0
        if self._server.on_refusal is not None:
            self._server.on_refusal(status)
        self._refusal = _error_reply(status, message)
        if self._task is None:  # not behind an answer still being written
            self._next()

    def _linger(self, reply: bytes) -> None:
        """Send `reply`, then close once the client has read it: what it still sends is
        dropped until it closes or `_LINGER_SECONDS` pass."""
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.write(reply)
        self.closed = True
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(_LINGER_SECONDS, self.close)
        else:
            transport.close()

    def _next(self) -> None:
        if self._queue and not self.closed:
            request = self._queue.popleft()
            self._update_reading()
            self._task = self._loop.create_task(self._serve(request))
        else:
            self._task = None
            self.idle_since = self._loop.time()
            if self._refusal is not None:
                self._linger(self._refusal)
            elif self._continue:
                self._continue = False
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _serve(self, request: Request) -> None:
        server = self._server
        server.request_started()
        try:
            result = await self._handle(request)
            if result is None:
                self.close()
            elif isinstance(result, Reply):
                self._write_reply(result, request)
                server.release(request)  # the answer is in the transport's buffer now
                if self.writing_paused():  # the next request waits until the client takes it
                    await self.drain()
            else:
                await result.end()
            if not request.keep_alive or server.stopping:
                self.close()
        except (asyncio.CancelledError, ConnectionResetError):
            self.close()  # the client is gone (or the server is stopping)
        finally:
            server.release(request)
            server.request_ended()
            self._task = None
            if not self.closed:
                self._next()

    async def _handle(self, request: Request) -> Result | None:
        """The handler's result; a 500 for an unexpected error, or None when a stream had
        already started (the connection then closes: the client sees a cut stream)."""
        try:
            return await self._server.route(request.method, request.path)(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            if self._server.on_refusal is not None:
                self._server.on_refusal(500)
            if request.streamed:
                return None
            body = error_body(500, "internal error in the router", "api_error")
            return Reply(500, body, {"Content-Type": "application/json"})

    def _write_reply(self, reply: Reply, request: Request) -> None:
        body = reply.body
        keep_alive = request.keep_alive and not self._server.stopping
        framing = b"Content-Length: %d\r\n" % len(body)
        if keep_alive and not request.http11:
            framing += b"Connection: keep-alive\r\n"  # HTTP/1.0 closes unless told otherwise
        head = _head(reply.status, reply.headers, framing, keep_alive)
        if request.method == "HEAD":
            self.write(head)
        elif len(body) < 65536:
            self.write(head + body)
        else:  # a large body is not copied once more to join it to its head
            self.write(head)
            self.write(body)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full; a client that takes nothing for
        `write_timeout` seconds is cut off (ConnectionResetError)."""
        if not self.closed and self._writable is not None and not self._writable.done():
            try:
                async with asyncio.timeout(self._limits.write_timeout):
                    # shield: a writer cancelled here must not cancel the future other
                    # writers share.
                    await asyncio.shield(self._writable)
            except TimeoutError:
                self.abort()
                raise ConnectionResetError("the client did not read the answer in time") from None
        if self.closed:
            raise ConnectionResetError("the client closed the connection")

    def close(self) -> None:
        self.closed = True  # nothing more is served or written on it
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # buffered bytes are still sent

    def abort(self) -> None:
        """Close at once, dropping unsent bytes (a client that stopped reading)."""
        self.closed = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def idle(self) -> bool:
        return self._task is None and not self._queue


class HttpServer:
    """Listens on one address and serves `routes` (method, path) -> handler."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        fallback: Handler,
        max_body: Callable[[], int],
        keepalive_timeout: float = 75.0,
        on_refusal: Callable[[int], None] | None = None,
        limits: Limits | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        """`max_body` is read per request (the router's limit changes on reload);
        `on_refusal` is told the status of every request refused before a handler ran, and of
        every 500 from a handler's unexpected error; `budget`, when given, bounds the memory
        that request bodies (and whatever handlers `Request.hold`) take at once."""
        self.limits = limits or Limits()
        self.budget = budget
        self._routes = dict(routes)
        self._paths = {path for _, path in routes}
        self._fallback = fallback
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.on_refusal = on_refusal
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self._none_in_flight = asyncio.Event()
        self._none_in_flight.set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.host, self.port = "", 0

    def request_started(self) -> None:
        self.in_flight += 1
        self._none_in_flight.clear()

    def request_ended(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._none_in_flight.set()

    def release(self, request: Request) -> None:
        """Give back the memory budget a request holds (its body, what its handler took)."""
        if request.held and self.budget is not None:
            self.budget.give(request.held)
        request.held = 0

    def route(self, method: str, path: str) -> Handler:
        handler = self._routes.get((method, path))
        if handler is None and method == "HEAD":
            handler = self._routes.get(("GET", path))
        if handler is not None:
            return handler
        if path in self._paths:
            allowed = sorted(m for m, p in self._routes if p == path)
            return _method_not_allowed(method, path, allowed)
        return self._fallback

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        address = self._server.sockets[0].getsockname()
        self.host, self.port = str(address[0]), int(address[1])
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than `keepalive_timeout`, and answer
        408 to requests whose head or body is late."""
        loop, limits = asyncio.get_running_loop(), self.limits
        interval = min(1.0, self.keepalive_timeout, limits.head_timeout, limits.body_timeout) / 2
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self.connections):
                if connection.deadline and now > connection.deadline:
                    connection.timed_out()
                elif connection.idle() and now - connection.idle_since > self.keepalive_timeout:
                    connection.close()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for `grace` seconds, then close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for connection in list(self.connections):
            if connection.idle():
                connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._none_in_flight.wait()
        for connection in list(self.connections):
            if connection.idle():
                connection.close()  # an answer may still be on its way out
            else:
                # Abort: a close waits for buffered bytes that a client no longer reading
                # never takes, and only the connection's loss cancels the handler writing.
                connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


def _method_not_allowed(method: str, path: str, allowed: Iterable[str]) -> Handler:
    async def handle(_: Request) -> Result:
        message = f"method {method} is not allowed on {path}"
        body = error_body(405, message, code="method_not_allowed")
        headers = {"Content-Type": "application/json", "Allow": ", ".join(allowed)}
        return Reply(405, body, headers)

    return handle
