"""The router config format: valid files load, broken references are refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from modelflock.router.config import Prices, RouterConfig, parse_config

YAML = """
listen: {host: 127.0.0.1, port: 8787}
models: [auto]
experts:
  - {name: small, urls: ["http://small:8000"], model: small,
     prices: {inputPerMillion: "0.10", outputPerMillion: "0.20"}, tier: small}
  - {name: frontier, engine: external, urls: ["https://api.example/v1"], model: big-model,
     apiKeyFile: /secrets/key, prices: {inputPerMillion: "5", outputPerMillion: "15"}}
classifier:
  stages: [{type: rules}, {type: llm, expert: small, timeoutMilliseconds: 300}]
  intents: [{name: code, keywords: [python]}, {name: chat}]
  defaultIntent: chat
routes:
  - {name: code, match: {intents: [code]}, cascade: {experts: [small, frontier]}}
  - {name: rest, expert: small, fallbacks: [frontier]}
baseline: frontier
defaults: {maxAttempts: 2, maxBodyBytes: 2048}
"""


def base() -> dict[str, Any]:
    return {
        "experts": [{"name": "a", "urls": ["http://a"], "model": "a"}],
        "routes": [{"name": "r", "expert": "a"}],
    }


def test_yaml_config_loads_with_camel_case_keys() -> None:
    config = parse_config(YAML)
    assert config.defaults.max_attempts == 2
    assert config.classifier.stages[1].timeout_milliseconds == 300
    assert config.expert("frontier").engine == "external"
    assert config.routes[0].primary == ["small", "frontier"]


def test_prices_are_exact_decimals() -> None:
    prices = Prices(input_per_million="0.10", output_per_million="0.20")
    assert prices.cost(1_000_000, 500_000) == Decimal("0.2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["routes"][0].update(expert="ghost"), "unknown expert"),
        (lambda c: c["routes"][0].update(fallbacks=["ghost"]), "unknown expert"),
        (lambda c: c["routes"][0].update(cascade={"experts": ["a", "a"]}), "exactly one"),
        (lambda c: c["routes"][0].update(match={"intents": ["nope"]}), "unknown intent"),
        (lambda c: c.update(baseline="ghost"), "unknown expert"),
        (
            lambda c: c.update(classifier={"intents": [{"name": "x", "patterns": ["("]}]}),
            "invalid regular expression",
        ),
        (lambda c: c["experts"][0].update(prices={"inputPerMillion": "1e-3"}), "decimal"),
        (lambda c: c.update(surprise=1), "Extra inputs"),
        (
            lambda c: c.update(classifier={"intents": [{"name": "x"}], "defaultIntent": "y"}),
            "defaultIntent 'y' must name one of",
        ),
        (
            lambda c: c.update(classifier={"stages": [{"type": "embedding", "expert": "a"}]}),
            "lacks the 'embed' capability",
        ),
        (lambda c: c.update(classifier={"stages": [{"type": "llm"}]}), "name an expert"),
        (lambda c: c["experts"].append(c["experts"][0]), "unique"),
    ],
)
def test_bad_configs_are_refused(change: Any, message: str) -> None:
    config = base()
    change(config)
    with pytest.raises(ValueError, match=message):
        RouterConfig.model_validate(config)


def test_a_non_mapping_file_is_refused() -> None:
    with pytest.raises(ValueError, match="mapping"):
        parse_config("- just a list")


def test_snake_case_keys_are_refused_with_the_camel_case_spelling() -> None:
    with pytest.raises(
        ValueError,
        match=r"classifier.default_intent: unknown key 'default_intent'.*'defaultIntent'",
    ):
        parse_config(YAML.replace("defaultIntent: chat", "default_intent: chat"))
    with pytest.raises(ValueError, match=r"experts\[0\].api_key_file: unknown key 'api_key_file'"):
        parse_config(YAML.replace("model: small,", "model: small, api_key_file: /x,"))


@pytest.mark.parametrize(
    ("written", "loaded"), [("0.5", "0.5"), ('"0.5"', "0.5"), ("1", "1"), ("0.00001", "0.00001")]
)
def test_decimal_fields_accept_numbers_as_exact_decimals(written: str, loaded: str) -> None:
    text = YAML.replace(
        "timeoutMilliseconds: 300}", f"timeoutMilliseconds: 300, minConfidence: {written}}}"
    )
    text = text.replace('inputPerMillion: "0.10"', f"inputPerMillion: {written}")
    config = parse_config(text)
    assert config.classifier.stages[1].min_confidence == loaded
    assert config.experts[0].prices.input_per_million == loaded


def test_negative_or_boolean_decimals_are_refused() -> None:
    for bad in ("-0.5", "true", "1e400"):
        with pytest.raises(ValueError, match="minConfidence"):
            parse_config(
                YAML.replace(
                    "timeoutMilliseconds: 300}", f"timeoutMilliseconds: 300, minConfidence: {bad}}}"
                )
            )
