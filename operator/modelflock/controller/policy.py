"""Reconciling one RoutingPolicy: router token, rendered router config, gateway, status."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from modelflock.api.common import GROUP, VERSION, object_document
from modelflock.api.knowledgebase import KnowledgeBase
from modelflock.api.modelexpert import ModelExpert
from modelflock.api.routingpolicy import RoutingPolicy, RoutingPolicyStatus
from modelflock.controller.context import ObjectKey, OperatorContext, PolicyAccess
from modelflock.render.classifier_health import keep_recent, report_problems
from modelflock.render.evaluation import evaluation_status, recommendation_changes
from modelflock.render.examples import LoadedExamples, load_examples
from modelflock.render.injection import SidecarPlan
from modelflock.render.policy import (
    CONFIG_KEY,
    GATEWAY_CONFIG_KEY,
    RouterSettings,
    compute_policy_status,
    config_hash,
    config_map_name,
    examples_problems,
    expert_names,
    knowledge_base_names,
    knowledge_base_secrets,
    referenced_secrets,
    render_config_text,
    render_gateway_config,
    render_router_config,
    stage_problems,
    token_secret_name,
)
from modelflock.render.router_pod import (
    gateway_name,
    render_gateway,
    router_volumes,
    sidecar_container,
)

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RoutingPolicy"
_GATEWAY_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def owner_reference(policy: RoutingPolicy) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": policy.metadata.name,
        "uid": str(policy.metadata.uid),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(policy: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "modelflock",
        "app.kubernetes.io/managed-by": "modelflock",
        "modelflock.io/routing-policy-owner": policy,
    }


async def ensure_token(ctx: OperatorContext, policy: RoutingPolicy) -> str:
    """The policy's router token: created once (random), then read back; never logged."""
    namespace = str(policy.metadata.namespace)
    name = token_secret_name(policy.metadata.name)
    secret = await ctx.kube.get("v1", "Secret", name, namespace)
    encoded = (secret or {}).get("data", {}).get("token") if secret else None
    if encoded:
        return base64.b64decode(encoded).decode()
    token = secrets.token_urlsafe(32)
    await ctx.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": _labels(policy.metadata.name),
                "ownerReferences": [owner_reference(policy)],
            },
            "type": "Opaque",
            "data": {"token": base64.b64encode(token.encode()).decode()},
        }
    )
    return token


async def load_experts(
    ctx: OperatorContext, namespace: str, names: list[str]
) -> dict[str, ModelExpert | None]:
    found: dict[str, ModelExpert | None] = {}
    for name in names:
        raw = await ctx.kube.get(API_VERSION, "ModelExpert", name, namespace)
        if raw is None:
            found[name] = None
            continue
        try:
            found[name] = ModelExpert.model_validate(object_document(raw))
        except ValidationError:
            found[name] = None
    return found


async def load_knowledge_bases(
    ctx: OperatorContext, namespace: str, names: list[str]
) -> dict[str, KnowledgeBase | None]:
    found: dict[str, KnowledgeBase | None] = {}
    for name in names:
        raw = await ctx.kube.get(API_VERSION, "KnowledgeBase", name, namespace)
        try:
            found[name] = (
                None if raw is None else KnowledgeBase.model_validate(object_document(raw))
            )
        except ValidationError:
            found[name] = None
    return found


async def load_policy_examples(ctx: OperatorContext, policy: RoutingPolicy) -> LoadedExamples:
    """Read the ConfigMaps named by spec.classifier.examplesFrom (same namespace)."""
    classifier = policy.spec.classifier
    if not classifier.examples_from:
        return LoadedExamples()
    namespace = str(policy.metadata.namespace)
    data: dict[str, dict[str, str] | None] = {}
    for source in classifier.examples_from:
        if source.config_map not in data:
            found = await ctx.kube.get("v1", "ConfigMap", source.config_map, namespace)
            data[source.config_map] = None if found is None else dict(found.get("data") or {})
    intents = {i.name for i in classifier.intents} | {classifier.default_intent}
    return load_examples(classifier.examples_from, data, intents)


