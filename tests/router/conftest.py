"""Fixtures: simulated engines, a fake operator flock API and routers, all on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from modelflock.router.app import RouterServer
from modelflock.sim import SimServer, SimSettings

TOKEN = "flock-token-7f3a"


class FlockApi:
    """Plays the operator's discovery/demand API (docs/discovery.md) for one policy."""

    def __init__(self) -> None:
        self.experts: dict[str, dict[str, Any]] = {}
        self.demands: list[dict[str, Any]] = []
        self.wake: dict[str, str] = {}  # expert -> URL that becomes ready on demand
        self.evaluation_reports: list[dict[str, Any]] = []
        self.policy_spent: float | None = None  # answer this spend (else: the reports' sum)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def set_expert(
        self,
        name: str,
        urls: list[str],
        ready: bool = True,
        queue: list[int] | None = None,
        cold_start: float = 30.0,
    ) -> None:
        queue = queue or [0] * len(urls)
        self.experts[name] = {
            "readyReplicas": len(urls) if ready else 0,
            "desiredReplicas": len(urls) if ready else 0,
            "coldStartSeconds": cold_start,
            "endpoints": [
                {"url": u, "ready": ready, "queueDepth": q, "running": 0}
                for u, q in zip(urls, queue, strict=True)
            ]
            if ready
            else [],
        }

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def endpoints(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        return web.json_response({"experts": self.experts, "generatedAt": "now"})

    async def demand(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        body = await request.json()
        if body.get("expert") not in self.experts:
            return web.Response(status=403)
        self.demands.append(body)
        url = self.wake.pop(body["expert"], None)
        if url is not None:  # the "autoscaler" brings one replica up
            self.set_expert(body["expert"], [url])
        return web.Response(status=202)

    async def evaluation(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        body = await request.json()
        self.evaluation_reports.append(body)
        spent = self.policy_spent
        if spent is None:
            spent = sum(float(r["spentUSD"]) for r in self.evaluation_reports)
        return web.json_response({"day": body["day"], "spentTodayUSD": spent})

    async def start(self) -> None:
        app = web.Application()
        base = "/flock/v1/namespaces/ns/routingpolicies/policy"
        app.router.add_get(f"{base}/endpoints", self.endpoints)
        app.router.add_post(f"{base}/demand", self.demand)
        app.router.add_post(f"{base}/evaluation", self.evaluation)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


class Flock:
    """Builds engines, the flock API and routers for one test; closes all at the end."""

    def __init__(self, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.sims: dict[str, SimServer] = {}
        self.config_path = tmp_path / "router.yaml"

    async def sim(self, name: str, **settings: Any) -> SimServer:
        defaults: dict[str, Any] = {
            "model": name,
            "prefill_seconds": 0.0,
            "decode_seconds_per_token": 0.001,
            "output_tokens": 8,
        }
        server = SimServer(SimSettings(**{**defaults, **settings}))
        await server.start("127.0.0.1", 0)
        self.stack.push_async_callback(server.stop)
        self.sims[name] = server
        return server

    def expert(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "urls": [self.sims[name].url], "model": name, **extra}

    async def flock_api(self) -> FlockApi:
        api = FlockApi()
        await api.start()
        assert api.runner is not None
        self.stack.push_async_callback(api.runner.cleanup)
        (self.tmp_path / "token").write_text(TOKEN)
        return api

    def discovery(self, api: FlockApi, **extra: Any) -> dict[str, Any]:
        return {
            "url": api.url,
            "tokenFile": str(self.tmp_path / "token"),
            "namespace": "ns",
            "policy": "policy",
            "intervalSeconds": 0.2,
            "demandIntervalSeconds": 0.2,
            "allowPlainHttp": True,  # the test's flock API is on loopback
            **extra,
        }

    def write(self, config: dict[str, Any]) -> Path:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"reloadIntervalSeconds": 0.1, **config}))
        tmp.replace(self.config_path)  # atomic, as a ConfigMap update is
        return self.config_path

    async def router(self, config: dict[str, Any]) -> RouterServer:
        server = RouterServer(self.write(config))
        await server.start("127.0.0.1", 0)
        self.stack.push_async_callback(server.stop)
        return server

    def client(self, router: RouterServer, **kwargs: Any) -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(
            base_url=f"{router.url}/v1", api_key="not-checked", max_retries=0, **kwargs
        )
        self.stack.push_async_callback(c.close)
        return c

    async def http(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()
        self.stack.push_async_callback(session.close)
        return session


@pytest.fixture
async def flock(tmp_path: Path) -> AsyncIterator[Flock]:
    async with AsyncExitStack() as stack:
        yield Flock(tmp_path, stack)


async def metrics_text(session: aiohttp.ClientSession, router: RouterServer) -> str:
    async with session.get(f"{router.url}/metrics") as resp:
        return await resp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
