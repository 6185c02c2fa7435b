"""The pydantic models read the example manifests and write them back unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelflock.api import KnowledgeBase, ModelExpert, RoutingPolicy

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
KIND_MODELS: dict[str, type[ModelExpert] | type[RoutingPolicy] | type[KnowledgeBase]] = {
    "ModelExpert": ModelExpert,
    "RoutingPolicy": RoutingPolicy,
    "KnowledgeBase": KnowledgeBase,
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in KIND_MODELS:
                docs.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return docs


@pytest.mark.parametrize(("name", "doc"), _documents(), ids=[n for n, _ in _documents()])
def test_examples_round_trip(name: str, doc: dict[str, Any]) -> None:
    model = KIND_MODELS[doc["kind"]].model_validate(doc)
    dumped = model.to_api()

    # Everything the user wrote comes back identical (defaults may be added, nothing lost).
    def contains(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return all(k in have and contains(have[k], v) for k, v in want.items())
        if isinstance(want, list):
            return len(have) == len(want) and all(map(contains, have, want))
        return bool(have == want)

    assert contains(dumped, doc), name
    assert KIND_MODELS[doc["kind"]].model_validate(dumped) == model


def test_examples_cover_the_portfolio() -> None:
    engines = {doc["spec"].get("engine") for _, doc in _documents() if doc["kind"] == "ModelExpert"}
    assert engines == {"vllm", "tgi", "external"}


def test_unknown_field_is_refused_with_its_path() -> None:
    doc = {"metadata": {"name": "x"}, "spec": {"engine": "vllm", "model": {"nmae": "a/b"}}}
    with pytest.raises(ValidationError) as error:
        ModelExpert.model_validate(doc)
    assert "spec.model.nmae" in str(error.value).replace("\n", ".").replace(" ", "")


def test_snake_case_in_python_camel_case_in_yaml() -> None:
    expert = ModelExpert.model_validate(
        {
            "metadata": {"name": "x"},
            "spec": {
                "engine": "external",
                "external": {
                    "baseURL": "https://h.example/v1",
                    "model": "m",
                    "apiKeySecretRef": {"name": "s", "key": "k"},
                },
            },
        }
    )
    assert expert.spec.external is not None
    assert expert.spec.external.base_url == "https://h.example/v1"
    assert expert.spec.served_model_name("x") == "m"
    assert expert.to_api()["spec"]["external"]["apiKeySecretRef"] == {"name": "s", "key": "k"}


def _policy(classifier: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "experts": ["a"],
            "classifier": classifier,
            "routes": [{"name": "r", "expert": "a"}],
        },
    }


def test_a_number_for_a_decimal_field_says_how_to_write_it() -> None:
    stages = [{"type": "rules"}, {"type": "embedding", "expert": "a", "minConfidence": 0.5}]
    with pytest.raises(ValidationError) as error:
        RoutingPolicy.model_validate(_policy({"stages": stages}))
    assert 'write decimals as quoted strings, e.g. "0.5"' in str(error.value)
    stages[1]["minConfidence"] = "0.5"
    assert RoutingPolicy.model_validate(_policy({"stages": stages}))


def test_default_intent_must_be_defined_when_intents_are() -> None:
    with pytest.raises(ValidationError, match="defaultIntent 'chat' must name one of"):
        RoutingPolicy.model_validate(
            _policy({"intents": [{"name": "code"}], "defaultIntent": "chat"})
        )
    RoutingPolicy.model_validate(_policy({"intents": [{"name": "chat"}], "defaultIntent": "chat"}))
    RoutingPolicy.model_validate(_policy({}))  # no intents: the default stands alone
    RoutingPolicy.model_validate(_policy({"intents": [{"name": "code"}]}))  # implicit "default"
