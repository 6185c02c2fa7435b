"""Retrieval benchmark: ingestion throughput, HNSW recall@5 against exact search, and the
latency of a retrieval answer through the router beside an LLM call through the same router.

Everything on 127.0.0.1: PostgreSQL+pgvector (the pgserver wheel's binaries), the real
all-MiniLM-L6-v2 on CPU (`modelflock engine-sim --embedding-model minilm`, onnxruntime, one
thread), an instant simulated LLM, and the router. `--chunks` synthetic one-sentence documents
(≥ 10,000).

    nice -n 10 python bench/retrieval_bench.py [--chunks 10000] [--queries 300] \
        [--recall-queries 200] [--ingest-deadline-minutes 30]

Prints one table: ingestion, recall, and side by side per question (interleaved, so a shared
machine's load falls on all alike) the query's embedding call, the pgvector query, a retrieval
answer through the router, the same answer with the vector cached, and an LLM call through the
same router. Bounded: fixed counts, and ingesting gives up after the deadline.
"""

from __future__ import annotations

import os

# One BLAS thread for the numpy reference, as engine-sim uses (set before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from modelflock.retrieval.documents import Document
from modelflock.retrieval.embedder import Embedder
from modelflock.retrieval.ingest import IngestSettings, ingest
from modelflock.retrieval.localpg import LocalPostgres
from modelflock.retrieval.store import (
    ConnectionInfo,
    WriteStore,
    search_sql,
    use_binary_vectors,
)
from modelflock.router.retrieval import Vector, parse_embedding

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
    pg: LocalPostgres, embed_url: str, docs: list[Document], deadline_seconds: float
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
            async with asyncio.timeout(deadline_seconds):
                result = await ingest(store, docs, embedder.embed, settings)
            seconds = time.perf_counter() - started
        return seconds, result.embedded_chunks, embedder.calls
    finally:
        await store.close()


async def recall(
    pg: LocalPostgres, vectors: list[Vector], k: int = 5
) -> tuple[float, Timing, Timing]:
    """Mean recall@k of the HNSW index against exact search, and both query times."""
    conn = await reader_connection(pg)
    sql = f"SELECT doc_id, chunk FROM {TABLE} ORDER BY embedding <=> $1 LIMIT {k}"
    hits, ann, exact = 0, Timing(), Timing()
    try:
        for v in vectors:
            t = time.perf_counter()
            approx = {tuple(r) for r in await conn.fetch(sql, v)}
            ann.add(t)
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_indexscan = off")
                t = time.perf_counter()
                found = {tuple(r) for r in await conn.fetch(sql, v)}
                exact.add(t)
            hits += len(approx & found)
    finally:
        await conn.close()
    return hits / (k * len(vectors)), ann, exact


async def reader_connection(pg: LocalPostgres) -> asyncpg.Connection:
    """The routers' read-only role, with the routers' binary vector codec."""
    c = pg.reader
    conn = await asyncpg.connect(
        host=c.host, port=c.port, user=c.username, password=c.password, database=c.dbname
    )
    await use_binary_vectors(conn)
    return conn


class Timing:
    """Milliseconds of repeated calls: add(start) after each."""

    def __init__(self) -> None:
        self.ms: list[float] = []

    def add(self, started: float) -> None:
        self.ms.append((time.perf_counter() - started) * 1000)

    def add_cpu(self, started: float) -> None:
        """CPU time of this thread since `started` (time.thread_time)."""
        self.ms.append((time.thread_time() - started) * 1000)

    def pct(self, q: float) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def p50_p99(self) -> str:
        return f"{self.pct(0.5):.2f} ms / {self.pct(0.99):.2f} ms"


async def embed_remote(session: aiohttp.ClientSession, url: str, texts: list[str]) -> list[Vector]:
    payload = {"model": MODEL, "input": texts, "encoding_format": "base64"}
    async with session.post(f"{url}/v1/embeddings", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return [parse_embedding(d["embedding"]) for d in sorted(body["data"], key=lambda d: d["index"])]


@dataclass
class SideBySide:
    embed_local: Timing = field(default_factory=Timing)
    embed_local_cpu: Timing = field(default_factory=Timing)
    embed_http: Timing = field(default_factory=Timing)
    pg_direct: Timing = field(default_factory=Timing)
    kb: Timing = field(default_factory=Timing)
    kb_cached: Timing = field(default_factory=Timing)
    llm: Timing = field(default_factory=Timing)
    hits: int = 0
    answers: int = 0


async def side_by_side(
    pg: LocalPostgres, embed_url: str, router_url: str, texts: list[str], warmup: int
) -> SideBySide:
    """Per query, one after another: the query's embedding in this process (onnxruntime, no
    HTTP), the embedding call the router makes (direct), the search the router makes
    (direct), a retrieval answer through the router (a question it has
    not seen: embedding + search + answer), the same question again (the router's vector
    cache: search + answer), and an LLM call through the same router."""
    from modelflock.sim.minilm import MiniLM

    out = SideBySide()
    model = MiniLM.load(runtime="onnx")
    conn = await reader_connection(pg)
    sql = search_sql(TABLE)

    async def chat(session: aiohttp.ClientSession, text: str, header: dict[str, str]) -> str:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 16}
        async with session.post(
            f"{router_url}/v1/chat/completions", json=body, headers=header
        ) as resp:
            await resp.read()
            assert resp.status == 200, await resp.text()
            return resp.headers.get("x-modelflock-retrieval", "")

    try:
        async with aiohttp.ClientSession() as session:
            for i, text in enumerate(texts):
                keep = i >= warmup  # the first ones warm pools and caches up
                t, cpu = time.perf_counter(), time.thread_time()
                model.embed([text])
                if keep:
                    out.embed_local.add(t)
                    out.embed_local_cpu.add_cpu(cpu)
                t = time.perf_counter()
                (vector,) = await embed_remote(session, embed_url, [text])
                if keep:
                    out.embed_http.add(t)
                t = time.perf_counter()
                await conn.fetch(sql, vector, 3)
                if keep:
                    out.pg_direct.add(t)
                for timing, header in (
                    (out.kb, {"x-bench": "kb"}),
                    (out.kb_cached, {"x-bench": "kb"}),
                    (out.llm, {}),
                ):
                    t = time.perf_counter()
                    outcome = await chat(session, text, header)
                    if keep:
                        timing.add(t)
                    if header:
                        out.answers += 1
                        out.hits += outcome == "hit"
    finally:
        await conn.close()
    return out


