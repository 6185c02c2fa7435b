"""Token usage reported by an engine, checked before it is counted or priced (pure).

An engine is not trusted with the router's accounting: a negative, boolean, non-integer or
absurdly large count is ignored (counted as 0), so the token and cost counters only grow.
"""

from __future__ import annotations

import json

# No single answer has more tokens; a larger count is a broken or hostile engine.
MAX_TOKENS = 100_000_000
_USAGE_KEY = b'"usage"'
_TAIL_BYTES = 4096


def token_count(value: object) -> int | None:
    """`value` as a token count, or None when it is not a plausible one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_tokens(usage: object) -> tuple[int, int]:
    """(prompt, completion) tokens of a `usage` object; 0 for anything implausible."""
    if not isinstance(usage, dict):
        return 0, 0
    return (
        token_count(usage.get("prompt_tokens")) or 0,
        token_count(usage.get("completion_tokens")) or 0,
    )


def valid_usage(usage: dict[str, object]) -> dict[str, int]:
    """The plausible integer counts of a `usage` object."""
    found = {}
    for key, value in usage.items():
        count = token_count(value)
        if count is not None:
            found[key] = count
    return found


class UncheckedAnswer:
    """An answer too large to parse within the memory budget: passed through as received,
    only its usage known (read from the object's `usage` member), no cascade check run."""

    __slots__ = ("usage",)

    def __init__(self, usage: object) -> None:
        self.usage = usage


def usage_from_tail(body: bytes) -> object:
    """The last `"usage": {...}` object of a JSON answer, read without parsing the rest (the
    engines write it last); None when there is none. In valid JSON the bytes `"usage"` can only
    be a key: a quote inside a string is escaped."""
    at = body.rfind(_USAGE_KEY)
    if at < 0:
        return None
    colon = body.find(b":", at + len(_USAGE_KEY), at + len(_USAGE_KEY) + 64)
    if colon < 0:
        return None
    text = body[colon + 1 : colon + 1 + _TAIL_BYTES].decode("utf-8", "replace").lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return value
