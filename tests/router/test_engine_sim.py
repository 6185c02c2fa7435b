"""The simulated engine over HTTP: queueing shows in /metrics, knobs work at runtime."""

from __future__ import annotations

import asyncio

import openai
from prometheus_client.parser import text_string_to_metric_families

from modelflock.sim import SimSettings, running_sim


def value(text: str, name: str) -> float:
    return next(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


async def test_queue_builds_up_beyond_the_batch_and_drains() -> None:
    settings = SimSettings(
        model="m", max_batch=2, prefill_seconds=0.0, decode_seconds_per_token=0.02, output_tokens=10
    )
    async with running_sim(settings) as sim:
        client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
        load = [
            asyncio.create_task(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            )
            for _ in range(6)
        ]
        import aiohttp

        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # until all six arrived (the machine may be slow)
                async with session.get(f"{sim.url}/metrics") as resp:
                    busy = await resp.text()
                if value(busy, "vllm:num_requests_waiting") == 4:
                    break
                await asyncio.sleep(0.01)
            await asyncio.gather(*load)
            async with session.get(f"{sim.url}/metrics") as resp:
                idle = await resp.text()
        await client.close()
    assert value(busy, "vllm:num_requests_running") == 2
    assert value(busy, "vllm:num_requests_waiting") == 4
    assert value(busy, "vllm:kv_cache_usage_perc") > 0
    assert value(idle, "vllm:num_requests_waiting") == 0
    assert value(idle, "vllm:generation_tokens_total") == 60
    assert value(idle, "vllm:request_queue_time_seconds_count") == 6
    assert value(idle, "vllm:request_queue_time_seconds_sum") > 0.1  # the queued ones waited


async def test_runtime_knobs_health_and_api_key() -> None:
    import aiohttp

    async with (
        running_sim(SimSettings(model="m", instant=True, api_key="k")) as sim,
        aiohttp.ClientSession() as session,
    ):
        client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="k", max_retries=0)
        vectors = await client.embeddings.create(model="m", input="hello world")  # base64
        assert len(vectors.data[0].embedding) == 64
        async with session.post(
            f"{sim.url}/sim/behaviour", json={"mode": "error", "status": 429, "ready": False}
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{sim.url}/health") as resp:
            assert resp.status == 503
        try:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.RateLimitError:
            pass
        else:
            raise AssertionError("expected 429")
        async with session.post(f"{sim.url}/sim/behaviour", json={"mode": "bogus"}) as resp:
            assert resp.status == 400
        sim.set_behaviour(mode="ok")
        wrong = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="nope", max_retries=0)
        try:
            await wrong.models.list()
            await wrong.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.AuthenticationError:
            pass
        else:
            raise AssertionError("expected 401")
        await client.close()
        await wrong.close()


async def test_tgi_flavour_rejects_beyond_max_concurrent() -> None:
    settings = SimSettings(
        flavour="tgi",
        model="m",
        max_batch=1,
        max_concurrent=1,
        decode_seconds_per_token=0.05,
        prefill_seconds=0.0,
    )
    async with running_sim(settings) as sim:
        client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
        first = asyncio.create_task(
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        )
        await asyncio.sleep(0.05)
        try:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.RateLimitError:
            pass
        else:
            raise AssertionError("expected 429")
        await first
        await client.close()
