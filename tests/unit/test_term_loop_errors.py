"""The controllers' event loop turns a kopf watch stream's failed close into a warning line;
any other loop error keeps asyncio's default report (with its traceback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from modelflock.controller.runtime import log_kopf_stream_close_errors

SOURCE = """
async def infinite_watch():
    try:
        yield 1
        yield 2
    finally:
        raise RuntimeError("stream closed mid-event")
"""


def generator_from(filename: str) -> Callable[[], AsyncIterator[int]]:
    namespace: dict[str, Any] = {}
    exec(compile(SOURCE, filename, "exec"), namespace)
    factory: Callable[[], AsyncIterator[int]] = namespace["infinite_watch"]
    return factory


def run_and_leave_open(filename: str) -> None:
    """Start the generator, leave it suspended at a yield, and let asyncio.run close it."""

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(log_kopf_stream_close_errors)
        stream = generator_from(filename)()
        await stream.__anext__()
        main.stream = stream  # type: ignore[attr-defined]  # kept alive until shutdown

    asyncio.run(main())


@pytest.mark.parametrize(
    ("filename", "traceback_expected"),
    [
        (
            str(Path("/venv/site-packages/kopf/_cogs/clients/watching.py")),
            False,
        ),
        (str(Path("/work/modelflock/controller/other.py")), True),
    ],
)
def test_stream_close_errors(
    filename: str, traceback_expected: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run_and_leave_open(filename)
    records = [r for r in caplog.records if "infinite_watch" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    [record] = records
    assert (record.exc_info is not None) == traceback_expected
    if not traceback_expected:
        assert record.levelno == logging.WARNING
        assert "stream closed mid-event" in record.getMessage()
