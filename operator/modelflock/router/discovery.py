"""The operator's flock API (docs/discovery.md): live endpoints in, demand signals out.

Routers have no Kubernetes permissions: they poll the operator for their policy's experts
and, while holding requests for an expert at zero replicas, POST demand so it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from modelflock.router.balance import EndpointLive, ExpertLive, expert_health
from modelflock.router.config import Discovery as DiscoveryConfig
from modelflock.router.config import Expert
from modelflock.router.request import parse_json

log = logging.getLogger(__name__)

_HOLDING_POLL_SECONDS = 0.25  # poll fast while requests wait for a cold expert
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)
_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_RETRIEVAL_REPORT_SECONDS = 15.0  # repeated while unchanged: the operator may have restarted


def endpoint_url(url: object) -> str | None:
    """A discovered endpoint as the operator writes them (`http://<pod IP>:<port>`, optionally
    with /v1), or None: no host names, credentials, queries or other paths."""
    if not isinstance(url, str) or len(url) > 256:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
        ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return None
    if (
        parts.scheme not in ("http", "https")
        or port is None
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or parts.path.rstrip("/") not in ("", "/v1")
    ):
        return None
    return url.rstrip("/")


def parse_endpoints(
    payload: object, experts: Mapping[str, Expert]
) -> tuple[dict[str, ExpertLive], list[str]]:
    """The endpoints document → live state per expert, checked against the config, and what was
    ignored: experts the config does not have, experts pinned to their configured URLs
    (external ones, or any with an API key: discovery must never redirect a key) and endpoint
    URLs that are not `http(s)://<IP>:<port>`. ValueError when the document is malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("experts"), dict):
        raise ValueError("expected an object with 'experts'")
    result: dict[str, ExpertLive] = {}
    ignored: list[str] = []
    for name, item in payload["experts"].items():
        if not isinstance(item, dict):
            raise ValueError(f"expert {name}: expected an object")
        config = experts.get(str(name))
        if config is None or config.pinned:
            ignored.append(f"expert {name!r} ({'pinned' if config else 'not in the config'})")
            continue
        endpoints = []
        for e in item.get("endpoints") or []:
            url = endpoint_url(e.get("url")) if isinstance(e, dict) else None
            if url is None:
                ignored.append(f"expert {name}: endpoint {str(e)[:80]!r}")
                continue
            assert isinstance(e, dict)
            endpoints.append(
                EndpointLive(
                    url=url,
                    ready=e.get("ready", True) is True,
                    queue_depth=_int(e.get("queueDepth")),
                    running=_int(e.get("running")),
                )
            )
        cold = item.get("coldStartSeconds")
        result[str(name)] = ExpertLive(
            ready_replicas=_int(item.get("readyReplicas")) or 0,
            desired_replicas=_int(item.get("desiredReplicas")) or 0,
            cold_start_seconds=_seconds(cold),
            endpoints=tuple(endpoints),
        )
    return result, ignored


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1_000_000_000:
        return value
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and 0 <= seconds <= 86_400:
            return seconds
    return None


def _base(cfg: DiscoveryConfig) -> str:
    return f"{cfg.url.rstrip('/')}/flock/v1/namespaces/{cfg.namespace}/routingpolicies/{cfg.policy}"


