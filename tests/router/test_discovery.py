"""Discovery and demand against a fake operator flock API: scale from zero, cold and
overloaded fallback, balancing by live load."""

from __future__ import annotations

import asyncio
import socket

from .conftest import TOKEN, Flock


async def test_scale_from_zero_waits_then_succeeds(flock: Flock) -> None:
    sim = await flock.sim("big")
    api = await flock.flock_api()
    api.set_expert("big", [], ready=False)
    api.wake["big"] = sim.url  # demand brings a replica up
    router = await flock.router(
        {
            "experts": [flock.expert("big", urls=["http://127.0.0.1:9"])],  # Service URL unused
            "routes": [{"name": "r", "expert": "big"}],
            "defaults": {"coldStartWaitSeconds": 10},
            "discovery": flock.discovery(api),
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "big"
    assert raw.parse().choices[0].message.content
    assert api.demands and api.demands[0]["expert"] == "big"
    assert api.demands[0]["waiting"] >= 1


async def test_cold_wait_is_bounded(flock: Flock) -> None:
    await flock.sim("big")
    api = await flock.flock_api()
    api.set_expert("big", [], ready=False)
    router = await flock.router(
        {
            "experts": [flock.expert("big")],
            "routes": [{"name": "r", "expert": "big"}],
            "defaults": {"coldStartWaitSeconds": 0.5},
            "discovery": flock.discovery(api),
        }
    )
    session = await flock.http()
    async with session.post(
        f"{router.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 503
        assert "still cold" in (await resp.json())["error"]["message"]
    assert len(api.demands) >= 1


async def test_cold_with_fallback_goes_to_the_fallback_and_wakes_the_expert(flock: Flock) -> None:
    await flock.sim("big")
    small = await flock.sim("small")
    api = await flock.flock_api()
    api.set_expert("big", [], ready=False, cold_start=300)
    api.set_expert("small", [small.url])
    router = await flock.router(
        {
            "experts": [flock.expert("big"), flock.expert("small")],
            "routes": [{"name": "r", "expert": "big", "fallbacks": ["small"]}],
            "defaults": {"coldStartWaitSeconds": 5},
            "discovery": flock.discovery(api),
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "small"
    assert flock.sims["big"].stats.requests == 0
    for _ in range(20):
        if api.demands:
            break
        await asyncio.sleep(0.05)
    assert api.demands[0]["expert"] == "big"


async def test_overloaded_expert_falls_back(flock: Flock) -> None:
    big = await flock.sim("big")
    small = await flock.sim("small")
    api = await flock.flock_api()
    api.set_expert("big", [big.url], queue=[50])
    api.set_expert("small", [small.url])
    router = await flock.router(
        {
            "experts": [flock.expert("big"), flock.expert("small")],
            "routes": [{"name": "r", "expert": "big", "fallbacks": ["small"]}],
            "defaults": {"overloadQueueDepth": 10},
            "discovery": flock.discovery(api),
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "small"


async def test_balances_by_live_load_and_follows_new_replicas(flock: Flock) -> None:
    one = await flock.sim("one", model="m")
    two = await flock.sim("two", model="m")
    api = await flock.flock_api()
    api.set_expert("m", [one.url, two.url], queue=[8, 0])
    router = await flock.router(
        {
            "experts": [{"name": "m", "urls": [one.url], "model": "m"}],
            "routes": [{"name": "r", "expert": "m"}],
            "defaults": {"overloadQueueDepth": 100},
            "discovery": flock.discovery(api),
        }
    )
    client = flock.client(router)
    await asyncio.gather(
        *[
            client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}]
            )
            for _ in range(6)
        ]
    )
    assert (one.stats.requests, two.stats.requests) == (0, 6)
    api.set_expert("m", [one.url], queue=[0])  # replica two is gone
    await asyncio.sleep(0.6)
    for _ in range(4):
        await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
    assert (one.stats.requests, two.stats.requests) == (4, 6)


async def test_wrong_token_keeps_service_urls(flock: Flock) -> None:
    sim = await flock.sim("m")
    api = await flock.flock_api()
    api.set_expert("m", [], ready=False)
    (flock.tmp_path / "token").write_text("wrong")
    router = await flock.router(
        {
            "experts": [flock.expert("m")],
            "routes": [{"name": "r", "expert": "m"}],
            "discovery": {**flock.discovery(api)},
        }
    )
    await flock.client(router).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert sim.stats.completed == 1 and TOKEN != "wrong"


async def test_a_replica_that_refuses_connections_is_skipped_before_any_fallback(
    flock: Flock,
) -> None:
    alive = await flock.sim("alive", model="m")
    backup = await flock.sim("backup", model="b")
    with socket.socket() as s:  # a port nobody listens on: a replica that just went away
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}"
    api = await flock.flock_api()
    api.set_expert("m", [gone, alive.url], queue=[0, 5])  # the dead one looks least loaded
    router = await flock.router(
        {
            "experts": [
                {"name": "m", "urls": [alive.url], "model": "m"},
                {"name": "b", "urls": [backup.url], "model": "b"},
            ],
            "routes": [{"name": "r", "expert": "m", "fallbacks": ["b"]}],
            "defaults": {"overloadQueueDepth": 100},
            "discovery": flock.discovery(api),
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "m"
    assert raw.headers["x-modelflock-attempts"] == "2"
    assert (alive.stats.requests, backup.stats.requests) == (1, 0)


async def test_replicas_gone_after_a_scale_down_do_not_use_up_the_attempts(flock: Flock) -> None:
    """Three replicas removed by a scale-down, still listed until discovery catches up: the
    request reaches the one left, with the attempt limit (3) intact for real answers."""
    alive = await flock.sim("alive", model="m")
    backup = await flock.sim("backup", model="b")
    gone = []
    for _ in range(3):
        with socket.socket() as s:  # ports nobody listens on
            s.bind(("127.0.0.1", 0))
            gone.append(f"http://127.0.0.1:{s.getsockname()[1]}")
    api = await flock.flock_api()
    api.set_expert("m", [*gone, alive.url], queue=[0, 0, 0, 5])  # the dead look least loaded
    router = await flock.router(
        {
            "experts": [
                {"name": "m", "urls": [alive.url], "model": "m"},
                {"name": "b", "urls": [backup.url], "model": "b"},
            ],
            "routes": [{"name": "r", "expert": "m", "fallbacks": ["b"]}],
            "defaults": {"overloadQueueDepth": 100, "maxAttempts": 3},
            "discovery": flock.discovery(api),
        }
    )
    raw = await flock.client(router).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-modelflock-expert"] == "m"
    assert raw.headers["x-modelflock-attempts"] == "4"  # three refused connections, one answer
    assert (alive.stats.requests, backup.stats.requests) == (1, 0)
