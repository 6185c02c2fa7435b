"""Which watch events on an expert's children make the operator apply them again."""

from __future__ import annotations

from typing import Any

import pytest

from modelflock.controller.context import child_marker, child_needs_apply


def _body(kind: str, generation: int | None = None, version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if generation is not None:
        metadata["generation"] = generation
    if version is not None:
        metadata["resourceVersion"] = version
    return {"kind": kind, "metadata": metadata}


def test_markers() -> None:
    assert child_marker("Deployment", _body("Deployment", 3, "901")) == "3"
    assert child_marker("Service", _body("Service", None, "901")) == "901"
    assert child_marker("Deployment", _body("Deployment", None, "901")) is None


@pytest.mark.parametrize(
    ("kind", "deleted", "marker", "applied", "expected"),
    [
        ("Deployment", False, "3", "3", False),  # its controller updated the status
        ("Deployment", False, "4", "3", True),  # someone edited the spec (kubectl edit/scale)
        ("Deployment", True, "3", "3", True),  # deleted by hand
        ("Deployment", False, "1", None, True),  # never applied by this process yet
        ("Deployment", False, None, "3", True),  # no marker in the event: do not trust it
        ("Service", False, "901", "901", False),  # the echo of our own apply
        ("Service", False, "950", "901", True),  # changed by someone else
        ("Pod", False, "7", None, False),  # pods only refresh the status
        ("Pod", True, None, None, False),
    ],
)
def test_child_needs_apply(
    kind: str, deleted: bool, marker: str | None, applied: str | None, expected: bool
) -> None:
    assert child_needs_apply(kind, deleted, marker, applied) is expected
