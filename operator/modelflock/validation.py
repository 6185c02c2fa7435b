"""Readable validation errors for files people write by hand (router config, policy YAML).

pydantic says "Extra inputs are not permitted" for `default_intent`; a user needs the path of
the key and the spelling that would have worked.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic.alias_generators import to_camel


def _path(location: Sequence[int | str]) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def describe(error: ValidationError) -> str:
    """One line per problem: `path: reason`, with a hint for snake_case keys."""
    lines = []
    for item in error.errors(include_url=False):
        location = [p for p in item["loc"] if not (isinstance(p, str) and "[" in p)]
        message = str(item["msg"])
        if item["type"] == "extra_forbidden" and location and isinstance(location[-1], str):
            key = location[-1]
            camel = to_camel(key)
            hint = f"; keys are camelCase: did you mean {camel!r}?" if camel != key else ""
            message = f"unknown key {key!r}{hint}"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        lines.append(f"{_path(location)}: {message}")
    return "\n".join(lines)
