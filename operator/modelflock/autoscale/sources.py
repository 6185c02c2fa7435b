"""Where load numbers come from: pod /metrics, a Prometheus server, and router demand.

Every source answers `await source.sample(pods)` with one `PodLoad | None` per pod, in order;
None means "no number for this pod" (the algorithm then holds scale-down on its account until
the pod counts as stale, see `ScalingPolicy.stale_metrics_seconds`).
Failures are counted in a Prometheus counter and logged once per failure streak per pod.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from modelflock.autoscale.algorithm import Demand, PodLoad
from modelflock.autoscale.metrics_parse import Engine, MetricsParseError, parse_engine_load

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodTarget:
    """A ready engine pod: its name and base URL (`http://<pod IP>:<port>`)."""

    name: str
    url: str
    engine: Engine


class MetricSource(Protocol):
    async def sample(self, pods: Sequence[PodTarget]) -> list[PodLoad | None]: ...


class SourceMetrics:
    """The sources' own Prometheus metrics, registered in the registry the caller owns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "modelflock_autoscaler_scrape_failures",
            "Load samples that could not be taken, by source and reason.",
            ["source", "reason"],
            registry=registry,
        )


class _FailureLog:
    """Log a pod's failure once when it starts failing, and once when it recovers."""

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def failed(self, key: str, message: str) -> None:
        if key not in self._failing:
            self._failing.add(key)
            log.warning("%s", message)

    def ok(self, key: str) -> None:
        if key in self._failing:
            self._failing.discard(key)
            log.info("load sample from %s works again", key)


class ScrapeSource:
    """Scrape each pod's `/metrics` directly, concurrently, with a per-pod timeout."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: SourceMetrics,
        *,
        timeout_seconds: float = 2.0,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_bytes = max_bytes
        self._log = _FailureLog()

    async def sample(self, pods: Sequence[PodTarget]) -> list[PodLoad | None]:
        return list(await asyncio.gather(*(self._scrape(pod) for pod in pods)))

    async def _scrape(self, pod: PodTarget) -> PodLoad | None:
        url = pod.url.rstrip("/") + "/metrics"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    return self._fail(pod, "http_status", f"HTTP {response.status}")
                body = await response.content.read(self._max_bytes + 1)
        except TimeoutError:
            return self._fail(pod, "timeout", "timed out")
        except aiohttp.ClientError as exc:
            return self._fail(pod, "connection", f"{type(exc).__name__}: {exc}")
        if len(body) > self._max_bytes:
            return self._fail(pod, "too_large", f"more than {self._max_bytes} bytes")
        try:
            load = parse_engine_load(body.decode("utf-8", errors="replace"), pod.engine)
        except MetricsParseError as exc:
            return self._fail(pod, "parse", str(exc))
        self._log.ok(pod.name)
        return PodLoad(
            waiting=load.waiting,
            running=load.running,
            kv_cache_usage=load.kv_cache_usage,
            completed=load.completed,
        )

    def _fail(self, pod: PodTarget, reason: str, detail: str) -> PodLoad | None:
        """Count and log a failed sample; returns the None that stands for it."""
        self._metrics.failures.labels(source="scrape", reason=reason).inc()
        self._log.failed(pod.name, f"cannot scrape {pod.name} ({pod.url}): {detail}")
        return None


@dataclass(frozen=True, slots=True)
class _PromNames:
    """An engine's series as Prometheus stores them (the names `metrics_parse` reads)."""

    waiting: str
    running: str
    kv: tuple[str, ...]  # KV-cache usage gauges, any of them (renamed across releases)
    completed: tuple[str, ...]  # counters of finished requests, any of them
    tokens_used: str | None = None  # TGI: the token budget in use ...
    tokens_max: str | None = None  # ... over the budget (its KV-cache usage)


_PROM_NAMES = {
    Engine.VLLM: _PromNames(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        completed=("vllm:request_success_total",),
    ),
    Engine.TGI: _PromNames(
        waiting="tgi_queue_size",
        running="tgi_batch_current_size",
        kv=(),
        completed=("tgi_request_success", "tgi_request_success_total"),
        tokens_used="tgi_batch_current_max_tokens",
        tokens_max="tgi_batch_max_total_tokens",
    ),
}


