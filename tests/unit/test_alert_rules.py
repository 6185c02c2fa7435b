"""The chart's alerting rules under `promtool test rules`: each alert fires under the condition
it describes and stays silent otherwise (tests/monitoring/rules/*.test.yaml), with the rules
exactly as the chart renders them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import REPO, find_helm, one, render

from monitoring.prometheus import binary

UNIT_TESTS = sorted((REPO / "tests" / "monitoring" / "rules").glob("*.test.yaml"))


def promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_BIN": str(find_helm()),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


@pytest.fixture(scope="module")
def rules_dir(helm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file (what the Prometheus Operator
    mounts), next to copies of the unit test files that name it."""
    docs = render(helm_env, "--set", "metrics.prometheusRule.enabled=true")
    rule: dict[str, Any] = one(docs, "PrometheusRule")
    path = tmp_path_factory.mktemp("rules")
    (path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    for test in UNIT_TESTS:
        shutil.copy(test, path / test.name)
    return path


def test_rules_are_valid(rules_dir: Path) -> None:
    assert "SUCCESS: 3 rules found" in promtool("check", "rules", "rules.yaml", cwd=rules_dir)


def test_every_alert_has_unit_tests() -> None:
    assert UNIT_TESTS, "no tests/monitoring/rules/*.test.yaml"
    tested = set()
    for test in UNIT_TESTS:
        for case in yaml.safe_load(test.read_text())["tests"]:
            tested |= {a["alertname"] for a in case.get("alert_rule_test", [])}
    assert tested == {
        "ModelFlockExpertDegraded",
        "ModelFlockQueueAboveTarget",
        "ModelFlockRouterErrorRate",
    }


@pytest.mark.parametrize("test", UNIT_TESTS, ids=[t.name for t in UNIT_TESTS])
def test_promtool_unit_tests(rules_dir: Path, test: Path) -> None:
    assert "SUCCESS" in promtool("test", "rules", test.name, cwd=rules_dir)
