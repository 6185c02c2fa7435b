"""HTTP handlers of the router: the OpenAI API plus /healthz, /readyz and /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelflock.router.accounting import AuthFailureReason, RouterMetrics, ShedReason
from modelflock.router.dispatch import Dispatcher
from modelflock.router.errors import RequestError, error_response, from_request_error
from modelflock.router.http_server import Handler, Reply, Request, Result
from modelflock.router.plan import plan_job
from modelflock.router.request import Kind, parse_cost, parse_request
from modelflock.router.state import RouterState, key_digest

Routes = dict[tuple[str, str], Handler]
_JSON = {"Content-Type": "application/json"}


@dataclass
class Admission:
    """OpenAI requests in progress (the concurrency cap counts these)."""

    in_progress: int = 0


@dataclass(frozen=True)
class RouterParts:
    """What the handlers use: the current state (swapped on reload), metrics, the dispatcher."""

    state: Callable[[], RouterState]
    metrics: RouterMetrics
    dispatcher: Dispatcher
    admission: Admission = field(default_factory=lambda: Admission())


_RETRY = {"Retry-After": "1"}


def _shed(parts: RouterParts, reason: ShedReason, message: str) -> Result:
    """Overload: a fast 503 the client may retry (the OpenAI SDKs honour Retry-After)."""
    metrics = parts.metrics
    metrics.shed.inc((reason,))
    metrics.requests.inc(("none", "none", "none", "503"))
    metrics.errors.inc(("none", "none", "http_503"))
    return error_response(503, message, code=f"router_{reason}", headers=_RETRY)


def _too_complex(cost: int, budget_limit: int) -> RequestError:
    return RequestError(
        413,
        f"parsing this body would take up to {cost >> 20} MiB, over the router's memory"
        f" budget of {budget_limit >> 20} MiB (defaults.maxBufferedBytes)",
        code="request_too_complex",
    )


def openai_endpoint(
    parts: RouterParts, kind: Kind, path: str, budget_limit: int | None = None
) -> Handler:
    async def handle(request: Request) -> Result:
        state, metrics = parts.state(), parts.metrics
        cap, admission = state.config.defaults.max_concurrent_requests, parts.admission
        if admission.in_progress >= cap:
            return _shed(parts, "overloaded", f"the router is at capacity ({cap} requests)")
        admission.in_progress += 1
        metrics.in_flight.add((), 1)
        try:
            try:
                # The server refused bodies over the limit (413) before reading them; parsing
                # takes its worst case from the memory budget first.
                cost = parse_cost(request.body)
                if not request.hold(cost):
                    if budget_limit is not None and cost > budget_limit:
                        raise _too_complex(cost, budget_limit)
                    return _shed(parts, "memory", "the router's memory budget is taken; retry")
                parsed = parse_request(request.body, kind)
                job = await plan_job(request, parsed, state, path, metrics)
            except RequestError as err:
                metrics.requests.inc(("none", "none", "none", str(err.status)))
                metrics.errors.inc(("none", "none", f"http_{err.status}"))
                return from_request_error(err)
            return await parts.dispatcher.run(job)
        finally:
            admission.in_progress -= 1
            metrics.in_flight.add((), -1)

    return handle


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="modelflock"'}


def authenticated(parts: RouterParts, handler: Handler) -> Handler:
    """With client keys configured (the gateway), a request needs `Authorization: Bearer <one
    of them>`; the key's name is counted, its value never leaves this function."""

    async def handle(request: Request) -> Result:
        keys = parts.state().client_keys
        if keys is None:
            return await handler(request)
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        name = keys.get(key_digest(token)) if scheme.lower() == "bearer" and token else None
        metrics = parts.metrics
        if name is None:
            reason: AuthFailureReason = "invalid" if header else "missing"
            metrics.auth_failures.inc((reason,))
            metrics.requests.inc(("none", "none", "none", "401"))
            metrics.errors.inc(("none", "none", "http_401"))
            message = (
                "Incorrect API key provided."
                if header
                else "This gateway needs an API key: send Authorization: Bearer <key>."
            )
            return error_response(401, message, code="invalid_api_key", headers=_CHALLENGE)
        metrics.client_requests.inc((name,))
        return await handler(request)

    return handle


def models_endpoint(parts: RouterParts) -> Handler:
    async def list_models(_: Request) -> Result:
        state = parts.state()
        data: list[dict[str, object]] = [
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
        return Reply(200, json.dumps({"object": "list", "data": data}).encode(), _JSON)

    return list_models


async def healthz(_: Request) -> Result:
    return Reply(200, b"ok", {"Content-Type": "text/plain"})


async def readyz(_: Request) -> Result:
    # Ready once a valid config is loaded (the server does not start without one).
    return Reply(200, b"ready", {"Content-Type": "text/plain"})


def metrics_endpoint(metrics: RouterMetrics) -> Handler:
    async def serve(_: Request) -> Result:
        return Reply(200, generate_latest(metrics.registry), {"Content-Type": CONTENT_TYPE_LATEST})

    return serve


async def not_found(request: Request) -> Result:
    return error_response(404, f"unknown path {request.method} {request.path}", code="unknown_url")


def ops_routes(metrics: RouterMetrics) -> Routes:
    return {
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        ("GET", "/metrics"): metrics_endpoint(metrics),
    }


def api_routes(parts: RouterParts, budget_limit: int | None = None) -> Routes:
    def openai(kind: Kind, path: str) -> Handler:
        return authenticated(parts, openai_endpoint(parts, kind, path, budget_limit))

    return {
        ("POST", "/v1/chat/completions"): openai("chat", "/chat/completions"),
        ("POST", "/v1/completions"): openai("completion", "/completions"),
        ("POST", "/v1/embeddings"): openai("embedding", "/embeddings"),
        ("GET", "/v1/models"): authenticated(parts, models_endpoint(parts)),
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        # Costs and routes are not for every client of a gateway.
        ("GET", "/metrics"): authenticated(parts, metrics_endpoint(parts.metrics)),
    }
