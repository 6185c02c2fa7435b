"""Server-sent events pass-through: forward chunks as they come, read usage on the way."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from modelflock.router.usage import valid_usage

# An event ends at an empty line; a line ends with CRLF, LF or CR (the SSE specification). A
# lone CR is one only when no LF follows it.
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
MAX_EVENT_BYTES = 1024 * 1024
_FREE_BYTES = 64 * 1024  # an event buffer up to this size takes nothing from the memory budget


class EventTooLarge(ValueError):
    """An upstream event grew past MAX_EVENT_BYTES without ending."""


class SseScanner:
    """Splits the upstream byte stream into events to find `usage` and count content chunks.

    With `strip_usage` (we asked the upstream for usage the client did not ask for), the
    usage-only event is dropped, so only whole events are forwarded; otherwise every chunk
    is forwarded unchanged the moment it arrives. Each byte is searched once (an unfinished
    event is not scanned again from its start), and an event may not exceed `max_event`.
    """

    def __init__(
        self,
        strip_usage: bool,
        max_event: int = MAX_EVENT_BYTES,
        hold: Callable[[int], bool] | None = None,
    ) -> None:
        self.strip_usage = strip_usage
        self._hold = hold  # takes from the memory budget what an unfinished event grows to
        self._held = 0
        self.usage: dict[str, int] | None = None
        self.content_events = 0
        self.finish_reason: str | None = None
        self._max_event = max_event
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for an event end

    def _keep(self, event: bytes) -> bool:
        if b'"usage":{' in event or b'"usage": {' in event:
            payload = _payload(event)
            if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                self.usage = valid_usage(payload["usage"])
                if not payload.get("choices"):
                    return not self.strip_usage
        if b'"content":"' in event or b'"text":"' in event or b'"content": "' in event:
            self.content_events += 1
        return True

    def feed(self, chunk: bytes) -> bytes:
        """What to forward of `chunk`; raises EventTooLarge for an event over the cap."""
        buf = self._buf
        buf += chunk
        kept: list[bytes] = []
        start = 0
        # An end may straddle the previous chunk: search from up to 3 bytes before it.
        search = max(0, self._scanned - 3)
        while (found := _EVENT_END.search(buf, search)) is not None:
            end = found.end()
            event = bytes(buf[start:end])
            start = search = end
            if self._keep(event):
                kept.append(event)
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._max_event:
            raise EventTooLarge(f"an upstream event exceeds {self._max_event} bytes")
        grown = len(buf) - _FREE_BYTES - self._held
        if grown > 0 and self._hold is not None:
            if not self._hold(grown):
                raise EventTooLarge("the router's memory budget cannot hold an upstream event")
            self._held += grown
        return b"".join(kept) if self.strip_usage else chunk

    def flush(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest if self.strip_usage else b""


def _payload(event: bytes) -> object:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:])
            except (ValueError, RecursionError):
                return None
    return None
