"""The generated CRDs are structural, carry the documented markers, and match the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelflock.api.crdgen import KINDS, crd, drifted_files, rendered_files
from modelflock.api.modelexpert import QUANTITY_PATTERN
from modelflock.api.schema import forbidden_keywords, untyped_nodes

REPO = Path(__file__).resolve().parents[2]


def _schema(kind_index: int) -> dict[str, Any]:
    schema: dict[str, Any] = crd(KINDS[kind_index])["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return schema


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_walk(item))
    return found


@pytest.mark.parametrize("index", range(len(KINDS)))
def test_schema_is_structural(index: int) -> None:
    schema = _schema(index)
    assert forbidden_keywords(schema) == []
    assert untyped_nodes(schema) == []


@pytest.mark.parametrize("index", range(len(KINDS)))
def test_every_property_is_documented(index: int) -> None:
    def undocumented(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, sub in node.get("properties", {}).items():
            here = f"{path}.{name}"
            if name not in {"apiVersion", "kind", "metadata"} and not sub.get("description"):
                missing.append(here)
            missing.extend(undocumented(sub, here))
            if isinstance(sub.get("items"), dict):
                missing.extend(undocumented(sub["items"], here + "[]"))
        return missing

    assert undocumented(_schema(index), "") == []


@pytest.mark.parametrize("index", range(len(KINDS)))
def test_every_list_cel_iterates_is_bounded(index: int) -> None:
    for node in _walk(_schema(index)):
        if node.get("type") == "array":
            assert "maxItems" in node, node.get("description")


def test_forbidden_keyword_detector_finds_what_pydantic_emits() -> None:
    raw = {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "X", "$ref": "#/$defs/Y"}
    assert sorted(forbidden_keywords(raw)) == [".$ref", ".anyOf", ".title"]
    assert forbidden_keywords({"additionalProperties": False}) == [".additionalProperties"]


def test_markers() -> None:
    expert = _schema(0)
    status = expert["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    resources = expert["properties"]["spec"]["properties"]["resources"]["properties"]
    assert resources["cpu"] == {
        "description": resources["cpu"]["description"],
        "x-kubernetes-int-or-string": True,
        "minimum": 0,
        "pattern": QUANTITY_PATTERN,
    }
    engine = expert["properties"]["spec"]["properties"]["engine"]
    assert engine["enum"] == ["vllm", "tgi", "external"] and engine["type"] == "string"
    affinity = expert["properties"]["spec"]["properties"]["placement"]["properties"]["affinity"]
    assert affinity["x-kubernetes-preserve-unknown-fields"] is True
    rules = [r["rule"] for r in expert["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("external" in r for r in rules)
    autoscaling = expert["properties"]["spec"]["properties"]["autoscaling"]
    assert (
        autoscaling["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
    )


def test_scale_subresource_and_columns() -> None:
    version = crd(KINDS[0])["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Engine", "Tier", "Model", "Replicas", "Queue", "Ready", "Age"]
    policy = crd(KINDS[1])["spec"]
    assert [c["name"] for c in policy["versions"][0]["additionalPrinterColumns"]] == [
        "Experts",
        "Ready",
        "Age",
    ]
    assert policy["names"]["categories"] == ["modelflock"]


def test_committed_crds_match_models() -> None:
    assert drifted_files(REPO / "crds") == {}


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, content in rendered_files().items():
        (tmp_path / name).write_text(content)
    victim = next(iter(rendered_files()))
    (tmp_path / victim).write_text(
        (tmp_path / victim).read_text().replace("maxItems: 16", "maxItems: 17", 1)
    )
    assert list(drifted_files(tmp_path)) == [victim]


def test_rendered_yaml_loads_back() -> None:
    for content in rendered_files().values():
        assert yaml.safe_load(content)["kind"] == "CustomResourceDefinition"
