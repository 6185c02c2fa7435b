"""The operator's HTTP listeners: Prometheus metrics, and the flock API for routers."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelflock.controller.context import OperatorContext


def metrics_app(ctx: OperatorContext) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(ctx.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def start_servers(ctx: OperatorContext) -> list[web.AppRunner]:
    from modelflock.controller.flockapi import flock_app

    host = ctx.config.bind_address
    return [
        await _serve(metrics_app(ctx), host, ctx.config.metrics_port),
        await _serve(flock_app(ctx), host, ctx.config.flock_api_port),
    ]
