"""The operator process: elect a leader, and run the controllers only while leading.

Every replica runs, in the main thread's event loop, the health and metrics listeners and the
leader-election loop (modelflock.leader). The replica that holds the Lease also runs the
controllers — kopf with our handlers, the flock API and the sidecar webhook — in a second
thread with its own event loop: a *term*. The term ends when the Lease is lost (then the
replica stands by and campaigns again) or the process is asked to stop (then the Lease is
released, so a standby takes over at once).

Two threads keep the roles apart: kopf cancels every task of its event loop when it stops, and
a slow controller shutdown must never delay a renewal. The fence is `Elector.is_leader`, which
every write of the controllers asks first (controller.kube.Kube.may_write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelflock.controller.context import SharedMetrics, new_context
from modelflock.controller.kube import Kube, api_error_message
from modelflock.controller.outage import ApiOutage, OutageFilter, is_unreachable_error
from modelflock.controller.readiness import Listener, not_ready
from modelflock.controller.servers import health_app, metrics_app, serve
from modelflock.leader.elector import Elector
from modelflock.leader.lease import LeaseStore
from modelflock.operator_config import OperatorConfig

log = logging.getLogger("modelflock.operator")

LEADER_LABEL = "modelflock.io/leader"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# How long a term may take to stop before the process gives up on it and exits (the pod
# restarts; its writes were fenced the moment the Lease was lost, whatever the thread does).
TERM_STOP_TIMEOUT = 40.0


@dataclass(frozen=True)
class RunOptions:
    config: OperatorConfig
    clusterwide: bool
    namespaces: tuple[str, ...]
    liveness_host: str
    liveness_port: int
    webhook_cert_dir: Path | None = None
    webhook_port: int = 9443
    webhook_path: str = "/inject-sidecar"


def own_namespace() -> str:
    """Where the Lease lives by default: the pod's namespace, else the service account's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def own_identity() -> str:
    """One identity per pod (a restarted container resumes its own Lease at once); outside a
    pod, one per process, so two operators started by hand never share one."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaderLabel:
    """`modelflock.io/leader=true` on the leader's own pod, so the operator Service (webhook,
    flock API) sends requests to the leader only. A no-op outside a pod. A failed patch is
    retried after `retry_seconds` and logged once per failure streak."""

    def __init__(self, kube: Kube, retry_seconds: float) -> None:
        self.kube = kube
        self.pod = os.environ.get("POD_NAME", "")
        self.namespace = os.environ.get("POD_NAMESPACE", "")
        self.value: bool | None = None
        self.retry_seconds = retry_seconds
        self._next_try = 0.0
        self._failing = False

    async def set(self, leader: bool) -> None:
        if not self.pod or not self.namespace:
            self.value = leader
            return
        now = time.monotonic()
        if self.value is leader or (self._failing and now < self._next_try):
            return
        try:
            await self.kube.patch_labels(
                "v1", "Pod", self.pod, self.namespace, {LEADER_LABEL: "true" if leader else None}
            )
        except Exception as error:
            self._next_try = now + self.retry_seconds
            if not self._failing:
                log.warning(
                    "cannot %s label %s on pod %s (retrying every %gs): %s",
                    "set" if leader else "remove",
                    LEADER_LABEL,
                    self.pod,
                    self.retry_seconds,
                    api_error_message(error),
                )
            self._failing = True
            return
        if self._failing:
            log.info("label %s on pod %s is right again", LEADER_LABEL, self.pod)
        self._failing = False
        self.value = leader


def log_kopf_stream_close_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The term's event-loop exception handler. When a term stops, `asyncio.run` closes the
    async generators still open; a kopf watch stream caught mid-event may fail to close
    ("an error occurred during closing of asynchronous generator"). The term is ending and
    the stream with it, so that is one warning line, not a traceback; everything else goes
    to asyncio's default handler."""
    agen = context.get("asyncgen")
    code = getattr(agen, "ag_code", None)
    if code is not None and f"{os.sep}kopf{os.sep}" in code.co_filename:
        log.warning(
            "kopf's %s did not close cleanly as the controllers stopped: %r",
            getattr(agen, "__qualname__", "stream"),
            context.get("exception"),
        )
        return
    loop.default_exception_handler(context)


