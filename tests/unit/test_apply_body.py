"""The body of a server-side apply (parsed as YAML by the API server) carries every character:
found by fuzzing, an emoji in a policy's intent keywords made the router ConfigMap's apply fail
("yaml: found invalid Unicode character escape code")."""

from __future__ import annotations

import json

import pytest
import yaml

from modelflock.controller.kube import apply_body


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "emoji \U0001f600 in a keyword",
        "math \U0001d518\U0001d52b\U0001d526",
        "literal backslash-u text: \\ud83d\\ude00",
        "backslashes then emoji: \\\U0001f600 \\\\\U0001f600",
        "controls \x00\x1f\x7f and bom \ufeff",
        "bmp: é ß 中文 \u2028",
    ],
)
def test_apply_body_round_trips_as_yaml_and_json(text: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"router.yaml": text}}
    body = apply_body(manifest).decode()
    assert yaml.safe_load(body) == manifest
    assert "\\ud83d" not in body.replace("\\\\ud83d", "")  # no surrogate escapes left


def test_plain_manifests_are_plain_json() -> None:
    manifest = {"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"replicas": 2}}
    assert json.loads(apply_body(manifest)) == manifest
