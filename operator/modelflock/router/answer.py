"""Retrieval decisions and answers (pure): hit, miss or augment; an OpenAI-shaped completion
built from passages, whole or as server-sent events; context text for an expert."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from modelflock.retrieval.store import Passage

Decision = Literal["answer", "augment", "miss"]


def decide(mode: str, min_score: float, passages: Sequence[Passage]) -> Decision:
    """answer/augment when the best passage reaches min_score, else miss (fall through)."""
    if not passages or max(p.score for p in passages) < min_score:
        return "miss"
    return "answer" if mode == "answer" else "augment"


def usable(passages: Sequence[Passage], min_score: float) -> list[Passage]:
    """The passages at or above min_score, best first."""
    return sorted((p for p in passages if p.score >= min_score), key=lambda p: -p.score)


def estimate_tokens(text: str) -> int:
    """About four characters per token (English text; what the counterfactual cost uses)."""
    return max(1, (len(text) + 3) // 4) if text else 0


def answer_text(passages: Sequence[Passage]) -> str:
    """The passages, numbered, then their sources."""
    body = "\n\n".join(f"{p.content.strip()} [{i}]" for i, p in enumerate(passages, 1))
    sources = "\n".join(f"[{i}] {p.source}" for i, p in enumerate(passages, 1))
    return f"{body}\n\nSources:\n{sources}"


def context_text(passages: Sequence[Passage], header: str) -> str:
    lines = [header]
    lines += [f"[{i}] ({p.source}) {p.content.strip()}" for i, p in enumerate(passages, 1)]
    return "\n".join(lines)


def sources_field(passages: Sequence[Passage]) -> list[dict[str, Any]]:
    return [
        {
            "id": p.doc_id,
            "chunk": p.chunk,
            "source": p.source,
            "title": p.title,
            "score": round(p.score, 4),
        }
        for p in passages
    ]


def completion_body(
    chat: bool,
    model: str,
    text: str,
    passages: Sequence[Passage],
    usage: tuple[int, int],
    rid: str,
    created: int,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
        "modelflock_sources": sources_field(passages),
    }


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stream_events(
    chat: bool,
    model: str,
    text: str,
    passages: Sequence[Passage],
    usage: tuple[int, int],
    rid: str,
    created: int,
    include_usage: bool,
) -> list[bytes]:
    """The answer as SSE events, one per paragraph, as an engine would stream it."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": rid, "object": kind, "created": created, "model": model}
    pieces = text.split("\n\n")
    pieces = [p + ("\n\n" if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]

    def chunk(content: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if content is not None:
                delta["content"] = content
            choice["delta"] = delta
        else:
            choice["text"] = content or ""
        return {**base, "choices": [choice]}

    events = []
    if chat:
        events.append(_event(chunk("", None, role=True)))
    events += [_event(chunk(piece, None)) for piece in pieces]
    final = chunk(None if chat else "", "stop")
    final["modelflock_sources"] = sources_field(passages)
    events.append(_event(final))
    if include_usage:
        events.append(
            _event(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage[0],
                        "completion_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1],
                    },
                }
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


def handoff_text(mode: str, draft: str, passages: Sequence[Passage], max_tokens: int) -> str:
    """What an escalation hands the bigger expert, at most `max_tokens` (estimated): the
    smaller expert's draft (draft, context) and the retrieved passages (context). Passages
    come first and are cut first: the draft is the newer, more specific work."""
    if mode == "none" or (not draft.strip() and not passages):
        return ""
    budget = max_tokens * 4  # characters
    head = (
        "A smaller model attempted this request; its draft was not good enough to return"
        " as is. Use what helps below; answer the user directly."
    )
    parts = [head]
    draft_part = f"Draft answer:\n{draft.strip()}" if draft.strip() else ""
    room = budget - len(head) - 2
    if draft_part:
        draft_part = draft_part[: max(0, room)]
        room -= len(draft_part) + 2
    passage_lines: list[str] = []
    if mode == "context" and passages:
        lines = ["Retrieved passages:"]
        lines += [f"[{i}] ({p.source}) {p.content.strip()}" for i, p in enumerate(passages, 1)]
        for line in lines:
            if room - len(line) - 1 < 0:
                break
            passage_lines.append(line)
            room -= len(line) + 1
        if len(passage_lines) == 1:  # only the title fitted
            passage_lines = []
    if passage_lines:
        parts.append("\n".join(passage_lines))
    if draft_part:
        parts.append(draft_part)
    return "\n\n".join(parts) if len(parts) > 1 else ""