class Term:
    """The controllers (kopf + flock API + webhook) in a thread of their own, while leading."""

    def __init__(
        self,
        options: RunOptions,
        metrics: SharedMetrics,
        elector: Elector,
        outage: ApiOutage,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.elector = elector
        self.outage = outage
        self.stop_flag = threading.Event()
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self._main_loop = loop
        self._thread = threading.Thread(target=self._main, name="controllers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:
            self.error = error
        finally:
            self._main_loop.call_soon_threadsafe(self.done.set)

    async def _run(self) -> None:
        import kopf

        from modelflock.controller.handlers import build_registry

        options = self.options
        kube = Kube.connect(
            may_write=self.elector.is_leader, timeout=options.config.request_timeout_seconds
        )
        ctx = new_context(options.config, kube, self.metrics, self.outage)
        loop = asyncio.get_running_loop()

        def resume() -> None:
            loop.call_soon_threadsafe(ctx.trigger_all)

        remove = self.outage.add_listener(resume)
        loop.set_exception_handler(log_kopf_stream_close_errors)
        webhook = None
        if options.webhook_cert_dir is not None:
            ctx.readiness_listeners = (
                Listener("webhook", options.config.bind_address, options.webhook_port),
            )
            webhook = kopf.WebhookServer(
                addr=options.config.bind_address,
                port=options.webhook_port,
                certfile=str(options.webhook_cert_dir / "tls.crt"),
                pkeyfile=str(options.webhook_cert_dir / "tls.key"),
            )
        try:
            await kopf.operator(
                registry=build_registry(webhook, options.webhook_path),
                clusterwide=options.clusterwide,
                namespaces=options.namespaces,
                standalone=True,
                stop_flag=self.stop_flag,
                memo=kopf.Memo(ctx=ctx),
            )
        finally:
            remove()

    async def stop(self) -> bool:
        """Ask the controllers to stop; True when they did within TERM_STOP_TIMEOUT."""
        self.stop_flag.set()
        try:
            await asyncio.wait_for(self.done.wait(), timeout=TERM_STOP_TIMEOUT)
        except TimeoutError:
            return False
        return True


async def _check_crds(kube: Kube) -> str | None:
    """The two CRDs must be served before the controllers start (kopf does not scan for CRDs
    that appear later, so that the operator needs no cluster-wide read of CRDs)."""

    def call() -> str | None:
        for kind in ("ModelExpert", "RoutingPolicy"):
            try:
                kube.dynamic.resources.get(api_version="modelflock.io/v1alpha1", kind=kind)
            except Exception as error:
                return f"{kind} (modelflock.io/v1alpha1) is not served: {error}"
        return None

    return await asyncio.to_thread(call)


async def run_operator(options: RunOptions) -> int:
    """The whole process; returns its exit code."""
    config = options.config
    outage = ApiOutage()
    outage_filter = OutageFilter(outage)
    for handler in logging.getLogger().handlers:
        handler.addFilter(outage_filter)
    metrics = SharedMetrics.create()
    settings = config.leader_election
    # The election's requests must end before the renew deadline, or the fence is late.
    election_kube = Kube.connect(timeout=settings.renew_deadline_seconds)
    store = LeaseStore(
        election_kube, settings.lease_name, settings.lease_namespace or own_namespace()
    )

    def api_error(message: str) -> bool:
        return not is_unreachable_error(message) or outage.failed(message)

    elector = Elector(
        store, own_identity(), settings, on_api_ok=outage.recovered, on_api_error=api_error
    )
    label = LeaderLabel(election_kube, settings.retry_period_seconds)
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown.set)

    def report() -> dict[str, Any]:
        return {
            "leader": elector.is_leader(),
            "identity": elector.identity,
            "holder": elector.holder,
        }

    # What the leader must have open before the Service may send it traffic.
    listeners = [Listener("flock API", config.bind_address, config.flock_api_port)]
    if options.webhook_cert_dir is not None:
        listeners.append(Listener("webhook", config.bind_address, options.webhook_port))

    async def readiness() -> list[str]:
        # A standby takes no traffic (the Service selects the leader's label) and is ready to
        # take over: ready, so rollouts and disruption budgets count it.
        return await not_ready(listeners) if elector.is_leader() else []

    runners = [
        await serve(metrics_app(metrics.registry), config.bind_address, config.metrics_port),
        await serve(health_app(report, readiness), options.liveness_host, options.liveness_port),
    ]
    log.info(
        "operator %s starting; leader election on %s (lease %gs, renew deadline %gs, retry %gs)",
        elector.identity,
        store.where,
        settings.lease_duration_seconds,
        settings.renew_deadline_seconds,
        settings.retry_period_seconds,
    )
    election_stop = asyncio.Event()
    election = asyncio.create_task(elector.run(election_stop), name="leader election")
    exit_code = 0
    try:
        await label.set(False)  # a restarted container may still carry the label
        while not shutdown.is_set():
            if not await _wait_for_leadership(elector, shutdown, label):
                break
            problem = await _check_crds(election_kube)
            if problem is not None:
                log.error("cannot start the controllers: %s", problem)
                exit_code = 1
                break
            exit_code = await _lead(options, metrics, elector, outage, loop, shutdown, label)
            if exit_code != 0:
                break
    finally:
        election_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await elector.release()
        await label.set(False)
        for runner in runners:
            await runner.cleanup()
    return exit_code


async def _wait_for_leadership(
    elector: Elector, shutdown: asyncio.Event, label: LeaderLabel
) -> bool:
    while not shutdown.is_set():
        if elector.firmly_leading():
            return True
        if label.value is not False:  # not removed yet (e.g. the API was down at start)
            await label.set(False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), timeout=0.2)
    return False


async def _lead(
    options: RunOptions,
    metrics: SharedMetrics,
    elector: Elector,
    outage: ApiOutage,
    loop: asyncio.AbstractEventLoop,
    shutdown: asyncio.Event,
    label: LeaderLabel,
) -> int:
    """One term: run the controllers until the Lease is lost, the process stops, or they fail.
    Returns 0 to campaign again (or stop, if asked), 1 when the process must exit."""
    term = Term(options, metrics, elector, outage, loop)
    term.start()
    metrics.operator.leader.set(1)
    metrics.operator.leader_terms.inc()
    log.info("leading: controllers started")
    try:
        while True:
            if not label.value:
                await label.set(True)
            if shutdown.is_set() or term.done.is_set():
                break
            if not elector.is_leader():
                log.warning(
                    "lost the leader Lease (no renewal for %gs): controllers stop writing now",
                    options.config.leader_election.renew_deadline_seconds,
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(shutdown, term.done), timeout=0.2)
    finally:
        metrics.operator.leader.set(0)
    crashed = term.done.is_set()
    stopped = await term.stop()
    if crashed:
        log.error("the controllers stopped on their own (%r): exiting", term.error)
        return 1
    if not stopped:
        log.error("the controllers did not stop within %gs: exiting", TERM_STOP_TIMEOUT)
        return 1
    if term.error is not None:
        log.error("the controllers ended with an error: %r", term.error)
    log.info("controllers stopped")
    return 0


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
