"""Fallback on each failure kind, before the first byte only."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from .conftest import Flock


async def pair(flock: Flock, primary: dict[str, Any], **defaults: Any) -> Any:
    await flock.sim("primary", **primary)
    await flock.sim("backup")
    return await flock.router(
        {
            "experts": [flock.expert("primary"), flock.expert("backup")],
            "routes": [{"name": "r", "expert": "primary", "fallbacks": ["backup"]}],
            "defaults": {"firstByteTimeoutSeconds": 0.5, **defaults},
        }
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ({"mode": "error", "status": 500}, "status"),
        ({"mode": "error", "status": 503}, "status"),
        ({"mode": "error", "status": 429}, "status"),
        ({"mode": "drop"}, "connect"),
        ({"first_byte_delay_seconds": 5.0}, "timeout"),
    ],
)
async def test_falls_back_on_failure(
    flock: Flock, behaviour: dict[str, Any], reason: str, stream: bool
) -> None:
    router = await pair(flock, {"behaviour": behaviour})
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=stream
    )
    assert raw.headers["x-modelflock-expert"] == "backup"
    assert raw.headers["x-modelflock-attempts"] == "2"
    if stream:
        assert len([c async for c in raw.parse()]) > 3  # type: ignore[attr-defined]
    session = await flock.http()
    async with session.get(f"{router.url}/metrics") as resp:
        assert f'reason="{reason}"' in await resp.text()


async def test_killed_engine_falls_back(flock: Flock) -> None:
    router = await pair(flock, {})
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "primary"
    await flock.sims["primary"].stop()  # the engine dies
    for _ in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-modelflock-expert"] == "backup"


async def test_no_fallback_after_bytes_were_sent(flock: Flock) -> None:
    router = await pair(flock, {"decode_seconds_per_token": 0.05, "output_tokens": 40})
    client = flock.client(router)
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got = 0
    with pytest.raises(openai.APIError, match="mid-stream"):
        async for _chunk in stream:
            got += 1
            if got == 3:
                asyncio.get_running_loop().create_task(flock.sims["primary"].stop())
    assert 3 <= got < 40
    assert flock.sims["backup"].stats.requests == 0


async def test_attempts_are_bounded(flock: Flock) -> None:
    for name in ("a", "b", "c"):
        await flock.sim(name, behaviour={"mode": "error"})
    router = await flock.router(
        {
            "experts": [flock.expert(n) for n in ("a", "b", "c")],
            "routes": [{"name": "r", "expert": "a", "fallbacks": ["b", "c"]}],
            "defaults": {"maxAttempts": 2},
        }
    )
    session = await flock.http()
    async with session.post(
        f"{router.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 503
        assert "attempt limit 2" in (await resp.json())["error"]["message"]
    assert flock.sims["c"].stats.requests == 0
