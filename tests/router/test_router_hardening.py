"""The router against hostile clients and engines (issue 14), over real sockets on 127.0.0.1:
deep and non-standard JSON, overload, bodies too costly to parse, CRLF-framed and endless
events, lying usage, huge answers and streaming clients that stop reading."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web

from modelflock.router.sse import EventTooLarge, SseScanner

from .conftest import Flock, metric

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostileEngine:
    """An OpenAI-compatible engine that answers whatever the test tells it to."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[bytes] = []
        self.disconnected = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        try:
            return await self.handler(request)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._serve)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


async def hostile(flock: Flock, handler: Handler, **defaults: Any) -> tuple[HostileEngine, str]:
    engine = HostileEngine(handler)
    await engine.start()
    assert engine.runner is not None
    flock.stack.push_async_callback(engine.runner.cleanup)
    router = await flock.router(
        {
            "experts": [
                {
                    "name": "e",
                    "urls": [engine.url],
                    "model": "e",
                    "prices": {"inputPerMillion": "1", "outputPerMillion": "2"},
                }
            ],
            "routes": [{"name": "all", "expert": "e"}],
            "defaults": defaults,
        }
    )
    return engine, router.url


def answer(usage: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "e",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    ).encode()


async def start_small(flock: Flock, **defaults: Any) -> str:
    await flock.sim("small", decode_seconds_per_token=0.05, output_tokens=8)
    router = await flock.router(
        {
            "experts": [flock.expert("small")],
            "routes": [{"name": "all", "expert": "small"}],
            "defaults": defaults,
        }
    )
    return router.url


async def test_deeply_nested_json_is_a_counted_400(flock: Flock) -> None:
    url = await start_small(flock)
    session = await flock.http()
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "x": '
    body += b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with session.post(f"{url}/v1/chat/completions", data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert "nests too deeply" in error["message"]
    text = await scrape(flock, url)
    assert metric(text, "modelflock_router_requests_total", code="400") == 1


async def scrape(flock: Flock, url: str) -> str:
    session = await flock.http()
    async with session.get(f"{url}/metrics") as resp:
        return await resp.text()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_standard_numbers_are_refused_not_forwarded(flock: Flock, value: str) -> None:
    """The SDKs never send these (they refuse to encode them), but a hand-made client can;
    the router used to re-encode them for the engine as non-standard JSON."""
    engine, url = await hostile(
        flock, lambda r: _json(answer({"prompt_tokens": 1, "completion_tokens": 1}))
    )
    session = await flock.http()
    raw = json.dumps(CHAT)[:-1] + f', "temperature": {value}}}'
    async with session.post(f"{url}/v1/chat/completions", data=raw) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "not valid JSON" in error["message"] and value.lstrip("-") in error["message"]
    assert engine.bodies == []  # nothing non-standard reached the engine


async def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def test_over_the_concurrency_cap_requests_are_shed_with_retry_after(
    flock: Flock,
) -> None:
    url = await start_small(flock, maxConcurrentRequests=2)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    flock.stack.push_async_callback(client.close)

    async def one() -> object:
        try:
            return await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hello"}]
            )
        except openai.APIStatusError as err:
            return err

    results = await asyncio.gather(*[one() for _ in range(6)])
    shed = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(shed) == 4, results
    assert all(r.status_code == 503 for r in shed)
    assert all(r.response.headers["retry-after"] == "1" for r in shed)
    assert all(r.code == "router_overloaded" for r in shed)  # type: ignore[attr-defined]
    # The SDK's own retries, honouring Retry-After, then get through.
    patient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=5)
    flock.stack.push_async_callback(patient.close)
    done = await asyncio.gather(
        *[
            patient.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hello"}]
            )
            for _ in range(4)
        ]
    )
    assert len(done) == 4
    text = await scrape(flock, url)
    assert metric(text, "modelflock_router_shed_requests_total", reason="overloaded") >= 4


async def test_a_body_too_costly_to_parse_is_413_before_parsing(flock: Flock) -> None:
    """4 MiB of empty objects would be ~130 MB of Python objects."""
    url = await start_small(flock)
    session = await flock.http()
    body = json.dumps(CHAT)[:-1].encode() + b', "x": [' + b"{}," * 1_300_000 + b"{}]}"
    assert len(body) < 4 * 1024 * 1024
    started = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", data=io.BytesIO(body)) as resp:
        assert resp.status == 413
        error = (await resp.json())["error"]
    assert error["code"] == "request_too_complex" and "memory budget" in error["message"]
    assert time.perf_counter() - started < 2.0
    async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200  # and the budget was given back


async def test_negative_usage_never_makes_counters_or_cost_negative(flock: Flock) -> None:
    lying = answer({"prompt_tokens": -9_000_000, "completion_tokens": -9_000_000})
    _, url = await hostile(flock, lambda r: _json(lying))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    flock.stack.push_async_callback(client.close)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert float(raw.headers["x-modelflock-cost"]) >= 0
    assert float(raw.headers["x-modelflock-baseline-cost"]) >= 0
    text = await scrape(flock, url)
    assert metric(text, "modelflock_router_tokens_total") >= 0
    assert metric(text, "modelflock_router_cost_usd_total") >= 0


