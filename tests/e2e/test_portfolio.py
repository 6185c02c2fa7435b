"""End to end: the chart, the operator, the example portfolio, simulated engines on the pod IPs,
and the router, driven with the official OpenAI client — the demo's flow, with assertions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from support import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))

from portfolio import NAMESPACE, RELEASE_NAMESPACE, Portfolio, running_portfolio  # noqa: E402

from modelflock.router.report import summarize, total  # noqa: E402

pytestmark = pytest.mark.e2e

POOLS = {
    "intent-small": "l4",
    "embed-small": "l4",
    "code-7b": "l4",
    "summarize-tgi": "l4",
    "writer-70b": "h100",
}


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portfolio]:
    with running_portfolio(
        tmp_path_factory.mktemp("portfolio"),
        scale_down_seconds=8,
        scale_to_zero_seconds=600,
        say=lambda _: None,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(portfolio: Portfolio) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=portfolio.router_url, api_key="unused", max_retries=0, timeout=120
    ) as c:
        yield c


class Ledger:
    """Per-request accounting as the router reported it in each response."""

    def __init__(self) -> None:
        self.cost = 0.0
        self.baseline = 0.0
        self.requests = 0

    def ask(self, client: openai.OpenAI, prompt: str, **kwargs: Any) -> tuple[str, dict[str, str]]:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], **kwargs
        )
        completion = raw.parse()
        headers = dict(raw.headers)
        self.cost += float(headers["x-modelflock-cost"])
        self.baseline += float(headers["x-modelflock-baseline-cost"])
        self.requests += 1
        return completion.choices[0].message.content or "", headers


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def test_the_chart_installs(portfolio: Portfolio) -> None:
    assert portfolio.cluster is not None
    status = portfolio.helm("status", "modelflock", "-n", RELEASE_NAMESPACE, "-o", "json")
    assert json.loads(status)["info"]["status"] == "deployed"
    deployment = json.loads(
        portfolio.cluster.kubectl("get", "deployment", "-n", RELEASE_NAMESPACE, "-o", "json")
    )["items"]
    # Two replicas behind a Lease: a rolling update never has two leaders writing at once.
    assert [(d["spec"]["strategy"]["type"], d["spec"]["replicas"]) for d in deployment] == [
        ("RollingUpdate", 2)
    ]
    crd = json.loads(
        portfolio.cluster.kubectl("get", "crd", "modelexperts.modelflock.io", "-o", "json")
    )
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_experts_are_ready_on_their_pools(portfolio: Portfolio) -> None:
    assert portfolio.cluster is not None
    experts = {e["metadata"]["name"]: e for e in portfolio.experts()}
    assert set(experts) == {*POOLS, "frontier"}
    for name, expert in experts.items():
        ready = next(c for c in expert["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (name, ready)
    pods = json.loads(
        portfolio.cluster.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", "modelflock.io/expert", "-o", "json"
        )
    )["items"]
    placed = {
        (p["metadata"]["labels"]["modelflock.io/expert"], p["spec"]["nodeName"].split("-")[1])
        for p in pods
    }
    for expert, pool in placed:
        assert POOLS[expert] == pool, (expert, pool)
    assert {e for e, _ in placed} >= {"intent-small", "embed-small", "code-7b", "summarize-tgi"}


@pytest.mark.parametrize(
    ("prompt", "expert", "route"),
    [
        ("Write a Python function that parses a CSV file.", "code-7b", "code"),
        (
            "Summarize this article in three bullet points: the council met on Tuesday.",
            "summarize-tgi",
            "summarize",
        ),
        # A lookup: answered from the `facts` KnowledgeBase (pgvector), no LLM.
        ("What is the capital of France?", "kb:facts", "lookup"),
        ("Hello! How is your day going?", "intent-small", "chat"),
        ("Write a short poem about autumn rain.", "writer-70b|frontier", "writing"),
    ],
)
def test_requests_reach_the_expected_expert(
    client: openai.OpenAI, ledger: Ledger, prompt: str, expert: str, route: str
) -> None:
    text, headers = ledger.ask(client, prompt, max_tokens=64)
    assert text
    assert headers["x-modelflock-expert"] in expert.split("|")  # writer-70b may be cold
    assert headers["x-modelflock-route"] == route


def test_the_embedding_stage_decides_with_the_real_model(
    portfolio: Portfolio, client: openai.OpenAI, ledger: Ledger
) -> None:
    # The router started after its examples were embedded by all-MiniLM-L6-v2 (embed-small).
    assert portfolio.examples_embedded()
    # No rule matches these: the nearest examples decide.
    for prompt, intent in [
        ("Could you explain why my recursive function never returns?", "code"),
        ("What should I do this weekend to relax?", "chat"),
    ]:
        _, headers = ledger.ask(client, prompt, max_tokens=16)
        assert (headers["x-modelflock-classifier"], headers["x-modelflock-intent"]) == (
            "embedding",
            intent,
        ), prompt
        assert "x-modelflock-classifier-failures" not in headers


def test_a_refusal_escalates_to_the_frontier(
    portfolio: Portfolio, client: openai.OpenAI, ledger: Ledger
) -> None:
    _, headers = ledger.ask(client, "[hard] What is the meaning of this riddle?", max_tokens=64)
    assert headers["x-modelflock-expert"] == "frontier"
    assert int(headers["x-modelflock-escalations"]) >= 1
    if headers["x-modelflock-route"] == "lookup":  # the route with retrieval and handoff
        assert headers["x-modelflock-retrieval"] == "miss"
        handed = [
            line
            for line in portfolio.router_metrics().splitlines()
            if line.startswith("modelflock_router_handoffs_total")
        ]
        assert handed and float(handed[0].rsplit(" ", 1)[1]) >= 1


def test_streaming_passes_through_with_usage(
    portfolio: Portfolio, client: openai.OpenAI, ledger: Ledger
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a python function to add numbers."}],
        stream=True,
        max_tokens=32,
        stream_options={"include_usage": True},
    )
    expert = raw.headers["x-modelflock-expert"]
    chunks = list(raw.parse())
    assert len(chunks) > 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    # Streams carry no cost header (headers go out before usage): account from the prices.
    prices = {e["metadata"]["name"]: e["spec"]["cost"] for e in portfolio.experts()}
    cost = (
        float(prices[expert]["inputPerMillion"]) * usage.prompt_tokens
        + float(prices[expert]["outputPerMillion"]) * usage.completion_tokens
    ) / 1e6
    base = prices["frontier"]
    ledger.cost += cost
    ledger.baseline += (
        float(base["inputPerMillion"]) * usage.prompt_tokens
        + float(base["outputPerMillion"]) * usage.completion_tokens
    ) / 1e6
    ledger.requests += 1


def _replicas(portfolio: Portfolio, name: str) -> int:
    expert = next(e for e in portfolio.experts() if e["metadata"]["name"] == name)
    return int(expert["spec"].get("replicas") or 0)


def test_a_burst_scales_the_busy_expert_up_and_later_down(
    portfolio: Portfolio, client: openai.OpenAI, ledger: Ledger
) -> None:
    assert _replicas(portfolio, "code-7b") == 1
    prompt = "Refactor this python loop into a comprehension."
    deadline = time.monotonic() + 40
    peak = 1

    def one(_: int) -> None:
        if time.monotonic() < deadline:
            ledger.ask(client, prompt, max_tokens=256)

    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(one, i) for i in range(72)]
        while not all(f.done() for f in futures):
            peak = max(peak, _replicas(portfolio, "code-7b"))
            time.sleep(0.5)
        for future in futures:
            future.result()
    peak = max(peak, _replicas(portfolio, "code-7b"))
    assert peak > 1, "code-7b never scaled up under the burst"
    wait_for(lambda: _replicas(portfolio, "code-7b") == 1, "code-7b back to one replica", 90, 1.0)
    reasons = [
        e["message"] for e in portfolio.scale_events() if e["involvedObject"]["name"] == "code-7b"
    ]
    assert any("QueueAboveTarget" in r for r in reasons), reasons


def test_a_killed_engine_makes_its_traffic_fall_back(
    portfolio: Portfolio, client: openai.OpenAI, ledger: Ledger
) -> None:
    assert portfolio.fleet is not None
    assert portfolio.fleet.kill_expert("summarize-tgi")
    try:
        for _ in range(3):
            text, headers = ledger.ask(
                client, "Summarize this article: rain is expected all week.", max_tokens=32
            )
            assert text
            assert headers["x-modelflock-route"] == "summarize"
            assert headers["x-modelflock-expert"] == "intent-small"  # the route's fallback
    finally:
        portfolio.fleet.revive_expert("summarize-tgi")
    fallbacks = [
        line
        for line in portfolio.router_metrics().splitlines()
        if line.startswith("modelflock_router_fallbacks_total") and 'expert="summarize-tgi"' in line
    ]
    assert fallbacks and float(fallbacks[0].rsplit(" ", 1)[1]) >= 3


def test_the_report_equals_the_sum_of_per_request_accounting(
    portfolio: Portfolio, ledger: Ledger
) -> None:
    overall = total(summarize(portfolio.router_metrics()))
    assert ledger.requests > 50
    assert overall.cost == pytest.approx(ledger.cost, rel=1e-6)
    assert overall.baseline_cost == pytest.approx(ledger.baseline, rel=1e-6)
    assert overall.requests == ledger.requests
    assert 0 < overall.cost < overall.baseline_cost  # the portfolio is cheaper than the frontier


def test_shadow_evaluation_recommends_what_the_simulated_qualities_justify(
    portfolio: Portfolio, client: openai.OpenAI
) -> None:
    """The demo's quality phase: intent-small is as good as summarize-tgi on summaries (same
    degraded share, a fraction of the cost), code-7b loses to the frontier on many code
    requests. Exactly those two are recommended, through status.evaluation, with Events."""
    from modelflock.router.quality import recommendations, tallies_from_policy

    portfolio.set_evaluation(sampleRate="1", maxConcurrent=8)
    article = "The council met to discuss cycling lanes and agreed a six month trial."
    jobs = [
        f"Summarize this article in three bullet points: {article} (case {i})" for i in range(50)
    ]
    jobs += [f"Write a Python function that parses a CSV file (case {i})" for i in range(80)]

    def one(prompt: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=256
        )
        return raw.headers["x-modelflock-route"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        routes = list(pool.map(one, jobs))
    assert routes.count("summarize") == 50 and routes.count("code") == 80
    portfolio.wait_for_evaluation()
    tallies, thresholds = tallies_from_policy(portfolio.policy())
    advice = recommendations(tallies, thresholds)
    assert len(advice) == 2, advice
    assert any(
        a.startswith("route `summarize`: `intent-small` matched `summarize-tgi`")
        and a.endswith("consider moving it down")
        for a in advice
    ), advice
    assert any(
        a.startswith("route `code`: `code-7b` lost to `frontier`")
        and a.endswith("consider a cascade check or a bigger expert")
        for a in advice
    ), advice
    reasons = {e["reason"] for e in portfolio.recommendation_events()}
    assert {"RecommendMoveDown", "RecommendEscalate"} <= reasons


def test_a_lookup_streams_from_the_knowledge_base(client: openai.OpenAI) -> None:
    # After the report test: a stream carries no cost header for the ledger to add up.
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Who wrote Pride and Prejudice?"}],
        stream=True,
    )
    assert raw.headers["x-modelflock-retrieval"] == "hit"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert "Jane Austen" in text and "configmap/facts/facts.jsonl#pride" in text
