"""The flock API: how routers (with no Kubernetes permissions) learn expert replicas and load,
and signal demand for cold experts. Contract: docs/discovery.md.

Each RoutingPolicy has its own bearer token; a token opens only its policy, and a policy only
shows the experts it names.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from modelflock.controller.context import ObjectKey, OperatorContext, PolicyAccess
from modelflock.controller.readiness import not_ready
from modelflock.evaluation.wire import NotNamedError, parse_report
from modelflock.render.classifier_health import ClassifierReport, keep_recent
from modelflock.render.policy import StoreReport

PREFIX = "/flock/v1/namespaces/{namespace}/routingpolicies/{policy}"
MAX_DEMAND_BODY = 4096
MAX_EVALUATION_BODY = 256 * 1024
MAX_REPORT_BODY = 16384
MAX_ROUTERS_PER_POLICY = 1000  # sidecars: one report each; older ones expire anyway


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


def _authorize(
    ctx: OperatorContext, request: web.Request
) -> tuple[ObjectKey, PolicyAccess] | web.Response:
    key = (request.match_info["namespace"], request.match_info["policy"])
    access = ctx.policy_access.get(key)
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else ""
    # Same answer for unknown policy and wrong token: don't reveal which policies exist.
    if access is None or not token or not hmac.compare_digest(token, access.token):
        return _error(401, "missing or invalid bearer token for this routing policy")
    return key, access


async def _read_body(request: web.Request, limit: int, what: str) -> bytes | web.Response:
    """The request body, or a 413 once it passes `limit` bytes: a declared Content-Length is
    refused before reading, and a chunked body is cut as soon as it grows past the limit."""
    if (request.content_length or 0) > limit:
        return _error(413, f"{what} too large (over {limit} bytes)")
    body = bytearray()
    async for chunk in request.content.iter_chunked(limit + 1):
        body += chunk
        if len(body) > limit:
            return _error(413, f"{what} too large (over {limit} bytes)")
    return bytes(body)


def _parse_json(raw: bytes) -> Any:
    """JSON from a body; ValueError for anything unreadable, nesting too deep included."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nests too deeply") from None


