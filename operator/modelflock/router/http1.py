"""The router's upstream HTTP/1.1 client: keep-alive connections per origin, httptools parsing.

Why not aiohttp's client: on the hot path it cost ~0.3 ms of CPU per request on this kind of
machine (response objects, multidict headers, URL objects, per-request timers), more than
half of a bare pass-through's added latency (docs/router.md, "Benchmark and the HTTP stack").
This client does only what the router needs: POST (and GET) a body to an engine, read the
status and content type, then the whole body or its chunks as they arrive.

Semantics the dispatcher relies on:
- A request that is cancelled (timeout, client gone) closes its connection, so the engine
  sees the disconnect and aborts the generation. A finished response returns its connection
  to the pool only when the upstream allows keep-alive.
- Connection failures raise `UpstreamConnectionError` (an `OSError`), a malformed answer
  `UpstreamProtocolError` (also an `OSError`, so a stream broken either way is one kind).
- A pooled connection the engine closed while idle (its keep-alive timeout) is retried once
  on a fresh connection, only when not one byte of the answer had arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# Pause reading from an engine when this much streamed body is waiting for the client (per
# stream: part of the memory arithmetic in docs/router.md).
_HIGH_WATER = 64 * 1024
_ORIGIN_CACHE_SIZE = 1024


class UpstreamConnectionError(ConnectionError):
    """The connection failed or was lost before the answer was complete."""


class UpstreamProtocolError(ConnectionError):
    """The upstream's bytes are not valid HTTP/1.1."""


class AnswerTooLarge(UpstreamProtocolError):
    """An answer over the caller's size limit, or over what its memory budget can hold."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a URL's requests go, and the fixed part of every request head to it."""

    scheme: str
    host: str
    port: int
    host_header: bytes

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def split_url(url: str) -> tuple[Origin, bytes]:
    """The origin and the request target (path and query) of an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if default else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, host, port, host_header.encode("idna")), target.encode()


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines for a request head; a value with CR or LF is refused (no injection)."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n") or ":" in name:
            raise ValueError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.idle_since = 0.0
        self.lost = False
        self._error: BaseException | None = None
        self._headers_done: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.got_bytes = False
        self.complete = False
        self.status = 0
        self.content_type = ""
        self._framed = False  # a Content-Length or chunked body (else it ends at EOF)
        self._reusable = False

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("unexpected protocol upgrade from the upstream"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.forget(self)
        if self.status and not self._framed and not self.complete and exc is None:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        if not self.complete:
            detail = f": {exc}" if exc else ""
            self._fail(UpstreamConnectionError(f"the upstream closed the connection{detail}"))

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1").split(";", 1)[0].strip()
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status in (204, 304) or 100 <= self.status < 200:
            self._framed = True
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        # Read now: llhttp resets its flags once this callback returns.
        self._reusable = self._parser.should_keep_alive()
        self._wake()

    # -- used by Response and the pool --
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        for fut in (self._headers_done, self._waiter):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def start(self, head: bytes, body: bytes) -> asyncio.Future[None]:
        self._parser = httptools.HttpResponseParser(self)
        self._chunks.clear()
        self._buffered = 0
        self.got_bytes = self.complete = self._framed = self._reusable = False
        self.status, self.content_type, self._error = 0, "", None
        self._headers_done = self._loop.create_future()
        assert self.transport is not None
        if self._paused:  # released with its last answer unread: read again
            self._paused = False
            self.transport.resume_reading()
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        return self._headers_done

    async def next_chunk(self) -> bytes:
        """The next piece of body; b"" once the message is complete."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _HIGH_WATER // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def keep_alive(self) -> bool:
        return self.complete and self._reusable and not self.lost

    def close(self) -> None:
        self.lost = True
        self._pool.forget(self)
        if self.transport is not None:
            self.transport.close()


