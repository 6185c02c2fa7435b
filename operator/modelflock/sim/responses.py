"""OpenAI response bodies of the simulated engine (pure builders)."""

from __future__ import annotations

import base64
import struct
from typing import Any

from modelflock.sim.generate import Job, Output


def error_body(
    message: str, err_type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _top(token: str, logprob: float, count: int) -> list[dict[str, Any]]:
    alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    for i in range(1, count):
        alt = f" alt{i}"
        alternatives.append(
            {"token": alt, "logprob": logprob - 2.0 * i, "bytes": list(alt.encode())}
        )
    return alternatives[:count]


def chat_logprobs(tokens: list[str], logprob: float, top: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t,
                "logprob": logprob,
                "bytes": list(t.encode()),
                "top_logprobs": _top(t, logprob, top),
            }
            for t in tokens
        ]
    }


def completion_logprobs(
    tokens: list[str], logprob: float, top: int, offset: int = 0
) -> dict[str, Any]:
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [logprob] * len(tokens),
        "top_logprobs": [{e["token"]: e["logprob"] for e in _top(t, logprob, top)} for t in tokens]
        if top
        else None,
        "text_offset": offsets,
    }


def full_response(job: Job, out: Output, rid: str, created: int) -> dict[str, Any]:
    """A non-streaming chat.completion or text_completion."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason, "logprobs": None}
    if job.chat:
        choice["message"] = {"role": "assistant", "content": out.text}
        if job.logprobs:
            choice["logprobs"] = chat_logprobs(out.tokens, out.logprob, job.top_logprobs)
    else:
        choice["text"] = out.text
        if job.logprobs:
            choice["logprobs"] = completion_logprobs(out.tokens, out.logprob, job.top_logprobs)
    return {
        "id": rid,
        "object": "chat.completion" if job.chat else "text_completion",
        "created": created,
        "model": job.model,
        "choices": [choice],
        "usage": usage(job.prompt_tokens, len(out.tokens)),
    }


def stream_chunk(
    job: Job,
    rid: str,
    created: int,
    piece: str | None,
    finish: str | None,
    logprob: float,
    offset: int = 0,
) -> dict[str, Any]:
    """One SSE chunk carrying `piece` (None: the opening role-only chunk of a chat stream)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if job.chat:
        choice["delta"] = (
            {"role": "assistant", "content": ""} if piece is None else {"content": piece}
        )
        if job.logprobs and piece:
            choice["logprobs"] = chat_logprobs([piece], logprob, job.top_logprobs)
    else:
        choice["text"] = piece or ""
        if job.logprobs and piece:
            choice["logprobs"] = completion_logprobs([piece], logprob, job.top_logprobs, offset)
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if job.chat else "text_completion",
        "created": created,
        "model": job.model,
        "choices": [choice],
    }
    if job.include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(job: Job, rid: str, created: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk" if job.chat else "text_completion",
        "created": created,
        "model": job.model,
        "choices": [],
        "usage": usage(job.prompt_tokens, completion_tokens),
    }


def embedding_item(index: int, vector: list[float], base64_format: bool) -> dict[str, Any]:
    value: Any = vector
    if base64_format:
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "embedding", "index": index, "embedding": value}