async def _auth(cfg: DiscoveryConfig) -> dict[str, str]:
    # The config refuses http:// without allowPlainHttp; checked again where the token leaves.
    if not (cfg.url.startswith("https://") or cfg.allow_plain_http):
        raise ValueError("refusing to send the discovery token over plain http")
    # Read on every call (in a thread: file I/O): the mounted Secret may rotate. Never logged.
    token = await asyncio.to_thread(cfg.token_file.read_text)
    return {"Authorization": f"Bearer {token.strip()}"}


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    parts, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > _MAX_DOCUMENT_BYTES:
            raise ValueError(f"the endpoints document exceeds {_MAX_DOCUMENT_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


class DiscoveryClient:
    """Polls the flock API, keeps the last good answer and holds requests for cold experts."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: Callable[[], DiscoveryConfig | None],
        overload_depth: Callable[[], int],
        experts: Callable[[], Mapping[str, Expert]] = dict,
    ) -> None:
        self._session = session
        self._config = config
        self._experts = experts
        self._ignored: list[str] = []
        self._tls: dict[Path, ssl.SSLContext] = {}
        self._overload_depth = overload_depth
        self.snapshot: dict[str, ExpertLive] | None = None
        self.polls_failed = 0
        self.holding: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._demand_tasks: dict[str, asyncio.Task[None]] = {}
        self._last_demand: dict[str, float] = {}
        self._retrieval: dict[str, tuple[bool, float]] = {}

    def live(self, expert: str) -> ExpertLive | None:
        return None if self.snapshot is None else self.snapshot.get(expert)

    def _ssl(self, cfg: DiscoveryConfig) -> ssl.SSLContext | bool:
        """TLS settings of a request: the configured CA bundle, else the system's."""
        if cfg.ca_file is None:
            return True
        context = self._tls.get(cfg.ca_file)
        if context is None:
            context = self._tls[cfg.ca_file] = ssl.create_default_context(cafile=str(cfg.ca_file))
        return context

    async def poll_once(self) -> None:
        cfg = self._config()
        if cfg is None:
            return
        try:
            async with self._session.get(
                f"{_base(cfg)}/endpoints",
                headers=await _auth(cfg),
                timeout=_HTTP_TIMEOUT,
                ssl=self._ssl(cfg),
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = await _read_capped(resp)
                snapshot, ignored = parse_endpoints(parse_json(raw), self._experts())
            if ignored != self._ignored:
                self._ignored = ignored
                if ignored:  # logged when it changes, not every poll
                    log.warning("discovery: ignored %s", "; ".join(ignored)[:2000])
            self.snapshot = snapshot
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
                ssl=self._ssl(cfg),
            ) as resp:
                if resp.status != 202:
                    log.warning("demand for %s refused: HTTP %s", expert, resp.status)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
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

    def note_retrieval(self, knowledge_base: str, reachable: bool, detail: str) -> None:
        """Tell the operator how a knowledge base's store answers (the RoutingPolicy status
        shows it): at once when it changes, then every _RETRIEVAL_REPORT_SECONDS."""
        cfg = self._config()
        if cfg is None:
            return
        now = time.monotonic()
        last = self._retrieval.get(knowledge_base)
        if last is not None and last[0] == reachable and now - last[1] < _RETRIEVAL_REPORT_SECONDS:
            return
        self._retrieval[knowledge_base] = (reachable, now)
        body = {"knowledgeBase": knowledge_base, "reachable": reachable, "detail": detail}
        task = asyncio.get_running_loop().create_task(self._post("retrieval", body))
        self._demand_tasks[f"retrieval:{knowledge_base}"] = task

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        cfg = self._config()
        if cfg is None:
            return
        try:
            async with self._session.post(
                f"{_base(cfg)}/{path}", headers=await _auth(cfg), json=body, timeout=_HTTP_TIMEOUT
            ) as resp:
                if resp.status != 202:
                    log.warning("%s report refused: HTTP %s", path, resp.status)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s report failed: %s", path, exc)

    async def report_classifier(self, body: str) -> bool:
        """POST the classifier's stage health (docs/discovery.md); True when taken."""
        cfg = self._config()
        if cfg is None:
            return False
        try:
            async with self._session.post(
                f"{_base(cfg)}/classifier",
                headers={**await _auth(cfg), "Content-Type": "application/json"},
                data=body,
                timeout=_HTTP_TIMEOUT,
                ssl=self._ssl(cfg),
            ) as resp:
                if resp.status != 202:
                    log.warning("classifier report refused: HTTP %s", resp.status)
                    return False
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("classifier report failed: %s", exc)
            return False
        return True

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
