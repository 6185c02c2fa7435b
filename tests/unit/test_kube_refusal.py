"""Which API-server errors are final refusals of the object we sent (no retry can help)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from modelflock.controller.kube import refusal_message


def error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(
    ("status", "message", "final"),
    [
        (422, "spec.replicas: Invalid value", True),
        (400, "bad request", True),
        (
            500,
            "failed to create typed patch object (ns/x; apps/v1, Kind=Deployment): "
            ".spec.template.spec.affinity.x: field not declared in schema",
            True,
        ),
        (
            500,
            "failed to convert new object (ns/x; apps/v1, Kind=Deployment): quantities must "
            "match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            True,
        ),
        (500, "etcdserver: request timed out", False),
        (503, "failed to create typed patch object", False),
        (409, "conflict", False),
    ],
)
def test_refusals(status: int, message: str, final: bool) -> None:
    got = refusal_message(error(status, message))
    assert (got is not None) == final
    if final:
        assert message in (got or "")
