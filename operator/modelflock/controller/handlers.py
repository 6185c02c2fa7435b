"""kopf handlers: parse the event, find the object, delegate. No logic lives here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import kopf

from modelflock.api.common import GROUP, VERSION
from modelflock.controller.context import OperatorContext
from modelflock.controller.expert import reconcile_expert
from modelflock.controller.knowledgebase import reconcile_knowledge_base
from modelflock.controller.kube import NotLeader, api_error_message
from modelflock.controller.outage import is_unreachable_error
from modelflock.controller.policy import reconcile_policy
from modelflock.controller.servers import start_flock_api
from modelflock.render.examples import EXAMPLES_LABEL
from modelflock.render.expert import EXPERT_LABEL
from modelflock.render.injection import inject_sidecar
from modelflock.render.router_pod import POLICY_LABEL

FINALIZER = "modelflock.io/finalizer"
ERROR_BACKOFF_SECONDS = 5.0
# kopf retries a failed API request with these pauses (its default grows to 21 s, so a watch
# could resume up to 21 s after the API server came back). Capped at 2 s, for about ten
# minutes, after which a watch simply reconnects and starts over.
API_ERROR_BACKOFFS = (0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, *([2.0] * 300))


def _context(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo.ctx
    return ctx


async def _wait_for_trigger(
    trigger: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float
) -> None:
    waiters = {
        asyncio.create_task(trigger.wait()),
        asyncio.ensure_future(stopped.wait()),
    }
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _work(
    reconcile: Callable[[], Awaitable[None]],
    trigger: asyncio.Event,
    stopped: kopf.DaemonStopped,
    period: Callable[[], float],
    ctx: OperatorContext,
    kind: str,
    logger: kopf.Logger,
) -> None:
    """The worker loop of one object: reconcile, then sleep until triggered or `period` passes.

    One worker per object serialises its reconciles; triggers arriving meanwhile coalesce
    into one more pass.
    """
    while not stopped:
        trigger.clear()
        try:
            await reconcile()
            wait = period()  # after the pass: it may have switched autoscaling on or off
        except NotLeader:
            return  # the Lease was lost: the controllers are stopping; nothing to retry
        except Exception as error:
            ctx.metrics.reconciles.labels(kind, "error").inc()
            ctx.metrics.errors.labels(kind, "reconcile").inc()
            message = api_error_message(error)
            # During an API outage every worker fails at once: log the outage once, not each.
            if not is_unreachable_error(message) or ctx.outage.failed(message):
                logger.warning("reconcile failed, retrying: %s", message)
            wait = min(period(), ERROR_BACKOFF_SECONDS)
        await _wait_for_trigger(trigger, stopped, wait)


def build_registry(
    webhook: kopf.WebhookServer | None = None, webhook_path: str = "/inject-sidecar"
) -> kopf.OperatorRegistry:
    """All handlers, in an explicit registry (no module-level state)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="modelflock.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modelflock.io", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        # Events are auxiliary (the status says it all): a refused post (e.g. in a namespace
        # being deleted) is retried twice, not eight times with a log line each.
        settings.posting.default_backoffs = (1.0, 3.0)
        settings.watching.server_timeout = 300
        ctx = _context(memo)
        settings.networking.request_timeout = ctx.config.request_timeout_seconds
        settings.networking.error_backoffs = API_ERROR_BACKOFFS
        # The two CRDs must exist at start (checked by the runtime); no cluster-wide watch of
        # CRDs or namespaces is needed, so the operator can run with namespaced Roles only.
        settings.scanning.disabled = True
        if webhook is not None:
            settings.admission.server = webhook
            settings.admission.managed = None  # the chart (or the test) owns the configuration
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="kube")
        )
        ctx.http = aiohttp.ClientSession()
        memo.runners = [await start_flock_api(ctx)]

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Same credentials as our own client: in-cluster service account or the kubeconfig.
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(memo: Any, **_: Any) -> None:
        ctx = _context(memo)
        for runner in getattr(memo, "runners", []):
            await runner.cleanup()
        if ctx.http is not None:
            await ctx.http.close()

    @kopf.daemon(GROUP, VERSION, "modelexperts", registry=registry, cancellation_timeout=10.0)
    async def expert_worker(
        body: kopf.Body,
        namespace: str | None,
        name: str,
        memo: Any,
        stopped: kopf.DaemonStopped,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        ctx = _context(memo)
        key = (str(namespace), name)
        state = ctx.expert_state(key)

        def period() -> float:
            if state.autoscaling:
                return min(ctx.config.resync_seconds, ctx.config.autoscaler.interval_seconds)
            return ctx.config.resync_seconds

        try:
            await _work(
                lambda: reconcile_expert(ctx, key, body, logger),
                state.trigger,
                stopped,
                period,
                ctx,
                "ModelExpert",
                logger,
            )
        finally:
            ctx.experts.pop(key, None)
            ctx.metrics.forget_expert(str(namespace), name)

    @kopf.daemon(GROUP, VERSION, "routingpolicies", registry=registry, cancellation_timeout=10.0)
    async def policy_worker(
        body: kopf.Body,
        namespace: str | None,
        name: str,
        memo: Any,
        stopped: kopf.DaemonStopped,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        ctx = _context(memo)
        key = (str(namespace), name)
        trigger = ctx.policy_triggers.setdefault(key, asyncio.Event())
        try:
            await _work(
                lambda: reconcile_policy(ctx, key, body, logger),
                trigger,
                stopped,
                lambda: ctx.config.resync_seconds,
                ctx,
                "RoutingPolicy",
                logger,
            )
        finally:
            ctx.policy_triggers.pop(key, None)
            ctx.policy_access.pop(key, None)
            ctx.sidecar_plans.pop(key, None)
            ctx.policy_status.pop(key, None)
            ctx.evaluations.forget(key)

    @kopf.daemon(GROUP, VERSION, "knowledgebases", registry=registry, cancellation_timeout=10.0)
    async def knowledge_base_worker(
        body: kopf.Body,
        namespace: str | None,
        name: str,
        memo: Any,
        stopped: kopf.DaemonStopped,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        ctx = _context(memo)
        key = (str(namespace), name)
        trigger = ctx.kb_triggers.setdefault(key, asyncio.Event())
        resync = [float(ctx.config.resync_seconds)]

        async def reconcile() -> None:
            resync[0] = await reconcile_knowledge_base(ctx, key, body, logger)
            ctx.trigger_policies_in(key[0])  # policies render the table and dimensions

        try:
            await _work(
                reconcile, trigger, stopped, lambda: resync[0], ctx, "KnowledgeBase", logger
            )
        finally:
            ctx.kb_triggers.pop(key, None)
            ctx.kb_status.pop(key, None)

    @kopf.on.event(GROUP, VERSION, "knowledgebases", registry=registry)
    def knowledge_base_changed(
        namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
    ) -> None:
        ctx = _context(memo)
        key = (str(namespace), name)
        seen = ctx.kb_status.get(key)
        generation = (body.get("metadata") or {}).get("generation")
        # Our own status writes come back as events: only a new spec starts a pass.
        if seen is None or seen.observed_generation != generation:
            event = ctx.kb_triggers.get(key)
            if event is not None:
                event.set()

    @kopf.on.event(GROUP, VERSION, "routingpolicies", registry=registry)
    def policy_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        _context(memo).trigger_policy((str(namespace), name))

    @kopf.on.event(GROUP, VERSION, "modelexperts", registry=registry)
    def expert_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        ctx = _context(memo)
        ctx.trigger_expert((str(namespace), name))
        ctx.trigger_policies_in(str(namespace))

    @kopf.on.event("", "v1", "configmaps", registry=registry, labels={EXAMPLES_LABEL: kopf.PRESENT})
    def examples_changed(namespace: str | None, memo: Any, **_: Any) -> None:
        # Example prompts for classifiers (spec.classifier.examplesFrom): re-render at once.
        # Unlabelled ConfigMaps are picked up by the periodic resync.
        _context(memo).trigger_policies_in(str(namespace))

    def child_changed(
        labels: kopf.Labels,
        namespace: str | None,
        memo: Any,
        body: kopf.Body,
        type: str | None,
        **_: Any,
    ) -> None:
        key = (str(namespace), labels[EXPERT_LABEL])
        _context(memo).child_event(key, type == "DELETED", body)

    for group, version, plural in (
        ("apps", "v1", "deployments"),
        ("", "v1", "services"),
        ("", "v1", "pods"),
    ):
        kopf.on.event(
            group,
            version,
            plural,
            registry=registry,
            labels={EXPERT_LABEL: kopf.PRESENT},
            id=f"child-{plural}",
        )(child_changed)

    if webhook is not None:

        @kopf.on.mutate(
            "",
            "v1",
            "pods",
            id=webhook_path.strip("/"),
            registry=registry,
            operation="CREATE",
            labels={POLICY_LABEL: kopf.PRESENT},
        )
        def inject_router(
            body: kopf.Body, patch: kopf.Patch, warnings: list[str], memo: Any, **_: Any
        ) -> None:
            ctx = _context(memo)
            namespace = str(body.metadata.namespace or "")
            policy = str(body.metadata.labels.get(POLICY_LABEL, ""))
            result = inject_sidecar(body, ctx.sidecar_plans.get((namespace, policy)))
            warnings.extend(result.warnings)
            if result.containers is not None:
                patch.spec["containers"] = result.containers
            if result.volumes is not None:
                patch.spec["volumes"] = result.volumes
            if result.labels is not None:
                patch.metadata["labels"] = result.labels

    return registry
