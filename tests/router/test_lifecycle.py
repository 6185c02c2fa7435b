"""Client disconnects, config reload under load, and secrets kept out of logs and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelflock.router import state as state_module
from modelflock.router.http1 import Http1Client
from modelflock.router.upstream import Upstream

from .conftest import Flock


async def wait_for(predicate, seconds: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def slow_router(flock: Flock):  # type: ignore[no-untyped-def]
    await flock.sim("slow", decode_seconds_per_token=0.05, output_tokens=100)
    return await flock.router(
        {"experts": [flock.expert("slow")], "routes": [{"name": "r", "expert": "slow"}]}
    )


async def test_client_disconnect_mid_stream_cancels_upstream(flock: Flock) -> None:
    router = await slow_router(flock)
    sim = flock.sims["slow"]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{router.url}/v1/chat/completions",
            json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        await resp.content.readany()
        assert sim.stats.in_flight == 1
        resp.close()  # the client goes away
    assert await wait_for(lambda: sim.stats.disconnected == 1)
    assert sim.stats.in_flight == 0 and sim.stats.completed == 0


async def test_client_disconnect_before_answer_cancels_upstream(flock: Flock) -> None:
    router = await slow_router(flock)
    sim = flock.sims["slow"]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(
                    f"{router.url}/v1/chat/completions",
                    json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                )
    assert await wait_for(lambda: sim.stats.disconnected == 1)
    assert sim.stats.completed == 0


async def test_config_reload_under_load_drops_nothing(flock: Flock) -> None:
    await flock.sim("a", decode_seconds_per_token=0.002)
    await flock.sim("b", decode_seconds_per_token=0.002)
    experts = [flock.expert("a"), flock.expert("b")]
    router = await flock.router({"experts": experts, "routes": [{"name": "r", "expert": "a"}]})
    client = flock.client(router)
    seen: list[str] = []

    async def worker() -> None:
        for _ in range(25):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto",
                messages=[{"role": "user", "content": "hi"}],
                stream=len(seen) % 2 == 0,
            )
            seen.append(raw.headers["x-modelflock-expert"])
            parsed = raw.parse()
            if hasattr(parsed, "__aiter__"):
                assert len([c async for c in parsed]) > 3

    async def flip() -> None:
        for i in range(6):
            await asyncio.sleep(0.15)
            flock.write(
                {
                    "experts": experts,
                    "routes": [{"name": "r", "expert": "b" if i % 2 == 0 else "a"}],
                }
            )
        flock.write({"experts": experts, "routes": [{"name": "r", "expert": "b"}]})

    await asyncio.gather(flip(), *[worker() for _ in range(8)])  # any failure raises
    assert len(seen) == 200 and {"a", "b"} <= set(seen)
    await asyncio.sleep(0.3)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "b"
    # A broken config is refused and the last good one keeps serving.
    flock.config_path.write_text("routes: [{name: r, expert: ghost}]")
    await asyncio.sleep(0.3)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "b"
    session = await flock.http()
    async with session.get(f"{router.url}/metrics") as resp:
        text = await resp.text()
    assert 'modelflock_router_config_reloads_total{result="error"} 1.0' in text


SECRET = "sk-live-SECRET-0123456789abcdef"


async def test_external_expert_key_is_sent_but_never_logged_or_exported(
    flock: Flock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await flock.sim("frontier", api_key=SECRET)
    await flock.sim("local", behaviour={"mode": "error"})
    key_file = flock.tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    router = await flock.router(
        {
            "experts": [
                flock.expert("local"),
                flock.expert(
                    "frontier",
                    engine="external",
                    model="frontier",
                    apiKeyFile=str(key_file),
                    allowPlainHttp=True,  # the test's engine is on loopback
                    urls=[flock.sims["frontier"].url + "/v1"],
                ),
            ],
            "routes": [{"name": "r", "expert": "local", "fallbacks": ["frontier"]}],
        }
    )
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "frontier"  # the key worked
    # A wrong key (rotated Secret) is a failing expert: 503 listing why, key not echoed.
    key_file.write_text("sk-wrong-key-ROTATED")
    await asyncio.sleep(0.3)
    session = await flock.http()
    async with session.post(
        f"{router.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 503
        body = await resp.text()
    async with session.get(f"{router.url}/metrics") as resp:
        metrics = await resp.text()
    state_repr = repr(flock.config_path.read_text())
    for text in (caplog.text, metrics, body, json.dumps(dict(raw.headers)), state_repr):
        assert SECRET not in text and "ROTATED" not in text


async def test_a_config_half_written_when_hashed_is_refused_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor writing the file in place: hashed while half written, parsed complete.
    The bad content must be remembered as parsed, not retried (and counted) every interval."""
    path = tmp_path / "router.yaml"
    good = {
        "experts": [{"name": "a", "urls": ["http://127.0.0.1:9"], "model": "a"}],
        "routes": [{"name": "r", "expert": "a"}],
    }
    path.write_text(json.dumps(good))
    results: list[str] = []
    holder = state_module.StateHolder(path, Upstream(Http1Client(), None), results.append)
    bad = "routes: [{name: r, expert: ghost}]"
    path.write_text(bad[:10])  # what the hash sees
    real_load = state_module.load_files

    def load_after_the_write_completes(p: Path) -> Any:
        p.write_text(bad)  # the editor finished between hashing and parsing
        return real_load(p)

    monkeypatch.setattr(state_module, "load_files", load_after_the_write_completes)
    assert await holder.reload_if_changed() is False
    assert await holder.reload_if_changed() is False  # same bad content: not parsed again
    assert results == ["error"]
    assert holder.current.config.routes[0].expert == "a"
    await holder.close()
