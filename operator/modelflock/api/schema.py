"""Turns pydantic JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

Pydantic emits `$defs`/`$ref`, `anyOf` with `null` for optionals, `title`, `const` and
`additionalProperties: false`; none of those belong in a structural schema. The rewrite
below is pure and total over what our models produce; `forbidden_keywords()` is what the
tests use to prove nothing slipped through.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

FORBIDDEN_KEYWORDS = frozenset({"$ref", "$defs", "definitions", "const", "title", "nullable"})
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's schema, inlined and rewritten to be structural."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    return _rewrite(raw, defs)


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    # Keys beside the $ref (description, default, extras of the field) win over the target's.
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def _without_null(options: list[Schema]) -> list[Schema]:
    return [o for o in options if o.get("type") != "null"]


def _rewrite(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in _without_null(node["anyOf"])]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            node = {**options[0], **rest}
        elif [{"type": o.get("type")} for o in options] == _INT_OR_STRING:
            # The integer's bounds and the string's pattern both hold (the API server checks
            # each keyword only against values of its type, as for core's resource.Quantity).
            kept = {k: v for o in options for k, v in o.items() if k != "type"}
            node = {**kept, **rest, "x-kubernetes-int-or-string": True}
        else:
            raise ValueError(f"cannot express anyOf {options!r} in a structural schema")
    out: Schema = {}
    for key, value in node.items():
        if key in {"title", "$defs"}:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and (value is False or value is True):
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _rewrite(sub, defs) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = _rewrite(value, defs)
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def forbidden_keywords(schema: Any, path: str = "") -> list[str]:
    """Paths of every keyword a structural schema must not have (empty when clean)."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            here = f"{path}.{key}"
            if key in FORBIDDEN_KEYWORDS or (key == "anyOf" and not _is_int_or_string(schema)):
                found.append(here)
            if key == "additionalProperties" and value is False:
                found.append(here)
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    found.extend(forbidden_keywords(sub, f"{here}.{name}"))
            elif isinstance(value, dict | list):
                found.extend(forbidden_keywords(value, here))
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found.extend(forbidden_keywords(item, f"{path}[{index}]"))
    return found


def untyped_nodes(schema: Schema, path: str = "") -> list[str]:
    """Paths of schema nodes without a type (structural schemas type every node)."""
    found: list[str] = []
    exempt = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "type" not in schema and not exempt:
        found.append(path or "<root>")
    for name, sub in schema.get("properties", {}).items():
        found.extend(untyped_nodes(sub, f"{path}.{name}"))
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            found.extend(untyped_nodes(sub, f"{path}.{key}"))
    return found


def _is_int_or_string(node: Schema) -> bool:
    return bool(node.get("x-kubernetes-int-or-string"))
