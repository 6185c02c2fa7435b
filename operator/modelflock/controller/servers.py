"""The operator's HTTP listeners: Prometheus metrics and health (every replica, for the life of
the process), and the flock API for routers (the leader only, while it leads)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from modelflock.controller.context import OperatorContext


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def health_app(
    report: Callable[[], dict[str, Any]],
    readiness: Callable[[], Awaitable[list[str]]],
) -> web.Application:
    """`/healthz` (liveness): 200 while the process runs its election loop, leader or standby;
    the body says which. `/readyz` (readiness): 503 with the reasons while `readiness()`
    names any (the leader's listeners not accepting connections yet)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(report())

    async def readyz(_: web.Request) -> web.Response:
        problems = await readiness()
        body = {**report(), "ready": not problems, "problems": problems}
        return web.json_response(body, status=503 if problems else 200)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start_flock_api(ctx: OperatorContext) -> web.AppRunner:
    from modelflock.controller.flockapi import flock_app

    return await serve(flock_app(ctx), ctx.config.bind_address, ctx.config.flock_api_port)
