"""Retrieval routes against a real PostgreSQL+pgvector and the real MiniLM embedder: answer
(no LLM) and augment through the official openai client, streaming and not; misses fall
through; handoff reaches the bigger expert; a stopped store fails no request; SQL
metacharacters are data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelflock.retrieval.documents import Document
from modelflock.retrieval.embedder import Embedder
from modelflock.retrieval.ingest import IngestSettings, ingest
from modelflock.retrieval.localpg import LocalPostgres
from modelflock.retrieval.store import ConnectionInfo, WriteStore
from modelflock.router.app import RouterServer
from support import MINILM_MODEL

from .conftest import Flock, metric, metrics_text

EVIL = "Robert'); DROP TABLE kb_router_facts; -- is a student with a $1 name and \\ slashes"
FACTS = {
    "capital": "The capital of Australia is Canberra, chosen as a compromise between Sydney"
    " and Melbourne.",
    "boiling": "Water boils at 100 degrees Celsius at sea level.",
    "python": "Python was created by Guido van Rossum and first released in 1991.",
    "bobby": EVIL,
}


async def fill(pg: LocalPostgres, minilm: str, table: str) -> None:
    info = ConnectionInfo.from_mapping(pg.writer.secret_data(), "writer")
    store = await WriteStore.connect(info, table)
    async with aiohttp.ClientSession() as session:

        async def base() -> str:
            return minilm

        embedder = Embedder(session, base, MINILM_MODEL)
        try:
            await store.ensure_schema(384, 16, 64)
            await store.grant_read(pg.reader.username)
            docs = [
                Document(doc_id=f"configmap/facts/{k}", source=f"configmap/facts/{k}", text=v)
                for k, v in FACTS.items()
            ]
            settings = IngestSettings(
                size=60, overlap=10, batch_size=8, dimensions=384, fingerprint="test"
            )
            await ingest(store, docs, embedder.embed, settings)
        finally:
            await store.close()


async def retrieval_router(
    flock: Flock,
    pg: LocalPostgres,
    minilm: str,
    tmp_path: Path,
    mode: str,
    min_score: str = "0.5",
    handoff: str | None = None,
    table: str = "kb_router_facts",
    embed_url: str | None = None,
) -> RouterServer:
    await fill(pg, minilm, table)
    await flock.sim("small", behaviour={"mode": "truncate" if handoff else "ok"})
    await flock.sim("big", behaviour={"mode": "echo"})
    route: dict[str, Any] = {
        "name": "facts",
        "retrieval": {"knowledgeBase": "facts", "mode": mode, "minScore": min_score, "topK": 2},
    }
    if handoff:
        route["cascade"] = {"experts": ["small", "big"], "handoff": handoff}
    else:
        route["expert"] = "big"
    return await flock.router(
        {
            "experts": [
                flock.expert("small"),
                flock.expert("big", prices={"inputPerMillion": "3", "outputPerMillion": "15"}),
                {
                    "name": "embed",
                    "urls": [embed_url or minilm],
                    "model": MINILM_MODEL,
                    "capabilities": ["embed"],
                    "prices": {"inputPerMillion": "0.02"},
                },
            ],
            "routes": [route],
            "knowledgeBases": [
                {
                    "name": "facts",
                    "secretDir": str(pg.reader.write_dir(tmp_path / "ro-secret")),
                    "table": table,
                    "dimensions": 384,
                    "expert": "embed",
                    "retryAfterSeconds": 0.3,
                }
            ],
        }
    )


QUESTION = "What is the capital city of Australia?"


async def test_answer_from_the_store_without_an_llm(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    router = await retrieval_router(flock, postgres, minilm_server, tmp_path, "answer")
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-modelflock-retrieval"] == "hit"
    assert float(raw.headers["x-modelflock-retrieval-score"]) >= 0.5
    assert raw.headers["x-modelflock-expert"] == "kb:facts"
    answer = raw.parse()
    text = answer.choices[0].message.content or ""
    assert "Canberra" in text and "configmap/facts/capital" in text
    assert answer.model_extra and answer.model_extra["modelflock_sources"][0]["id"] == (
        "configmap/facts/capital"
    )
    assert float(raw.headers["x-modelflock-cost"]) > 0  # the query's embedding
    assert float(raw.headers["x-modelflock-baseline-cost"]) > float(
        raw.headers["x-modelflock-cost"]
    )
    again = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert float(again.headers["x-modelflock-cost"]) == 0.0  # a repeated query: cached vector
    # Streaming: the same answer in pieces, with usage when asked.
    stream = await client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == text and usage is not None and usage.completion_tokens > 0
    # The legacy completions API too.
    completion = await client.completions.create(model="auto", prompt=QUESTION)
    assert "Canberra" in completion.choices[0].text
    assert flock.sims["big"].stats.requests == 0  # no LLM was called
    text_metrics = await metrics_text(await flock.http(), router)
    assert metric(text_metrics, "modelflock_router_retrievals_total", outcome="hit") == 4
    assert metric(text_metrics, "modelflock_router_retrieval_saved_usd_total") > 0
    # The query embeddings were paid for.
    assert metric(text_metrics, "modelflock_router_cost_usd_total", expert="embed") > 0


async def test_below_min_score_falls_through_to_the_expert(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    router = await retrieval_router(flock, postgres, minilm_server, tmp_path, "answer", "0.95")
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a poem about autumn leaves."}]
    )
    assert raw.headers["x-modelflock-retrieval"] == "miss"
    assert raw.headers["x-modelflock-expert"] == "big"
    assert float(raw.headers["x-modelflock-retrieval-score"]) < 0.95


async def test_augment_puts_passages_in_the_expert_request(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    router = await retrieval_router(flock, postgres, minilm_server, tmp_path, "augment", "0.3")
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-modelflock-retrieval"] == "hit"
    assert raw.headers["x-modelflock-expert"] == "big"
    echoed = raw.parse().choices[0].message.content or ""  # engine-sim echoes its prompt
    assert "Passages from the knowledge base" in echoed and "Canberra" in echoed
    assert echoed.rstrip().endswith(QUESTION)  # the context comes before the question
    stream = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "Canberra" in streamed


async def test_handoff_gives_the_bigger_expert_the_draft_and_passages(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    # minScore 0.99: retrieval misses, so the cascade runs; `context` still hands over the
    # passages it found, with the small expert's (truncated) draft.
    router = await retrieval_router(
        flock, postgres, minilm_server, tmp_path, "answer", "0.99", handoff="context"
    )
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-modelflock-expert"] == "big"
    assert raw.headers["x-modelflock-escalations"] == "1"
    echoed = raw.parse().choices[0].message.content or ""
    assert "Draft answer:" in echoed and "Retrieved passages:" in echoed
    assert "Canberra" in echoed
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_handoffs_total", mode="context") == 1
    assert metric(text, "modelflock_router_handoff_tokens_total") > 0


async def test_an_embedder_without_base64_gets_floats(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    # The router asks for base64 vectors; an engine that refuses them (400) is asked for
    # floats, and from then on only for floats.
    asked: list[str] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        asked.append(body.get("encoding_format", ""))
        if body.get("encoding_format") == "base64":
            return web.json_response({"error": {"message": "unsupported"}}, status=400)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{minilm_server}/v1/embeddings", json=body) as resp,
        ):
            return web.json_response(await resp.json(), status=resp.status)

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        router = await retrieval_router(
            flock, postgres, minilm_server, tmp_path, "answer", embed_url=f"http://127.0.0.1:{port}"
        )
        client = flock.client(router)
        for question in (QUESTION, "At what temperature does water boil?"):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": question}]
            )
            assert raw.headers["x-modelflock-retrieval"] == "hit"
        assert asked == ["base64", "float", "float"]
    finally:
        await runner.cleanup()


async def test_store_stopped_fails_no_request(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    router = await retrieval_router(flock, postgres, minilm_server, tmp_path, "answer")
    client = flock.client(router)
    first = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert first.headers["x-modelflock-retrieval"] == "hit"
    await asyncio.to_thread(postgres.stop)
    try:
        for stream in (False, True, False, False):
            if stream:
                chunks = await client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": QUESTION}], stream=True
                )
                assert [c async for c in chunks]
                continue
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": QUESTION}]
            )
            assert raw.headers["x-modelflock-retrieval"] == "unavailable"
            assert raw.headers["x-modelflock-expert"] == "big"  # the LLM route answered
    finally:
        await asyncio.to_thread(postgres.start)
    await asyncio.sleep(0.4)  # retryAfterSeconds
    again = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert again.headers["x-modelflock-retrieval"] == "hit"
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_retrievals_total", outcome="unavailable") == 4
    assert metric(text, "modelflock_router_errors_total") == 0


@pytest.mark.parametrize(
    "prompt",
    [
        "'; DROP TABLE kb_router_facts; --",
        'Robert"); DELETE FROM pg_class; -- $1 $2 %s %(x)s \\x00',
    ],
)
async def test_sql_metacharacters_are_data(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path, prompt: str
) -> None:
    router = await retrieval_router(flock, postgres, minilm_server, tmp_path, "answer", "0.3")
    client = flock.client(router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}]
    )
    assert raw.headers["x-modelflock-retrieval"] in ("hit", "miss")
    # The document full of metacharacters is found and returned verbatim.
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Who is Robert DROP TABLE student"}]
    )
    assert raw.headers["x-modelflock-retrieval"] == "hit"
    assert EVIL in (raw.parse().choices[0].message.content or "")
    count = postgres.psql("SELECT count(*) FROM kb_router_facts", "modelflock").strip()
    assert int(count) == len(FACTS)


async def test_shadow_evaluation_skips_answers_from_the_knowledge_base(
    flock: Flock, postgres: LocalPostgres, minilm_server: str, tmp_path: Path
) -> None:
    """Only expert answers are compared: a knowledge-base answer has no expert to weigh a
    candidate against (and its `kb:` name is no expert the operator would accept)."""
    await fill(postgres, minilm_server, "kb_router_shadow")
    await flock.sim("big")
    await flock.sim("cand")
    await flock.sim("judge", behaviour={"judge": True})
    router = await flock.router(
        {
            "experts": [
                flock.expert("big"),
                flock.expert("cand"),
                flock.expert("judge"),
                {"name": "embed", "urls": [minilm_server], "model": MINILM_MODEL},
            ],
            "routes": [
                {
                    "name": "facts",
                    "expert": "big",
                    "retrieval": {"knowledgeBase": "facts", "minScore": "0.6"},
                }
            ],
            "knowledgeBases": [
                {
                    "name": "facts",
                    "secretDir": str(postgres.reader.write_dir(tmp_path / "ro")),
                    "table": "kb_router_shadow",
                    "dimensions": 384,
                    "expert": "embed",
                }
            ],
            "evaluation": {
                "judge": {"type": "expert", "expert": "judge"},
                "routes": [{"name": "facts", "sampleRate": "1", "candidates": ["cand"]}],
                "dailyBudgetUSD": "100",
            },
        }
    )
    client = flock.client(router)
    hit = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert hit.headers["x-modelflock-expert"] == "kb:facts"
    miss = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a poem about autumn leaves."}]
    )
    assert miss.headers["x-modelflock-expert"] == "big"
    for _ in range(200):  # the one sample of the expert's answer
        if flock.sims["judge"].stats.completed:
            break
        await asyncio.sleep(0.05)
    assert flock.sims["cand"].stats.requests == 1
    text = await metrics_text(await flock.http(), router)
    assert metric(text, "modelflock_router_shadow_samples_total", expert="big") == 1
    assert metric(text, "modelflock_router_shadow_samples_total", expert="kb:facts") == 0
