"""Pure pieces of dispatch: route selection, cascade checks, balancing, SSE, report."""

from __future__ import annotations

import json

import pytest

from modelflock.router.balance import (
    EndpointLive,
    ExpertLive,
    Outstanding,
    choose_endpoint,
    expert_health,
)
from modelflock.router.checks import compile_checks, failed_check
from modelflock.router.config import Cascade, Expert, HeaderMatch, Route, RouteMatch
from modelflock.router.discovery import parse_endpoints
from modelflock.router.report import format_table, summarize
from modelflock.router.routing import candidate_sequence, select_route
from modelflock.router.sse import SseScanner
from modelflock.router.upstream import api_url, is_failing_status

ROUTES = [
    Route(
        name="gold",
        match=RouteMatch(headers=[HeaderMatch(name="x-tier", value="gold")]),
        expert="big",
    ),
    Route(
        name="code",
        match=RouteMatch(intents=["code"]),
        cascade=Cascade(experts=["small", "big"]),
        fallbacks=["big", "ext"],
    ),
    Route(name="rest", expert="small"),
]


def test_first_matching_route_wins() -> None:
    assert select_route(ROUTES, "code", "auto", {"x-tier": "gold"}).name == "gold"  # type: ignore[union-attr]
    assert select_route(ROUTES, "code", "auto", {}).name == "code"  # type: ignore[union-attr]
    assert select_route(ROUTES, "chat", "auto", {}).name == "rest"  # type: ignore[union-attr]
    assert select_route(ROUTES[:2], "chat", "auto", {}) is None
    assert candidate_sequence(ROUTES[1]) == ["small", "big", "ext"]


def chat_answer(content: str, finish: str = "stop", logprob: float | None = None) -> object:
    choice: dict[str, object] = {"message": {"content": content}, "finish_reason": finish}
    if logprob is not None:
        choice["logprobs"] = {"content": [{"token": "x", "logprob": logprob}]}
    return {"choices": [choice]}


ALL = compile_checks(
    Cascade(
        experts=["a", "b"],
        checks=["truncated", "empty", "refusal", "invalidJSON", "lowConfidence"],
        refusal_patterns=[r"(?i)no idea"],
        min_confidence="0.5",
    )
)


@pytest.mark.parametrize(
    ("answer", "wants_json", "expected"),
    [
        (chat_answer("fine answer"), False, None),
        (chat_answer("cut off", "length"), False, "truncated"),
        (chat_answer("   "), False, "empty"),
        ({"choices": []}, False, "empty"),
        (chat_answer("I'm sorry, but I cannot help with that."), False, "refusal"),
        (chat_answer("No idea, honestly"), False, "refusal"),
        (chat_answer('{"a": 1'), True, "invalidJSON"),
        (chat_answer('{"a": 1}'), True, None),
        (chat_answer('{"a": 1'), False, None),
        (chat_answer("sure", logprob=-3.0), False, "lowConfidence"),
        (chat_answer("sure", logprob=-0.01), False, None),
        (
            {
                "choices": [
                    {
                        "text": "completion",
                        "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-4.0]},
                    }
                ]
            },
            False,
            "lowConfidence",
        ),
    ],
)
def test_cascade_checks(answer: object, wants_json: bool, expected: str | None) -> None:
    assert failed_check(answer, ALL, wants_json) == expected


def test_only_configured_checks_apply() -> None:
    only_empty = compile_checks(Cascade(experts=["a", "b"], checks=["empty"]))
    assert failed_check(chat_answer("x", "length"), only_empty, False) is None


def test_health_cold_overloaded_ok() -> None:
    ready = EndpointLive("http://a", True, queue_depth=40)
    assert expert_health(None, 10) == "ok"
    assert expert_health(ExpertLive(0, 1, 30.0, ()), 10) == "cold"
    assert expert_health(ExpertLive(2, 2, None, (EndpointLive("http://a", False),)), 10) == "cold"
    assert (
        expert_health(ExpertLive(2, 2, None, (ready, EndpointLive("http://b"))), 10) == "overloaded"
    )
    assert expert_health(ExpertLive(4, 4, None, (ready,)), 10) == "ok"


