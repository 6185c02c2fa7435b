"""KnowledgeBase: the status an ingest pass (or its failure) leads to. Pure: callers pass now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelflock.api.conditions import set_condition
from modelflock.api.knowledgebase import KnowledgeBase, KnowledgeBaseStatus, default_table
from modelflock.retrieval.ingest import IngestResult

# Failures that leave routers unable to use the knowledge base (Ready=False).
_BLOCKING = ("StoreUnreachable", "EmbeddingFailed", "DimensionMismatch")


@dataclass(frozen=True)
class Failure:
    reason: str  # StoreUnreachable | EmbeddingFailed | DimensionMismatch | SourceNotFound | ...
    message: str


def table_of(kb: KnowledgeBase) -> str:
    return kb.spec.store.table or default_table(str(kb.metadata.namespace), kb.metadata.name)


def ingesting_status(
    kb: KnowledgeBase, previous: KnowledgeBaseStatus, todo: int, now: datetime
) -> KnowledgeBaseStatus:
    """While a pass embeds `todo` changed documents."""
    generation = int(kb.metadata.generation or 0)
    conditions = set_condition(
        previous.conditions,
        type="Ingesting",
        status="True",
        reason="Ingesting",
        message=f"embedding {todo} new or changed documents",
        observed_generation=generation,
        now=now,
    )
    return previous.model_copy(update={"conditions": conditions})


def ingest_status(
    kb: KnowledgeBase,
    previous: KnowledgeBaseStatus,
    result: IngestResult | None,
    failures: list[Failure],
    now: datetime,
) -> KnowledgeBaseStatus:
    """After a pass: `result` when it ran to the end (possibly with non-blocking failures
    such as a missing source), None when a failure stopped it."""
    generation = int(kb.metadata.generation or 0)
    blocking = next((f for f in failures if f.reason in _BLOCKING), None)
    first = failures[0] if failures else None
    conditions = list(previous.conditions)

    def put(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            type=type_,
            status="True" if ok else "False",
            reason=reason,
            message=message[:2048],
            observed_generation=generation,
            now=now,
        )

    documents = result.documents if result else previous.documents
    chunks = result.chunks if result else previous.chunks
    if blocking is not None or result is None:
        failure = blocking or first or Failure("StoreUnreachable", "the pass did not finish")
        put("Ready", False, failure.reason, failure.message)
    else:
        put("Ready", True, "Ingested", f"{documents} documents, {chunks} chunks")
    if first is not None:
        put("Degraded", True, first.reason, "; ".join(f.message for f in failures))
    else:
        put("Degraded", False, "AsExpected", "")
    if result is not None:
        put(
            "Ingesting",
            False,
            "Ingested",
            f"embedded {result.embedded_chunks} chunks of {result.embedded_documents} changed"
            f" documents, deleted {result.deleted_documents}",
        )
    else:
        put("Ingesting", False, first.reason if first else "Stopped", "the pass stopped")
    update: dict[str, object] = {
        "observed_generation": generation,
        "conditions": conditions,
        "table": table_of(kb),
        "dimensions": kb.spec.embedding.dimensions,
    }
    if result is not None:
        update |= {
            "documents": result.documents,
            "chunks": result.chunks,
            "source_hash": result.source_hash,
            "embedded_last_ingest": result.embedded_chunks,
        }
        if (
            result.embedded_documents
            or result.deleted_documents
            or previous.last_ingest_time is None
        ):
            update["last_ingest_time"] = now
    return previous.model_copy(update=update)
