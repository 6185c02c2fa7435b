"""API-outage logging (modelflock.controller.outage): what counts as outage noise, and that an
outage logs its first error and one recovery line, however many errors come in between."""

from __future__ import annotations

import logging

import pytest

from modelflock.controller.outage import (
    ApiOutage,
    OutageFilter,
    is_api_unreachable_record,
    is_unreachable_error,
)

REFUSED = (
    "Request attempt #2/311 failed; will retry: GET https://127.0.0.1:6443/apis/apps/v1/deployments"
    "?watch=true -> ClientConnectorError(ConnectionKey(host='127.0.0.1'), "
    "ConnectionRefusedError(111, 'Connect call failed'))"
)


@pytest.mark.parametrize(
    ("logger", "message", "noise"),
    [
        ("kopf._cogs.clients.api", REFUSED, True),
        (
            "kopf.objects",
            "Request attempt #1 failed; escalating: PATCH x -> ServerDisconnectedError()",
            True,
        ),
        # A refusal by the API server is not an outage: it must stay visible.
        (
            "kopf._cogs.clients.api",
            "Request attempt #1/9 failed; will retry: GET x -> APIForbiddenError('forbidden')",
            False,
        ),
        (
            "kopf._cogs.clients.events",
            "Failed to post an event. Ignoring and continuing. Status: 503. Message: Service Unavailable.",
            True,
        ),
        (
            "kopf._cogs.clients.events",
            "Failed to post an event. Ignoring and continuing. Code: 422. Message: invalid.",
            False,
        ),
        (
            "urllib3.connectionpool",
            "Retrying (Retry(total=2, connect=None)) after connection broken by 'NewConnectionError'",
            True,
        ),
        ("modelflock.operator", "Request attempt #1 failed; Connection refused", False),  # not kopf
        ("kopf.activities.startup", "Handler 'configure' succeeded.", False),
    ],
)
def test_noise_classifier(logger: str, message: str, noise: bool) -> None:
    assert is_api_unreachable_record(logger, message) is noise


@pytest.mark.parametrize(
    ("message", "unreachable"),
    [
        (
            "HTTPSConnectionPool(host='127.0.0.1', port=6443): Max retries exceeded with url: /apis "
            "(Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))",
            True,
        ),
        ("etcdserver: request timed out", True),
        ("APITooManyRequestsError('storage is (re)initializing')", True),
        ("Internal error occurred: resource quota evaluation timed out", True),
        ('deployments.apps "x" is forbidden: User "system:serviceaccount:a:b" cannot patch', False),
        ('ModelExpert.modelflock.io "x" is invalid: spec.replicas: Invalid value', False),
    ],
)
def test_unreachable_errors(message: str, unreachable: bool) -> None:
    assert is_unreachable_error(message) is unreachable


def test_an_outage_logs_its_first_error_and_one_recovery_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = ApiOutage(clock=lambda: now[0])
    woken: list[str] = []
    remove = outage.add_listener(lambda: woken.append("resume"))
    handler = caplog.handler
    handler.addFilter(OutageFilter(outage))
    logger = logging.getLogger("kopf._cogs.clients.api")
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(2000):
                logger.error(REFUSED)
            logging.getLogger("kopf._cogs.clients.api").error(
                "Request attempt #1/9 failed; will retry: GET x -> APIForbiddenError('no')"
            )
            now[0] = 170.0
            outage.recovered()
            outage.recovered()  # no outage any more: nothing more to say
    finally:
        handler.filters.clear()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("Kubernetes API unreachable (Request attempt #2/311 failed")
    assert "APIForbiddenError" in lines[1]
    assert lines[2] == (
        "Kubernetes API reachable again after 70.0s (1999 further connection errors were not logged)"
    )
    assert woken == ["resume"]
    remove()
    outage.failed()
    outage.recovered()
    assert woken == ["resume"]


@pytest.mark.parametrize(
    ("logger", "message"),
    [
        ("kopf._core.reactor.running", "OS signals are ignored: running not in the main thread."),
        (
            "kopf.objects",
            "Daemon 'build_registry.<locals>.expert_worker' is cancelled. Will escalate.",
        ),
    ],
)
def test_what_kopf_says_at_each_term_is_dropped(logger: str, message: str) -> None:
    record = logging.LogRecord(logger, logging.WARNING, "", 0, message, (), None)
    assert OutageFilter(ApiOutage()).filter(record) is False


SETTLING = [
    "APITooManyRequestsError('storage is (re)initializing')",
    # kopf's watch, seen in a CI run: the API server answered /readyz, then this 503.
    "Request attempt #6/311 failed; will retry: GET https://127.0.0.1:22687/apis/modelflock.io"
    "/v1alpha1/routingpolicies?watch=true -> APIServerError('the request has been made before"
    " all known HTTP paths have been installed, please try again')",
]


@pytest.mark.parametrize("settling", SETTLING)
def test_refusals_while_the_api_server_settles_belong_to_the_outage_just_reported(
    settling: str,
) -> None:
    now = [0.0]
    outage = ApiOutage(clock=lambda: now[0], settle_seconds=10)
    assert outage.failed() is True  # the outage starts: log it
    now[0] = 30.0
    outage.recovered()
    now[0] = 31.0
    # Right after: the tail of that outage, not a new one.
    assert outage.failed(settling) is False
    assert not outage.ongoing
    # A refused connection is a new outage, however soon.
    assert outage.failed("Connection refused") is True
    now[0] = 50.0
    outage.recovered()
    now[0] = 65.0
    assert outage.failed(settling) is True
