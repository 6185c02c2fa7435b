"""The router process: config state, upstream client, discovery, and its HTTP listeners."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from modelflock.router.accounting import RouterMetrics
from modelflock.router.budget import MemoryBudget
from modelflock.router.config import Evaluation
from modelflock.router.discovery import DiscoveryClient
from modelflock.router.dispatch import Dispatcher
from modelflock.router.handlers import RouterParts, api_routes, not_found, ops_routes
from modelflock.router.handoff import HandoffStep
from modelflock.router.health_report import ClassifierReporter
from modelflock.router.http1 import Http1Client
from modelflock.router.http_server import HttpServer, Limits
from modelflock.router.retrieval import RetrievalStep
from modelflock.router.shadow.budget import DailyBudget
from modelflock.router.shadow.reporting import ShadowReporter
from modelflock.router.shadow.runner import ShadowStep
from modelflock.router.state import StateHolder, load_files
from modelflock.router.steps import Steps
from modelflock.router.upstream import Upstream

# Requests still running when the router is told to stop get this long to finish.
_STOP_GRACE_SECONDS = 10.0


class RouterServer:
    """The router listening on host:port (port 0: a free port); used by the CLI and tests."""

    def __init__(self, config_path: Path, extra_steps: Steps | None = None) -> None:
        self.config_path = config_path
        self.extra_steps = extra_steps or Steps()
        self.metrics = RouterMetrics()
        self.host, self.port = "", 0
        self.ops_port = 0
        self.shadow: ShadowStep | None = None
        self.shadow_reporter: ShadowReporter | None = None
        self._server: HttpServer | None = None
        self._ops: HttpServer | None = None
        self._holder: StateHolder | None = None
        self.reporter: ClassifierReporter | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def holder(self) -> StateHolder:
        assert self._holder is not None, "the router is not started"
        return self._holder

    def _refused(self, status: int) -> None:
        """Requests the server answered before any handler (413, 431, 400): counted too."""
        self.metrics.requests.inc(("none", "none", "none", str(status)))
        self.metrics.errors.inc(("none", "none", f"http_{status}"))

    async def start(self, host: str, port: int) -> None:
        try:
            await self._start(host, port)
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self, host: str, port: int) -> None:
        metrics, stack = self.metrics, self._stack
        config, _, _ = await asyncio.to_thread(load_files, self.config_path)
        connect = config.defaults.connect_timeout_seconds
        # aiohttp's client only for the operator's discovery API; experts get the leaner
        # Http1Client (keep-alive pools per endpoint, no proxies from the environment).
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect),
        )
        stack.push_async_callback(session.close)
        client = Http1Client(connect_timeout=connect)
        stack.callback(client.close)
        discovery = DiscoveryClient(
            session,
            config=lambda: self.holder.current.config.discovery,
            overload_depth=lambda: self.holder.current.config.defaults.overload_queue_depth,
            experts=lambda: {e.name: e for e in self.holder.current.config.experts},
        )
        stack.push_async_callback(discovery.close)
        upstream = Upstream(client, discovery)
        holder = await asyncio.to_thread(
            StateHolder,
            self.config_path,
            upstream,
            lambda r: metrics.reloads.inc((r,)),
            lambda stage, count: metrics.examples_ready.set((stage,), count),
        )
        self._holder = holder
        stack.push_async_callback(holder.close)
        holder.start()
        await discovery.poll_once()  # start with live endpoints when the operator answers
        reporter = ClassifierReporter(
            discovery, lambda: self.holder.current.config.discovery, metrics
        )
        self.reporter = reporter
        loop = asyncio.get_running_loop()
        tasks = (holder.watch(), discovery.run(), reporter.run())
        for task in map(loop.create_task, tasks):
            stack.push_async_callback(_cancel, task)
        retrieval = RetrievalStep(upstream, metrics, discovery.note_retrieval)
        stack.push_async_callback(retrieval.close)
        steps = self._steps(upstream, discovery, retrieval, HandoffStep(metrics))
        parts = RouterParts(lambda: holder.current, metrics, Dispatcher(upstream, metrics, steps))
        defaults = config.defaults
        # Every request's body, parsed JSON and buffered answer come out of one budget.
        budget = MemoryBudget(defaults.max_buffered_bytes)
        limits = Limits(
            head_timeout=defaults.header_timeout_seconds,
            body_timeout=defaults.body_timeout_seconds,
            write_timeout=defaults.write_timeout_seconds,
            max_connections=defaults.max_connections,
        )
        server = HttpServer(
            api_routes(parts, budget.limit),
            not_found,
            max_body=lambda: holder.current.config.defaults.max_body_bytes,
            on_refusal=self._refused,
            limits=limits,
            budget=budget,
        )
        await server.start(host, port)
        stack.push_async_callback(server.stop, _STOP_GRACE_SECONDS)
        self._server = server
        self.host, self.port = server.host, server.port

    def _steps(
        self,
        upstream: Upstream,
        discovery: DiscoveryClient,
        retrieval: RetrievalStep,
        handoff: HandoffStep,
    ) -> Steps:
        """The steps Dispatcher.run calls around the experts (router/steps.py): the place to
        add one. Steps that own resources register their cleanup on self._stack."""
        extra = self.extra_steps
        shadow = self._shadow(upstream, discovery)
        return Steps(
            before=(retrieval, *extra.before),
            escalation=(handoff, *extra.escalation),
            after=(*extra.after, shadow),
        )

    def _shadow(self, upstream: Upstream, discovery: DiscoveryClient) -> ShadowStep:
        """Shadow evaluation (router/shadow): the after-step, its metrics and its reports."""

        def evaluation() -> Evaluation | None:
            return self.holder.current.config.evaluation

        def limit() -> float:
            current = evaluation()
            return float(current.daily_budget_usd) if current else 0.0

        metrics = self.metrics.shadow
        budget = DailyBudget(limit, time.time)
        step = ShadowStep(upstream, metrics, budget)
        self._stack.push_async_callback(step.close)
        reporter = ShadowReporter(
            secrets.token_hex(8),
            metrics,
            budget,
            evaluation,
            discovery.report_evaluation,
            time.monotonic,
        )
        task = asyncio.get_running_loop().create_task(reporter.run())
        self._stack.push_async_callback(_cancel, task)
        self.shadow, self.shadow_reporter = step, reporter
        return step

    async def start_ops(self, host: str, port: int) -> None:
        """Serve /metrics, /healthz and /readyz on a second address as well: a sidecar keeps
        the OpenAI API on localhost, while Prometheus and the kubelet reach these on the pod
        IP."""
        # Probes and scrapes only: a few connections, no bodies.
        ops = HttpServer(
            ops_routes(self.metrics),
            not_found,
            max_body=lambda: 0,
            limits=Limits(max_connections=64, head_timeout=5.0, write_timeout=10.0),
        )
        await ops.start(host, port)
        self._stack.push_async_callback(ops.stop, 0.0)
        self._ops = ops
        self.ops_port = ops.port

    async def stop(self) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def running_router(
    config_path: Path, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RouterServer]:
    server = RouterServer(config_path)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()
