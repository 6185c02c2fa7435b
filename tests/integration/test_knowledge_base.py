"""KnowledgeBase against the real control plane, a real PostgreSQL+pgvector and the real
MiniLM embedder: incremental ingestion, deleted sources, dimension mismatch, a stopped store
(status and routers), and an operator killed mid-ingest."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from localcluster import LocalCluster

from modelflock.retrieval.localpg import LocalPostgres
from support import (
    MINILM_MODEL,
    EngineSimProcess,
    OperatorProcess,
    apply,
    condition,
    fresh_namespace,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "retrieval"
FACTS = {
    "canberra.txt": "The capital of Australia is Canberra.",
    "boiling.txt": "Water boils at 100 degrees Celsius at sea level.",
    "python.txt": "Python was created by Guido van Rossum and first released in 1991.",
    "everest.txt": "Mount Everest is the highest mountain above sea level, 8,849 metres.",
}


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def external_expert(name: str, url: str, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": {
            "engine": "external",
            "external": {"baseURL": f"{url}/v1", "model": model, "allowPlainHttp": True},
            **extra,
        },
    }


def knowledge_base(name: str, sources: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    embedding = {"expert": "embed", "dimensions": 384, "batchSize": 8, **spec.pop("embedding", {})}
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name},
        "spec": {
            "sources": sources,
            "chunking": {"size": 40, "overlap": 8},
            "embedding": embedding,
            "store": {"secret": "pg-write", "readOnlySecret": "pg-read"},
            "resyncSeconds": 5,
            **spec,
        },
    }


def kb(cluster: LocalCluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = get_json(cluster, "knowledgebase", name, "-n", NS) or {}
    return found


def rows(pg: LocalPostgres, sql: str) -> list[str]:
    return [line for line in pg.psql(sql, "modelflock").splitlines() if line]


@pytest.fixture(scope="module")
def setup(
    cluster: LocalCluster, operator: OperatorProcess, postgres: LocalPostgres, minilm_server: str
) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as namespace:
        apply(cluster, namespace, secret("pg-write", postgres.writer.secret_data()))
        apply(cluster, namespace, secret("pg-read", postgres.reader.secret_data()))
        apply(
            cluster,
            namespace,
            external_expert(
                "embed",
                minilm_server,
                MINILM_MODEL,
                capabilities=["embed"],
                cost={"inputPerMillion": "0.02", "outputPerMillion": "0"},
            ),
        )
        apply(cluster, namespace, config_map("facts", FACTS))
        apply(
            cluster, namespace, config_map("extra", {"moon.md": "# Moon\nThe Moon orbits Earth."})
        )
        apply(
            cluster,
            namespace,
            knowledge_base(
                "facts",
                [{"configMap": "facts"}, {"configMap": "extra", "format": "markdown"}],
            ),
        )
        yield namespace


def test_ingests_the_sources(setup: str, cluster: LocalCluster, postgres: LocalPostgres) -> None:
    obj = wait_for(
        lambda: (o := kb(cluster, "facts")) and condition(o, "Ready").get("status") == "True" and o,
        "KnowledgeBase facts Ready",
        timeout=90,
    )
    status = obj["status"]
    assert status["documents"] == len(FACTS) + 1
    assert status["chunks"] == len(FACTS) + 1
    assert status["table"] == "kb_retrieval_facts" and status["dimensions"] == 384
    assert len(status["sourceHash"]) == 64 and status["lastIngestTime"]
    assert condition(obj, "Degraded")["status"] == "False"
    assert rows(postgres, "SELECT count(*) FROM kb_retrieval_facts") == [str(len(FACTS) + 1)]
    # The routers' read-only role can read it and nothing more.
    assert "SELECT" in "".join(
        rows(
            postgres,
            "SELECT privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = 'modelflock_reader' AND table_name = 'kb_retrieval_facts'",
        )
    )
    table = cluster.kubectl("get", "knowledgebase", "facts", "-n", NS)
    assert "DOCUMENTS" in table and "True" in table and "embed" in table
    events = cluster.kubectl(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=facts"
    )
    assert "Ingested" in events


def test_only_a_changed_document_is_embedded_again(
    setup: str, cluster: LocalCluster, postgres: LocalPostgres
) -> None:
    wait_for(lambda: condition(kb(cluster, "facts"), "Ready").get("status") == "True", "Ready")
    before = dict(
        r.split("|")
        for r in rows(postgres, "SELECT doc_id, updated_at FROM kb_retrieval_facts_docs")
    )
    old_hash = kb(cluster, "facts")["status"]["sourceHash"]
    apply(
        cluster,
        NS,
        config_map("facts", {**FACTS, "boiling.txt": "Water boils at 71 C on Everest."}),
    )
    status = wait_for(
        lambda: (s := kb(cluster, "facts")["status"])["sourceHash"] != old_hash and s,
        "a new source hash",
        timeout=30,
    )
    assert status["embeddedLastIngest"] == 1
    after = dict(
        r.split("|")
        for r in rows(postgres, "SELECT doc_id, updated_at FROM kb_retrieval_facts_docs")
    )
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["configmap/facts/boiling.txt"]
    content = rows(
        postgres,
        "SELECT content FROM kb_retrieval_facts WHERE doc_id = 'configmap/facts/boiling.txt'",
    )
    assert content == ["Water boils at 71 C on Everest."]


def test_deleted_source_takes_its_chunks(
    setup: str, cluster: LocalCluster, postgres: LocalPostgres
) -> None:
    cluster.kubectl("delete", "configmap", "extra", "-n", NS)
    obj = wait_for(
        lambda: (
            (o := kb(cluster, "facts"))
            and condition(o, "Degraded").get("reason") == "SourceNotFound"
            and o
        ),
        "Degraded SourceNotFound",
        timeout=30,
    )
    assert "ConfigMap extra not found" in condition(obj, "Degraded")["message"]
    assert condition(obj, "Ready")["status"] == "True"  # the other source still serves
    assert rows(
        postgres, "SELECT count(*) FROM kb_retrieval_facts WHERE doc_id LIKE 'configmap/extra/%'"
    ) == ["0"]
    assert obj["status"]["documents"] == len(FACTS)


def test_dimension_mismatch_names_the_field(setup: str, cluster: LocalCluster) -> None:
    apply(
        cluster,
        NS,
        knowledge_base("wrongdim", [{"configMap": "facts"}], embedding={"dimensions": 768}),
    )
    obj = wait_for(
        lambda: (
            (o := kb(cluster, "wrongdim"))
            and condition(o, "Degraded").get("status") == "True"
            and o
        ),
        "wrongdim Degraded",
        timeout=60,
    )
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "DimensionMismatch"
    assert "spec.embedding.dimensions is 768" in degraded["message"]
    assert "384" in degraded["message"]
    assert condition(obj, "Ready")["status"] == "False"
    cluster.kubectl("delete", "knowledgebase", "wrongdim", "-n", NS)


def policy_doc() -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "lookup"},
        "spec": {
            "experts": ["llm"],
            "routes": [
                {
                    "name": "facts",
                    "expert": "llm",
                    "retrieval": {"knowledgeBase": "facts", "minScore": "0.5"},
                }
            ],
            "sidecar": {"inject": False},
        },
    }


def run_router(
    cluster: LocalCluster, workdir: Path, postgres: LocalPostgres
) -> tuple[subprocess.Popen[bytes], str]:
    cm = get_json(cluster, "configmap", "lookup-router-config", "-n", NS)
    config = yaml.safe_load(cm["data"]["router.yaml"])
    token = get_json(cluster, "secret", "lookup-router-token", "-n", NS)["data"]["token"]
    (workdir / "token").write_text(base64.b64decode(token).decode())
    config["discovery"]["tokenFile"] = str(workdir / "token")
    [entry] = config["knowledgeBases"]
    assert entry["secretDir"] == "/etc/modelflock/secrets/pg-read"
    entry["secretDir"] = str(postgres.reader.write_dir(workdir / "pg-read"))
    entry["retryAfterSeconds"] = 0.5
    config["listen"] = {"host": "127.0.0.1", "port": 0}
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    with (workdir / "router.log").open("wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelflock", "router", "--config", str(path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on" in line, (workdir / "router.log").read_text()
    return proc, line.rsplit("listening on ", 1)[1].strip().split()[0]


def test_store_stopped_degrades_and_routers_fall_through(
    setup: str, cluster: LocalCluster, postgres: LocalPostgres, tmp_path: Path
) -> None:
    llm = EngineSimProcess(["--model", "llm", "--instant"], tmp_path / "llm.log")
    llm.start()
    apply(cluster, NS, external_expert("llm", llm.url, "llm"))
    apply(cluster, NS, policy_doc())
    wait_for(
        lambda: (
            condition(get_json(cluster, "routingpolicy", "lookup", "-n", NS), "RetrievalReady").get(
                "status"
            )
            == "True"
        ),
        "policy RetrievalReady",
        timeout=60,
    )
    router, url = run_router(cluster, tmp_path, postgres)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of Australia?"}]
    try:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=question)
        assert raw.headers["x-modelflock-retrieval"] == "hit"
        assert "Canberra" in (raw.parse().choices[0].message.content or "")
        postgres.stop()
        try:
            for _ in range(5):  # no request fails: the LLM route answers
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", messages=question
                )
                assert raw.headers["x-modelflock-retrieval"] == "unavailable"
                assert raw.headers["x-modelflock-expert"] == "llm"
            pol = wait_for(
                lambda: (
                    (p := get_json(cluster, "routingpolicy", "lookup", "-n", NS))
                    and condition(p, "RetrievalReady").get("reason") == "StoreUnreachable"
                    and p
                ),
                "policy says the store is unreachable",
                timeout=30,
            )
            assert "fall through" in condition(pol, "RetrievalReady")["message"]
            obj = wait_for(
                lambda: (
                    (o := kb(cluster, "facts"))
                    and condition(o, "Degraded").get("reason") == "StoreUnreachable"
                    and o
                ),
                "KnowledgeBase Degraded StoreUnreachable",
                timeout=30,
            )
            assert condition(obj, "Ready")["status"] == "False"
        finally:
            postgres.start()
        wait_for(
            lambda: condition(kb(cluster, "facts"), "Ready").get("status") == "True",
            "Ready again",
            timeout=30,
        )
        time.sleep(0.6)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=question)
        assert raw.headers["x-modelflock-retrieval"] == "hit"
        wait_for(
            lambda: (
                condition(
                    get_json(cluster, "routingpolicy", "lookup", "-n", NS), "RetrievalReady"
                ).get("status")
                == "True"
            ),
            "policy RetrievalReady again",
            timeout=30,
        )
    finally:
        router.terminate()
        router.wait(10)
        if router.stdout is not None:
            router.stdout.close()
        llm.stop()


def test_operator_killed_mid_ingest_converges_without_duplicates(
    setup: str, cluster: LocalCluster, operator: OperatorProcess, postgres: LocalPostgres
) -> None:
    many = {
        f"doc-{i:03}.txt": f"Fact number {i}: the code word of room {i} is w{i * 7}."
        for i in range(300)
    }
    apply(cluster, NS, config_map("many", many))
    apply(
        cluster,
        NS,
        knowledge_base("many", [{"configMap": "many"}], embedding={"batchSize": 2}),
    )
    table = "kb_retrieval_many"

    def partly_ingested() -> bool:
        exists = rows(postgres, f"SELECT to_regclass('{table}_docs') IS NOT NULL")
        if exists != ["t"]:
            return False
        count = int(rows(postgres, f"SELECT count(*) FROM {table}_docs")[0])
        return 0 < count < len(many)

    wait_for(partly_ingested, "the ingest under way", timeout=60, interval=0.02)
    assert operator.process is not None
    os.killpg(operator.process.pid, signal.SIGKILL)  # no chance to clean up
    operator.process.wait(10)
    operator.process = None
    done_before = int(rows(postgres, f"SELECT count(*) FROM {table}_docs")[0])
    assert 0 < done_before < len(many)
    operator.start()
    obj = wait_for(
        lambda: (
            (o := kb(cluster, "many"))
            and o.get("status", {}).get("documents") == len(many)
            and condition(o, "Ready").get("status") == "True"
            and o
        ),
        "the ingest converged",
        timeout=120,
    )
    # What the killed pass committed was not embedded again.
    assert obj["status"]["embeddedLastIngest"] <= len(many) - done_before
    assert rows(postgres, f"SELECT count(*), count(DISTINCT (doc_id, chunk)) FROM {table}") == [
        f"{len(many)}|{len(many)}"
    ]
    assert rows(postgres, f"SELECT count(*) FROM {table}_docs") == [str(len(many))]
    cluster.kubectl("delete", "knowledgebase", "many", "-n", NS)
