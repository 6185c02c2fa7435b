"""An API-server outage logs two lines, not thousands.

While the API server (or etcd behind it) is down, every watch stream, retried request, event
post and reconcile fails, each logging its own error several times a second. `ApiOutage`
keeps the first error, counts the rest, and when the API answers again logs how long it was
gone and how many errors it swallowed, then tells the controllers to reconcile at once.

`is_api_unreachable_record` decides which log records are outage noise (pure, table-tested);
`OutageFilter` applies it to the log handlers.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

log = logging.getLogger("modelflock.outage")

# kopf's retried requests ("Request attempt #3/9 failed; will retry: GET … -> ClientConnectorError")
# and event posts, urllib3's own retries in the official client, and our reconcile warnings.
_NOISE = (
    ("kopf", re.compile(r"^Request attempt #\d+(/\d+)? failed")),
    ("kopf", re.compile(r"^Failed to post an event")),
    ("urllib3", re.compile(r"^Retrying \(Retry\(")),
)
_UNREACHABLE = re.compile(
    r"(Connection refused|ClientConnectorError|ServerDisconnectedError|NewConnectionError"
    r"|Max retries exceeded|RemoteDisconnected|Connection reset|ConnectionResetError"
    r"|timed out|TimeoutError|ReadTimeoutError|Service Unavailable|APIServerError"
    r"|etcdserver|Internal Server Error|Gateway Timeout|ClientOSError|Cannot connect to host"
    r"|connection closed|ProtocolError|IncompleteRead|EOF occurred"
    r"|storage is \(re\)initializing|TooManyRequests)",
    re.IGNORECASE,
)
# What an API server says for a few seconds after it started (storage still initialising, or
# a 503 for the paths its aggregator has not installed yet): a tail of the outage just reported
# rather than a new one.
_SETTLING = re.compile(
    r"storage is \(re\)initializing|TooManyRequests"
    r"|before all known HTTP paths have been installed",
    re.IGNORECASE,
)


def is_api_unreachable_record(logger_name: str, message: str) -> bool:
    """Whether a log record only says that the API server could not be reached."""
    for prefix, pattern in _NOISE:
        if (logger_name == prefix or logger_name.startswith(prefix + ".")) and pattern.search(
            message
        ):
            return prefix == "urllib3" or bool(_UNREACHABLE.search(message))
    return False


def is_unreachable_error(message: str) -> bool:
    """Whether an exception's message says the API server is down (not that it refused us)."""
    return bool(_UNREACHABLE.search(message))


class ApiOutage:
    """Thread-safe outage bookkeeping shared by the elector, the controllers and the logs."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, settle_seconds: float = 10.0
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._suppressed = 0
        self._listeners: list[Callable[[], None]] = []
        # Right after an outage the API server still refuses some requests while its storage
        # initialises (429): counted with the outage just reported, not as a new one.
        self._settle = settle_seconds
        self._recovered_at: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback()` runs (in the recovering thread) when the API answers again."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def failed(self, message: str = "") -> bool:
        """Record one failure; True for the first of an outage (the one worth logging). An
        API server that is still settling (`message` says so) shortly after an outage ended
        does not start a new one."""
        with self._lock:
            now = self._clock()
            settling = (
                self._recovered_at is not None
                and now - self._recovered_at < self._settle
                and bool(_SETTLING.search(message))
            )
            if self._since is None and not settling:
                self._since, self._suppressed = now, 0
                return True
            self._suppressed += 1
            return False

    def recovered(self) -> None:
        """The API answered: end the outage, if any, with one line and wake the listeners."""
        with self._lock:
            if self._since is None:
                return
            now = self._clock()
            gone = now - self._since
            suppressed = self._suppressed
            self._since, self._suppressed, self._recovered_at = None, 0, now
            listeners = list(self._listeners)
        log.warning(
            "Kubernetes API reachable again after %.1fs (%d further connection errors were not logged)",
            gone,
            suppressed,
        )
        for callback in listeners:
            callback()


class OutageFilter(logging.Filter):
    """Lets the first connection error of an outage through (saying the rest are counted) and
    drops the others; also drops what kopf says every time a leadership term ends or starts in
    its own thread (signals ignored outside the main thread, each daemon "cancelled")."""

    def __init__(self, outage: ApiOutage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.startswith("kopf") and (
            message.startswith("OS signals are ignored")
            or message.endswith("is cancelled. Will escalate.")
        ):
            return False  # the runtime logs "controllers stopped" once instead
        if not is_api_unreachable_record(record.name, message):
            return True
        if not self.outage.failed(message):
            return False
        record.msg = "Kubernetes API unreachable (%s); further connection errors are counted until it answers"
        record.args = (message[:300],)
        return True
