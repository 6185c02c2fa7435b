"""The operator's flock API (docs/discovery.md): live endpoints in, demand signals out.

Routers have no Kubernetes permissions: they poll the operator for their policy's experts
and, while holding requests for an expert at zero replicas, POST demand so it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from modelflock.router.balance import EndpointLive, ExpertLive, expert_health
from modelflock.router.config import Discovery as DiscoveryConfig

log = logging.getLogger(__name__)

_HOLDING_POLL_SECONDS = 0.25  # poll fast while requests wait for a cold expert
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


def parse_endpoints(payload: object) -> dict[str, ExpertLive]:
    """The endpoints document → live state per expert; ValueError when malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("experts"), dict):
        raise ValueError("expected an object with 'experts'")
    result: dict[str, ExpertLive] = {}
    for name, item in payload["experts"].items():
        if not isinstance(item, dict):
            raise ValueError(f"expert {name}: expected an object")
        endpoints = []
        for e in item.get("endpoints") or []:
            if not isinstance(e, dict) or not isinstance(e.get("url"), str):
                raise ValueError(f"expert {name}: each endpoint needs a url")
            endpoints.append(
                EndpointLive(
                    url=e["url"].rstrip("/"),
                    ready=bool(e.get("ready", True)),
                    queue_depth=_int(e.get("queueDepth")),
                    running=_int(e.get("running")),
                )
            )
        cold = item.get("coldStartSeconds")
        result[str(name)] = ExpertLive(
            ready_replicas=_int(item.get("readyReplicas")) or 0,
            desired_replicas=_int(item.get("desiredReplicas")) or 0,
            cold_start_seconds=float(cold) if isinstance(cold, int | float) else None,
            endpoints=tuple(endpoints),
        )
    return result


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _base(cfg: DiscoveryConfig) -> str:
    return f"{cfg.url.rstrip('/')}/flock/v1/namespaces/{cfg.namespace}/routingpolicies/{cfg.policy}"


async def _auth(cfg: DiscoveryConfig) -> dict[str, str]:
    # Read on every call (in a thread: file I/O): the mounted Secret may rotate. Never logged.
    token = await asyncio.to_thread(cfg.token_file.read_text)
    return {"Authorization": f"Bearer {token.strip()}"}


class DiscoveryClient:
    """Polls the flock API, keeps the last good answer and holds requests for cold experts."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: Callable[[], DiscoveryConfig | None],
        overload_depth: Callable[[], int],
    ) -> None:
        self._session = session
        self._config = config
        self._overload_depth = overload_depth
        self.snapshot: dict[str, ExpertLive] | None = None
        self.polls_failed = 0
        self.holding: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._demand_tasks: dict[str, asyncio.Task[None]] = {}
        self._last_demand: dict[str, float] = {}

    def live(self, expert: str) -> ExpertLive | None:
        return None if self.snapshot is None else self.snapshot.get(expert)

    async def poll_once(self) -> None:
        cfg = self._config()
        if cfg is None:
            return
        try:
            async with self._session.get(
                f"{_base(cfg)}/endpoints", headers=await _auth(cfg), timeout=_HTTP_TIMEOUT
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                self.snapshot = parse_endpoints(await resp.json(content_type=None))
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Keep the last answer (or the Service URLs when there never was one).
            self.polls_failed += 1
            log.warning("discovery poll failed: %s", exc)
            return
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        while True:
            await self.poll_once()
            cfg = self._config()
            interval = cfg.interval_seconds if cfg else 1.0
            if any(self.holding.values()):
                interval = min(interval, _HOLDING_POLL_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poll_now.wait()
            self._poll_now.clear()

    async def send_demand(self, expert: str, waiting: int) -> None:
        cfg = self._config()
        if cfg is None:
            return
        self._last_demand[expert] = time.monotonic()
        try:
            async with self._session.post(
                f"{_base(cfg)}/demand",
                headers=await _auth(cfg),
                json={"expert": expert, "waiting": waiting},
                timeout=_HTTP_TIMEOUT,
            ) as resp:
                if resp.status != 202:
                    log.warning("demand for %s refused: HTTP %s", expert, resp.status)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("demand for %s failed: %s", expert, exc)

    async def report_evaluation(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST shadow-evaluation counters (docs/evaluation.md); the operator's answer, or
        None when there is no operator or it did not take the report."""
        cfg = self._config()
        if cfg is None:
            return None
        try:
            async with self._session.post(
                f"{_base(cfg)}/evaluation",
                headers=await _auth(cfg),
                json=body,
                timeout=_HTTP_TIMEOUT,
            ) as resp:
                if resp.status != 200:
                    log.warning("evaluation report refused: HTTP %s", resp.status)
                    return None
                answer = await resp.json(content_type=None)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("evaluation report failed: %s", exc)
            return None
        return answer if isinstance(answer, dict) else None

    def note_fallback(self, expert: str) -> None:
        """A request left a cold expert for a fallback: wake it too (rate-limited)."""
        cfg = self._config()
        if cfg is None or not cfg.wake_on_fallback:
            return
        self.wake(expert)

    def wake(self, expert: str) -> None:
        """Ask for one replica of a cold expert without holding a request (rate-limited)."""
        cfg = self._config()
        if cfg is None or self.holding.get(expert):
            return
        if time.monotonic() - self._last_demand.get(expert, -1e9) < cfg.demand_interval_seconds:
            return
        self._last_demand[expert] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self.send_demand(expert, 1))
        self._demand_tasks[f"fallback:{expert}"] = task

    async def _demand_loop(self, expert: str) -> None:
        while self.holding.get(expert):
            await self.send_demand(expert, self.holding[expert])
            cfg = self._config()
            await asyncio.sleep(cfg.demand_interval_seconds if cfg else 3.0)

    async def wait_until_warm(
        self, expert: str, budget_seconds: float, max_waiting: int
    ) -> str | None:
        """Hold the request until the expert has a ready replica; None on success, else why."""
        if sum(self.holding.values()) >= max_waiting:
            return "too many requests waiting for cold experts"
        self.holding[expert] = self.holding.get(expert, 0) + 1
        task = self._demand_tasks.get(expert)
        if task is None or task.done():
            self._demand_tasks[expert] = asyncio.get_running_loop().create_task(
                self._demand_loop(expert)
            )
        self._poll_now.set()
        try:
            async with asyncio.timeout(budget_seconds):
                while expert_health(self.live(expert), self._overload_depth()) == "cold":
                    changed = self._changed
                    self._poll_now.set()
                    await changed.wait()
            return None
        except TimeoutError:
            return f"still cold after waiting {budget_seconds:g}s"
        finally:
            self.holding[expert] -= 1

    async def close(self) -> None:
        for task in self._demand_tasks.values():
            task.cancel()
        await asyncio.gather(*self._demand_tasks.values(), return_exceptions=True)
