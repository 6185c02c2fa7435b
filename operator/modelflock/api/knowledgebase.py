"""KnowledgeBase: documents chunked, embedded by an `embed` expert and kept in pgvector."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from modelflock.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
)
from modelflock.api.modelexpert import ObjectMeta

KIND = "KnowledgeBase"
PLURAL = "knowledgebases"
MAX_NAME_LENGTH = 50
MAX_SOURCES = 32
TABLE_PATTERN = r"^[a-z_][a-z0-9_]{0,47}$"

SourceFormat = Literal["text", "markdown", "jsonl"]
# Condition reasons (status.conditions[].reason).
REASONS = (
    "Ingested",
    "Ingesting",
    "StoreUnreachable",
    "EmbeddingFailed",
    "DimensionMismatch",
    "SourceNotFound",
)


class SourceRef(ApiModel):
    """A ConfigMap or Secret (same namespace) whose keys are documents."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.configMap) != has(self.secret)",
                    "message": "a source names exactly one of configMap or secret",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    config_map: str | None = Field(
        default=None,
        description="Name of a ConfigMap whose keys are documents.",
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
    )
    secret: str | None = Field(
        default=None,
        description="Name of a Secret whose keys are documents (for text that must not sit"
        " in a ConfigMap).",
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
    )
    format: SourceFormat = Field(
        default="text",
        description="text: one document per key; markdown: one document per key, split at"
        " headings; jsonl: one document per line, {id, text, title?, metadata?}.",
    )
    keys: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Only these keys (default: every key).",
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )


class Chunking(ApiModel):
    """How documents are cut into passages (in words)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.overlap < self.size",
                    "message": "chunking.overlap must be smaller than chunking.size",
                    "fieldPath": ".overlap",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    size: int = Field(default=120, ge=8, le=2000, description="Words per chunk.")
    overlap: int = Field(default=20, ge=0, le=1000, description="Words shared by neighbours.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError("chunking.overlap must be smaller than chunking.size")
        return self


class Embedding(ApiModel):
    """The ModelExpert (capability `embed`) that embeds chunks and queries."""

    expert: str = Field(
        description="Name of a ModelExpert with capability embed (same namespace).",
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    dimensions: int = Field(
        ge=2, le=16000, description="Length of its vectors (the store's vector column)."
    )
    batch_size: int = Field(default=32, ge=1, le=2048, description="Texts per embedding call.")
    parallelism: int = Field(
        default=2, ge=1, le=16, description="Embedding calls in flight during an ingest."
    )
    max_retries: int = Field(
        default=4, ge=0, le=20, description="Retries of a failed embedding call (backoff)."
    )
    timeout_seconds: int = Field(default=30, ge=1, le=600, description="Per embedding call.")


class Store(ApiModel):
    """PostgreSQL with pgvector; credentials in Secrets with the keys host, port, dbname,
    username, password (a CloudNativePG `<cluster>-app` Secret has them)."""

    type: Literal["pgvector"] = Field(default="pgvector", description="The store kind.")
    secret: str = Field(
        description="Secret with write credentials: read by the operator only.",
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
    )
    read_only_secret: str = Field(
        description="Secret with read-only credentials: mounted into routers. Its username is"
        " granted SELECT on the table.",
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
    )
    table: str | None = Field(
        default=None,
        description="Table of the chunks (default: kb_<namespace>_<name>, cut to fit).",
        pattern=TABLE_PATTERN,
    )
    hnsw_m: int = Field(default=16, ge=2, le=100, description="HNSW: links per node.")
    hnsw_ef_construction: int = Field(
        default=64, ge=4, le=1000, description="HNSW: candidate list while building."
    )
    hnsw_ef_search: int = Field(
        default=40, ge=1, le=1000, description="HNSW: candidate list while querying."
    )
    query_timeout_milliseconds: int = Field(
        default=250, ge=10, le=60_000, description="Routers: budget of one query."
    )


class KnowledgeBaseSpec(ApiModel):
    """Desired knowledge base: sources, chunking, embedding expert and store."""

    sources: list[SourceRef] = Field(
        min_length=1, max_length=MAX_SOURCES, description="Where the documents come from."
    )
    chunking: Chunking = Field(default_factory=Chunking, description="Chunk size and overlap.")
    embedding: Embedding = Field(description="Who embeds the chunks and queries.")
    store: Store = Field(description="The vector store.")
    resync_seconds: int = Field(
        default=60,
        ge=5,
        le=86_400,
        description="How often sources are checked for changes (changes to this object"
        " start an ingest at once).",
    )


class KnowledgeBaseStatus(ApiModel):
    """Observed state of a knowledge base."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Ready, Ingesting and Degraded.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    documents: int | None = Field(default=None, description="Documents in the store.")
    chunks: int | None = Field(default=None, description="Chunks in the store.")
    embedded_last_ingest: int | None = Field(
        default=None, description="Chunks embedded by the last ingest (changed documents)."
    )
    last_ingest_time: datetime | None = Field(
        default=None, description="When the last ingest finished."
    )
    source_hash: str | None = Field(
        default=None, description="SHA-256 over the ingested documents (ids and content)."
    )
    table: str | None = Field(default=None, description="The table of the chunks.")
    dimensions: int | None = Field(default=None, description="The vector dimensions stored.")


class KnowledgeBase(ApiModel):
    """Documents chunked, embedded and kept in PostgreSQL/pgvector, for retrieval routes."""

    api_version: Literal["modelflock.io/v1alpha1"] = "modelflock.io/v1alpha1"
    kind: Literal["KnowledgeBase"] = "KnowledgeBase"
    metadata: ObjectMeta
    spec: KnowledgeBaseSpec
    status: KnowledgeBaseStatus | None = None


def default_table(namespace: str, name: str) -> str:
    """kb_<namespace>_<name> with '-' as '_', cut to fit a PostgreSQL identifier with room
    for the suffixes of its companion table and index."""
    raw = f"kb_{namespace}_{name}".replace("-", "_").replace(".", "_")
    if len(raw) <= 48:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{raw[:39]}_{digest}"
