"""From a parsed request to a dispatch Job: model resolution, classification, route."""

from __future__ import annotations

import asyncio

from modelflock.router.accounting import RouterMetrics
from modelflock.router.classify.features import Decision, Features
from modelflock.router.config import Route
from modelflock.router.errors import RequestError
from modelflock.router.http_server import Request
from modelflock.router.job import Job
from modelflock.router.request import ParsedRequest
from modelflock.router.routing import candidate_sequence, select_route
from modelflock.router.state import RouterState


def _unknown_model(model: str) -> RequestError:
    return RequestError(404, f"The model `{model}` does not exist.", "model", "model_not_found")


async def plan_job(
    request: Request,
    parsed: ParsedRequest,
    state: RouterState,
    path: str,
    metrics: RouterMetrics,
) -> Job:
    started = asyncio.get_running_loop().time()
    model = parsed.model

    def job(
        route: str,
        intent: str,
        classifier: str,
        sequence: list[str],
        cascade_len: int = 1,
        cascade_route: str | None = None,
        route_spec: Route | None = None,
    ) -> Job:
        checks = state.checks.get(cascade_route) if cascade_route and not parsed.stream else None
        return Job(
            request=request,
            parsed=parsed,
            state=state,
            path=path,
            route=route,
            intent=intent,
            classifier=classifier,
            sequence=sequence,
            cascade_len=cascade_len,
            checks=checks,
            started=started,
            route_spec=route_spec,
        )

    if parsed.kind == "embedding":
        if model in state.experts:
            return job("direct", "embedding", "model", [model])
        if model in state.routed_models and state.embedding_expert:
            return job("embeddings", "embedding", "capability", [state.embedding_expert])
        raise _unknown_model(model)
    if model not in state.routed_models:
        if model in state.experts:  # asking for an expert by name pins it
            return job("direct", "direct", "model", [model])
        raise _unknown_model(model)
    features = Features(parsed.prompt, parsed.total_chars, model, request.headers)
    decision = await state.chain.classify(features)
    record_decision(metrics, decision)
    route = select_route(state.config.routes, decision.intent, model, request.headers)
    if route is None:
        raise RequestError(503, f"no route matches intent `{decision.intent}`", code="no_route")
    planned = job(
        route.name,
        decision.intent,
        decision.classifier,
        candidate_sequence(route),
        len(route.primary),
        route.name if route.cascade else None,
        route,
    )
    if decision.failures:
        failures = ",".join(f"{o.stage}={o.outcome}" for o in decision.failures)
        planned.extra_headers["x-modelflock-classifier-failures"] = failures
    return planned


def record_decision(metrics: RouterMetrics, decision: Decision) -> None:
    metrics.decisions.inc((decision.classifier, decision.intent))
    for outcome in decision.trail:
        metrics.stage_seconds.observe((outcome.stage, outcome.outcome), outcome.seconds)
    for failed in decision.failures:
        metrics.stage_failures.inc((failed.stage, failed.outcome))
        metrics.last_stage_failure[failed.stage] = f"{failed.outcome}: {failed.detail}"
