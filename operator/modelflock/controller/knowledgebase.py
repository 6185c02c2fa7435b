"""Reconciling one KnowledgeBase: read its sources, ingest what changed, write the status.

Ingestion runs here, in the operator, not in a Job: the operator already holds the write
credentials and knows the embedding expert's ready replicas; ingesting is waiting on the
embedding expert and the database (little CPU of its own), and it is incremental, so a pass
after the first is small. A Job would need an image pull, its own RBAC to read the sources,
the write Secret mounted, and a way to report status back. The limit: a corpus whose first
ingest takes hours would hold one worker task that long (other objects are unaffected: every
KnowledgeBase has its own worker); see docs/retrieval.md.
"""

from __future__ import annotations

import base64
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import kopf
from pydantic import ValidationError

from modelflock.api.common import GROUP, VERSION, object_document
from modelflock.api.knowledgebase import KIND, KnowledgeBase, KnowledgeBaseStatus
from modelflock.api.modelexpert import ModelExpert
from modelflock.controller.context import ObjectKey, OperatorContext
from modelflock.render.expert import ExpertRef, service_endpoint
from modelflock.render.knowledgebase import Failure, ingest_status, ingesting_status, table_of
from modelflock.retrieval.documents import Document, SourceFormatError, parse_source
from modelflock.retrieval.embedder import Embedder, EmbeddingFailed
from modelflock.retrieval.ingest import IngestSettings, ingest
from modelflock.retrieval.store import ConnectionInfo, DimensionMismatch, WriteStore

API_VERSION = f"{GROUP}/{VERSION}"
RETRY_SECONDS = 10


def _decode(manifest: dict[str, Any], secret: bool) -> dict[str, str]:
    data = manifest.get("data") or {}
    if not secret:
        return {str(k): str(v) for k, v in data.items()}
    return {str(k): base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}


async def load_documents(
    ctx: OperatorContext, kb: KnowledgeBase
) -> tuple[list[Document], frozenset[str], list[Failure]]:
    """Every source's documents, the ids chunked as markdown, and the sources missing."""
    namespace = str(kb.metadata.namespace)
    documents: list[Document] = []
    markdown: set[str] = set()
    failures: list[Failure] = []
    for source in kb.spec.sources:
        is_secret = source.secret is not None
        kind, name = ("Secret", source.secret) if is_secret else ("ConfigMap", source.config_map)
        found = await ctx.kube.get("v1", kind, str(name), namespace)
        if found is None:
            failures.append(Failure("SourceNotFound", f"{kind} {name} not found"))
            continue
        try:
            docs = parse_source(
                kind.lower(), str(name), _decode(found, is_secret), source.format, source.keys
            )
        except SourceFormatError as err:
            failures.append(Failure("SourceInvalid", str(err)))
            continue
        documents += docs
        if source.format == "markdown":
            markdown.update(d.doc_id for d in docs)
    return documents, frozenset(markdown), failures


async def _secret(ctx: OperatorContext, namespace: str, name: str) -> dict[str, str]:
    found = await ctx.kube.get("v1", "Secret", name, namespace)
    if found is None:
        raise ValueError(f"Secret {name} not found")
    return _decode(found, True)


async def _embedder(ctx: OperatorContext, kb: KnowledgeBase) -> Embedder:
    namespace = str(kb.metadata.namespace)
    name = kb.spec.embedding.expert
    raw = await ctx.kube.get(API_VERSION, "ModelExpert", name, namespace)
    if raw is None:
        raise EmbeddingFailed(f"spec.embedding.expert: ModelExpert {name} not found")
    expert = ModelExpert.model_validate(object_document(raw))
    api_key = None
    if expert.spec.external is not None:
        fixed = expert.spec.external.base_url
        ref = expert.spec.external.api_key_secret_ref
        if ref is not None:
            api_key = (await _secret(ctx, namespace, ref.name)).get(ref.key)
    else:
        fixed = service_endpoint(ExpertRef(name, namespace, ""), ctx.config.service_domain)
    key = (namespace, name)

    async def base_url() -> str:
        state = ctx.experts.get(key)
        if expert.spec.external is None and state is not None and state.ready_targets:
            # A ready replica the operator knows (round robin by call count).
            targets = state.ready_targets
            return targets[embedder.calls % len(targets)].url
        return fixed

    assert ctx.http is not None
    embedder = Embedder(
        session=ctx.http,
        base_url=base_url,
        model=expert.spec.served_model_name(name),
        api_key=api_key,
        timeout_seconds=kb.spec.embedding.timeout_seconds,
        max_retries=kb.spec.embedding.max_retries,
    )
    return embedder


async def _patch(ctx: OperatorContext, kb: KnowledgeBase, status: KnowledgeBaseStatus) -> None:
    await ctx.kube.patch_status(
        API_VERSION, KIND, kb.metadata.name, str(kb.metadata.namespace), status.to_api()
    )