async def reconcile_policy(
    ctx: OperatorContext, key: ObjectKey, body: kopf.Body, logger: kopf.Logger
) -> None:
    started = time.monotonic()
    try:
        policy = RoutingPolicy.model_validate(object_document(body))
    except ValidationError as error:
        ctx.metrics.reconciles.labels(KIND, "invalid").inc()
        ctx.event(body, type="Warning", reason="InvalidSpec", message=str(error))
        return
    namespace, name = key
    token = await ensure_token(ctx, policy)
    bases = await load_knowledge_bases(ctx, namespace, knowledge_base_names(policy))
    names = expert_names(policy, bases)
    ctx.policy_access[key] = PolicyAccess(
        token=token, experts=frozenset(names), knowledge_bases=frozenset(bases)
    )

    experts = await load_experts(ctx, namespace, names)
    settings = RouterSettings(
        operator_url=ctx.config.operator_url, domain=ctx.config.service_domain
    )
    examples = await load_policy_examples(ctx, policy)
    config = render_router_config(policy, experts, settings, bases, examples.examples)
    text = render_config_text(config)
    digest = config_hash(text)
    data = {CONFIG_KEY: text}
    gateway = policy.spec.gateway
    if gateway.replicas > 0:
        data[GATEWAY_CONFIG_KEY] = render_config_text(render_gateway_config(config, gateway))
    await ctx.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": config_map_name(name),
                "namespace": namespace,
                "labels": _labels(name),
                "annotations": {"modelflock.io/config-hash": digest},
                "ownerReferences": [owner_reference(policy)],
            },
            "data": data,
        }
    )
    key_files = sorted(set(referenced_secrets(experts)) | set(knowledge_base_secrets(bases)))
    if policy.spec.sidecar.inject:
        ctx.sidecar_plans[key] = SidecarPlan(
            container=sidecar_container(name, policy.spec, ctx.config.images.router, key_files),
            volumes=router_volumes(name, key_files),
            port=policy.spec.sidecar.port,
        )
    else:
        ctx.sidecar_plans.pop(key, None)
    wanted: set[str] = set()
    if gateway.replicas > 0:
        for manifest in render_gateway(
            name,
            namespace,
            owner_reference(policy),
            policy.spec,
            ctx.config.images.router,
            key_files,
        ):
            wanted.add(manifest["kind"])
            await ctx.apply(manifest)
    for api_version, kind in _GATEWAY_KINDS:
        if kind in wanted:
            continue
        existing = await ctx.kube.get(api_version, kind, gateway_name(name), namespace)
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
        if existing and any(o.get("uid") == str(policy.metadata.uid) for o in owners):
            await ctx.kube.delete(api_version, kind, gateway_name(name), namespace)

    # Our own last write wins over the watched body, which may not have caught up with it.
    previous = ctx.policy_status.get(key) or policy.status or RoutingPolicyStatus()
    now = time.monotonic()
    reports = keep_recent(ctx.classifier_reports.get(key, {}), now)
    ctx.classifier_reports[key] = reports
    problems = [
        *stage_problems(policy, experts),
        *examples_problems(examples),
        *report_problems(reports.values(), now),
    ]
    status = compute_policy_status(
        policy,
        experts,
        config_map_name(name),
        digest,
        previous,
        datetime.now(UTC),
        bases,
        ctx.retrieval_reports.get(key, {}),
        classifier_problems=problems,
    )
    status = _with_evaluation(ctx, key, policy, previous, status, body)
    _post_events(ctx, body, previous, status)
    if status.to_api() != previous.to_api():
        await ctx.kube.patch_status(API_VERSION, KIND, name, namespace, status.to_api())
        ctx.policy_status[key] = status
    ctx.metrics.reconciles.labels(KIND, "ok").inc()
    ctx.metrics.reconcile_seconds.labels(KIND).observe(time.monotonic() - started)


def _with_evaluation(
    ctx: OperatorContext,
    key: ObjectKey,
    policy: RoutingPolicy,
    previous: RoutingPolicyStatus,
    status: RoutingPolicyStatus,
    body: kopf.Body,
) -> RoutingPolicyStatus:
    """status.evaluation from the routers' reports; an Event for every changed recommendation
    (recommendations only: nothing here changes routing)."""
    state = ctx.evaluations.seed(key, previous.evaluation)
    evaluation = evaluation_status(
        policy.spec, state.totals, state.day, state.spent, state.dropped, state.last_report
    )
    for result in recommendation_changes(previous.evaluation, evaluation):
        ctx.event(
            body,
            type="Normal",
            reason=f"Recommend{result.recommendation}",
            message=result.message,
        )
    return status.model_copy(update={"evaluation": evaluation})


def _post_events(
    ctx: OperatorContext, body: kopf.Body, before: RoutingPolicyStatus, after: RoutingPolicyStatus
) -> None:
    old = {c.type: (c.status, c.reason) for c in before.conditions}
    for condition in after.conditions:
        if old.get(condition.type) != (condition.status, condition.reason):
            ctx.event(
                body,
                type="Normal" if condition.status == "True" else "Warning",
                reason=condition.reason,
                message=f"{condition.type}={condition.status}: {condition.message}",
            )
