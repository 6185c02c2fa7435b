"""HTTP handlers of the router: the OpenAI API plus /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelflock.router.appkeys import DISPATCHER, HOLDER, METRICS
from modelflock.router.errors import RequestError, error_response, from_request_error
from modelflock.router.plan import plan_job
from modelflock.router.request import Kind, parse_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all (413)."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestError(413, f"request body of {length} bytes exceeds the limit of {limit}")
    if length is not None:
        return await request.read()
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def openai_endpoint(kind: Kind, path: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        state, metrics = app[HOLDER].current, app[METRICS]
        metrics.in_flight.add((), 1)
        try:
            try:
                raw = await read_body(request, state.config.defaults.max_body_bytes)
                parsed = parse_request(raw, kind)
                job = await plan_job(request, parsed, state, path, metrics)
            except RequestError as err:
                metrics.requests.inc(("none", "none", "none", str(err.status)))
                metrics.errors.inc(("none", "none", f"http_{err.status}"))
                return from_request_error(err)
            return await app[DISPATCHER].run(job)
        finally:
            metrics.in_flight.add((), -1)

    return handle


async def list_models(request: web.Request) -> web.StreamResponse:
    state = request.app[HOLDER].current
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "modelflock"}
        for m in sorted(state.routed_models)
    ]
    data += [
        {
            "id": e.name,
            "object": "model",
            "created": 0,
            "owned_by": "modelflock-expert",
            "tier": e.tier,
            "capabilities": e.capabilities,
        }
        for e in state.config.experts
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.StreamResponse:
    # Ready once a valid config is loaded (the app does not start without one).
    return web.Response(text="ready")


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def not_found(request: web.Request) -> web.StreamResponse:
    return error_response(404, f"unknown path {request.method} {request.path}", code="unknown_url")


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", openai_endpoint("chat", "/chat/completions"))
    app.router.add_post("/v1/completions", openai_endpoint("completion", "/completions"))
    app.router.add_post("/v1/embeddings", openai_endpoint("embedding", "/embeddings"))
    app.router.add_get("/v1/models", list_models)
    add_ops_routes(app)
    app.router.add_route("*", "/{tail:.*}", not_found)