def endpoints_document(
    ctx: OperatorContext, namespace: str, experts: frozenset[str]
) -> dict[str, Any]:
    """The discovery answer for one policy: replicas and last-known load per named expert."""
    result: dict[str, Any] = {}
    for name in sorted(experts):
        state = ctx.experts.get((namespace, name))
        if state is None or state.external:
            continue
        loads = {target.name: load for target, load in state.loads}
        endpoints = []
        for target in state.ready_targets:
            entry: dict[str, Any] = {"url": target.url, "ready": True}
            load = loads.get(target.name)
            if load is not None:
                entry["queueDepth"] = round(load.waiting)
                entry["running"] = round(load.running)
            endpoints.append(entry)
        result[name] = {
            "readyReplicas": state.ready_replicas,
            "desiredReplicas": state.desired_replicas,
            "coldStartSeconds": state.cold_start_seconds,
            "endpoints": endpoints,
        }
    return {"experts": result, "generatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def flock_app(ctx: OperatorContext) -> web.Application:
    async def endpoints(request: web.Request) -> web.Response:
        checked = _authorize(ctx, request)
        if isinstance(checked, web.Response):
            return checked
        (namespace, _), access = checked
        return web.json_response(endpoints_document(ctx, namespace, access.experts))

    async def demand(request: web.Request) -> web.Response:
        checked = _authorize(ctx, request)
        if isinstance(checked, web.Response):
            return checked
        (namespace, _), access = checked
        raw = await _read_body(request, MAX_DEMAND_BODY, "demand body")
        if isinstance(raw, web.Response):
            return raw
        try:
            body = _parse_json(raw)
            expert = str(body["expert"])
            waiting = int(body.get("waiting", 1))
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected JSON {"expert": "<name>", "waiting": <int>}')
        if expert not in access.experts:
            return _error(403, f"expert {expert!r} is not named by this routing policy")
        ctx.demand.record(namespace, expert, waiting)
        ctx.trigger_expert((namespace, expert))
        return web.json_response({"accepted": True}, status=202)

    async def evaluation(request: web.Request) -> web.Response:
        """A router's shadow-evaluation counters (deltas); answers the policy's spend today,
        which caps every router's samples (docs/evaluation.md)."""
        checked = _authorize(ctx, request)
        if isinstance(checked, web.Response):
            return checked
        key, access = checked
        raw = await _read_body(request, MAX_EVALUATION_BODY, "evaluation report")
        if isinstance(raw, web.Response):
            return raw
        try:
            report = parse_report(_parse_json(raw), access.experts)
        except NotNamedError as error:
            return _error(403, str(error))
        except ValueError as error:
            return _error(400, f"invalid evaluation report: {error}")
        state = ctx.evaluations.add(key, report, datetime.now(UTC))
        delay = ctx.evaluations.trigger_delay(key, time.monotonic())
        if delay == 0.0:
            ctx.trigger_policy(key)
        elif delay is not None:
            asyncio.get_running_loop().call_later(delay, ctx.trigger_policy, key)
        return web.json_response({"day": state.day or report.day, "spentTodayUSD": state.spent})

    async def retrieval(request: web.Request) -> web.Response:
        """A router reports whether a knowledge base's store answers (policy status)."""
        checked = _authorize(ctx, request)
        if isinstance(checked, web.Response):
            return checked
        key, access = checked
        raw = await _read_body(request, MAX_DEMAND_BODY, "retrieval report")
        if isinstance(raw, web.Response):
            return raw
        try:
            body = _parse_json(raw)
            name = str(body["knowledgeBase"])
            reachable = body["reachable"]
            detail = str(body.get("detail", ""))[:500]
            if not isinstance(reachable, bool):
                raise TypeError("reachable")
        except (ValueError, KeyError, TypeError):
            return _error(
                400, 'expected JSON {"knowledgeBase": "<name>", "reachable": <bool>, "detail"}'
            )
        if name not in access.knowledge_bases:
            return _error(403, f"knowledge base {name!r} is not named by this routing policy")
        reports = ctx.retrieval_reports.setdefault(key, {})
        before = reports.get(name)
        reports[name] = StoreReport(reachable, detail, datetime.now(UTC))
        if before is None or before.reachable != reachable:
            ctx.trigger_policy(key)
        return web.json_response({"accepted": True}, status=202)

    async def classifier(request: web.Request) -> web.Response:
        """A router's classifier health report; feeds the ClassifierDegraded condition."""
        checked = _authorize(ctx, request)
        if isinstance(checked, web.Response):
            return checked
        key, _ = checked
        raw = await _read_body(request, MAX_REPORT_BODY, "classifier report")
        if isinstance(raw, web.Response):
            return raw
        try:
            report = ClassifierReport.model_validate_json(raw)
        except ValidationError as error:
            return _error(400, f"invalid classifier report: {error.errors()[0]['msg']}")
        now = time.monotonic()
        reports = keep_recent(ctx.classifier_reports.get(key, {}), now)
        before = reports.get(report.router)
        if report.router in reports or len(reports) < MAX_ROUTERS_PER_POLICY:
            reports[report.router] = (now, report)
        ctx.classifier_reports[key] = reports
        if before is None or before[1].failing != report.failing:
            ctx.trigger_policy(key)  # the condition may change: recompute the status now
        return web.json_response({"accepted": True}, status=202)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        # Answering at all shows the flock API listens; the others are checked by connecting.
        problems = await not_ready(ctx.readiness_listeners)
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_EVALUATION_BODY)
    app.router.add_get(PREFIX + "/endpoints", endpoints)
    app.router.add_post(PREFIX + "/demand", demand)
    app.router.add_post(PREFIX + "/evaluation", evaluation)
    app.router.add_post(PREFIX + "/retrieval", retrieval)
    app.router.add_post(PREFIX + "/classifier", classifier)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
