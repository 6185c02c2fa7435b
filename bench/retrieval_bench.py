"""Retrieval benchmark: ingestion throughput, HNSW recall@5 against exact search, and the
latency of a retrieval answer through the router beside an LLM call through the same router.

Everything on 127.0.0.1: PostgreSQL+pgvector (the pgserver wheel's binaries), the real
all-MiniLM-L6-v2 on CPU (`modelflock engine-sim --embedding-model minilm`), an instant
simulated LLM, and the router. `--chunks` synthetic one-sentence documents (≥ 10,000).

    python bench/retrieval_bench.py [--chunks 10000] [--queries 300] [--recall-queries 200]

Prints one table. Bounded: fixed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from modelflock.retrieval.documents import Document
from modelflock.retrieval.embedder import Embedder
from modelflock.retrieval.ingest import IngestSettings, ingest
from modelflock.retrieval.localpg import LocalPostgres
from modelflock.retrieval.store import ConnectionInfo, WriteStore, vector_literal

MODEL = "all-MiniLM-L6-v2"
TABLE = "kb_bench"
SUBJECTS = [
    "river",
    "mountain",
    "library",
    "bridge",
    "harbour",
    "museum",
    "forest",
    "tower",
    "station",
    "garden",
    "castle",
    "market",
    "island",
    "lake",
    "stadium",
    "theatre",
]
PLACES = [
    "Avalon",
    "Brindle",
    "Corvay",
    "Dunmore",
    "Elsworth",
    "Fairhaven",
    "Glenrock",
    "Harrow",
    "Ivydale",
    "Jasper",
    "Kestrel",
    "Lindon",
    "Marrow",
    "Northam",
    "Oakridge",
    "Pembury",
    "Quarry",
    "Ravenna",
    "Stowe",
    "Thornbury",
]
FACTS = [
    "was built in {n}",
    "is {n} metres long",
    "opened to visitors in {n}",
    "has {n} rooms",
    "is visited by {n} people a year",
    "was rebuilt after the flood of {n}",
    "is {n} kilometres from the coast",
    "holds {n} books",
]


def corpus(count: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        subject, place = rng.choice(SUBJECTS), rng.choice(PLACES)
        fact = rng.choice(FACTS).format(n=rng.randint(10, 9999))
        text = f"The {subject} of {place} number {i} {fact}."
        docs.append(Document(doc_id=f"bench/{i}", source=f"bench/{i}", text=text))
    return docs


def queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Tell me about the {rng.choice(SUBJECTS)} of {rng.choice(PLACES)}"
        f" number {rng.randint(0, 9999)}"
        for _ in range(count)
    ]


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"{cmd[3]} did not start: {log.read_text()[-2000:]}")
    return proc, line.rsplit("listening on ", 1)[1].strip().split()[0]


async def ingest_corpus(
    pg: LocalPostgres, embed_url: str, docs: list[Document]
) -> tuple[float, int, int]:
    info = ConnectionInfo.from_mapping(pg.writer.secret_data(), "writer")
    store = await WriteStore.connect(info, TABLE)
    try:
        await store.ensure_schema(384, 16, 64)
        await store.grant_read(pg.reader.username)
        async with aiohttp.ClientSession() as session:

            async def base() -> str:
                return embed_url

            # A loaded machine may need long for a batch: the bench measures, never gives up.
            embedder = Embedder(session, base, MODEL, timeout_seconds=300)
            settings = IngestSettings(120, 20, 64, 384, "bench", parallelism=2)
            started = time.perf_counter()
            result = await ingest(store, docs, embedder.embed, settings)
            seconds = time.perf_counter() - started
        return seconds, result.embedded_chunks, embedder.calls
    finally:
        await store.close()


async def recall(
    pg: LocalPostgres, embed_url: str, texts: list[str], k: int = 5
) -> tuple[float, float, float]:
    """Mean recall@k of the HNSW index against exact search, and both p50 query times."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{embed_url}/v1/embeddings", json={"model": MODEL, "input": texts}) as resp,
    ):
        body = await resp.json()
    vectors = [
        vector_literal(d["embedding"]) for d in sorted(body["data"], key=lambda d: d["index"])
    ]
    c = pg.reader
    conn = await asyncpg.connect(
        host=c.host, port=c.port, user=c.username, password=c.password, database=c.dbname
    )
    sql = f"SELECT doc_id, chunk FROM {TABLE} ORDER BY embedding <=> $1::text::vector LIMIT {k}"
    hits, ann_ms, exact_ms = 0, [], []
    try:
        for v in vectors:
            t = time.perf_counter()
            approx = {tuple(r) for r in await conn.fetch(sql, v)}
            ann_ms.append((time.perf_counter() - t) * 1000)
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_indexscan = off")
                t = time.perf_counter()
                exact = {tuple(r) for r in await conn.fetch(sql, v)}
                exact_ms.append((time.perf_counter() - t) * 1000)
            hits += len(approx & exact)
    finally:
        await conn.close()
    return hits / (k * len(vectors)), statistics.median(ann_ms), statistics.median(exact_ms)


