"""The OpenAI surface through the router with the official client: chat, completions,
embeddings, models, streaming, headers, accounting and health endpoints."""

from __future__ import annotations

import openai

from .conftest import Flock, metric, metrics_text


async def two_experts(flock: Flock) -> dict[str, object]:
    await flock.sim("small")
    await flock.sim("big")
    return {
        "experts": [
            flock.expert(
                "small",
                prices={"inputPerMillion": "1", "outputPerMillion": "2"},
                capabilities=["chat", "embed"],
            ),
            flock.expert("big", prices={"inputPerMillion": "10", "outputPerMillion": "20"}),
        ],
        "classifier": {"intents": [{"name": "code", "keywords": ["python"]}]},
        "routes": [
            {"name": "code", "match": {"intents": ["code"]}, "expert": "big"},
            {"name": "chat", "expert": "small"},
        ],
        "baseline": "big",
    }


async def test_chat_non_streaming_with_headers_and_accounting(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "write python to sort"}]
    )
    answer = raw.parse()
    assert raw.headers["x-modelflock-expert"] == "big"
    assert raw.headers["x-modelflock-route"] == "code"
    assert raw.headers["x-modelflock-intent"] == "code"
    assert raw.headers["x-modelflock-classifier"] == "rules"
    assert raw.headers["x-modelflock-attempts"] == "1"
    assert raw.headers["x-modelflock-escalations"] == "0"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert flock.sims["big"].stats.completed == 1
    text = await metrics_text(await flock.http(), router)
    assert (
        metric(text, "modelflock_router_requests_total", route="code", expert="big", code="200")
        == 1
    )
    assert metric(text, "modelflock_router_tokens_total", expert="big", direction="output") == 8
    prompt = answer.usage.prompt_tokens
    assert (
        metric(text, "modelflock_router_cost_usd_total", expert="big")
        == (10 * prompt + 20 * 8) / 1e6
    )
    assert (
        metric(
            text, "modelflock_router_classifier_decisions_total", classifier="rules", intent="code"
        )
        == 1
    )


async def test_streaming_passes_chunks_and_usage(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    client = flock.client(router)
    pieces, usage = [], None
    stream = await client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert len([p for p in pieces if p]) == 8
    assert usage is not None and usage.completion_tokens == 8
    # Without include_usage the client gets no usage chunk, but the router still counts.
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_tokens_total", expert="small", direction="output") == 16
    assert metric(text, "modelflock_router_time_to_first_byte_seconds_count", expert="small") == 2


async def test_completions_streaming_and_not(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    client = flock.client(router)
    done = await client.completions.create(model="auto", prompt="say hi", max_tokens=4)
    assert done.choices[0].finish_reason == "length"
    assert len(done.choices[0].text.split()) == 4
    stream = await client.completions.create(model="auto", prompt="say hi", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert len(text.split()) == 8


async def test_embeddings_models_and_direct_expert(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    client = flock.client(router)
    routed = await client.embeddings.create(model="auto", input=["hello world", "bye"])
    assert len(routed.data) == 2 and len(routed.data[0].embedding) == 64
    direct = await client.embeddings.create(model="small", input="hello world")
    assert direct.data[0].embedding == routed.data[0].embedding
    models = {m.id async for m in client.models.list()}
    assert models == {"auto", "small", "big"}
    raw = await client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "write python"}]
    )
    assert raw.headers["x-modelflock-expert"] == "small"  # asking by name pins the expert
    assert raw.headers["x-modelflock-route"] == "direct"


async def test_health_ready_and_metrics_endpoints(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    session = await flock.http()
    for path in ("/healthz", "/readyz", "/metrics"):
        async with session.get(f"{router.url}{path}") as resp:
            assert resp.status == 200, path


async def test_client_error_from_engine_is_passed_through(flock: Flock) -> None:
    router = await flock.router(await two_experts(flock))
    client = flock.client(router)
    try:
        await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=-1
        )
    except openai.BadRequestError as err:
        assert err.status_code == 400
    else:
        raise AssertionError("expected 400")