class PrometheusSource:
    """Ask a Prometheus server (HTTP API, instant queries) for each pod's queue and batch, and
    (optional: a pod without them still has a load) its KV-cache usage and its counter of
    finished requests, the same numbers a direct scrape reads."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: SourceMetrics,
        base_url: str,
        namespace: str,
        *,
        pod_label: str = "pod",
        timeout_seconds: float = 5.0,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._base_url = base_url.rstrip("/")
        self._namespace = namespace
        self._pod_label = pod_label
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._log = _FailureLog()

    def _selector(self, pods: Sequence[PodTarget], names: Sequence[str]) -> str:
        """The series of `names` for these pods, NaN, infinite and negative samples dropped
        (as a direct scrape drops them: one NaN adapter must not make the sum NaN)."""
        pod_names = "|".join(_regex_escape(p.name) for p in pods)
        selector = f'namespace="{self._namespace}",{self._pod_label}=~"{pod_names}"'
        if len(names) == 1:
            series = f"{names[0]}{{{selector}}}"
        else:
            alternatives = "|".join(_regex_escape(n) for n in names)
            series = f'{{__name__=~"{alternatives}",{selector}}}'
        return f"{series} >= 0 < Inf"

    def query(self, metric: str, pods: Sequence[PodTarget], how: str = "sum") -> str:
        """`sum by (pod) (metric{namespace="ns",pod=~"a|b"} >= 0 < Inf)`: adapters summed,
        per pod."""
        return f"{how} by ({self._pod_label}) ({self._selector(pods, [metric])})"

    def queries(self, engine: Engine, pods: Sequence[PodTarget]) -> dict[str, str]:
        """The instant queries for one engine's pods, by what they measure.

        `waiting` and `running` are summed over adapters and data-parallel ranks; `kv` is the
        fullest engine's usage (TGI: the token budget in use over the budget, summed over
        shards); `completed` sums the finished-request counter over finish reasons."""
        names = _PROM_NAMES[engine]
        by = f"by ({self._pod_label})"
        out = {
            "waiting": self.query(names.waiting, pods),
            "running": self.query(names.running, pods),
            "completed": f"sum {by} ({self._selector(pods, names.completed)})",
        }
        if names.kv:
            out["kv"] = f"max {by} ({self._selector(pods, names.kv)})"
        elif names.tokens_used and names.tokens_max:
            used = self.query(names.tokens_used, pods)
            budget = self.query(names.tokens_max, pods)
            out["kv"] = f"clamp_max({used} / {budget}, 1)"
        return out

    async def sample(self, pods: Sequence[PodTarget]) -> list[PodLoad | None]:
        if not pods:
            return []
        values: dict[tuple[Engine, str], dict[str, float]] = {}
        for engine in {p.engine for p in pods}:
            group = [p for p in pods if p.engine is engine]
            for what, query in self.queries(engine, group).items():
                result = await self._instant(query)
                if result is None:
                    if what in ("waiting", "running"):
                        return [None] * len(pods)
                    result = {}  # optional numbers: the queue rules still work without
                values[(engine, what)] = result
        loads: list[PodLoad | None] = []
        for pod in pods:
            waiting = values[(pod.engine, "waiting")].get(pod.name)
            running = values[(pod.engine, "running")].get(pod.name)
            if waiting is None or running is None:
                self._metrics.failures.labels(source="prometheus", reason="missing").inc()
                self._log.failed(pod.name, f"Prometheus has no load series for {pod.name}")
                loads.append(None)
                continue
            self._log.ok(pod.name)
            kv = values.get((pod.engine, "kv"), {}).get(pod.name)
            loads.append(
                PodLoad(
                    waiting=waiting,
                    running=running,
                    kv_cache_usage=None if kv is None else min(1.0, kv),
                    completed=values[(pod.engine, "completed")].get(pod.name),
                )
            )
        return loads

    async def _instant(self, query: str) -> dict[str, float] | None:
        """Per-pod values of an instant vector query; None if the server cannot answer."""
        try:
            async with self._session.get(
                f"{self._base_url}/api/v1/query", params={"query": query}, timeout=self._timeout
            ) as response:
                payload: Any = await response.json(content_type=None)
        except TimeoutError:
            return self._fail("timeout", "timed out")
        except (aiohttp.ClientError, ValueError) as exc:
            return self._fail("connection", f"{type(exc).__name__}: {exc}")
        try:
            if payload["status"] != "success" or payload["data"]["resultType"] != "vector":
                return self._fail("query", str(payload.get("error", "unexpected result")))
            out: dict[str, float] = {}
            for item in payload["data"]["result"]:
                value = float(item["value"][1])
                if value == value and value >= 0:  # NaN compares unequal to itself
                    out[str(item["metric"][self._pod_label])] = value
            return out
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return self._fail("parse", f"malformed answer: {exc!r}")

    def _fail(self, reason: str, detail: str) -> dict[str, float] | None:
        self._metrics.failures.labels(source="prometheus", reason=reason).inc()
        self._log.failed("prometheus", f"Prometheus query to {self._base_url} failed: {detail}")
        return None


def _regex_escape(name: str) -> str:
    # Pod names are DNS labels, but escape regex metacharacters anyway (RE2 syntax).
    return "".join("\\\\" + c if c in r".+*?()|[]{}^$\\" else c for c in name)


class DemandStore:
    """Demand routers report for experts, keyed by (namespace, expert).

    Written by the flock API handler, read by the autoscaler loop; a lock makes it safe from
    threads too (kopf runs sync handlers in a thread pool), and no method awaits.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], Demand] = {}

    def record(self, namespace: str, expert: str, waiting: int) -> Demand:
        demand = Demand(at=self._clock(), waiting=max(0, waiting))
        with self._lock:
            self._latest[(namespace, expert)] = demand
        return demand

    def latest(self, namespace: str, expert: str) -> Demand | None:
        with self._lock:
            return self._latest.get((namespace, expert))

    def forget_older_than(self, seconds: float) -> int:
        """Drop stale entries (deleted experts); returns how many were dropped."""
        cutoff = self._clock() - seconds
        with self._lock:
            stale = [k for k, d in self._latest.items() if d.at < cutoff]
            for key in stale:
                del self._latest[key]
        return len(stale)