async def latency(url: str, texts: list[str], header: dict[str, str]) -> tuple[float, float, int]:
    samples, hits = [], 0
    async with aiohttp.ClientSession() as session:
        for i, text in enumerate(texts):
            body = {
                "model": "auto",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 16,
            }
            start = time.perf_counter()
            async with session.post(
                f"{url}/v1/chat/completions", json=body, headers=header
            ) as resp:
                await resp.read()
                assert resp.status == 200, await resp.text()
                if i >= 10:  # the first ones warm the pools up
                    samples.append((time.perf_counter() - start) * 1000)
                hits += resp.headers.get("x-modelflock-retrieval") == "hit"
    samples.sort()
    return samples[len(samples) // 2], samples[max(0, int(len(samples) * 0.99) - 1)], hits


def router_config(path: Path, llm: str, embed: str, secret_dir: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "experts": [
                    {
                        "name": "llm",
                        "urls": [llm],
                        "model": "llm",
                        "prices": {"inputPerMillion": "3", "outputPerMillion": "15"},
                    },
                    {
                        "name": "embed",
                        "urls": [embed],
                        "model": MODEL,
                        "capabilities": ["embed"],
                        "prices": {"inputPerMillion": "0.02"},
                    },
                ],
                "routes": [
                    {
                        "name": "facts",
                        "match": {"headers": [{"name": "x-bench", "value": "kb"}]},
                        "expert": "llm",
                        "retrieval": {
                            "knowledgeBase": "facts",
                            "mode": "answer",
                            "minScore": "0",
                            "topK": 3,
                        },
                    },
                    {"name": "llm", "expert": "llm"},
                ],
                "knowledgeBases": [
                    {
                        "name": "facts",
                        "secretDir": str(secret_dir),
                        "table": TABLE,
                        "dimensions": 384,
                        "expert": "embed",
                    }
                ],
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--recall-queries", type=int, default=200)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="modelflock-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        pg = LocalPostgres(work / "pg")
        pg.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            sim = [python, "-m", "modelflock", "engine-sim", "--host", "127.0.0.1", "--port", "0"]
            embed_proc, embed_url = start(
                [*sim, "--embedding-model", "minilm", "--model", MODEL, "--instant"],
                work / "embed.log",
            )
            procs.append(embed_proc)
            llm_proc, llm_url = start([*sim, "--model", "llm", "--instant"], work / "llm.log")
            procs.append(llm_proc)
            docs = corpus(args.chunks, 1)
            print(f"ingesting {len(docs):,} documents ...", file=sys.stderr, flush=True)
            seconds, chunks, calls = asyncio.run(ingest_corpus(pg, embed_url, docs))
            print("recall@5 ...", file=sys.stderr, flush=True)
            rec, ann_ms, exact_ms = asyncio.run(
                recall(pg, embed_url, queries(args.recall_queries, 2))
            )
            router_config(
                work / "router.json", llm_url, embed_url, pg.reader.write_dir(work / "ro")
            )
            router_proc, router_url = start(
                [
                    python,
                    "-m",
                    "modelflock",
                    "router",
                    "--config",
                    str(work / "router.json"),
                    "--port",
                    "0",
                    "--log-level",
                    "WARNING",
                ],
                work / "router.log",
            )
            procs.append(router_proc)
            texts = queries(args.queries, 3)
            print("latency through the router ...", file=sys.stderr, flush=True)
            kb50 = kb99 = llm50 = llm99 = 0.0
            hits = 0
            rounds = []
            for _ in range(2):  # interleaved: the machine is shared
                rounds.append(asyncio.run(latency(router_url, texts, {"x-bench": "kb"})))
                rounds.append(asyncio.run(latency(router_url, texts, {})))
            kb50 = statistics.median(r[0] for r in rounds[0::2])
            kb99 = statistics.median(r[1] for r in rounds[0::2])
            hits = sum(r[2] for r in rounds[0::2])
            llm50 = statistics.median(r[0] for r in rounds[1::2])
            llm99 = statistics.median(r[1] for r in rounds[1::2])
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
            pg.destroy()
    rows = [
        (
            "ingestion (embedding included)",
            f"{chunks:,} chunks in {seconds:.1f} s = {chunks / seconds:,.0f} chunks/s ({calls} embedding calls of ≤ 64)",
        ),
        (
            "HNSW recall@5 vs exact",
            f"{rec:.3f} over {args.recall_queries} queries (m=16, ef_construction=64, ef_search=40)",
        ),
        ("query p50: HNSW / exact scan", f"{ann_ms:.2f} ms / {exact_ms:.2f} ms"),
        (
            "retrieval answer via router p50 / p99",
            f"{kb50:.2f} ms / {kb99:.2f} ms ({hits} hits; embed + search + answer, no LLM)",
        ),
        (
            "LLM call via router p50 / p99",
            f"{llm50:.2f} ms / {llm99:.2f} ms (instant simulated engine)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    import os

    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
