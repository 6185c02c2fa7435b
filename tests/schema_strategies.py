"""Hypothesis strategies for objects from a CRD's OpenAPI schema (the schema the API server
validates with), so fuzzing explores what the API server would accept: types, enums,
patterns, lengths, bounds and optional fields. CEL rules are not modelled: the API server
refuses what breaks them, and the fuzz test counts those refusals.

`overrides` replaces the strategy at a dotted path ("spec.nodePool", "spec.experts[]") to aim
names at objects that exist, and to keep replica counts small enough for the test cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

MAX_STRING = 24  # generated strings stay short: the schema's own maxLength may be far larger
MAX_ITEMS = 3


def _string(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    low = int(schema.get("minLength", 0))
    high = max(low, min(int(schema.get("maxLength", MAX_STRING)), MAX_STRING))
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= int(schema.get("maxLength", 1 << 20))
        )
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    return st.text(alphabet=alphabet, min_size=low, max_size=high)


def _integer(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if schema.get("exclusiveMinimum") is True and low is not None:
        low += 1
    return st.integers(
        min_value=None if low is None else int(low),
        max_value=None if high is None else int(high),
    ).filter(lambda v: -(2**53) < v < 2**53)


def _number(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    return st.floats(
        min_value=schema.get("minimum"),
        max_value=schema.get("maximum"),
        allow_nan=False,
        allow_infinity=False,
    )


def from_schema(
    schema: Mapping[str, Any],
    overrides: Mapping[str, st.SearchStrategy[Any]] | None = None,
    path: str = "",
) -> st.SearchStrategy[Any]:
    overrides = overrides or {}
    if path in overrides:
        return overrides[path]
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(
            st.integers(min_value=0, max_value=64),
            st.sampled_from(["1", "500m", "4", "2Gi", "16Gi", "1e3", "0.5", "lots"]),
        )
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return st.dictionaries(
            st.sampled_from(["nodeAffinity", "podAffinity", "x"]), st.just({}), max_size=1
        )
    kind = schema.get("type")
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties") or {}
        if not properties:
            extra = schema.get("additionalProperties")
            values = (
                from_schema(extra, overrides, f"{path}{{}}")
                if isinstance(extra, Mapping)
                else st.text(max_size=8)
            )
            return st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9./-]{0,20}", fullmatch=True), values, max_size=2
            )
        required = set(schema.get("required") or ())
        fields = {
            name: from_schema(sub, overrides, f"{path}.{name}".lstrip("."))
            for name, sub in properties.items()
        }
        return st.fixed_dictionaries(
            {name: fields[name] for name in properties if name in required},
            optional={name: fields[name] for name in properties if name not in required},
        )
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = max(low, min(int(schema.get("maxItems", MAX_ITEMS)), MAX_ITEMS))
        items = from_schema(schema.get("items") or {"type": "string"}, overrides, f"{path}[]")
        return st.lists(items, min_size=low, max_size=high)
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _integer(schema)
    if kind == "number":
        return _number(schema)
    if kind == "boolean":
        return st.booleans()
    return st.none()