async def run_pass(
    ctx: OperatorContext, kb: KnowledgeBase, previous: KnowledgeBaseStatus
) -> KnowledgeBaseStatus:
    """One ingest pass; every failure ends in the status, never in an exception."""
    namespace = str(kb.metadata.namespace)
    spec = kb.spec
    documents, markdown, failures = await load_documents(ctx, kb)
    try:
        write = ConnectionInfo.from_mapping(
            await _secret(ctx, namespace, spec.store.secret),
            f"spec.store.secret {spec.store.secret}",
        )
        reader = (await _secret(ctx, namespace, spec.store.read_only_secret)).get("username")
        store = await WriteStore.connect(write, table_of(kb))
    except (ValueError, OSError, TimeoutError, asyncpg.PostgresError) as err:
        failures.insert(0, Failure("StoreUnreachable", f"cannot connect to the store: {err}"))
        return ingest_status(kb, previous, None, failures, datetime.now(UTC))
    try:
        store_spec = spec.store
        await store.ensure_schema(
            spec.embedding.dimensions, store_spec.hnsw_m, store_spec.hnsw_ef_construction
        )
        if reader:
            await store.grant_read(reader)
        embedder = await _embedder(ctx, kb)
        settings = IngestSettings(
            size=spec.chunking.size,
            overlap=spec.chunking.overlap,
            batch_size=spec.embedding.batch_size,
            dimensions=spec.embedding.dimensions,
            fingerprint=f"{spec.embedding.expert}:{embedder.model}:{spec.chunking.size}:"
            f"{spec.chunking.overlap}",
            markdown_ids=markdown,
            parallelism=spec.embedding.parallelism,
        )
        started = False

        async def progress(done: int, todo: int) -> None:
            nonlocal started
            if not started:
                started = True
                await _patch(ctx, kb, ingesting_status(kb, previous, todo, datetime.now(UTC)))

        result = await ingest(store, documents, embedder.embed, settings, progress)
        ctx.metrics.embedding_calls.labels(namespace, kb.metadata.name).inc(embedder.calls)
        ctx.metrics.ingested.labels(namespace, kb.metadata.name).inc(result.embedded_chunks)
        return ingest_status(kb, previous, result, failures, datetime.now(UTC))
    except DimensionMismatch as err:
        failures.insert(0, Failure("DimensionMismatch", str(err)))
    except EmbeddingFailed as err:
        failures.insert(0, Failure("EmbeddingFailed", f"embedding failed: {err}"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        failures.insert(0, Failure("StoreUnreachable", f"store error: {err}"))
    except (ValueError, aiohttp.ClientError) as err:
        failures.insert(0, Failure("StoreUnreachable", str(err)))
    finally:
        with contextlib.suppress(OSError, asyncpg.InterfaceError):
            await store.close()
    return ingest_status(kb, previous, None, failures, datetime.now(UTC))


def _post_events(
    ctx: OperatorContext, body: kopf.Body, before: KnowledgeBaseStatus, after: KnowledgeBaseStatus
) -> None:
    old = {c.type: (c.status, c.reason) for c in before.conditions}
    for condition in after.conditions:
        if condition.type == "Ingesting":
            continue  # every pass flips it: the Ingested event below says what happened
        if old.get(condition.type) != (condition.status, condition.reason):
            bad = (condition.type == "Degraded") == (condition.status == "True")
            ctx.event(
                body,
                type="Warning" if bad else "Normal",
                reason=condition.reason,
                message=f"{condition.type}={condition.status}: {condition.message}",
            )
    if after.source_hash != before.source_hash and after.source_hash is not None:
        ctx.event(
            body,
            type="Normal",
            reason="Ingested",
            message=f"{after.documents} documents, {after.chunks} chunks"
            f" ({after.embedded_last_ingest} chunks embedded)",
        )


async def reconcile_knowledge_base(
    ctx: OperatorContext, key: ObjectKey, body: kopf.Body, logger: kopf.Logger
) -> float:
    """One pass; returns the seconds until the next resync."""
    started = time.monotonic()
    try:
        kb = KnowledgeBase.model_validate(object_document(body))
    except ValidationError as error:
        ctx.metrics.reconciles.labels(KIND, "invalid").inc()
        ctx.event(body, type="Warning", reason="InvalidSpec", message=str(error))
        return 300.0
    previous = ctx.kb_status.get(key) or kb.status or KnowledgeBaseStatus()
    status = await run_pass(ctx, kb, previous)
    _post_events(ctx, body, previous, status)
    if status.to_api() != previous.to_api() or kb.status is None:
        await _patch(ctx, kb, status)
    ctx.kb_status[key] = status
    degraded = any(c.type == "Degraded" and c.status == "True" for c in status.conditions)
    outcome = "degraded" if degraded else "ok"
    ctx.metrics.reconciles.labels(KIND, outcome).inc()
    ctx.metrics.reconcile_seconds.labels(KIND).observe(time.monotonic() - started)
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions)
    # A pass that could not finish is tried again soon (the store or embedder may be starting).
    return float(kb.spec.resync_seconds if ready else min(kb.spec.resync_seconds, RETRY_SECONDS))
