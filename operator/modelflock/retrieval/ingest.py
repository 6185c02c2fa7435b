"""One ingest pass: make the store hold exactly the sources' documents, embedding only what
changed. Restart-safe: the store is the only record of progress (per document, written in one
transaction with its chunks), so a pass cut anywhere resumes with what is left."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from modelflock.retrieval.documents import (
    Chunk,
    Document,
    batches,
    chunk_document,
    document_hash,
    plan_ingest,
    source_hash,
)
from modelflock.retrieval.store import DimensionMismatch, WriteStore

Embed = Callable[[Sequence[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True)
class IngestSettings:
    size: int
    overlap: int
    batch_size: int
    dimensions: int
    fingerprint: str  # what else changes every embedding (expert, model, chunking)
    markdown_ids: frozenset[str] = frozenset()  # documents chunked at headings
    parallelism: int = 1  # embedding calls in flight (writes stay sequential, in order)


@dataclass(frozen=True)
class IngestResult:
    documents: int
    chunks: int
    embedded_documents: int
    embedded_chunks: int
    deleted_documents: int
    source_hash: str


async def _embed_all(embed: Embed, texts: list[str], batch_size: int) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        vectors += await embed(texts[start : start + batch_size])
    return vectors


async def ingest(
    store: WriteStore,
    documents: Sequence[Document],
    embed: Embed,
    settings: IngestSettings,
    progress: Callable[[int, int], Awaitable[None]] | None = None,
) -> IngestResult:
    hashes = {d.doc_id: document_hash(d, settings.fingerprint) for d in documents}
    stored = await store.document_hashes()
    plan = plan_ingest(documents, hashes, stored)
    await store.delete_documents(plan.delete)
    chunked: list[list[Chunk]] = [
        chunk_document(d, settings.size, settings.overlap, d.doc_id in settings.markdown_ids)
        for d in plan.embed
    ]
    groups = batches([len(c) for c in chunked], settings.batch_size)

    async def embed_group(group: list[int]) -> list[list[float]]:
        texts = [f"{c.title}\n{c.text}" if c.title else c.text for i in group for c in chunked[i]]
        vectors = await _embed_all(embed, texts, settings.batch_size)
        for vector in vectors:
            if len(vector) != settings.dimensions:
                raise DimensionMismatch(
                    f"spec.embedding.dimensions is {settings.dimensions} but the embedding"
                    f" expert returns {len(vector)}-dimensional vectors"
                )
        return vectors

    embedded_chunks = 0
    done = 0
    # Up to `parallelism` groups are embedded at once; each is written, in order, as soon as
    # it and the ones before it are done. A failure cancels the rest.
    pending: list[tuple[list[int], asyncio.Task[list[list[float]]]]] = []
    window = max(1, settings.parallelism)
    try:
        for index in range(len(groups) + window):
            if index < len(groups):
                group = groups[index]
                pending.append((group, asyncio.create_task(embed_group(group))))
            if not pending or (len(pending) < window and index < len(groups)):
                continue
            group, task = pending.pop(0)
            vectors = await task
            at = 0
            for i in group:
                doc, chunks = plan.embed[i], chunked[i]
                await store.replace_document(
                    doc, hashes[doc.doc_id], chunks, vectors[at : at + len(chunks)]
                )
                at += len(chunks)
                embedded_chunks += len(chunks)
                done += 1
            if progress is not None:
                await progress(done, len(plan.embed))
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
    documents_count, chunks_count = await store.counts()
    return IngestResult(
        documents=documents_count,
        chunks=chunks_count,
        embedded_documents=len(plan.embed),
        embedded_chunks=embedded_chunks,
        deleted_documents=len(plan.delete),
        source_hash=source_hash(hashes),
    )
