"""Server-sent events pass-through: forward chunks as they come, read usage on the way."""

from __future__ import annotations

import json


class SseScanner:
    """Splits the upstream byte stream into events to find `usage` and count content chunks.

    With `strip_usage` (we asked the upstream for usage the client did not ask for), the
    usage-only event is dropped, so only whole events are forwarded; otherwise every chunk
    is forwarded unchanged the moment it arrives.
    """

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, int] | None = None
        self.content_events = 0
        self.finish_reason: str | None = None
        self._buf = b""

    def _keep(self, event: bytes) -> bool:
        if b'"usage":{' in event or b'"usage": {' in event:
            payload = _payload(event)
            if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                usage = payload["usage"]
                self.usage = {k: int(v) for k, v in usage.items() if isinstance(v, int)}
                if not payload.get("choices"):
                    return not self.strip_usage
        if b'"content":"' in event or b'"text":"' in event or b'"content": "' in event:
            self.content_events += 1
        return True

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk
        kept: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            event = buf[start : end + 2]
            start = end + 2
            if self._keep(event):
                kept.append(event)
        self._buf = buf[start:]
        return b"".join(kept) if self.strip_usage else chunk

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest if self.strip_usage else b""


def _payload(event: bytes) -> object:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:])
            except ValueError:
                return None
    return None
