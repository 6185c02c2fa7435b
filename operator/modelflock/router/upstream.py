"""Calling experts: endpoint choice, request building and failure classification."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from modelflock.router.balance import EndpointLive, Outstanding, choose_endpoint
from modelflock.router.config import Expert
from modelflock.router.discovery import DiscoveryClient
from modelflock.router.http1 import Http1Client, encode_headers

# Upstream answers that mean "this expert is failing, try another" (not the client's fault).
_FAILING = frozenset({401, 403, 408, 409, 429})
_STATIC_CACHE_SIZE = 256


class UpstreamFailure(Exception):
    """An attempt failed before any byte reached the client: fall back is allowed."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # connect | status | timeout | protocol
        self.detail = detail
        self.status = status  # the expert's HTTP status, for kind "status"


def is_failing_status(status: int) -> bool:
    return status >= 500 or status in _FAILING


@dataclass(frozen=True)
class ExpertRuntime:
    """An expert ready to call: config plus request header lines (with the API key, never
    logged), encoded once per config load."""

    config: Expert
    headers: bytes = field(repr=False)
    # USD per token as floats: Prometheus counters are floats anyway; exact Decimal
    # arithmetic per request would cost more than the rest of the accounting.
    input_price: float = 0.0
    output_price: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.input_price + output_tokens * self.output_price

    @property
    def name(self) -> str:
        return self.config.name


def api_url(base: str, path: str) -> str:
    """`path` like "/chat/completions" under the expert's base URL (with or without /v1)."""
    base = base.rstrip("/")
    return f"{base}{path}" if base.endswith("/v1") else f"{base}/v1{path}"


def upstream_headers(api_key: str | None) -> bytes:
    """Header lines of every request to an expert (`http1.encode_headers`)."""
    headers: Mapping[str, str] = {"Content-Type": "application/json"}
    if api_key:
        if any(c in api_key for c in "\r\n"):
            raise ValueError("an API key file holds a line break inside the key")
        headers = {**headers, "Authorization": f"Bearer {api_key}"}
    return encode_headers(headers)


class Upstream:
    """Shared by all requests: one HTTP client (keep-alive pools) and in-flight counts."""

    def __init__(self, client: Http1Client, discovery: DiscoveryClient | None) -> None:
        self.client = client
        self.discovery = discovery
        self.outstanding = Outstanding()
        # The configured URLs of an expert as endpoints, built once per URL list (the config
        # is immutable; a reload brings new lists, so the key is the list's content).
        self._static: dict[tuple[str, ...], tuple[EndpointLive, ...]] = {}

    def _static_endpoints(self, urls: Sequence[str]) -> tuple[EndpointLive, ...]:
        key = tuple(urls)
        endpoints = self._static.get(key)
        if endpoints is None:
            if len(self._static) >= _STATIC_CACHE_SIZE:  # bounded across many reloads
                self._static.clear()
            endpoints = self._static[key] = tuple(EndpointLive(u.rstrip("/")) for u in urls)
        return endpoints

    def _candidates(self, expert: ExpertRuntime) -> Sequence[EndpointLive]:
        live = None
        if self.discovery is not None and not expert.config.pinned:
            live = self.discovery.live(expert.name)
        if live is not None and any(e.ready for e in live.endpoints):
            return live.endpoints
        return self._static_endpoints(expert.config.urls)

    def endpoint(self, expert: ExpertRuntime, avoid: AbstractSet[str] = frozenset()) -> str:
        """The least loaded endpoint, skipping `avoid` (replicas that just refused a
        connection) while any other is left."""
        candidates = self._candidates(expert)
        if avoid:
            others = [e for e in candidates if e.ready and e.url not in avoid]
            candidates = others or candidates
        return choose_endpoint(candidates, self.outstanding)

    def has_other_endpoint(self, expert: ExpertRuntime, avoid: AbstractSet[str]) -> bool:
        return any(e.ready and e.url not in avoid for e in self._candidates(expert))

    async def call_json(
        self, expert: ExpertRuntime, path: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """A small internal call (classifier stages); the caller bounds its time."""
        base = self.endpoint(expert)
        self.outstanding.acquire(base)
        try:
            resp = await self.client.post(
                api_url(base, path), json.dumps(payload).encode(), expert.headers
            )
            raw = await resp.read()
        except OSError as exc:
            raise UpstreamFailure("connect", f"{expert.name}: {exc}") from None
        finally:
            self.outstanding.release(base)
        if resp.status != 200:
            raise UpstreamFailure("status", f"HTTP {resp.status} from {expert.name}", resp.status)
        try:
            body = json.loads(raw)
        except ValueError:
            raise UpstreamFailure("protocol", f"{expert.name}: answer is not JSON") from None
        if not isinstance(body, dict):
            raise UpstreamFailure("protocol", f"{expert.name}: not a JSON object")
        return body
