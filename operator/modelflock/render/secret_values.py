"""Whether a Secret value is an obvious placeholder (the examples ship `replace-me`), so an
external expert does not report Ready with a key that cannot work. Pure; callers must never
log or echo the value itself."""

from __future__ import annotations

import re

# Compared case-insensitively after stripping whitespace.
PLACEHOLDERS = frozenset(
    {
        "replace-me",
        "replace_me",
        "replaceme",
        "change-me",
        "change_me",
        "changeme",
        "changeit",
        "placeholder",
        "todo",
        "tbd",
        "fixme",
        "dummy",
        "example",
        "secret",
        "api-key",
        "apikey",
        "your-api-key",
        "your_api_key",
        "your-key-here",
        "your-token",
        "token",
        "none",
        "null",
    }
)
# <your key>, ${API_KEY}, {{ key }}, xxxx, ****, sk-..., sk-xxxx
_PATTERNS = (
    re.compile(r"<[^<>]*>"),
    re.compile(r"\$\{[^}]*\}"),
    re.compile(r"\{\{.*\}\}"),
    re.compile(r"(?:[a-z]{2,4}-)?(?:x{3,}|\*{3,}|\.{3,})", re.IGNORECASE),
)


def placeholder_problem(value: str) -> str | None:
    """Why `value` cannot be a real credential ("is empty", "is a placeholder"), or None."""
    stripped = value.strip()
    if not stripped:
        return "is empty"
    if stripped.lower() in PLACEHOLDERS or any(p.fullmatch(stripped) for p in _PATTERNS):
        return "is a placeholder"
    return None