def test_least_loaded_endpoint_with_rotation_on_ties() -> None:
    out = Outstanding()
    eps = [
        EndpointLive("a", queue_depth=5),
        EndpointLive("b", queue_depth=0),
        EndpointLive("c", ready=False),
    ]
    assert choose_endpoint(eps, out) == "b"
    out.acquire("b")
    out.acquire("b")
    out.acquire("b")
    out.acquire("b")
    out.acquire("b")
    out.acquire("b")
    assert choose_endpoint(eps, out) == "a"
    even = [EndpointLive("x"), EndpointLive("y")]
    picks = {choose_endpoint(even, Outstanding()) for _ in range(1)}
    shared = Outstanding()
    picks = {choose_endpoint(even, shared) for _ in range(4)}
    assert picks == {"x", "y"}
    out.release("b")
    assert out.counts["b"] == 5


def test_parse_discovery_document() -> None:
    experts = {"code-7b": Expert(name="code-7b", urls=["http://code-7b:8000"], model="m")}
    live, ignored = parse_endpoints(
        {
            "experts": {
                "code-7b": {
                    "readyReplicas": 2,
                    "desiredReplicas": 2,
                    "coldStartSeconds": 45,
                    "endpoints": [
                        {
                            "url": "http://10.0.0.5:8000/",
                            "ready": True,
                            "queueDepth": 3,
                            "running": 8,
                        }
                    ],
                }
            },
            "generatedAt": "2026-11-28T17:00:00Z",
        },
        experts,
    )
    assert live["code-7b"].endpoints[0] == EndpointLive("http://10.0.0.5:8000", True, 3, 8)
    assert live["code-7b"].cold_start_seconds == 45
    assert ignored == []
    with pytest.raises(ValueError):
        parse_endpoints({"experts": {"x": "not an object"}}, experts)


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_sse_scanner_reads_usage_and_strips_it_only_when_asked() -> None:
    content = sse({"choices": [{"delta": {"content": "hi"}}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    stream = content + usage + b"data: [DONE]\n\n"
    keep = SseScanner(strip_usage=False)
    out = b"".join(keep.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + keep.flush()
    assert out == stream
    assert keep.usage == {"prompt_tokens": 3, "completion_tokens": 5}
    strip = SseScanner(strip_usage=True)
    out = b"".join(strip.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + strip.flush()
    assert out == content + b"data: [DONE]\n\n"
    assert strip.usage is not None and strip.content_events == 1


def test_upstream_urls_and_failing_statuses() -> None:
    assert api_url("http://a:8000", "/chat/completions") == "http://a:8000/v1/chat/completions"
    assert api_url("https://x/v1/", "/embeddings") == "https://x/v1/embeddings"
    assert [is_failing_status(s) for s in (200, 400, 404, 429, 500, 503, 401)] == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


METRICS = """
# TYPE modelflock_router_requests counter
modelflock_router_requests_total{code="200",expert="small",intent="code",route="code"} 3.0
modelflock_router_requests_total{code="200",expert="big",intent="code",route="code"} 1.0
modelflock_router_requests_total{code="404",expert="none",intent="none",route="none"} 9.0
# TYPE modelflock_router_cost_usd counter
modelflock_router_cost_usd_total{expert="small",route="code"} 0.001
modelflock_router_cost_usd_total{expert="big",route="code"} 0.003
# TYPE modelflock_router_baseline_cost_usd counter
modelflock_router_baseline_cost_usd_total{expert="small",route="code"} 0.006
modelflock_router_baseline_cost_usd_total{expert="big",route="code"} 0.002
"""


def test_report_sums_per_route_and_computes_savings() -> None:
    [row] = summarize(METRICS)
    assert (row.route, row.requests) == ("code", 4)
    assert row.cost_per_query == pytest.approx(0.001)
    assert row.savings == pytest.approx(0.5)
    table = format_table([row])
    assert "TOTAL" in table and "50.0%" in table
