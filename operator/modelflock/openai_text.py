"""Reading OpenAI request shapes, shared by the router and the simulated engine."""

from __future__ import annotations


def message_text(content: object) -> str:
    """Text of a chat message content: a string or a list of `{type: text}` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
