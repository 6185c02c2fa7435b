"""HTTP handlers of the simulated engine: the OpenAI API, /health, /metrics and /sim admin."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from modelflock.sim.config import Behaviour
from modelflock.sim.generate import BadRequest, Job, Output, parse_job, plan_output
from modelflock.sim.metrics import render
from modelflock.sim.responses import (
    embedding_item,
    error_body,
    full_response,
    stream_chunk,
    usage_chunk,
)
from modelflock.sim.state import SIM_STATE, SimState

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _bad(err: BadRequest) -> web.Response:
    kind = "NotFoundError" if err.status == 404 else "BadRequestError"
    return _json(error_body(err.message, kind, err.param, err.code or err.status), err.status)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _read_json(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from None


def _authorised(state: SimState, request: web.Request) -> bool:
    key = state.settings.api_key
    return key is None or request.headers.get("Authorization") == f"Bearer {key}"


async def _pre_answer(state: SimState, request: web.Request) -> web.StreamResponse | None:
    """Apply auth and the failure behaviours; None means: go on and answer."""
    if not _authorised(state, request):
        return _json(error_body("Unauthorized", "AuthenticationError", None, 401), 401)
    behaviour = state.behaviour
    if behaviour.first_byte_delay_seconds:
        await asyncio.sleep(behaviour.first_byte_delay_seconds)
    if behaviour.mode == "drop":
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)
    if behaviour.mode == "error":
        state.counters.failures += 1
        return _json(
            error_body("simulated failure", "InternalServerError", None, behaviour.status),
            behaviour.status,
        )
    queue = state.queue
    if queue.running + queue.waiting >= state.settings.max_concurrent:
        state.counters.failures += 1
        if state.settings.flavour == "tgi":
            return _json({"error": "Model is overloaded", "error_type": "overloaded"}, 429)
        return _json(error_body("overloaded", "RateLimitError", None, 429), 429)
    return None


def _account(
    state: SimState, job: Job, out: Output, started: float, admitted: float, first_token: float
) -> None:
    c = state.counters
    now = time.monotonic()
    c.prompt_tokens += job.prompt_tokens
    c.generation_tokens += len(out.tokens)
    if out.finish_reason == "length":
        c.success_length += 1
    else:
        c.success_stop += 1
    c.queue_time.observe(admitted - started)
    c.ttft.observe(first_token - started)
    c.e2e.observe(now - started)
    c.input_length.observe(job.prompt_tokens)
    c.generated.observe(len(out.tokens))
    if len(out.tokens) > 1:
        c.inter_token.observe((now - first_token) / (len(out.tokens) - 1))


async def _generate(state: SimState, request: web.Request, job: Job) -> web.StreamResponse:
    settings, out = state.settings, plan_output(state.settings, state.behaviour, job)
    rid = f"{'chatcmpl' if job.chat else 'cmpl'}-sim-{next(state.ids)}"
    created = int(time.time())
    started = time.monotonic()
    instant = settings.instant
    async with state.queue.slot(job.prompt_tokens + len(out.tokens)):
        admitted = time.monotonic()
        if not instant and settings.prefill_seconds:
            await asyncio.sleep(settings.prefill_seconds)
        first_token = time.monotonic()
        if not job.stream:
            if not instant and len(out.tokens) > 1:
                await asyncio.sleep(settings.decode_seconds_per_token * (len(out.tokens) - 1))
            _account(state, job, out, started, admitted, first_token)
            return _json(full_response(job, out, rid, created))
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if job.chat:
            await response.write(_sse(stream_chunk(job, rid, created, None, None, out.logprob)))
        offset = 0
        for i, piece in enumerate(out.tokens):
            if i and not instant and settings.decode_seconds_per_token:
                await asyncio.sleep(settings.decode_seconds_per_token)
            await response.write(
                _sse(stream_chunk(job, rid, created, piece, None, out.logprob, offset))
            )
            offset += len(piece)
        await response.write(
            _sse(
                stream_chunk(
                    job, rid, created, "" if job.chat else None, out.finish_reason, out.logprob
                )
            )
        )
        if job.include_usage:
            await response.write(_sse(usage_chunk(job, rid, created, len(out.tokens))))
        await response.write(b"data: [DONE]\n\n")
        _account(state, job, out, started, admitted, first_token)
    await response.write_eof()
    return response


async def _serve(request: web.Request, chat: bool) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    stats = state.stats
    stats.requests += 1
    state.counters.requests += 1
    stats.in_flight += 1
    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    try:
        early = await _pre_answer(state, request)
        if early is not None:
            stats.errors += 1
            return early
        try:
            body = await _read_json(request)
            if chat and isinstance(body, dict):
                state.recent_chats.append(body)
            job = parse_job(body, chat, state.settings.model, state.settings.flavour)
        except BadRequest as err:
            stats.errors += 1
            return _bad(err)
        response = await _generate(state, request, job)
        stats.completed += 1
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away (the router cancelled upstream): tests count this.
        stats.disconnected += 1
        raise
    finally:
        stats.in_flight -= 1


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, chat=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    state.stats.requests += 1
    early = await _pre_answer(state, request)
    if early is not None:
        return early
    try:
        body = await _read_json(request)
        if not isinstance(body, dict) or body.get("model") != state.settings.model:
            raise BadRequest(
                "unknown or missing model", status=404, param="model", code="model_not_found"
            )
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            raise BadRequest("'input' must be a string or a non-empty list", param="input")
        strings = [
            t if isinstance(t, str) else " ".join(map(str, t)) if isinstance(t, list) else str(t)
            for t in texts
        ]
    except BadRequest as err:
        return _bad(err)
    as_base64 = body.get("encoding_format") == "base64"
    embedded = await state.embedder.embed(strings)
    tokens = embedded.prompt_tokens
    state.stats.completed += 1
    return _json(
        {
            "object": "list",
            "data": [
                embedding_item(i, vector, as_base64) for i, vector in enumerate(embedded.vectors)
            ],
            "model": state.settings.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def models(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    owner = "vllm" if state.settings.flavour == "vllm" else "text-generation-inference"
    name = state.settings.model
    return _json(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": owner, "root": name}
            ],
        }
    )


async def health(request: web.Request) -> web.StreamResponse:
    ready = request.app[SIM_STATE].behaviour.ready
    return web.Response(status=200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    text = render(
        state.settings.flavour,
        state.counters,
        state.gauges(),
        state.settings.model,
        state.settings.legacy_kv_metric,
    )
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def get_behaviour(request: web.Request) -> web.StreamResponse:
    return _json(request.app[SIM_STATE].behaviour.model_dump())


async def set_behaviour(request: web.Request) -> web.StreamResponse:
    """Merge the posted fields into the behaviour (tests flip failure modes at runtime)."""
    state = request.app[SIM_STATE]
    try:
        changes = await _read_json(request)
        if not isinstance(changes, dict):
            raise BadRequest("expected a JSON object")
        state.behaviour = Behaviour.model_validate({**state.behaviour.model_dump(), **changes})
    except BadRequest as err:
        return _bad(err)
    except ValidationError as err:
        return _json(error_body(str(err), "BadRequestError"), 400)
    return _json(state.behaviour.model_dump())


async def get_stats(request: web.Request) -> web.StreamResponse:
    stats = request.app[SIM_STATE].stats
    return _json(dict(vars(stats)))


async def get_chats(request: web.Request) -> web.StreamResponse:
    """The last chat requests as received (what a router sent: context, handoff, ...)."""
    return _json({"chats": list(request.app[SIM_STATE].recent_chats)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/behaviour", get_behaviour)
    app.router.add_post("/sim/behaviour", set_behaviour)
    app.router.add_get("/sim/stats", get_stats)
    app.router.add_get("/sim/chats", get_chats)
