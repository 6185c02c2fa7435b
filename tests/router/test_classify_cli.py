"""`modelflock classify` on policy files, with the real all-MiniLM-L6-v2 (engine-sim): the
tables, the JSON for CI, the gate, and a policy that does not load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from support import MINILM_MODEL

EXPERT = {
    "apiVersion": "modelflock.io/v1alpha1",
    "kind": "ModelExpert",
    "metadata": {"name": "embedder"},
    "spec": {"engine": "vllm", "capabilities": ["embed"], "model": {"name": "org/e"}},
}
EXAMPLES = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "examples"},
    "data": {
        "examples.jsonl": "\n".join(
            json.dumps({"prompt": p, "intent": i})
            for p, i in [
                ("my python script crashes with an exception", "code"),
                ("how do I write a for loop in javascript", "code"),
                ("fix the bug in this function", "code"),
                ("hi there, how are you doing today", "chat"),
                ("good evening, nice to talk to you", "chat"),
                ("I am bored, tell me something fun", "chat"),
            ]
        )
    },
}


def policy(**classifier: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "experts": ["embedder", "small"],
            "classifier": {
                "stages": [
                    {"type": "rules"},
                    {"type": "embedding", "expert": "embedder", "minConfidence": "0.5"},
                    {"type": "llm", "expert": "small"},
                ],
                "intents": [{"name": "code", "keywords": ["stack trace"]}, {"name": "chat"}],
                "defaultIntent": "chat",
                "examplesFrom": [{"configMap": "examples", "key": "examples.jsonl"}],
                **classifier,
            },
            "routes": [{"name": "all", "expert": "small"}],
        },
    }


def classify(
    tmp_path: Path, url: str, doc: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    files = tmp_path / "policy"
    files.mkdir(exist_ok=True)
    (files / "policy.yaml").write_text(yaml.safe_dump_all([EXPERT, EXAMPLES, doc]))
    data = tmp_path / "labelled.jsonl"
    rows = [
        {"prompt": "why does my java program throw a null pointer exception", "intent": "code"},
        {"prompt": "hello! lovely weather today, isn't it?", "intent": "chat"},
        {"prompt": "I got a stack trace on startup", "intent": "code", "hard": True},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    args = [sys.executable, "-m", "modelflock", "classify", "-f", str(files), "--data", str(data)]
    args += ["--embeddings-url", url, "--embeddings-model", MINILM_MODEL]
    args += ["--stage-timeout-ms", "30000", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_classify_scores_a_policy_file_through_the_router_code(
    minilm_server: str, tmp_path: Path
) -> None:
    result = classify(tmp_path, minilm_server, policy(), "--all-configurations", "--show-errors")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "note: llm stage left out: no URL given for expert small" in out
    assert "== rules: accuracy 66.7% (2/3), hard subset 100.0% (1/1)" in out
    assert "== rules+embedding: accuracy 100.0% (3/3)" in out
    assert "decided by: embedding 2, rules 1" in out
    assert "embedding: 6 examples embedded" in out and "held-out accuracy" in out
    assert "<- suggested" in out
    gate = classify(tmp_path, minilm_server, policy(), "--json", "--min-accuracy", "1.01")
    assert gate.returncode == 1 and "below --min-accuracy" in gate.stderr
    report = json.loads(gate.stdout)
    assert report["configurations"][-1]["decidedBy"] == {"embedding": 2, "rules": 1}


def test_a_policy_the_api_server_would_refuse_is_refused_with_the_field(
    minilm_server: str, tmp_path: Path
) -> None:
    snake = policy()
    snake["spec"]["classifier"]["default_intent"] = "chat"
    result = classify(tmp_path, minilm_server, snake)
    assert result.returncode == 2
    assert "spec.classifier.default_intent: unknown key 'default_intent'" in result.stderr
    assert "did you mean 'defaultIntent'" in result.stderr
    unquoted = policy()
    unquoted["spec"]["classifier"]["stages"][1]["minConfidence"] = 0.5
    result = classify(tmp_path, minilm_server, unquoted)
    assert (
        result.returncode == 2 and 'write decimals as quoted strings, e.g. "0.5"' in result.stderr
    )
