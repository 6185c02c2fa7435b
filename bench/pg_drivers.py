"""Which PostgreSQL driver the router uses for pgvector queries: asyncpg vs psycopg 3.

A local PostgreSQL+pgvector (the pgserver wheel's binaries) on 127.0.0.1, one table of
`--rows` random unit vectors (384 dims, HNSW cosine index). For each driver, through its
async pool: the latency of one top-5 query at a time (p50/p99), and queries per second with
`--concurrency` queries in flight. Interleaved rounds; medians.

    python bench/pg_drivers.py [--rows 10000] [--queries 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import psycopg
import psycopg_pool

from modelflock.retrieval.localpg import Credentials, LocalPostgres

DIM = 384
SQL_ASYNCPG = (
    "SELECT doc_id, content, 1 - (embedding <=> $1::text::vector) AS score FROM bench "
    "ORDER BY embedding <=> $1::text::vector LIMIT $2"
)
SQL_PSYCOPG = (
    "SELECT doc_id, content, 1 - (embedding <=> %(q)s::text::vector) AS score FROM bench "
    "ORDER BY embedding <=> %(q)s::text::vector LIMIT %(k)s"
)


def unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def literal(v: list[float]) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


async def fill(c: Credentials, rows: int) -> None:
    conn = await asyncpg.connect(
        host=c.host, port=c.port, user=c.username, password=c.password, database=c.dbname
    )
    await conn.execute("DROP TABLE IF EXISTS bench")
    await conn.execute(
        f"CREATE TABLE bench (doc_id text PRIMARY KEY, content text, embedding vector({DIM}))"
    )
    rng = random.Random(7)
    records = [(f"doc-{i}", f"passage {i}", literal(unit(rng))) for i in range(rows)]
    await conn.executemany("INSERT INTO bench VALUES ($1, $2, $3::text::vector)", records)
    await conn.execute("CREATE INDEX ON bench USING hnsw (embedding vector_cosine_ops)")
    await conn.close()


Query = Callable[[str], Awaitable[int]]


async def measure(query: Query, vectors: list[str], concurrency: int) -> tuple[float, float, float]:
    samples = []
    for v in vectors:
        start = time.perf_counter()
        assert await query(v) == 5
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]
    it = iter(vectors * 2)

    async def worker() -> None:
        for v in it:
            await query(v)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    qps = len(vectors) * 2 / (time.perf_counter() - start)
    return p50, p99, qps


async def main_async(args: argparse.Namespace, pg: LocalPostgres) -> None:
    c = pg.writer
    await fill(c, args.rows)
    rng = random.Random(11)
    vectors = [literal(unit(rng)) for _ in range(args.queries)]
    apool = await asyncpg.create_pool(
        host=c.host,
        port=c.port,
        user=c.username,
        password=c.password,
        database=c.dbname,
        min_size=2,
        max_size=8,
    )
    conninfo = psycopg.conninfo.make_conninfo(
        host=c.host, port=c.port, user=c.username, password=c.password, dbname=c.dbname
    )
    ppool = psycopg_pool.AsyncConnectionPool(conninfo, min_size=2, max_size=8, open=False)
    await ppool.open(wait=True)

    async def via_asyncpg(v: str) -> int:
        async with apool.acquire() as conn:
            return len(await conn.fetch(SQL_ASYNCPG, v, 5, timeout=1.0))

    async def via_psycopg(v: str) -> int:
        async with ppool.connection() as conn:
            cur = await conn.execute(SQL_PSYCOPG, {"q": v, "k": 5}, prepare=True)
            return len(await cur.fetchall())

    drivers: dict[str, Query] = {
        f"asyncpg {asyncpg.__version__}": via_asyncpg,
        f"psycopg {psycopg.__version__} (+pool)": via_psycopg,
    }
    results: dict[str, list[tuple[float, float, float]]] = {d: [] for d in drivers}
    for q in drivers.values():  # warm up: connections, prepared statements
        await measure(q, vectors[:50], args.concurrency)
    for _ in range(args.rounds):
        for name, q in drivers.items():
            results[name].append(await measure(q, vectors, args.concurrency))
    await apool.close()
    await ppool.close()
    print(f"| driver | query p50 | query p99 | queries/s at {args.concurrency} in flight |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        qps = statistics.median(r[2] for r in rows)
        print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms | {qps:,.0f} |")
    print(
        f"\n{args.rows:,} rows of {DIM} dims, HNSW cosine, top-5; {args.queries} sequential "
        f"queries per round, medians of {args.rounds} interleaved rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelflock-pg-") as tmp:
        Path(tmp).chmod(0o755)  # the server may run as another user (never as root)
        pg = LocalPostgres(Path(tmp))
        pg.start()
        try:
            asyncio.run(main_async(args, pg))
        finally:
            pg.destroy()


if __name__ == "__main__":
    main()