async def test_negative_stream_usage_is_not_counted(flock: Flock) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"choices": [], "usage": {"prompt_tokens": -50, "completion_tokens": True}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return resp

    _, url = await hostile(flock, stream)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    flock.stack.push_async_callback(client.close)
    chunks = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert [c async for c in chunks]
    text = await scrape(flock, url)
    assert metric(text, "modelflock_router_tokens_total", direction="input") == 0
    assert metric(text, "modelflock_router_tokens_total", direction="output") == 1  # counted


async def test_crlf_framed_events_reach_the_client_as_they_come(flock: Flock) -> None:
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = {"choices": [{"index": 0, "delta": {"content": "first"}}]}
        await resp.write(f"data: {json.dumps(first)}\r\n\r\n".encode())
        async with asyncio.timeout(5):
            await release.wait()  # the client must have had the first event by now
        last = {"choices": [{"index": 0, "delta": {"content": "last"}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        await resp.write(f"data: {json.dumps(last)}\r\n\r\n".encode())
        await resp.write(f"data: {json.dumps(usage)}\r\n\r\ndata: [DONE]\r\n\r\n".encode())
        return resp

    _, url = await hostile(flock, stream)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    flock.stack.push_async_callback(client.close)
    chunks = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    texts = []
    async with asyncio.timeout(3):  # before: nothing until the stream ended
        async for chunk in chunks:
            texts.append(chunk.choices[0].delta.content if chunk.choices else None)
            release.set()
    assert texts == ["first", "last"]  # the usage event, not asked for, was removed


def test_the_scanner_splits_every_line_ending_and_scans_each_byte_once() -> None:
    for ending in (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n"):
        scanner = SseScanner(strip_usage=True)
        events = [b'data: {"x":1}', b'data: {"choices":[],"usage":{"prompt_tokens":3}}', b"x"]
        stream = ending.join(events) + ending
        out = b"".join(scanner.feed(stream[i : i + 3]) for i in range(0, len(stream), 3))
        assert out == events[0] + ending + events[2] + ending, ending
        assert scanner.usage == {"prompt_tokens": 3}
    # 16 MiB in 4 KiB pieces, never ending: linear, and cut at the cap.
    scanner = SseScanner(strip_usage=True)
    started = time.process_time()
    with pytest.raises(EventTooLarge):
        for _ in range(4096):
            scanner.feed(b"data: " + b"x" * 4090)
    assert time.process_time() - started < 0.5


async def test_an_endless_event_ends_the_stream_with_an_error(flock: Flock) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = {"choices": [{"index": 0, "delta": {"content": "first"}}]}
        await resp.write(f"data: {json.dumps(first)}\n\n".encode())
        for _ in range(64):  # 4 MiB without an event end
            await resp.write(b"x" * 65536)
        return resp

    _, url = await hostile(flock, stream)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    flock.stack.push_async_callback(client.close)
    chunks = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        async for _ in chunks:
            pass


async def test_a_streaming_client_that_stops_reading_is_cut_off_at_the_deadline(
    flock: Flock,
) -> None:
    """The engine's generation (and the router's in-flight slot) end at the request deadline,
    not when the client finally closes its socket."""

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        piece = {"choices": [{"index": 0, "delta": {"content": "x" * 65536}}]}
        event = f"data: {json.dumps(piece)}\n\n".encode()
        while True:
            await resp.write(event)

    engine, url = await hostile(flock, endless, requestTimeoutSeconds=2)
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({**CHAT, "stream": True}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    started = time.perf_counter()
    async with asyncio.timeout(8):  # before: held until the client closes (never, here)
        await engine.disconnected.wait()
    assert time.perf_counter() - started < 6
    text = await scrape(flock, url)
    assert metric(text, "modelflock_router_in_flight_requests") == 0
    writer.close()
    del reader


async def test_discovery_cannot_redirect_an_external_experts_key(flock: Flock) -> None:
    """A fake flock API lists its own address for the external expert: the router still
    sends the key only to the configured URL."""
    secret = "sk-frontier-4d2c9e"
    key_file = flock.tmp_path / "frontier-key"
    key_file.write_text(secret)
    await flock.sim("frontier")
    attacker = HostileEngine(lambda r: _json(answer({"prompt_tokens": 1, "completion_tokens": 1})))
    await attacker.start()
    assert attacker.runner is not None
    flock.stack.push_async_callback(attacker.runner.cleanup)
    api = await flock.flock_api()
    api.set_expert("frontier", [attacker.url])
    router = await flock.router(
        {
            "experts": [
                flock.expert(
                    "frontier",
                    engine="external",
                    apiKeyFile=str(key_file),
                    allowPlainHttp=True,  # the test's engine is on loopback
                )
            ],
            "routes": [{"name": "all", "expert": "frontier"}],
            "discovery": flock.discovery(api),
        }
    )
    client = flock.client(router)
    for _ in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-modelflock-expert"] == "frontier"
        await asyncio.sleep(0.25)  # discovery polls every 0.2 s
    assert attacker.bodies == []
    assert flock.sims["frontier"].stats.requests == 3
