"""The dashboard's quality panel under `promtool test rules`: its ratios are read off the
panel's own expressions (as Grafana sends them with a namespace and route picked) and
evaluated by a real Prometheus engine on series shaped like the router's.

A pair whose candidate never won (or was never as good) shows 0, not "no data": an absent
outcome label value is a zero count, and the panel must not hide that pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from test_alert_rules import promtool

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "modelflock" / "files" / "dashboards" / "modelflock.json"
SAMPLES = "modelflock_router_shadow_samples_total"


def quality_targets() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    [panel] = [p for p in board["panels"] if p["title"].startswith("Quality of route")]
    return {
        t["legendFormat"].split(": ")[-1]: t["expr"]
        .replace("$namespace", "llm")
        .replace("$route", "code")
        .replace("[1h]", "[10m]")
        for t in panel["targets"]
    }


def series(expert: str, candidate: str, outcome: str, per_minute: int) -> dict[str, str]:
    labels = f'namespace="llm",route="code",expert="{expert}",candidate="{candidate}"'
    return {
        "series": f'{SAMPLES}{{{labels},outcome="{outcome}"}}',
        "values": f"0+{per_minute}x20",
    }


def test_quality_ratios_include_pairs_with_zero_wins(tmp_path: Path) -> None:
    targets = quality_targets()
    assert set(targets) == {"candidate as good", "served lost", "cost ratio"}
    case: dict[str, Any] = {
        "interval": "1m",
        "input_series": [
            # code-7b → frontier: ties and losses only, the candidate never won.
            series("code-7b", "frontier", "tie", 3),
            series("code-7b", "frontier", "loss", 1),
            # code-7b → intent-small: wins and losses only, never a tie.
            series("code-7b", "intent-small", "win", 1),
            series("code-7b", "intent-small", "loss", 3),
            # Another route's samples do not leak into the picked one.
            {
                "series": f'{SAMPLES}{{namespace="llm",route="chat",expert="intent-small",'
                'candidate="frontier",outcome="win"}',
                "values": "0+5x20",
            },
        ],
        "promql_expr_test": [
            {
                "expr": targets["candidate as good"],
                "eval_time": "15m",
                "exp_samples": [
                    {"labels": '{expert="code-7b",candidate="frontier"}', "value": 0.75},
                    {"labels": '{expert="code-7b",candidate="intent-small"}', "value": 0.25},
                ],
            },
            {
                "expr": targets["served lost"],
                "eval_time": "15m",
                "exp_samples": [
                    {"labels": '{expert="code-7b",candidate="frontier"}', "value": 0},
                    {"labels": '{expert="code-7b",candidate="intent-small"}', "value": 0.25},
                ],
            },
        ],
    }
    (tmp_path / "quality.test.yaml").write_text(yaml.safe_dump({"tests": [case]}))
    assert "SUCCESS" in promtool("test", "rules", "quality.test.yaml", cwd=tmp_path)
