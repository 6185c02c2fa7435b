"""Each classifier stage through real HTTP: rules, embedding (via an embedding expert),
llm (a classifier expert answering a label), and hand-over on timeout."""

from __future__ import annotations

from typing import Any

from .conftest import Flock

INTENTS = [
    {
        "name": "code",
        "keywords": ["python"],
        "examples": ["write a function that sorts a list", "fix this bug in my function"],
    },
    {"name": "poetry", "examples": ["write a poem about the sea", "a short poem about love"]},
]


async def portfolio(flock: Flock, stages: list[dict[str, Any]], **classifier_sim: Any) -> Any:
    await flock.sim("coder")
    await flock.sim("poet")
    await flock.sim("generalist")
    await flock.sim("clf", **classifier_sim)
    return await flock.router(
        {
            "experts": [flock.expert(n) for n in ("coder", "poet", "generalist", "clf")],
            "classifier": {"stages": stages, "intents": INTENTS, "defaultIntent": "chat"},
            "routes": [
                {"name": "code", "match": {"intents": ["code"]}, "expert": "coder"},
                {"name": "poetry", "match": {"intents": ["poetry"]}, "expert": "poet"},
                {"name": "other", "expert": "generalist"},
            ],
        }
    )


async def ask(flock: Flock, router: Any, text: str) -> dict[str, str]:
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}]
    )
    return {k: raw.headers[f"x-modelflock-{k}"] for k in ("expert", "intent", "classifier")}


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
        "classifier": "default",
    }


async def test_embedding_stage_finds_the_nearest_example(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [
            {"type": "rules"},
            {
                "type": "embedding",
                "expert": "clf",
                "minConfidence": "0.5",
                "timeoutMilliseconds": 2000,
            },
        ],
    )
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
    assert await ask(flock, router, "zzz qqq") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "default",
    }


async def test_llm_stage_picks_a_label(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "rules"}, {"type": "llm", "expert": "clf", "timeoutMilliseconds": 2000}],
        behaviour={"replies": {"sonnet": "poetry", "weather": "I am not sure"}},
    )
    assert await ask(flock, router, "compose a sonnet") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "llm",
    }
    # An answer that is not exactly one label is unsure: the default intent.
    assert await ask(flock, router, "how is the weather") == {
        "expert": "generalist",
        "intent": "chat",
        "classifier": "default",
    }


async def test_slow_stage_times_out_and_hands_over(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "llm", "expert": "clf", "timeoutMilliseconds": 100}, {"type": "rules"}],
        behaviour={"first_byte_delay_seconds": 2.0, "replies": {"python": "poetry"}},
    )
    assert await ask(flock, router, "python please") == {
        "expert": "coder",
        "intent": "code",
        "classifier": "rules",
    }
    session = await flock.http()
    async with session.get(f"{router.url}/metrics") as resp:
        assert 'stage="llm"' in (text := await resp.text()) and 'outcome="timeout"' in text


async def test_embedding_expert_down_at_load_then_back(flock: Flock) -> None:
    router = await portfolio(
        flock,
        [{"type": "embedding", "expert": "clf", "timeoutMilliseconds": 2000}],
        behaviour={"mode": "error"},
    )
    assert (await ask(flock, router, "write me a poem about the sea"))["classifier"] == "default"
    flock.sims["clf"].set_behaviour(mode="ok")  # examples are embedded on the next use
    assert await ask(flock, router, "write me a poem about the sea") == {
        "expert": "poet",
        "intent": "poetry",
        "classifier": "embedding",
    }
