"""Per-request shortcuts of the router keep the exact behaviour of the plain code."""

from __future__ import annotations

import json

from modelflock.router.config import Expert
from modelflock.router.http1 import Http1Client
from modelflock.router.upstream import ExpertRuntime, Upstream, upstream_headers


def _runtime(urls: list[str]) -> ExpertRuntime:
    expert = Expert(name="e", urls=urls, model="m")
    return ExpertRuntime(config=expert, headers=upstream_headers(None))


def test_static_endpoints_are_built_once_and_still_rotate() -> None:
    upstream = Upstream(Http1Client(), discovery=None)
    runtime = _runtime(["http://a:8000/", "http://b:8000"])
    chosen = [upstream.endpoint(runtime) for _ in range(4)]
    assert sorted(set(chosen)) == ["http://a:8000", "http://b:8000"]  # trailing "/" dropped
    assert chosen[0] != chosen[1] and chosen[0] == chosen[2]  # ties rotate
    first = upstream._static_endpoints(runtime.config.urls)
    assert upstream._static_endpoints(runtime.config.urls) is first
    # A reloaded config with other URLs gets its own endpoints.
    assert upstream.endpoint(_runtime(["http://c:8000"])) == "http://c:8000"


def test_static_endpoint_cache_is_bounded() -> None:
    upstream = Upstream(Http1Client(), discovery=None)
    for i in range(600):
        assert upstream.endpoint(_runtime([f"http://h{i}:8000"])) == f"http://h{i}:8000"
    assert len(upstream._static) <= 256


def test_compact_encoder_matches_json_dumps() -> None:
    from modelflock.router.dispatch import _COMPACT

    body = {"model": "m", "messages": [{"role": "user", "content": 'héllo \u2028 "q"'}], "n": 1.5}
    assert _COMPACT.encode(body) == json.dumps(body, separators=(",", ":"))
