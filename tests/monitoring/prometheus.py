"""A real Prometheus (Debian's `prometheus` package, installed by `make prometheus`) run by the
tests on 127.0.0.1 with a configuration they write, and a small client for its HTTP API.

A missing binary fails the test that needs it (never a skip): the project's own files install
it, so its absence is a broken machine, not an optional feature.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from localcluster import free_port, stop_process_group  # noqa: E402

Sample = dict[str, Any]


def binary(name: str) -> str:
    """prometheus or promtool from PATH; fails loudly when the package is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: Debian's prometheus package is required "
            "(`make prometheus` installs it; CI's .ci/run does too)",
            pytrace=False,
        )
    return path


class Prometheus:
    """One Prometheus server process and its query API."""

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None

    def check_config(self) -> None:
        result = subprocess.run(
            [binary("promtool"), "check", "config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        self.check_config()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_for(self._ready, "Prometheus ready", 60)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=10)
            self.process = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                return int(answer.status) == 200
        except OSError:
            return False

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; returns the vector's samples (metric labels and value)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[Sample] = data["result"]
        return result

    def targets(self) -> list[Sample]:
        active: list[Sample] = self.api("targets", state="active")["activeTargets"]
        return active

    def alerts(self) -> list[Sample]:
        """Firing and pending alerts."""
        alerts: list[Sample] = self.api("alerts")["alerts"]
        return alerts

    def firing(self, alertname: str) -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in self.alerts()
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def wait_for(
        self, predicate: Callable[[], Any], what: str, timeout: float, interval: float = 0.5
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"prometheus exited ({self.process.returncode}):\n{self.log()}"
                )
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.log()}")
            time.sleep(interval)


@contextmanager
def running_prometheus(workdir: Path, config: Mapping[str, Any]) -> Iterator[Prometheus]:
    server = Prometheus(workdir, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scrape_config_file(
    scrape_configs: Sequence[Mapping[str, Any]],
    rule_files: Sequence[str] = (),
    interval: str = "1s",
) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [dict(c) for c in scrape_configs],
    }


def write_targets(path: Path, groups: Sequence[Mapping[str, Any]]) -> None:
    """A file_sd file; written to a temporary name and renamed, so Prometheus never reads
    half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(list(groups)))
    tmp.replace(path)
