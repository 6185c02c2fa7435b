"""Every bad input gets an OpenAI-shaped error, and the router keeps serving."""

from __future__ import annotations

import pytest

from .conftest import Flock


async def start(flock: Flock) -> str:
    await flock.sim("small")
    router = await flock.router(
        {
            "experts": [flock.expert("small")],
            "routes": [{"name": "all", "expert": "small"}],
            "defaults": {"maxBodyBytes": 2048},
        }
    )
    return router.url


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        ("/v1/chat/completions", b'{"model": "auto"}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "auto", "messages": [{"content": "x"}]}',
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            400,
            "stream",
        ),
        ("/v1/completions", b'{"model": "auto", "prompt": 5}', 400, "prompt"),
        ("/v1/embeddings", b'{"model": "auto", "input": []}', 400, "input"),
        (
            "/v1/chat/completions",
            b'{"model": "gpt-unknown", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model",
        ),
        ("/v1/embeddings", b'{"model": "gpt-unknown", "input": "x"}', 404, "model"),
        ("/v1/nothing-here", b"{}", 404, None),
    ],
)
async def test_bad_requests(
    flock: Flock, path: str, body: bytes, status: int, param: str | None
) -> None:
    url = await start(flock)
    session = await flock.http()
    async with session.post(
        f"{url}{path}", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["message"] and error["type"]
    assert error["param"] == param
    # ...and nothing else broke.
    async with session.post(
        f"{url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 200


async def test_body_over_the_limit_is_413_with_and_without_content_length(flock: Flock) -> None:
    url = await start(flock)
    session = await flock.http()
    big = b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}'
    async with session.post(f"{url}/v1/chat/completions", data=big) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["type"] == "invalid_request_error"

    async def chunked():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with session.post(f"{url}/v1/chat/completions", data=chunked()) as resp:
        assert resp.status == 413
    assert flock.sims["small"].stats.requests == 0


async def test_all_candidates_failed_is_503_listing_why(flock: Flock) -> None:
    await flock.sim("a", behaviour={"mode": "error", "status": 500})
    await flock.sim("b", behaviour={"mode": "error", "status": 429})
    router = await flock.router(
        {
            "experts": [flock.expert("a"), flock.expert("b")],
            "routes": [{"name": "all", "expert": "a", "fallbacks": ["b"]}],
        }
    )
    session = await flock.http()
    async with session.post(
        f"{router.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 503
        message = (await resp.json())["error"]["message"]
        assert resp.headers["x-modelflock-attempts"] == "2"
    assert "a: HTTP 500" in message and "b: HTTP 429" in message