def runtimes(texts: list[str]) -> tuple[Timing, Timing]:
    """The query embedding in this process, both runtimes (one thread), interleaved."""
    from modelflock.sim.minilm import MiniLM

    onnx, numpy = MiniLM.load(runtime="onnx"), MiniLM.load(runtime="numpy")
    timings = Timing(), Timing()
    for i, text in enumerate(texts):
        for model, timing in zip((onnx, numpy), timings, strict=True):
            t = time.perf_counter()
            model.embed([text])
            if i >= 5:
                timing.add(t)
    return timings


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
    parser.add_argument(
        "--embedding-threads",
        type=int,
        default=1,
        help="onnxruntime threads of the embedding engine the router calls (engine-sim)",
    )
    parser.add_argument(
        "--ingest-deadline-minutes",
        type=float,
        default=30.0,
        help="give up (exit 1) when ingesting takes longer than this",
    )
    args = parser.parse_args()
    python = sys.executable
    warmup = 10
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelflock-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        pg = LocalPostgres(work / "pg")
        pg.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            sim = [python, "-m", "modelflock", "engine-sim", "--host", "127.0.0.1", "--port", "0"]
            embed_proc, embed_url = start(
                [
                    *sim,
                    "--embedding-model",
                    "minilm",
                    "--embedding-threads",
                    str(args.embedding_threads),
                    "--model",
                    MODEL,
                    "--instant",
                ],
                work / "embed.log",
            )
            procs.append(embed_proc)
            llm_proc, llm_url = start([*sim, "--model", "llm", "--instant"], work / "llm.log")
            procs.append(llm_proc)
            docs = corpus(args.chunks, 1)
            print(f"ingesting {len(docs):,} documents ...", file=sys.stderr, flush=True)
            try:
                seconds, chunks, calls = asyncio.run(
                    ingest_corpus(pg, embed_url, docs, args.ingest_deadline_minutes * 60)
                )
            except TimeoutError:
                print(
                    f"ingesting did not finish within {args.ingest_deadline_minutes} minutes",
                    file=sys.stderr,
                )
                return 1
            print("recall@5 ...", file=sys.stderr, flush=True)

            async def recall_run() -> tuple[float, Timing, Timing]:
                async with aiohttp.ClientSession() as session:
                    vectors = await embed_remote(
                        session, embed_url, queries(args.recall_queries, 2)
                    )
                return await recall(pg, vectors)

            rec, ann, exact = asyncio.run(recall_run())
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
            # Questions the router has not seen (seed 3; recall used seed 2).
            texts = queries(args.queries + warmup, 3)
            print("latency, side by side ...", file=sys.stderr, flush=True)
            sbs = asyncio.run(side_by_side(pg, embed_url, router_url, texts, warmup))
            print("onnxruntime vs numpy ...", file=sys.stderr, flush=True)
            onnx_ms, numpy_ms = runtimes(texts[:105])
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
    n = len(sbs.kb.ms)
    rows = [
        (
            "ingestion (embedding included)",
            f"{chunks:,} chunks in {seconds:.1f} s = {chunks / seconds:,.0f} chunks/s"
            f" ({calls} embedding calls of ≤ 64, 2 in flight)",
        ),
        (
            "HNSW recall@5 vs exact",
            f"{rec:.3f} over {args.recall_queries} queries (m=16, ef_construction=64, ef_search=40)",
        ),
        ("pgvector query p50 / p99: HNSW", f"{ann.p50_p99()} (top-5, read role, binary vector)"),
        ("pgvector query p50 / p99: exact scan", exact.p50_p99()),
        (
            "query embedding p50 / p99: onnxruntime vs numpy",
            f"{onnx_ms.p50_p99()} vs {numpy_ms.p50_p99()} (in-process, 1 thread, 100 questions)",
        ),
        (
            "query embedding p50 / p99: onnxruntime, in-process",
            f"{sbs.embed_local.p50_p99()} (CPU time {sbs.embed_local_cpu.p50_p99()})",
        ),
        (
            "query embedding p50 / p99: engine-sim over HTTP",
            f"{sbs.embed_http.p50_p99()} (the call the router makes)",
        ),
        (
            "pgvector top-3 p50 / p99, direct (the router's query)",
            sbs.pg_direct.p50_p99(),
        ),
        (
            "retrieval answer via router p50 / p99",
            f"{sbs.kb.p50_p99()} (new question: embed + search + answer, no LLM)",
        ),
        (
            "retrieval answer via router, repeated p50 / p99",
            f"{sbs.kb_cached.p50_p99()} (vector cached: search + answer)",
        ),
        ("LLM call via router p50 / p99", f"{sbs.llm.p50_p99()} (instant simulated engine)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    load = os.getloadavg()
    print(
        f"\n{n} questions per router row after {warmup} warm-up ones, interleaved;"
        f" {sbs.hits}/{sbs.answers} retrieval answers were hits; embedding engine"
        f" {args.embedding_threads} thread(s); whole run"
        f" {(time.perf_counter() - began) / 60:.1f} min; load average"
        f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
