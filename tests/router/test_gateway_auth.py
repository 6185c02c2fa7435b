"""Gateway authentication (issue 14): bearer keys from mounted Secret files, per team, through
the official `openai` client; key names in metrics, never values; rotation without restart."""

from __future__ import annotations

import asyncio

import openai
import pytest

from .conftest import Flock, metric

TEAM_A, TEAM_B = "sk-team-a-5f1e0c77", "sk-team-b-93ab2d10"


async def gateway(flock: Flock) -> str:
    await flock.sim("small")
    for name, value in (("team-a", TEAM_A), ("team-b", TEAM_B)):
        (flock.tmp_path / name).write_text(value + "\n")  # as a mounted Secret key
    router = await flock.router(
        {
            "experts": [flock.expert("small")],
            "routes": [{"name": "all", "expert": "small"}],
            "auth": {
                "keys": [
                    {"name": "team-a", "file": str(flock.tmp_path / "team-a")},
                    {"name": "team-b", "file": str(flock.tmp_path / "team-b")},
                ]
            },
        }
    )
    return router.url


def client(flock: Flock, url: str, key: str) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    flock.stack.push_async_callback(c.close)
    return c


async def ask(c: openai.AsyncOpenAI) -> str:
    answer = await c.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}]
    )
    return answer.choices[0].message.content or ""


async def test_only_configured_keys_get_through(flock: Flock) -> None:
    url = await gateway(flock)
    assert await ask(client(flock, url, TEAM_A))
    assert await ask(client(flock, url, TEAM_B))
    for wrong in ("sk-guess", TEAM_A + "x"):
        with pytest.raises(openai.AuthenticationError) as raised:
            await ask(client(flock, url, wrong))
        assert raised.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await client(flock, url, "sk-guess").models.list()
    session = await flock.http()
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with session.get(f"{url}/healthz") as resp:
        assert resp.status == 200  # probes need no key
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 401  # costs and routes are not for everyone
    async with session.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TEAM_A}"}) as resp:
        text = await resp.text()
    assert metric(text, "modelflock_router_client_requests_total", key="team-a") == 2  # + scrape
    assert metric(text, "modelflock_router_client_requests_total", key="team-b") == 1
    assert metric(text, "modelflock_router_auth_failures_total", reason="invalid") == 3
    assert metric(text, "modelflock_router_auth_failures_total", reason="missing") == 2
    assert metric(text, "modelflock_router_requests_total", code="401") == 5
    assert TEAM_A not in text and TEAM_B not in text


async def test_a_rotated_key_works_at_once_and_the_old_one_stops(flock: Flock) -> None:
    url = await gateway(flock)
    rotated = "sk-team-a-rotated-0001"
    path = flock.tmp_path / "team-a"
    tmp = path.with_suffix(".new")
    tmp.write_text(rotated)
    tmp.replace(path)
    for _ in range(40):  # reloads every 0.1 s
        await asyncio.sleep(0.1)
        try:
            await ask(client(flock, url, rotated))
            break
        except openai.AuthenticationError:
            continue
    assert await ask(client(flock, url, rotated))
    with pytest.raises(openai.AuthenticationError):
        await ask(client(flock, url, TEAM_A))
