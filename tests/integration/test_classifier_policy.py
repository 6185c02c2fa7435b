"""The classifier's policy side against the real control plane: examples from a ConfigMap,
an embedding stage at an expert that cannot embed, routers' failure reports becoming the
ClassifierDegraded condition, and `modelflock classify` reading a policy from the cluster
and scoring it with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster

from support import (
    MINILM_MODEL,
    OperatorProcess,
    apply,
    condition,
    flock_post,
    fresh_namespace,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.cluster

NS = "classify"
EXAMPLES = [
    {"prompt": "fix the null pointer bug in my function", "intent": "code"},
    {"prompt": "write a python function that reverses a list", "intent": "code"},
    {"prompt": "why does my javascript loop never stop", "intent": "code"},
    {"prompt": "hi, how is your day going", "intent": "chat"},
    {"prompt": "good morning, nice weather today", "intent": "chat"},
    {"prompt": "tell me something fun, I am bored", "intent": "chat"},
]


def expert(name: str, capabilities: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": {
            "engine": "vllm",
            "capabilities": capabilities,
            "model": {"name": f"org/{name}", "parameters": "1B"},
            "nodePool": "l4",
            "autoscaling": {"enabled": False},
            "replicas": 1,
        },
    }


def examples_map(rows: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "intent-examples",
            "labels": {"modelflock.io/intent-examples": "true"},
        },
        "data": {"examples.jsonl": "\n".join(json.dumps(r) for r in rows) + "\n"},
    }


def policy(name: str, embedder: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {
            "experts": ["embedder", "plain", "small"],
            "classifier": {
                "stages": [
                    {"type": "rules"},
                    {"type": "embedding", "expert": embedder, "minConfidence": "0.5"},
                ],
                "intents": [
                    {"name": "code", "keywords": ["stack trace"], "examples": ["debug my code"]},
                    {"name": "chat"},
                ],
                "defaultIntent": "chat",
                "examplesFrom": [{"configMap": "intent-examples", "key": "examples.jsonl"}],
            },
            "routes": [{"name": "all", "expert": "small"}],
        },
    }


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    with fresh_namespace(cluster, NS) as name:
        apply(cluster, NS, expert("embedder", ["embed"]))
        apply(cluster, NS, expert("plain", ["chat"]))
        apply(cluster, NS, expert("small", ["chat", "classify"]))
        apply(cluster, NS, examples_map(EXAMPLES))
        apply(cluster, NS, policy("good", "embedder"))
        apply(cluster, NS, policy("wrong-embedder", "plain"))
        yield name


def rendered(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    cm = get_json(cluster, "configmap", f"{name}-router-config", "-n", NS)
    if cm is None:
        return None
    config: dict[str, Any] = yaml.safe_load(cm["data"]["router.yaml"])
    return config


def degraded(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return condition(get_json(cluster, "routingpolicy", name, "-n", NS), "ClassifierDegraded")


def test_config_map_examples_reach_the_router_config(cluster: LocalCluster) -> None:
    def examples() -> list[str] | None:
        config = rendered(cluster, "good")
        if config is None:
            return None
        code = next(i for i in config["classifier"]["intents"] if i["name"] == "code")
        return list(code.get("examples", [])) if len(code.get("examples", [])) > 1 else None

    assert wait_for(examples, "ConfigMap examples rendered", 30) == [
        "debug my code",
        *(r["prompt"] for r in EXAMPLES if r["intent"] == "code"),
    ]
    config = rendered(cluster, "good")
    assert config is not None and "examplesFrom" not in config["classifier"]
    assert [s["type"] for s in config["classifier"]["stages"]] == ["rules", "embedding"]
    cond = wait_for(lambda: degraded(cluster, "good") or None, "ClassifierDegraded", 30)
    assert (cond["status"], cond["reason"]) == ("False", "StagesAnswering")

    # A changed ConfigMap is rendered again; a line naming an unknown intent is named.
    apply(cluster, NS, examples_map([*EXAMPLES, {"prompt": "a poem", "intent": "poetry"}]))
    cond = wait_for(
        lambda: (c := degraded(cluster, "good")).get("reason") == "InvalidExamples" and c,
        "InvalidExamples",
        30,
    )
    assert cond["status"] == "True" and "line 7: intent 'poetry' is not defined" in cond["message"]
    apply(cluster, NS, examples_map(EXAMPLES))
    wait_for(lambda: degraded(cluster, "good").get("status") == "False", "examples fixed", 30)


def test_an_embedding_stage_at_an_expert_that_cannot_embed_is_refused(
    cluster: LocalCluster,
) -> None:
    cond = wait_for(
        lambda: (c := degraded(cluster, "wrong-embedder")).get("status") == "True" and c,
        "ClassifierDegraded on wrong-embedder",
        30,
    )
    assert cond["reason"] == "StageExpertCannotEmbed"
    assert "plain" in cond["message"] and "'embed' capability" in cond["message"]
    config = rendered(cluster, "wrong-embedder")
    assert config is not None
    # Left out, so the router still loads its config and serves with the rules stage.
    assert [s["type"] for s in config["classifier"]["stages"]] == ["rules"]


def _report(operator: OperatorProcess, token: str, body: dict[str, Any]) -> int:
    path = f"/flock/v1/namespaces/{NS}/routingpolicies/good/classifier"
    return flock_post(operator, path, token, json.dumps(body).encode())


def test_router_reports_become_the_classifier_degraded_condition(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    secret = wait_for(
        lambda: get_json(cluster, "secret", "good-router-token", "-n", NS), "token", 30
    )
    token = base64.b64decode(secret["data"]["token"]).decode()
    failing = {
        "router": "pod-a",
        "windowSeconds": 10,
        "stages": [
            {
                "stage": "embedding",
                "answered": 40,
                "failures": {"timeout": 12},
                "lastFailure": "timeout: no answer within 250 ms",
            }
        ],
    }
    assert _report(operator, "wrong-token", failing) == 401
    assert _report(operator, token, {"router": "pod-a"}) == 400
    assert _report(operator, token, failing) == 202
    cond = wait_for(
        lambda: (c := degraded(cluster, "good")).get("reason") == "EmbeddingTimeout" and c,
        "EmbeddingTimeout",
        30,
    )
    assert cond["status"] == "True"
    assert "timed out on 12 of 40 requests" in cond["message"]
    assert "no answer within 250 ms" in cond["message"]
    # The same router reports a clean window: the condition clears (no stage failed).
    clean = {**failing, "stages": [{"stage": "embedding", "answered": 30}]}
    assert _report(operator, token, clean) == 202
    cond = wait_for(
        lambda: (c := degraded(cluster, "good")).get("status") == "False" and c, "cleared", 30
    )
    assert cond["reason"] == "StagesAnswering"


def test_classify_reads_the_policy_from_the_cluster(
    cluster: LocalCluster, minilm_server: str, tmp_path: Path
) -> None:
    data = tmp_path / "labelled.jsonl"
    rows = [
        {"prompt": "my python function throws an exception, can you fix it?", "intent": "code"},
        {"prompt": "hello there, having a nice day?", "intent": "chat"},
        {"prompt": "I get a stack trace when I start the server", "intent": "code", "hard": True},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = [sys.executable, "-m", "modelflock", "classify", "--cluster", f"{NS}/good"]
    args += ["--data", str(data), "--embeddings-url", minilm_server]
    args += ["--embeddings-model", MINILM_MODEL, "--stage-timeout-ms", "30000"]
    result = subprocess.run(
        [*args, "--json", "--all-configurations", "--min-accuracy", "0.99"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy"] == "good"
    rules, embedding = report["configurations"]
    assert rules["configuration"] == "rules" and rules["decidedBy"] == {"rules": 1, "default": 2}
    assert embedding["configuration"] == "rules+embedding"
    assert embedding["accuracy"] == 1.0 and embedding["decidedBy"]["embedding"] == 2
    assert embedding["calibration"]["examples"] == 7  # inline + ConfigMap
    assert embedding["suggestedMinConfidence"] in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # The table for people, and the CI gate failing below the bar.
    table = subprocess.run(
        [*args, "--min-accuracy", "1.01"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 1, table.stdout + table.stderr
    assert "rules+embedding: accuracy 100.0% (3/3)" in table.stdout
    assert "labelled \\ decided" in table.stdout
    assert "below --min-accuracy" in table.stderr
