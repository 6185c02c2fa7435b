"""Ingestion into a real PostgreSQL+pgvector with the real MiniLM embedder: incremental,
parallel, restart-safe, dimension-checked (the operator runs exactly this code)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from modelflock.retrieval.documents import Document
from modelflock.retrieval.embedder import Embedder, EmbeddingFailed
from modelflock.retrieval.ingest import IngestSettings, ingest
from modelflock.retrieval.localpg import LocalPostgres
from modelflock.retrieval.store import ConnectionInfo, DimensionMismatch, WriteStore
from support import MINILM_MODEL


class Counting:
    """The real embedder, counting texts; optionally failing after `fail_after` calls."""

    def __init__(self, embedder: Embedder, fail_after: int | None = None) -> None:
        self.embedder = embedder
        self.texts = 0
        self.calls = 0
        self.fail_after = fail_after

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise EmbeddingFailed("the embedding expert went away")
        self.texts += len(texts)
        return await self.embedder.embed(texts)


@pytest.fixture
async def embedder(minilm_server: str) -> AsyncIterator[Embedder]:
    async with aiohttp.ClientSession() as session:

        async def base() -> str:
            return minilm_server

        yield Embedder(session, base, MINILM_MODEL, max_retries=1)


def docs(n: int, changed: int | None = None) -> list[Document]:
    return [
        Document(
            doc_id=f"cm/d/{i}",
            source=f"cm/d/{i}",
            text=f"Room {i} keeps the {'new' if i == changed else 'old'} key number {i * 3}.",
        )
        for i in range(n)
    ]


async def store(pg: LocalPostgres, table: str) -> WriteStore:
    s = await WriteStore.connect(ConnectionInfo.from_mapping(pg.writer.secret_data(), "w"), table)
    await s.ensure_schema(384, 16, 64)
    return s


SETTINGS = IngestSettings(
    size=40, overlap=5, batch_size=4, dimensions=384, fingerprint="t", parallelism=3
)


async def test_incremental_parallel_and_restart_safe(
    postgres: LocalPostgres, embedder: Embedder
) -> None:
    s = await store(postgres, "kb_test_incremental")
    try:
        # A pass that dies after 3 embedding calls: what it committed stays, nothing twice.
        dying = Counting(embedder, fail_after=3)
        with pytest.raises(EmbeddingFailed):
            await ingest(s, docs(30), dying, SETTINGS)
        committed = len(await s.document_hashes())
        assert 0 < committed < 30
        counting = Counting(embedder)
        result = await ingest(s, docs(30), counting, SETTINGS)
        assert (result.documents, result.chunks) == (30, 30)
        assert counting.texts == 30 - committed  # only what was missing
        # One document changes, one goes: one text embedded, one deleted.
        counting = Counting(embedder)
        result = await ingest(s, docs(29, changed=7), counting, SETTINGS)
        assert counting.texts == 1 and result.deleted_documents == 1
        assert (result.documents, result.chunks, result.embedded_documents) == (29, 29, 1)
        # Nothing changed: nothing embedded, same source hash.
        counting = Counting(embedder)
        again = await ingest(s, docs(29, changed=7), counting, SETTINGS)
        assert counting.calls == 0 and again.source_hash == result.source_hash
        duplicates = await s.conn.fetchval(
            "SELECT count(*) - count(DISTINCT (doc_id, chunk)) FROM kb_test_incremental"
        )
        assert duplicates == 0
    finally:
        await s.close()


async def test_dimension_mismatch_names_the_field(
    postgres: LocalPostgres, embedder: Embedder
) -> None:
    s = await store(postgres, "kb_test_dims")
    try:
        with pytest.raises(
            DimensionMismatch,
            match=r"spec\.embedding\.dimensions is 768 but table kb_test_dims stores vector\(384\)",
        ):
            await s.ensure_schema(768, 16, 64)
        wrong = IngestSettings(size=40, overlap=5, batch_size=4, dimensions=768, fingerprint="t")
        with pytest.raises(DimensionMismatch, match="returns 384-dimensional vectors"):
            await ingest(s, docs(2), Counting(embedder), wrong)
    finally:
        await s.close()
