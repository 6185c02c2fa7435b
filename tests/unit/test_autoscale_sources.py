"""Metric sources and evaluate() against tiny aiohttp servers on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from modelflock.autoscale.algorithm import PodLoad, Reason, ScalerMemory, ScalingPolicy
from modelflock.autoscale.loop import ExpertPods, evaluate
from modelflock.autoscale.metrics_parse import Engine
from modelflock.autoscale.sources import (
    DemandStore,
    PodTarget,
    PrometheusSource,
    ScrapeSource,
    SourceMetrics,
)

VLLM_TEXT = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 9.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 8.0
"""


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text=VLLM_TEXT)


async def _slow(_: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.Response(text=VLLM_TEXT)


async def _garbage(_: web.Request) -> web.Response:
    return web.Response(text="<html>not metrics {")


async def _error(_: web.Request) -> web.Response:
    return web.Response(status=500)


@pytest.fixture
async def engine_url() -> AsyncIterator[str]:
    app = web.Application()
    for name, handler in {"ok": _ok, "slow": _slow, "garbage": _garbage, "error": _error}.items():
        app.router.add_get(f"/{name}/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def failures(registry: CollectorRegistry, source: str, reason: str) -> float:
    value = registry.get_sample_value(
        "modelflock_autoscaler_scrape_failures_total", {"source": source, "reason": reason}
    )
    return value or 0.0


async def test_scrape_source_maps_each_failure_to_none_and_counts_it(
    engine_url: str, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    source = ScrapeSource(session, SourceMetrics(registry), timeout_seconds=0.3)
    # Port 9 on loopback (discard) is closed here: a refused connection.
    names = ["ok", "slow", "garbage", "error"]
    targets = [PodTarget(n, f"{engine_url}/{n}", Engine.VLLM) for n in names]
    targets.append(PodTarget("gone", "http://127.0.0.1:9", Engine.VLLM))

    loads = await source.sample(targets)
    assert loads == [PodLoad(9.0, 8.0), None, None, None, None]
    assert failures(registry, "scrape", "timeout") == 1
    assert failures(registry, "scrape", "parse") == 1
    assert failures(registry, "scrape", "http_status") == 1
    assert failures(registry, "scrape", "connection") == 1

    # Counted every time, logged once per failure streak.
    caplog.clear()
    await source.sample(targets[2:3])
    assert failures(registry, "scrape", "parse") == 2
    assert not [r for r in caplog.records if "garbage" in r.getMessage()]


async def test_oversized_body_is_refused(engine_url: str, session: aiohttp.ClientSession) -> None:
    registry = CollectorRegistry()
    source = ScrapeSource(session, SourceMetrics(registry), max_bytes=10)
    assert await source.sample([PodTarget("ok", f"{engine_url}/ok", Engine.VLLM)]) == [None]
    assert failures(registry, "scrape", "too_large") == 1


@pytest.fixture
async def prometheus_url() -> AsyncIterator[str]:
    """A fake Prometheus HTTP API answering vector queries from the query text."""

    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        if "broken" in q:
            return web.Response(text="{not json")
        if "success" in q or "cache" in q or "tokens" in q:
            value = "0.5" if "cache" in q else "40"
        else:
            value = "4" if "waiting" in q or "queue" in q else "6"
        result: list[dict[str, Any]] = [
            {"metric": {"pod": "p-1"}, "value": [0, value]},
            {"metric": {"pod": "p-2"}, "value": [0, "NaN"]},
        ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.Response(text=json.dumps(body))

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_prometheus_source(prometheus_url: str, session: aiohttp.ClientSession) -> None:
    registry = CollectorRegistry()
    source = PrometheusSource(session, SourceMetrics(registry), prometheus_url, "team-a")
    pods = [PodTarget("p-1", "", Engine.VLLM), PodTarget("p-2", "", Engine.VLLM)]
    assert source.query("vllm:num_requests_waiting", pods) == (
        'sum by (pod) (vllm:num_requests_waiting{namespace="team-a",pod=~"p-1|p-2"} >= 0 < Inf)'
    )
    assert await source.sample(pods) == [PodLoad(4.0, 6.0, 0.5, 40.0), None]
    assert failures(registry, "prometheus", "missing") == 1


async def test_prometheus_source_unreachable_or_garbage(
    prometheus_url: str, session: aiohttp.ClientSession
) -> None:
    registry = CollectorRegistry()
    metrics = SourceMetrics(registry)
    pods = [PodTarget("broken", "", Engine.TGI)]
    assert await PrometheusSource(session, metrics, prometheus_url, "x").sample(pods) == [None]
    gone = PrometheusSource(session, metrics, "http://127.0.0.1:9", "x")
    assert await gone.sample(pods) == [None]
    assert failures(registry, "prometheus", "connection") == 2


def test_demand_store_records_latest_per_expert() -> None:
    clock = iter([10.0, 20.0, 30.0, 100.0]).__next__
    store = DemandStore(clock)
    store.record("ns", "code-7b", 3)
    store.record("ns", "code-7b", 5)
    store.record("ns", "chat", -2)
    d = store.latest("ns", "code-7b")
    assert d is not None and (d.at, d.waiting) == (20.0, 5)
    assert store.latest("other", "code-7b") is None
    chat = store.latest("ns", "chat")
    assert chat is not None and chat.waiting == 0
    assert store.forget_older_than(60) == 2  # now 100: both recorded before 40
    assert store.latest("ns", "chat") is None


async def test_evaluate_scrapes_then_decides(
    engine_url: str, session: aiohttp.ClientSession
) -> None:
    source = ScrapeSource(session, SourceMetrics(CollectorRegistry()), timeout_seconds=0.3)
    ok = PodTarget("ok", f"{engine_url}/ok", Engine.VLLM)
    bad = PodTarget("bad", f"{engine_url}/garbage", Engine.VLLM)
    policy = ScalingPolicy(min_replicas=1, max_replicas=10)

    up = await evaluate(policy, ExpertPods(2, (ok, ok)), source, None, ScalerMemory(), 100.0)
    # 2 pods x (9 waiting + 8 running) need ceil(34 / (8 + 3)) = 4 replicas.
    assert (up.decision.desired_replicas, up.decision.reason) == (4, Reason.QUEUE_ABOVE_TARGET)
    assert up.loads == ((ok, PodLoad(9.0, 8.0)), (ok, PodLoad(9.0, 8.0)))

    blind = await evaluate(policy, ExpertPods(3, (bad,)), source, None, ScalerMemory(), 100.0)
    assert (blind.decision.desired_replicas, blind.decision.reason) == (
        3,
        Reason.METRICS_UNAVAILABLE,
    )
