"""Cascades: the small expert answers unless a check fails; then the next one does."""

from __future__ import annotations

from typing import Any

import pytest

from modelflock.router.app import RouterServer

from .conftest import Flock


async def cascade(flock: Flock, small_mode: str, checks: list[str]) -> RouterServer:
    await flock.sim("small", behaviour={"mode": small_mode})
    await flock.sim("big")
    router = await flock.router(
        {
            "experts": [flock.expert("small"), flock.expert("big")],
            "routes": [
                {
                    "name": "c",
                    "cascade": {
                        "experts": ["small", "big"],
                        "checks": checks,
                        "minConfidence": "0.5",
                    },
                }
            ],
        }
    )
    return router


CHECKS = ["truncated", "empty", "refusal", "invalidJSON", "lowConfidence"]


@pytest.mark.parametrize(
    ("mode", "check", "extra"),
    [
        ("truncate", "truncated", {}),
        ("empty", "empty", {}),
        ("refuse", "refusal", {}),
        ("invalid_json", "invalidJSON", {"response_format": {"type": "json_object"}}),
        ("low_confidence", "lowConfidence", {}),
    ],
)
async def test_escalates_on_each_check(
    flock: Flock, mode: str, check: str, extra: dict[str, Any]
) -> None:
    router = await cascade(flock, mode, CHECKS)
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "question"}], **extra
    )
    assert raw.headers["x-modelflock-expert"] == "big"
    assert raw.headers["x-modelflock-escalations"] == "1"
    assert raw.headers["x-modelflock-attempts"] == "2"
    answer = raw.parse()
    assert answer.choices[0].logprobs is None  # the router asked for them, not the client
    assert flock.sims["small"].stats.completed == 1
    session = await flock.http()
    async with session.get(f"{router.url}/metrics") as resp:
        text = await resp.text()
    assert f'check="{check}"' in text


async def test_good_small_answer_is_kept(flock: Flock) -> None:
    router = await cascade(flock, "ok", CHECKS)
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "question"}], logprobs=True
    )
    assert raw.headers["x-modelflock-expert"] == "small"
    assert raw.parse().choices[0].logprobs is not None  # asked for: passed through
    assert flock.sims["big"].stats.requests == 0


async def test_unconfigured_check_does_not_escalate(flock: Flock) -> None:
    router = await cascade(flock, "refuse", ["truncated"])
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "question"}]
    )
    assert raw.headers["x-modelflock-expert"] == "small"


async def test_streaming_does_not_cascade(flock: Flock) -> None:
    router = await cascade(flock, "refuse", CHECKS)
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "question"}], stream=True
    )
    assert raw.headers["x-modelflock-expert"] == "small"
    async for _ in raw.parse():
        pass
    assert flock.sims["big"].stats.requests == 0


async def test_last_cascade_failure_returns_the_small_answer(flock: Flock) -> None:
    await flock.sim("small", behaviour={"mode": "refuse"})
    await flock.sim("big", behaviour={"mode": "error"})
    router = await flock.router(
        {
            "experts": [flock.expert("small"), flock.expert("big")],
            "routes": [{"name": "c", "cascade": {"experts": ["small", "big"]}}],
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "question"}]
    )
    assert raw.headers["x-modelflock-expert"] == "small"
    assert raw.parse().choices[0].message.content.startswith("I'm sorry")  # type: ignore[union-attr]
