"""Shadow evaluation in the router, over real HTTP with the official `openai` client.

Simulated engines with controlled answer quality (degraded_rate) and a deterministic judge,
so outcomes can be predicted exactly from the prompts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from modelflock.evaluation.judge import DEFAULT_RUBRIC
from modelflock.router.app import RouterServer
from modelflock.sim.text import is_degraded

from .conftest import Flock, metric, metrics_text

PROMPTS = [f"Summarize incident report number {i} for the weekly review." for i in range(40)]
SERVED_DEGRADED, CANDIDATE_DEGRADED = 0.1, 0.4


def expected(prompt: str, served: float, candidate: float) -> str:
    s, c = is_degraded(prompt, served), is_degraded(prompt, candidate)
    return "tie" if s == c else "win" if s else "loss"


async def portfolio(flock: Flock, candidate: dict[str, Any] | None = None) -> None:
    await flock.sim("served", behaviour={"degraded_rate": SERVED_DEGRADED})
    await flock.sim("cand", behaviour={"degraded_rate": CANDIDATE_DEGRADED, **(candidate or {})})
    await flock.sim("judge", behaviour={"judge": True})
    await flock.sim("embed")


def config(flock: Flock, evaluation: dict[str, Any], **extra: Any) -> dict[str, Any]:
    prices = {"inputPerMillion": "0", "outputPerMillion": "1000"}  # $0.008 per 8-token answer
    return {
        "experts": [
            flock.expert("served", prices={"inputPerMillion": "0", "outputPerMillion": "2000"}),
            flock.expert("cand", prices=prices),
            flock.expert("judge"),
            flock.expert("embed", capabilities=["embed"]),
        ],
        "routes": [{"name": "summarize", "expert": "served"}],
        "evaluation": {
            "judge": {"type": "expert", "expert": "judge"},
            "routes": [{"name": "summarize", "sampleRate": "1", "candidates": ["cand"]}],
            "maxConcurrent": 8,
            "dailyBudgetUSD": "100",
            **evaluation,
        },
        **extra,
    }


async def settle(router: RouterServer, seconds: float = 10.0) -> None:
    """Until the shadow samples started so far are done."""
    assert router.shadow is not None
    deadline = time.monotonic() + seconds
    await asyncio.sleep(0.05)
    while router.shadow.tasks:
        assert time.monotonic() < deadline, "shadow samples did not finish"
        await asyncio.sleep(0.02)


async def ask(client: openai.AsyncOpenAI, prompt: str, **kwargs: Any) -> Any:
    return await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}], **kwargs
    )


async def test_pairwise_outcomes_match_the_simulated_qualities(flock: Flock) -> None:
    await portfolio(flock)
    router = await flock.router(config(flock, {}))
    client = flock.client(router)
    for prompt in PROMPTS:
        await ask(client, prompt)
    await settle(router)
    text = await metrics_text(await flock.http(), router)
    name = "modelflock_router_shadow_samples_total"
    labels = {"route": "summarize", "expert": "served", "candidate": "cand", "judge": "pairwise"}
    for outcome in ("win", "tie", "loss"):
        want = sum(expected(p, SERVED_DEGRADED, CANDIDATE_DEGRADED) == outcome for p in PROMPTS)
        assert metric(text, name, outcome=outcome, **labels) == want, outcome
    assert sum(expected(p, SERVED_DEGRADED, CANDIDATE_DEGRADED) == "loss" for p in PROMPTS) > 5
    # costs on the same prompts: the candidate is half the price of the served expert
    cost = "modelflock_router_shadow_cost_usd_total"
    served = metric(text, cost, role="served", candidate="cand")
    assert served == pytest.approx(len(PROMPTS) * 8 * 2000 / 1e6)
    assert metric(text, cost, role="candidate", candidate="cand") == pytest.approx(served / 2)
    assert metric(text, "modelflock_router_shadow_latency_seconds_count", role="candidate") == 40
    # the judge saw both orders (randomised per sample)
    judge = flock.sims["judge"].stats
    assert judge.completed == len(PROMPTS)


async def test_similarity_judge_agrees_on_good_answers_only(flock: Flock) -> None:
    await portfolio(flock)
    evaluation = {"judge": {"type": "similarity", "expert": "embed", "minSimilarity": "0.9"}}
    router = await flock.router(config(flock, evaluation))
    client = flock.client(router)
    for prompt in PROMPTS:
        await ask(client, prompt)
    await settle(router)
    text = await metrics_text(await flock.http(), router)
    name = "modelflock_router_shadow_samples_total"
    differ = sum(
        is_degraded(p, SERVED_DEGRADED) != is_degraded(p, CANDIDATE_DEGRADED) for p in PROMPTS
    )
    # equal quality gives identical answers (cosine 1); a good and a degraded one share no word
    assert metric(text, name, judge="similarity", outcome="agree") == len(PROMPTS) - differ
    assert metric(text, name, judge="similarity", outcome="disagree") == differ > 5


async def test_slow_or_failing_shadow_never_changes_the_user_s_answer_or_latency(
    flock: Flock,
) -> None:
    """The same prompts through a router without evaluation and one whose candidate is slow,
    failing or hangs up: identical answers, and latency unaffected while samples run."""
    await portfolio(flock, {"first_byte_delay_seconds": 3.0})
    plain = await flock.router({**config(flock, {}), "evaluation": None})
    baseline = {
        p: (await ask(flock.client(plain), p)).choices[0].message.content for p in PROMPTS[:6]
    }
    for behaviour in (
        {"first_byte_delay_seconds": 3.0},
        {"mode": "error", "first_byte_delay_seconds": 0.0},
        {"mode": "drop", "first_byte_delay_seconds": 0.0},
    ):
        flock.sims["cand"].set_behaviour(**behaviour)
        router = await flock.router(config(flock, {}))
        client = flock.client(router)
        seconds = []
        for prompt in PROMPTS[:6]:
            started = time.monotonic()
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            seconds.append(time.monotonic() - started)
            answer = raw.parse()
            assert answer.choices[0].message.content == baseline[prompt], behaviour
            assert raw.headers["x-modelflock-expert"] == "served"
        assert max(seconds) < 0.5, (behaviour, seconds)
        if behaviour.get("first_byte_delay_seconds"):
            assert router.shadow is not None and router.shadow.running == 6  # still running
        await settle(router)
        text = await metrics_text(await flock.http(), router)
        if behaviour.get("mode") in ("error", "drop"):
            assert (
                metric(text, "modelflock_router_shadow_dropped_total", reason="candidate-error")
                == 6
            )
        else:
            assert metric(text, "modelflock_router_shadow_samples_total") == 6


async def test_streams_and_opted_out_requests_are_not_sampled(flock: Flock) -> None:
    await portfolio(flock)
    router = await flock.router(config(flock, {}))
    client = flock.client(router)
    await ask(client, PROMPTS[0], extra_headers={"x-modelflock-shadow": "off"})
    stream = await ask(client, PROMPTS[1], stream=True)
    async for _ in stream:
        pass
    await settle(router)
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_samples_total") == 0
    assert flock.sims["cand"].stats.requests == 0
    await ask(client, PROMPTS[2], extra_headers={"x-modelflock-shadow": "on"})
    await settle(router)
    assert flock.sims["cand"].stats.requests == 1


async def test_budget_cap_drops_samples_once_spent(flock: Flock) -> None:
    """Each candidate answer costs $0.008; with $0.02 a day, three samples run (the third
    starts below the cap), then every sample is dropped, not queued."""
    await portfolio(flock)
    router = await flock.router(config(flock, {"dailyBudgetUSD": "0.02", "maxConcurrent": 1}))
    client = flock.client(router)
    for prompt in PROMPTS[:10]:
        await ask(client, prompt)
        await settle(router)
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_samples_total") == 3
    assert metric(text, "modelflock_router_shadow_dropped_total", reason="budget") == 7
    assert flock.sims["cand"].stats.requests == 3
    assert metric(text, "modelflock_router_shadow_budget_spent_usd") == pytest.approx(0.024)


async def test_concurrency_cap_drops_instead_of_queueing(flock: Flock) -> None:
    await portfolio(flock, {"first_byte_delay_seconds": 1.0})
    router = await flock.router(config(flock, {"maxConcurrent": 2}))
    client = flock.client(router)
    await asyncio.gather(*(ask(client, p) for p in PROMPTS[:8]))
    await asyncio.sleep(0.1)
    assert router.shadow is not None and router.shadow.running == 2
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_dropped_total", reason="concurrency") == 6
    await settle(router)


@pytest.mark.parametrize(
    ("live", "wake", "reason", "woken"),
    [
        ({"queue": [3]}, False, "overloaded", False),
        ({"ready": False}, False, "cold", False),
        ({"ready": False}, True, "cold", True),
    ],
)
async def test_busy_or_cold_candidates_drop_samples_and_send_no_demand(
    flock: Flock, live: dict[str, Any], wake: bool, reason: str, woken: bool
) -> None:
    await portfolio(flock)
    api = await flock.flock_api()
    for name in ("served", "judge", "embed"):
        api.set_expert(name, [flock.sims[name].url])
    api.set_expert("cand", [flock.sims["cand"].url], **live)
    router = await flock.router(
        config(flock, {"wakeColdCandidates": wake}, discovery=flock.discovery(api))
    )
    client = flock.client(router)
    for prompt in PROMPTS[:5]:
        answer = await ask(client, prompt)
        assert answer.choices[0].message.content
    await settle(router)
    await asyncio.sleep(0.3)
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_dropped_total", reason=reason) == 5
    assert flock.sims["cand"].stats.requests == 0
    # never the user's demand: no request was held for the candidate
    assert metric(text, "modelflock_router_waiting_requests") == 0
    assert bool([d for d in api.demands if d["expert"] == "cand"]) == woken
    assert all(d["waiting"] == 1 for d in api.demands)


async def test_reports_send_deltas_and_the_policy_spend_caps_every_router(flock: Flock) -> None:
    await portfolio(flock)
    api = await flock.flock_api()
    for name in ("served", "cand", "judge", "embed"):
        api.set_expert(name, [flock.sims[name].url])
    router = await flock.router(
        config(flock, {"reportIntervalSeconds": 0.1}, discovery=flock.discovery(api))
    )
    client = flock.client(router)
    for prompt in PROMPTS[:10]:
        await ask(client, prompt)
    await settle(router)
    await asyncio.sleep(0.4)
    for prompt in PROMPTS[10:14]:
        await ask(client, prompt)
    await settle(router)
    await asyncio.sleep(0.4)
    results = [r for report in api.evaluation_reports for r in report["results"]]
    assert sum(r["samples"] for r in results) == 14  # deltas add up to the total, no repeats
    assert len({report["router"] for report in api.evaluation_reports}) == 1
    assert sum(r["servedCostUSD"] for r in results) == pytest.approx(14 * 8 * 2000 / 1e6)
    assert sum(float(r["spentUSD"]) for r in api.evaluation_reports) == pytest.approx(14 * 0.008)
    assert {r["judge"] for r in results} == {"pairwise"}
    # other routers spent the policy's budget: this one stops sampling too
    api.policy_spent = 100.0
    await asyncio.sleep(0.4)  # a heartbeat is not due yet: news make the next report
    await ask(client, PROMPTS[20])
    await settle(router)
    await asyncio.sleep(0.4)
    for prompt in PROMPTS[21:24]:
        await ask(client, prompt)
    await settle(router)
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_dropped_total", reason="budget") == 3


async def test_similarity_with_the_real_minilm_model(flock: Flock, minilm_server: str) -> None:
    """The cheap judge through a real embedding model: good answers of two engines agree,
    a degraded answer does not."""
    from support import MINILM_MODEL

    await portfolio(flock)
    evaluation = {"judge": {"type": "similarity", "expert": "minilm", "minSimilarity": "0.8"}}
    cfg = config(flock, evaluation)
    cfg["experts"].append({"name": "minilm", "urls": [minilm_server], "model": MINILM_MODEL})
    router = await flock.router(cfg)
    client = flock.client(router)
    for prompt in PROMPTS:
        await ask(client, prompt)
        await settle(router, 30)  # the model on a shared CPU: one sample at a time
    text = await metrics_text(await flock.http(), router)
    name = "modelflock_router_shadow_samples_total"
    same = sum(
        is_degraded(p, SERVED_DEGRADED) == is_degraded(p, CANDIDATE_DEGRADED) for p in PROMPTS
    )
    differ = len(PROMPTS) - same
    assert metric(text, name, outcome="agree") + metric(text, name, outcome="disagree") == 40
    # every differing pair is a disagreement; the identical ones agree
    assert metric(text, name, outcome="disagree") == differ
    assert metric(text, name, outcome="agree") == same


def test_default_rubric_is_used_when_empty() -> None:
    assert "impartial" in DEFAULT_RUBRIC


async def test_report_recommends_what_the_qualities_justify(
    flock: Flock, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`small` is as good as `served` at half the price (move down); `big` is better than
    `served` on the prompts it degrades (a cascade check or a bigger expert)."""
    from modelflock.cli import main

    await flock.sim("served", behaviour={"degraded_rate": 0.3})
    await flock.sim("small", behaviour={"degraded_rate": 0.3})
    await flock.sim("big", behaviour={"degraded_rate": 0.0})
    await flock.sim("judge", behaviour={"judge": True})

    def priced(name: str, output: str) -> dict[str, Any]:
        return flock.expert(name, prices={"inputPerMillion": "0", "outputPerMillion": output})

    router = await flock.router(
        {
            "experts": [
                priced("served", "2000"),
                priced("small", "1000"),
                priced("big", "8000"),
                flock.expert("judge"),
            ],
            "routes": [{"name": "summarize", "expert": "served"}],
            "evaluation": {
                "judge": {"type": "expert", "expert": "judge"},
                "routes": [
                    {"name": "summarize", "sampleRate": "1", "candidates": ["small", "big"]}
                ],
                "maxConcurrent": 16,
                "dailyBudgetUSD": "100",
            },
        }
    )
    client = flock.client(router)
    prompts = [f"Summarize support ticket {i} in one line." for i in range(60)]
    for prompt in prompts:
        await ask(client, prompt)
    await settle(router)
    saved = tmp_path / "metrics.txt"
    saved.write_text(await metrics_text(await flock.http(), router))
    lost = sum(is_degraded(p, 0.3) for p in prompts)
    capsys.readouterr()
    assert main(["report", "--quality", "--file", str(saved)]) == 0
    out = capsys.readouterr().out
    assert (
        "route `summarize`: `small` matched `served` on 100 % ± 6 % of 60 samples at 50 % of"
        " the cost — consider moving it down"
    ) in out
    share = round(100 * lost / 60)
    assert f"route `summarize`: `served` lost to `big` on {share} % ±" in out
    assert "consider a cascade check or a bigger expert" in out
    assert out.count("  - route") == 2  # nothing else is recommended
    # the default report has the cost table and the quality section
    assert main(["report", "--file", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "== Quality (shadow evaluation)" in out