class Response:
    """An upstream answer whose status and content type have arrived; the body follows."""

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.content_type = connection.content_type

    async def read(
        self, limit: int | None = None, hold: Callable[[int], bool] | None = None
    ) -> bytes:
        """The whole body; the connection goes back to the pool. A read that fails or is
        cancelled closes it instead (the engine aborts the request). Beyond `limit` bytes, or
        when `hold(n)` (asked for twice each piece's size: the pieces, then the joined body)
        refuses, AnswerTooLarge."""
        connection = self._connection
        if connection is None:
            return b""
        parts = []
        size = 0
        try:
            while chunk := await connection.next_chunk():
                size += len(chunk)
                if limit is not None and size > limit:
                    raise AnswerTooLarge(f"the answer exceeds {limit} bytes")
                if hold is not None and not hold(2 * len(chunk)):
                    raise AnswerTooLarge("the router's memory budget cannot hold the answer")
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def readany(self) -> bytes:
        """The next piece of body as soon as there is one; b"" at the end."""
        if self._connection is None:
            return b""
        chunk = await self._connection.next_chunk()
        if not chunk:
            self.release()
        return chunk

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def release(self) -> None:
        """Done with it: a complete keep-alive answer returns its connection, else it closes."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.keep_alive():
            connection._pool.put_back(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Abandon the answer: the connection closes (the engine aborts the request)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _OriginPool:
    def __init__(self, client: Http1Client, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self.idle: deque[_Connection] = deque()
        self.busy: set[_Connection] = set()

    def forget(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        if not self.busy and not self.idle:
            # Endpoints come and go with pods: an empty pool is dropped, made again on use.
            self._client.drop_pool(self)

    def put_back(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        # This pool may have been dropped while empty (a request was still connecting):
        # idle connections always go to the pool the client lists for the origin.
        pool = self._client.listed_pool(self)
        connection._pool = pool
        connection.reused = True
        now = connection.idle_since = asyncio.get_running_loop().time()
        # The oldest idle connection is closed once it expires, so a pool shrinks back
        # after a burst even while its newest connections stay busy.
        if pool.idle and now - pool.idle[0].idle_since >= self._client.idle_seconds:
            pool.idle.popleft().close()
        pool.idle.append(connection)

    def take_idle(self, now: float) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()  # the most recently used: the least likely stale
            if now - connection.idle_since < self._client.idle_seconds and not connection.lost:
                self.busy.add(connection)
                return connection
            connection.close()
        return None

    async def connect(self) -> _Connection:
        origin, loop = self.origin, asyncio.get_running_loop()
        context = self._client.ssl_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self._client.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except (TimeoutError, OSError) as exc:
            if not self.busy and not self.idle:
                self._client.drop_pool(self)  # no pool kept for an endpoint never reached
            if isinstance(exc, TimeoutError):
                raise UpstreamConnectionError(
                    f"connecting to {origin.host}:{origin.port} timed out"
                ) from None
            raise UpstreamConnectionError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        self.busy.add(connection)
        return connection

    def close(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.close()


class Http1Client:
    """Keep-alive pools per origin; one instance is shared by every request of a router."""

    def __init__(
        self,
        connect_timeout: float = 5.0,
        idle_seconds: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        # Below the 5 s keep-alive timeout of uvicorn (vLLM) so a pooled connection is
        # rarely one the engine is closing at that moment.
        self.idle_seconds = idle_seconds
        self._pools: dict[tuple[str, str, int], _OriginPool] = {}
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        self._ssl = ssl_context  # None: the system's trust store, made on first use

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _target(self, url: str) -> tuple[Origin, bytes]:
        found = self._targets.get(url)
        if found is None:
            if len(self._targets) >= _ORIGIN_CACHE_SIZE:
                self._targets.clear()
            found = self._targets[url] = split_url(url)
        return found

    def drop_pool(self, pool: _OriginPool) -> None:
        if self._pools.get(pool.origin.key) is pool:
            del self._pools[pool.origin.key]

    def listed_pool(self, pool: _OriginPool) -> _OriginPool:
        """The pool listed for `pool`'s origin, listing `pool` itself when there is none."""
        return self._pools.setdefault(pool.origin.key, pool)

    def _pool(self, origin: Origin) -> _OriginPool:
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = _OriginPool(self, origin)
        return pool

    async def request(
        self, method: str, url: str, body: bytes = b"", headers: bytes = b""
    ) -> Response:
        """Send a request and wait for the answer's head. `headers` are encoded header lines
        (`encode_headers`), without Host and Content-Length. Cancelling closes the connection."""
        if method == "HEAD":
            # The response parser cannot know a HEAD answer has no body: it would wait for one.
            raise ValueError("HEAD is not supported by this client")
        origin, target = self._target(url)
        pool = self._pool(origin)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            method.encode(),
            target,
            origin.host_header,
            len(body),
            headers,
        )
        connection = pool.take_idle(asyncio.get_running_loop().time())
        if connection is None:
            connection = await pool.connect()
        try:
            await connection.start(head, body)
        except UpstreamConnectionError:
            if not (connection.reused and not connection.got_bytes):
                raise
            # The engine closed this idle connection as we sent: once more on a new one.
            connection = await pool.connect()
            try:
                await connection.start(head, body)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        return Response(connection)

    async def post(self, url: str, body: bytes, headers: bytes = b"") -> Response:
        return await self.request("POST", url, body, headers)

    def close(self) -> None:
        for pool in list(self._pools.values()):
            pool.close()
        self._pools.clear()
