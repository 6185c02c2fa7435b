"""Each classifier stage through real HTTP: rules, embedding (via an embedding expert),
llm (a classifier expert answering a constrained label, on vLLM's and TGI's wire formats),
hand-over on timeout, and honest reporting when a stage cannot answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modelflock.router.app import RouterServer
from modelflock.router.classify.embedding import EmbeddingStage

from .conftest import Flock, metric, metrics_text

INTENTS = [
    {
        "name": "code",
        "keywords": ["python"],
        "description": "programming: write or fix a function",
        "examples": [
            "write a function that sorts a list",
            "fix this bug in my function",
            "a function to parse json",
            "debug my python function",
            "refactor this function into a class",
        ],
    },
    {
        "name": "poetry",
        "description": "poems and verse",
        "examples": [
            "write a poem about the sea",
            "a short poem about love",
            "a sonnet poem",
            "a poem with rhymes about autumn",
            "compose a love poem",
        ],
    },
    {"name": "chat", "description": "small talk"},
]
EMBEDDER: dict[str, Any] = {"capabilities": ["embed"]}


async def portfolio(
    flock: Flock,
    stages: list[dict[str, Any]],
    clf_flavour: str = "vllm",
    clf_engine: str = "vllm",
    **classifier_sim: Any,
) -> RouterServer:
    await flock.sim("coder")
    await flock.sim("poet")
    await flock.sim("generalist")
    # 1024 dimensions: the hashed bag of words of engine-sim hardly collides.
    await flock.sim("clf", flavour=clf_flavour, embedding_dim=1024, **classifier_sim)
    return await flock.router(
        {
            "experts": [
                *(flock.expert(n) for n in ("coder", "poet", "generalist")),
                flock.expert("clf", engine=clf_engine, **EMBEDDER),
            ],
            "classifier": {"stages": stages, "intents": INTENTS, "defaultIntent": "chat"},
            "routes": [
                {"name": "code", "match": {"intents": ["code"]}, "expert": "coder"},
                {"name": "poetry", "match": {"intents": ["poetry"]}, "expert": "poet"},
                {"name": "other", "expert": "generalist"},
            ],
        }
    )


async def ask(flock: Flock, router: RouterServer, text: str) -> dict[str, str]:
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}]
    )
    keys = ("expert", "intent", "classifier", "classifier-failures")
    return {k: raw.headers[f"x-modelflock-{k}"] for k in keys if f"x-modelflock-{k}" in raw.headers}


async def examples_ready(router: RouterServer) -> None:
    async with asyncio.timeout(10):  # else: the intent examples were never embedded
        while True:
            chain = router.holder.current.chain
            if all(s.ready for s in chain.stages if isinstance(s, EmbeddingStage)):
                return
            await asyncio.sleep(0.05)


EMBEDDING = {
    "type": "embedding",
    "expert": "clf",
    "minConfidence": "0.7",
    "timeoutMilliseconds": 2000,
}


async def test_rules_then_default(flock: Flock) -> None:
    router = await portfolio(flock, [{"type": "rules"}])
    assert await ask(flock, router, "python please") == {
        "expert": "coder",
        "intent": "code",
        "classifier": "rules",
    }
    assert await ask(flock, router, "good morning") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "default",  # every stage answered: none was sure
    }


async def test_embedding_stage_finds_the_nearest_example(flock: Flock) -> None:
    router = await portfolio(flock, [{"type": "rules"}, EMBEDDING])
    await examples_ready(router)
    assert await ask(flock, router, "write me a poem about the sea") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "embedding",
    }
    assert await ask(flock, router, "a function that sorts a list") == {
        "expert": "coder",
        "intent": "code",
        "classifier": "embedding",
    }
    # Nothing like any example: the calibrated confidence is low, the stage is unsure.
    assert await ask(flock, router, "zzz qqq") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "default",
    }


async def test_while_examples_are_embedded_requests_do_not_wait(flock: Flock) -> None:
    # The embedder takes 1.5 s per call: the examples are not ready for the first requests.
    router = await portfolio(
        flock, [{"type": "rules"}, EMBEDDING], behaviour={"first_byte_delay_seconds": 1.5}
    )
    started = time.monotonic()
    answer = await ask(flock, router, "write me a poem about the sea")
    assert time.monotonic() - started < 1.0  # answered at once, not after the embedder
    assert answer == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "degraded",
        "classifier-failures": "embedding=warming",
    }
    await examples_ready(router)
    flock.sims["clf"].set_behaviour(first_byte_delay_seconds=0.0)
    assert (await ask(flock, router, "write me a poem about the sea"))["classifier"] == "embedding"


async def test_llm_stage_sends_vllm_structured_outputs_and_reads_the_label(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "rules"}, {"type": "llm", "expert": "clf", "timeoutMilliseconds": 2000}],
        behaviour={"replies": {"sonnet": "poetry"}},
    )
    assert await ask(flock, router, "compose a sonnet") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "llm",
    }
    sent = flock.sims["clf"].state.recent_chats[-1]
    assert sent["structured_outputs"] == {"choice": ["code", "poetry", "chat"]}
    assert sent["temperature"] == 0 and sent["max_tokens"] == 16
    assert "- poetry: poems and verse" in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "user", "content": "compose a sonnet"}
    # No canned reply: the engine still answers one of the allowed labels.
    assert (await ask(flock, router, "can you fix my function"))["intent"] == "code"


async def test_llm_stage_sends_tgi_a_json_grammar_and_parses_the_object(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "llm", "expert": "clf", "timeoutMilliseconds": 2000}],
        clf_flavour="tgi",
        clf_engine="tgi",
        behaviour={"replies": {"sonnet": "poetry"}},
    )
    assert await ask(flock, router, "compose a sonnet") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "llm",
    }
    sent = flock.sims["clf"].state.recent_chats[-1]
    assert "structured_outputs" not in sent
    assert sent["response_format"]["type"] == "json"
    assert sent["response_format"]["value"]["properties"]["intent"]["enum"] == [
        "code",
        "poetry",
        "chat",
    ]


async def test_malformed_llm_answers_are_failures_not_unsure(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "rules"}, {"type": "llm", "expert": "clf", "timeoutMilliseconds": 2000}],
        # A misconfigured engine ignores the constraint and writes free text.
        behaviour={"constraints": "ignore", "replies": {"weather": "I am not sure, maybe chat?"}},
    )
    assert await ask(flock, router, "how is the weather") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "degraded",
        "classifier-failures": "llm=bad_response",
    }
    flock.sims["clf"].set_behaviour(mode="empty")
    assert (await ask(flock, router, "how is the weather"))["classifier-failures"] == (
        "llm=bad_response"
    )
    flock.sims["clf"].set_behaviour(mode="error", status=503)
    assert (await ask(flock, router, "how is the weather"))["classifier-failures"] == (
        "llm=unavailable"
    )
    text = await metrics_text(await flock.http(), router)
    name = "modelflock_router_classifier_stage_failures_total"
    assert metric(text, name, stage="llm", reason="bad_response") == 2
    assert metric(text, name, stage="llm", reason="unavailable") == 1
    assert metric(text, "modelflock_router_classifier_decisions_total", classifier="degraded") == 3


async def test_slow_stage_times_out_and_hands_over(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "llm", "expert": "clf", "timeoutMilliseconds": 100}, {"type": "rules"}],
        behaviour={"first_byte_delay_seconds": 2.0, "replies": {"python": "poetry"}},
    )
    assert await ask(flock, router, "python please") == {
        "expert": "coder",
        "intent": "code",
        "classifier": "rules",  # rules decided: the intent is trustworthy, the failure noted
        "classifier-failures": "llm=timeout",
    }
    text = await metrics_text(await flock.http(), router)
    assert (
        metric(
            text, "modelflock_router_classifier_stage_seconds_count", stage="llm", outcome="timeout"
        )
        == 1
    )
    assert (
        metric(
            text, "modelflock_router_classifier_stage_failures_total", stage="llm", reason="timeout"
        )
        == 1
    )


async def test_embedding_expert_down_at_load_then_back(flock: Flock) -> None:
    router = await portfolio(flock, [EMBEDDING], behaviour={"mode": "error"})
    assert await ask(flock, router, "write me a poem about the sea") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "degraded",
        "classifier-failures": "embedding=warming",
    }
    flock.sims["clf"].set_behaviour(mode="ok")  # the warm-up retries in the background
    await examples_ready(router)
    assert await ask(flock, router, "write me a poem about the sea") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "embedding",
    }
    flock.sims["clf"].set_behaviour(mode="error", status=500)  # down after the warm-up
    assert await ask(flock, router, "write me a sonnet about the sea") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "degraded",
        "classifier-failures": "embedding=unavailable",
    }
