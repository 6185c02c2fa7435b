"""Pure pieces of retrieval: sources, chunking, the ingest plan, answers, handoff, status."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from modelflock.api.knowledgebase import KnowledgeBase, KnowledgeBaseStatus, default_table
from modelflock.api.modelexpert import ObjectMeta
from modelflock.render.knowledgebase import Failure, ingest_status
from modelflock.render.policy import StoreReport, retrieval_condition
from modelflock.retrieval.documents import (
    Document,
    SourceFormatError,
    batches,
    chunk_document,
    document_hash,
    parse_source,
    plan_ingest,
)
from modelflock.retrieval.embedder import backoff_seconds, parse_embeddings
from modelflock.retrieval.ingest import IngestResult
from modelflock.retrieval.store import (
    Passage,
    decode_vector,
    encode_vector,
    ident,
    search_sql,
    vector_literal,
)
from modelflock.router.answer import (
    answer_text,
    decide,
    estimate_tokens,
    handoff_text,
    stream_events,
    usable,
)
from modelflock.router.retrieval import parse_embedding


def test_text_markdown_and_jsonl_sources() -> None:
    docs = parse_source("configmap", "facts", {"b.txt": "beta", "a.txt": "alpha", "e": " "}, "text")
    assert [d.doc_id for d in docs] == ["configmap/facts/a.txt", "configmap/facts/b.txt"]
    md = parse_source("configmap", "m", {"x.md": "intro\n# Title\nbody"}, "markdown")
    assert md[0].title == "Title"
    lines = '{"id": "q1", "text": "one", "metadata": {"lang": "en"}}\n\n{"text": "two"}\n'
    jsonl = parse_source("secret", "s", {"d.jsonl": lines}, "jsonl")
    assert [(d.doc_id, d.text) for d in jsonl] == [
        ("secret/s/d.jsonl#q1", "one"),
        ("secret/s/d.jsonl#3", "two"),
    ]
    assert jsonl[0].metadata == {"lang": "en"}
    only = parse_source("configmap", "facts", {"a": "x", "b": "y"}, "text", keys=["b"])
    assert [d.doc_id for d in only] == ["configmap/facts/b"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: not JSON"),
        ('{"title": "no text"}', "expected an object with 'text'"),
        ('{"text": "x", "id": [1]}', "'id' must be"),
        ('{"text": "x", "metadata": 3}', "'metadata' must be an object"),
    ],
)
def test_bad_jsonl_names_the_key_and_line(line: str, message: str) -> None:
    with pytest.raises(SourceFormatError, match=message) as err:
        parse_source("configmap", "c", {"k.jsonl": line}, "jsonl")
    assert "configmap/c/k.jsonl" in str(err.value)


def test_chunks_overlap_and_markdown_keeps_headings() -> None:
    doc = Document("d", "d", " ".join(f"w{i}" for i in range(25)))
    chunks = chunk_document(doc, size=10, overlap=3)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w7", "w14", "w21"]
    assert chunks[0].text.split()[-3:] == chunks[1].text.split()[:3]
    assert chunk_document(Document("e", "e", "short text"), 10, 3)[0].text == "short text"
    md = Document("m", "m", "# One\nalpha beta\n## Two\ngamma")
    parts = chunk_document(md, 10, 2, markdown=True)
    assert [(c.title, c.text) for c in parts] == [("One", "alpha beta"), ("Two", "gamma")]


def test_plan_embeds_only_changed_and_deletes_gone() -> None:
    a, b, c = Document("a", "a", "A"), Document("b", "b", "B"), Document("c", "c", "C")
    hashes = {d.doc_id: document_hash(d, "f") for d in (a, b, c)}
    stored = {"a": hashes["a"], "b": "old", "gone": "x"}
    plan = plan_ingest([a, b, c], hashes, stored)
    assert [d.doc_id for d in plan.embed] == ["b", "c"]
    assert plan.delete == ["gone"] and plan.unchanged == 1
    # Changing how documents are chunked or embedded changes every hash.
    assert document_hash(a, "f") != document_hash(a, "g")


@pytest.mark.parametrize(
    ("counts", "size", "expected"),
    [
        ([1, 1, 1], 2, [[0, 1], [2]]),
        ([5, 1], 2, [[0], [1]]),  # bigger than a batch: alone (embedded in parts)
        ([2, 2], 4, [[0, 1]]),
        ([], 4, []),
    ],
)
def test_embedding_batches(counts: list[int], size: int, expected: list[list[int]]) -> None:
    assert batches(counts, size) == expected


def test_embedding_answers_and_backoff() -> None:
    body = {
        "data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}],
        "usage": {"prompt_tokens": 7},
    }
    assert parse_embeddings(body, 2) == ([[1.0, 0.0], [0.0, 1.0]], 7)
    with pytest.raises(ValueError, match="asked for 3"):
        parse_embeddings(body, 3)
    with pytest.raises(ValueError):
        parse_embeddings({"data": [{"index": 0, "embedding": ["x"]}]}, 1)
    assert [backoff_seconds(i) for i in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 8.0]


def test_identifiers_are_checked_and_values_are_parameters() -> None:
    assert ident("kb_team_facts") == '"kb_team_facts"'
    for bad in ('x"; drop table y; --', "Upper", "1abc", "a" * 49, "a-b"):
        with pytest.raises(ValueError):
            ident(bad)
    sql = search_sql("kb_facts")
    assert "$1" in sql and "$2" in sql and "'" not in sql
    assert vector_literal([1, 0.5]) == "[1.0,0.5]"
    assert "::text" not in sql  # the vector is a binary parameter (pool codec)
    assert default_table("team-a", "facts") == "kb_team_a_facts"
    assert len(default_table("n" * 60, "k" * 50)) <= 48


def _p(score: float, content: str = "text", source: str = "configmap/f/a") -> Passage:
    return Passage("id", 0, source, "", content, score)


@pytest.mark.parametrize(
    ("mode", "scores", "expected"),
    [
        ("answer", [0.8, 0.4], "answer"),
        ("augment", [0.8], "augment"),
        ("answer", [0.49], "miss"),
        ("augment", [0.49], "miss"),
        ("answer", [], "miss"),
        ("answer", [0.5], "answer"),  # at the threshold: a hit
    ],
)
def test_retrieval_decision(mode: str, scores: list[float], expected: str) -> None:
    assert decide(mode, 0.5, [_p(s) for s in scores]) == expected


def test_answer_text_and_stream() -> None:
    passages = usable([_p(0.4, "low"), _p(0.9, "Canberra."), _p(0.6, "Second.", "cm/x")], 0.5)
    assert [p.content for p in passages] == ["Canberra.", "Second."]
    text = answer_text(passages)
    assert text == "Canberra. [1]\n\nSecond. [2]\n\nSources:\n[1] configmap/f/a\n[2] cm/x"
    events = stream_events(True, "kb:f", text, passages, (3, 4), "id", 0, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == text
    assert chunks[-1]["usage"]["total_tokens"] == 7
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert estimate_tokens("abcd" * 10) == 10


def test_handoff_is_bounded_and_keeps_the_draft() -> None:
    passages = [_p(0.3, "passage " * 50, f"cm/{i}") for i in range(10)]
    assert handoff_text("none", "draft", passages, 512) == ""
    assert handoff_text("draft", "", [], 512) == ""
    draft = handoff_text("draft", "my draft", passages, 512)
    assert "my draft" in draft and "passage" not in draft
    context = handoff_text("context", "my draft", passages, 200)
    assert "my draft" in context and "[1] (cm/0)" in context
    assert estimate_tokens(context) <= 200
    assert "[10]" not in context  # cut to the budget
    tiny = handoff_text("context", "d" * 5000, passages, 100)
    assert estimate_tokens(tiny) <= 100 and "Retrieved passages" not in tiny


KB = KnowledgeBase.model_validate(
    {
        "metadata": {"name": "facts", "namespace": "team", "generation": 3},
        "spec": {
            "sources": [{"configMap": "facts"}],
            "embedding": {"expert": "embed", "dimensions": 384},
            "store": {"secret": "pg-write", "readOnlySecret": "pg-read"},
        },
    }
)
NOW = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
RESULT = IngestResult(10, 12, 2, 3, 1, "abc")


def _conditions(status: KnowledgeBaseStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("result", "failures", "expected"),
    [
        (
            RESULT,
            [],
            {
                "Ready": ("True", "Ingested"),
                "Degraded": ("False", "AsExpected"),
                "Ingesting": ("False", "Ingested"),
            },
        ),
        (
            RESULT,
            [Failure("SourceNotFound", "ConfigMap gone not found")],
            {
                "Ready": ("True", "Ingested"),
                "Degraded": ("True", "SourceNotFound"),
                "Ingesting": ("False", "Ingested"),
            },
        ),
        (
            None,
            [Failure("StoreUnreachable", "connection refused")],
            {
                "Ready": ("False", "StoreUnreachable"),
                "Degraded": ("True", "StoreUnreachable"),
                "Ingesting": ("False", "StoreUnreachable"),
            },
        ),
        (
            None,
            [
                Failure("DimensionMismatch", "spec.embedding.dimensions is 768 ..."),
                Failure("SourceNotFound", "x"),
            ],
            {
                "Ready": ("False", "DimensionMismatch"),
                "Degraded": ("True", "DimensionMismatch"),
                "Ingesting": ("False", "DimensionMismatch"),
            },
        ),
        (
            None,
            [Failure("EmbeddingFailed", "5 attempts failed")],
            {
                "Ready": ("False", "EmbeddingFailed"),
                "Degraded": ("True", "EmbeddingFailed"),
                "Ingesting": ("False", "EmbeddingFailed"),
            },
        ),
    ],
)
def test_knowledge_base_status(
    result: IngestResult | None, failures: list[Failure], expected: dict[str, tuple[str, str]]
) -> None:
    status = ingest_status(KB, KnowledgeBaseStatus(), result, failures, NOW)
    assert _conditions(status) == expected
    assert status.observed_generation == 3 and status.table == "kb_team_facts"
    if result is not None:
        assert (status.documents, status.chunks, status.source_hash) == (10, 12, "abc")
        assert status.last_ingest_time == NOW
    else:
        assert status.documents is None
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    for failure in failures:
        assert failure.message in degraded.message


def test_policy_retrieval_condition() -> None:
    ready = KB.model_copy(
        update={"status": ingest_status(KB, KnowledgeBaseStatus(), RESULT, [], NOW)}
    )
    assert retrieval_condition({"facts": ready}, {})[:2] == (True, "StoreReachable")
    assert retrieval_condition({"facts": None}, {})[:2] == (False, "KnowledgeBaseNotFound")
    assert retrieval_condition({"facts": KB}, {})[:2] == (False, "NotIngested")
    down = {"facts": StoreReport(False, "connection refused", NOW)}
    ok, reason, message = retrieval_condition({"facts": ready}, down)
    assert (ok, reason) == (False, "StoreUnreachable")
    assert "connection refused" in message and "fall through" in message
    back = {"facts": StoreReport(True, "", NOW)}
    assert retrieval_condition({"facts": ready}, back)[0]


def test_knowledge_base_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        KnowledgeBase.model_validate(
            {
                "metadata": ObjectMeta(name="x").model_dump(),
                "spec": {**KB.spec.to_api(), "chunking": {"size": 10, "overlap": 10}},
            }
        )


POLICY = {
    "metadata": {"name": "team", "namespace": "team", "generation": 1},
    "spec": {
        "experts": ["small", "big"],
        "routes": [
            {
                "name": "lookup",
                "retrieval": {"knowledgeBase": "facts", "minScore": "0.6"},
                "cascade": {"experts": ["small", "big"], "handoff": "context"},
            },
            {"name": "rest", "expert": "big"},
        ],
    },
}


def test_policy_renders_knowledge_bases_for_the_router() -> None:
    from modelflock.api.routingpolicy import RoutingPolicy
    from modelflock.render.policy import (
        RouterSettings,
        knowledge_base_secrets,
        render_config_text,
        render_router_config,
    )
    from modelflock.router.config import parse_config

    policy = RoutingPolicy.model_validate(POLICY)
    settings = RouterSettings(operator_url=None)
    config = render_router_config(policy, {}, settings, {"facts": KB})
    assert config["knowledgeBases"] == [
        {
            "name": "facts",
            "secretDir": "/etc/modelflock/secrets/pg-read",
            "table": "kb_team_facts",
            "dimensions": 384,
            "expert": "embed",
            "queryTimeoutMilliseconds": 250,
            "efSearch": 40,
        }
    ]
    assert [e["name"] for e in config["experts"]] == ["small", "big", "embed"]
    parsed = parse_config(render_config_text(config))  # the router accepts it
    route = parsed.routes[0]
    assert route.retrieval is not None and route.retrieval.min_score == "0.6"
    assert route.cascade is not None and route.cascade.handoff == "context"
    assert ("pg-read", "password") in knowledge_base_secrets({"facts": KB})
    assert ("pg-write", "password") not in knowledge_base_secrets({"facts": KB})
    # A missing KnowledgeBase: the route is served by its experts meanwhile.
    missing = render_router_config(policy, {}, settings, {"facts": None})
    assert "retrieval" not in missing["routes"][0] and "knowledgeBases" not in missing
    parse_config(render_config_text(missing))


RETRIEVAL_METRICS = """
# TYPE modelflock_router_retrievals counter
modelflock_router_retrievals_total{knowledge_base="facts",outcome="hit",route="chat"} 5.0
modelflock_router_retrievals_total{knowledge_base="facts",outcome="miss",route="chat"} 2.0
modelflock_router_retrievals_total{knowledge_base="facts",outcome="unavailable",route="chat"} 1.0
# TYPE modelflock_router_requests counter
modelflock_router_requests_total{code="200",expert="kb:facts",intent="chat",route="chat"} 5.0
modelflock_router_requests_total{code="200",expert="big",intent="chat",route="chat"} 3.0
# TYPE modelflock_router_retrieval_saved_usd counter
modelflock_router_retrieval_saved_usd_total{knowledge_base="facts",route="chat"} 0.004
# TYPE modelflock_router_retrieval_embedding_cost_usd counter
modelflock_router_retrieval_embedding_cost_usd_total{knowledge_base="facts",route="chat"} 1e-06
# TYPE modelflock_router_handoffs counter
modelflock_router_handoffs_total{mode="context",route="chat"} 2.0
# TYPE modelflock_router_handoff_tokens counter
modelflock_router_handoff_tokens_total{mode="context",route="chat"} 180.0
"""


def test_report_shows_retrieval_and_handoff() -> None:
    from modelflock.router.report import format_retrieval, summarize_retrieval

    [row], [handoff] = summarize_retrieval(RETRIEVAL_METRICS)
    assert (row.hits, row.misses, row.unavailable, row.answered) == (5, 2, 1, 5)
    assert row.saved == pytest.approx(0.004) and row.embedding_cost == pytest.approx(1e-6)
    assert (handoff.mode, handoff.handoffs, handoff.tokens) == ("context", 2, 180)
    text = format_retrieval([row], [handoff])
    assert "facts" in text and "0.004000" in text and "180" in text


def test_vectors_in_pgvector_binary_form() -> None:
    # vector_send: uint16 dimensions, uint16 0, then big-endian float4s.
    assert encode_vector([1.0, -2.0]) == bytes.fromhex("000200003f800000c0000000")
    values = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    back = decode_vector(encode_vector(values))
    assert back.dtype == np.float32 and back.tolist() == [0.25, -1.5, 3.0]
    with pytest.raises(ValueError):
        encode_vector(np.zeros((2, 2), dtype=np.float32))


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("AACAPwAAAMA=", [1.0, -2.0]),  # base64 of little-endian float32s
        ([1, -2.0], [1.0, -2.0]),  # a server that ignores encoding_format
        ("AACAPwA=", ValueError),  # 5 bytes: not float32s
        ("not base64!", ValueError),
        ("", ValueError),
        (["1", 2], ValueError),
        ([True], ValueError),
        ({"x": 1}, ValueError),
    ],
)
def test_embedding_items_base64_or_numbers(value: object, want: object) -> None:
    if want is ValueError:
        with pytest.raises(ValueError):
            parse_embedding(value)
    else:
        got = parse_embedding(value)
        assert got.dtype == np.float32 and got.tolist() == want
