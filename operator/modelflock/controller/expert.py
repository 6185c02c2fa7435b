"""Reconciling one ModelExpert: children, status, and the autoscaler tick.

Level-based and idempotent: each call computes the desired children with the pure renderers,
applies them with server-side apply, reads back what the cluster shows and writes a truthful
status. The per-expert worker (a kopf daemon) calls it on events, on a timer and after scaling.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from datetime import time as dt_time
from typing import Any

import kopf
from pydantic import ValidationError

from modelflock.api.common import GROUP, VERSION, object_document
from modelflock.api.modelexpert import (
    WEEKDAYS,
    ModelExpert,
    ModelExpertSpec,
    ModelExpertStatus,
    ScheduledMinimum,
)
from modelflock.autoscale.algorithm import Reason, ScalingPolicy, StartingPod, remembered
from modelflock.autoscale.loop import ExpertPods, evaluate
from modelflock.autoscale.metrics_parse import Engine
from modelflock.autoscale.schedule import Schedule, known_time_zone
from modelflock.autoscale.sources import MetricSource, PodTarget, PrometheusSource, ScrapeSource
from modelflock.controller.context import ExpertState, ObjectKey, OperatorContext, child_marker
from modelflock.controller.kube import api_error_message, refusal_message
from modelflock.render.checks import Problem, check_expert
from modelflock.render.expert import (
    ExpertRef,
    engine_port,
    render_deployment,
    render_service,
    selector_string,
    service_endpoint,
)
from modelflock.render.expert_status import (
    SECRET_NOT_FOUND,
    SECRET_PLACEHOLDER,
    Observed,
    Transition,
    compute_status,
)
from modelflock.render.policy import cold_start_seconds
from modelflock.render.secret_values import placeholder_problem

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelExpert"


def desired_replicas(spec: ModelExpertSpec) -> int:
    """What the Deployment runs: spec.replicas (the autoscaler writes it), kept within bounds."""
    if spec.autoscaling is not None and not spec.autoscaling.enabled:
        return spec.replicas if spec.replicas is not None else 1
    scaling = spec.effective_autoscaling()
    wanted = spec.replicas if spec.replicas is not None else scaling.min_replicas
    return max(scaling.min_replicas, min(scaling.max_replicas, wanted))


def scaling_policy(spec: ModelExpertSpec) -> ScalingPolicy:
    scaling = spec.effective_autoscaling()
    return ScalingPolicy(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_queue_depth=scaling.target_queue_depth,
        tolerance_percent=scaling.tolerance_percent,
        max_scale_up_step=scaling.max_scale_up_step,
        scale_up_window_seconds=scaling.scale_up_stabilization_seconds,
        scale_down_window_seconds=scaling.scale_down_stabilization_seconds,
        scale_to_zero_after_seconds=scaling.scale_to_zero_after_seconds,
        capacity_hint=scaling.capacity_hint,
        burst_headroom=scaling.burst_headroom,
        stale_metrics_seconds=scaling.stale_metrics_seconds,
        # A zone the operator does not know is reported as UnknownTimeZone (render/checks.py).
        schedules=tuple(schedule(s) for s in scaling.schedules if known_time_zone(s.time_zone)),
    )


def schedule(spec: ScheduledMinimum) -> Schedule:
    """A spec.autoscaling.schedules entry as the algorithm takes it."""
    return Schedule(
        start=dt_time.fromisoformat(spec.start),
        end=dt_time.fromisoformat(spec.end),
        min_replicas=spec.min_replicas,
        days=frozenset(WEEKDAYS.index(d) for d in spec.days),
        time_zone=spec.time_zone,
    )


def _pod_is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_age_seconds(pod: Mapping[str, Any], now: datetime) -> float:
    created = pod.get("metadata", {}).get("creationTimestamp")
    if not created:
        return 0.0
    stamp = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    return max(0.0, (now - stamp).total_seconds())


def split_pods(
    pods: Sequence[Mapping[str, Any]], spec: ModelExpertSpec, state: ExpertState, now: datetime
) -> tuple[tuple[PodTarget, ...], tuple[StartingPod, ...]]:
    """Ready pods with an IP become scrape targets; the rest count as capacity on the way."""
    engine = Engine.TGI if spec.engine == "tgi" else Engine.VLLM
    port = engine_port(spec)
    ready: list[PodTarget] = []
    starting: list[StartingPod] = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name"))
        ip = pod.get("status", {}).get("podIP")
        if _pod_is_ready(pod) and ip:
            state.served_pods.add(name)
            ready.append(PodTarget(name=name, url=f"http://{ip}:{port}", engine=engine))
        else:
            scheduled = bool(pod.get("spec", {}).get("nodeName"))
            starting.append(
                StartingPod(
                    age_seconds=_pod_age_seconds(pod, now),
                    scheduled=scheduled,
                    ever_served=name in state.served_pods,
                )
            )
    return tuple(ready), tuple(starting)


async def _secret_problem(
    ctx: OperatorContext, namespace: str, spec: ModelExpertSpec
) -> tuple[str, str] | None:
    """For external experts: (reason, message) when the API-key Secret or key is missing or
    holds an obvious placeholder. Never returns or logs the value."""
    ref = spec.external.api_key_secret_ref if spec.external is not None else None
    if ref is None:
        return None
    secret = await ctx.kube.get("v1", "Secret", ref.name, namespace)
    if secret is None:
        return SECRET_NOT_FOUND, f"Secret {ref.name} not found in namespace {namespace}"
    data = secret.get("data") or {}
    if ref.key not in data:
        return SECRET_NOT_FOUND, f"Secret {ref.name} has no key {ref.key}"
    try:
        value = base64.b64decode(data[ref.key]).decode()
    except (ValueError, UnicodeDecodeError):
        return None  # binary: not a placeholder anyone would type
    why = placeholder_problem(value)
    if why is not None:
        return (
            SECRET_PLACEHOLDER,
            f"Secret {ref.name} key {ref.key} {why}: put the real API key in it",
        )
    return None


def _post_events(ctx: OperatorContext, body: kopf.Body, transitions: Sequence[Transition]) -> None:
    for item in transitions:
        ctx.event(
            body,
            type="Warning" if item.warning else "Normal",
            reason=item.reason,
            message=f"{item.type}={item.status}: {item.message}",
        )


def _parse(body: Mapping[str, Any]) -> ModelExpert:
    return ModelExpert.model_validate(object_document(body))


async def reconcile_expert(
    ctx: OperatorContext, key: ObjectKey, body: kopf.Body, logger: kopf.Logger
) -> None:
    """One full pass: children, autoscaler tick when due, status."""
    started = time.monotonic()
    state = ctx.expert_state(key)
    try:
        expert = _parse(body)
    except ValidationError as error:
        # Admission should have refused it; report instead of crashing the worker.
        ctx.metrics.reconciles.labels(KIND, "invalid").inc()
        ctx.event(body, type="Warning", reason="InvalidSpec", message=str(error))
        return
    namespace, name = key
    spec = expert.spec
    ref = ExpertRef(name=name, namespace=namespace, uid=str(expert.metadata.uid))
    now = datetime.now(UTC)
    generation = int(expert.metadata.generation or 0)
    # Our own last write wins over the watched body, which may not have caught up with it.
    status_before = state.last_status or expert.status or ModelExpertStatus()
    extra: dict[str, Any] = {}

    state.external = spec.engine == "external"
    state.cold_start_seconds = cold_start_seconds(expert)
    if spec.engine == "external":
        assert spec.external is not None
        secret = await _secret_problem(ctx, namespace, spec)
        observed = Observed(
            generation=generation,
            spec=spec,
            endpoint=spec.external.base_url,
            secret_problem=secret[1] if secret else None,
            secret_reason=secret[0] if secret else SECRET_NOT_FOUND,
        )
    else:
        problems = check_expert(spec, ctx.config)
        replicas = desired_replicas(spec)
        scaling = spec.effective_autoscaling()
        if not scaling.enabled:
            state.written_replicas = None  # spec.replicas rules; re-enabling starts from it
        elif state.written_replicas is not None:
            # One writer: the Deployment follows the autoscaler's last write, never a hand-made
            # spec.replicas (the tick overrides that) nor a watched body that lags behind it.
            replicas = max(scaling.min_replicas, min(scaling.max_replicas, state.written_replicas))
        deployment: dict[str, Any] | None = None
        if not any(p.blocking for p in problems):
            children = (
                render_service(ref, spec),
                render_deployment(ref, spec, ctx.config, replicas),
            )
            digest = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
            fresh = time.monotonic() - state.applied_at < ctx.config.resync_seconds
            if digest != state.applied_digest or not fresh:
                # Both at once; the apply's response is the Deployment as stored (status
                # included), so it needs no extra GET.
                try:
                    service, deployment = await asyncio.gather(*(ctx.apply(c) for c in children))
                except Exception as error:
                    refusal = refusal_message(error)
                    if refusal is None:
                        raise
                    # The schema let the spec through but the engine Deployment it renders is
                    # invalid (e.g. a malformed placement.affinity): say so in the status.
                    ctx.metrics.errors.labels(KIND, "apply").inc()
                    problems = [
                        *problems,
                        Problem(
                            "RejectedByAPIServer",
                            f"the API server refused the engine Deployment or Service: {refusal}",
                            blocking=True,
                        ),
                    ]
                else:
                    state.applied_digest, state.applied_at = digest, time.monotonic()
                    state.applied_markers = {
                        "Service": child_marker("Service", service),
                        "Deployment": child_marker("Deployment", deployment),
                    }
        if deployment is None:
            deployment = await ctx.kube.get("apps/v1", "Deployment", name, namespace)
        pods = await ctx.kube.list("v1", "Pod", namespace, selector_string(ref))
        observed = Observed(
            generation=generation,
            spec=spec,
            problems=problems,
            deployment=deployment,
            pods=pods,
            desired_replicas=replicas,
            endpoint=service_endpoint(ref, ctx.config.service_domain),
            selector=selector_string(ref),
        )
        state.desired_replicas = replicas
        ready_targets, starting = split_pods(pods, spec, state, now)
        state.ready_targets = ready_targets
        state.autoscaling = scaling.enabled
        due = time.monotonic() - state.last_autoscale >= ctx.config.autoscaler.interval_seconds
        if scaling.enabled and deployment is not None and due:
            extra = await autoscale_tick(
                ctx,
                key,
                body,
                spec,
                state,
                ExpertPods(replicas, ready_targets, starting),
                logger,
                now,
                status_before,
            )

    result = compute_status(observed, status_before, now)
    state.ready_replicas = result.status.ready_replicas or 0
    status = result.status.model_copy(update=extra).to_api()
    if status != status_before.to_api():
        await ctx.kube.patch_status(API_VERSION, KIND, name, namespace, status)
        state.last_status = result.status.model_copy(update=extra)
        # Policies that name this expert re-render on readiness/endpoint changes.
        ctx.trigger_policies_in(namespace)
    _post_events(ctx, body, result.transitions)
    _record_condition_metrics(ctx, key, result.status)
    ctx.metrics.reconciles.labels(KIND, "ok").inc()
    ctx.metrics.reconcile_seconds.labels(KIND).observe(time.monotonic() - started)


def _record_condition_metrics(
    ctx: OperatorContext, key: ObjectKey, status: ModelExpertStatus
) -> None:
    namespace, name = key
    for condition in status.conditions:
        for value in ("True", "False", "Unknown"):
            ctx.metrics.experts.labels(namespace, name, condition.type, value).set(
                1 if condition.status == value else 0
            )


def metric_source(ctx: OperatorContext, spec: ModelExpertSpec, namespace: str) -> MetricSource:
    assert ctx.http is not None
    settings = ctx.config.autoscaler
    wanted = spec.effective_autoscaling().metric_source
    if wanted == "prometheus" and settings.prometheus_url:
        key = f"prometheus/{namespace}"
        if key not in ctx.sources:
            ctx.sources[key] = PrometheusSource(
                ctx.http,
                ctx.source_metrics,
                settings.prometheus_url,
                namespace,
                timeout_seconds=settings.scrape_timeout_seconds,
            )
        return ctx.sources[key]
    if "scrape" not in ctx.sources:
        ctx.sources["scrape"] = ScrapeSource(
            ctx.http, ctx.source_metrics, timeout_seconds=settings.scrape_timeout_seconds
        )
    return ctx.sources["scrape"]


async def autoscale_tick(
    ctx: OperatorContext,
    key: ObjectKey,
    body: kopf.Body,
    spec: ModelExpertSpec,
    state: ExpertState,
    pods: ExpertPods,
    logger: kopf.Logger,
    now: datetime,
    learned: ModelExpertStatus | None = None,
) -> dict[str, Any]:
    """Sample, decide, write replicas through the scale subresource. Returns status fields.
    `learned` is the status as last written: what the autoscaler learned is kept there across
    operator restarts (capacityPerReplica, serviceSeconds, coldStartSeconds)."""
    namespace, name = key
    state.last_autoscale = time.monotonic()
    current = pods.current_replicas
    spec_replicas = spec.replicas
    if state.written_replicas is not None and spec_replicas not in (None, state.written_replicas):
        # The watched body can lag behind our own scale write: ask the API server first.
        fresh = await ctx.kube.get(API_VERSION, KIND, name, namespace)
        spec_replicas = ((fresh or {}).get("spec") or {}).get("replicas", spec_replicas)
    if state.written_replicas is not None and spec_replicas not in (None, state.written_replicas):
        ctx.event(
            body,
            type="Warning",
            reason="ManualScaleOverridden",
            message=f"spec.replicas was set to {spec_replicas} by hand while autoscaling is on;"
            f" the autoscaler keeps {state.written_replicas} (disable autoscaling to scale by hand)",
        )
        current = state.written_replicas
        pods = ExpertPods(current, pods.ready, pods.starting)
    policy = scaling_policy(spec)
    evaluation = await evaluate(
        policy,
        pods,
        metric_source(ctx, spec, namespace),
        ctx.demand.latest(namespace, name),
        remembered(
            state.scaler,
            learned.capacity_per_replica if learned else None,
            learned.service_seconds if learned else None,
            learned.cold_start_seconds if learned else None,
        ),
        time.monotonic(),  # the DemandStore's clock
        wall_clock=now,  # scheduled minimums read the time of day
    )
    decision = evaluation.decision
    state.scaler = decision.memory
    state.loads = evaluation.loads
    desired = decision.desired_replicas
    direction = "up" if desired > current else "down" if desired < current else "none"
    ctx.metrics.decisions.labels(namespace, name, decision.reason.value, direction).inc()
    ctx.metrics.queue_depth.labels(namespace, name).set(decision.queue_depth)
    ctx.metrics.target_queue_depth.labels(namespace, name).set(policy.target_queue_depth)
    ctx.metrics.desired_replicas.labels(namespace, name).set(desired)
    fields: dict[str, Any] = {"queue_depth": round(decision.queue_depth)}
    memory = decision.memory
    if memory.capacity_per_replica is not None:
        fields["capacity_per_replica"] = round(memory.capacity_per_replica, 2)
        if memory.replica_rate:
            service = memory.capacity_per_replica / memory.replica_rate
            fields["service_seconds"] = round(service, 2)
    if memory.cold_start_seconds is not None:
        fields["cold_start_seconds"] = round(memory.cold_start_seconds, 1)
    if desired != current or spec_replicas != desired:
        try:
            await ctx.kube.scale(API_VERSION, KIND, name, namespace, desired)
        except Exception as error:
            ctx.metrics.errors.labels(KIND, "scale").inc()
            logger.warning(
                "cannot scale %s/%s to %d: %s", namespace, name, desired, api_error_message(error)
            )
            return fields
        state.written_replicas = desired
        if desired != current:
            ctx.event(
                body,
                type="Normal",
                reason="Scaled",
                message=f"{current} -> {desired} replicas: {decision.reason.value}: {decision.message}",
            )
            fields["last_scale_time"] = now
            fields["last_scale_reason"] = decision.reason.value
            state.trigger.set()  # apply the new replica count to the Deployment right away
    if decision.reason is Reason.METRICS_UNAVAILABLE:
        logger.debug("%s/%s: %s", namespace, name, decision.message)
    return fields
