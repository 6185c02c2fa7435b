"""spec.evaluation: API model, rendering into the router config, router config checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelflock.api.routingpolicy import RoutingPolicySpec
from modelflock.render.evaluation import render_evaluation
from modelflock.router.config import RouterConfig


def spec(**evaluation: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {
            "experts": ["small", "big", "judge"],
            "routes": [
                {"name": "code", "expert": "big"},
                {"name": "chat", "expert": "small"},
                {"name": "rest", "expert": "small"},
            ],
            "evaluation": {"judge": {"type": "expert", "expert": "judge"}, **evaluation},
        }
    )


def test_defaults_sample_every_route_with_candidates_at_two_percent() -> None:
    rendered = render_evaluation(spec(candidates=["small", "big"]))
    assert rendered is not None
    assert rendered["routes"] == [
        {"name": n, "sampleRate": "0.02", "candidates": ["small", "big"]}
        for n in ("code", "chat", "rest")
    ]
    assert rendered["dailyBudgetUSD"] == "1"
    assert (rendered["maxConcurrent"], rendered["wakeColdCandidates"]) == (2, False)
    assert rendered["judge"]["type"] == "expert"


@pytest.mark.parametrize(
    ("evaluation", "routes"),
    [
        # a per-route opt-out
        (
            {"candidates": ["big"], "routes": [{"name": "chat", "enabled": False}]},
            [("code", "0.02", ["big"]), ("rest", "0.02", ["big"])],
        ),
        # per-route candidates and rate; routes without candidates are left out
        (
            {"routes": [{"name": "code", "candidates": ["small"], "sampleRate": "0.5"}]},
            [("code", "0.5", ["small"])],
        ),
        # a rate of 0 leaves a route out
        (
            {
                "candidates": ["big"],
                "sampleRate": "0.05",
                "routes": [{"name": "rest", "sampleRate": "0"}],
            },
            [("code", "0.05", ["big"]), ("chat", "0.05", ["big"])],
        ),
        (
            {"candidates": ["big"], "sampleRate": "1"},
            [(n, "1", ["big"]) for n in ("code", "chat", "rest")],
        ),
    ],
)
def test_per_route_settings(evaluation: dict[str, Any], routes: list[Any]) -> None:
    rendered = render_evaluation(spec(**evaluation))
    assert rendered is not None
    assert [(r["name"], r["sampleRate"], r["candidates"]) for r in rendered["routes"]] == routes


def test_disabled_evaluation_renders_nothing() -> None:
    assert render_evaluation(spec(candidates=["big"], enabled=False)) is None


@pytest.mark.parametrize(
    ("evaluation", "field"),
    [
        ({"sampleRate": "1.5"}, "sampleRate"),
        ({"sampleRate": "0.1234567"}, "sampleRate"),
        ({"dailyBudgetUSD": "-1"}, "dailyBudgetUSD"),
        ({"maxConcurrent": 0}, "maxConcurrent"),
        ({"candidates": ["a", "b", "c", "d", "e"]}, "candidates"),
        ({"judge": {"type": "vibes", "expert": "judge"}}, "type"),
        (
            {"judge": {"type": "similarity", "expert": "judge", "minSimilarity": "2"}},
            "minSimilarity",
        ),
        ({"thresholds": {"matchTarget": "1.2"}}, "matchTarget"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_evaluation_is_refused_with_the_field(evaluation: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        spec(**evaluation)


def router_config(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {
        "experts": [{"name": n, "urls": ["http://127.0.0.1:1"], "model": n} for n in ("a", "b")],
        "routes": [{"name": "r", "expert": "a"}],
        "evaluation": evaluation,
    }


@pytest.mark.parametrize(
    ("evaluation", "reason"),
    [
        ({"judge": {"type": "expert", "expert": "zz"}}, "unknown expert 'zz'"),
        (
            {
                "judge": {"type": "expert", "expert": "b"},
                "routes": [{"name": "x", "sampleRate": "0.1", "candidates": ["b"]}],
            },
            "unknown route 'x'",
        ),
        (
            {
                "judge": {"type": "expert", "expert": "b"},
                "routes": [{"name": "r", "sampleRate": "0.1", "candidates": ["q"]}],
            },
            "unknown expert 'q'",
        ),
        (
            {
                "judge": {"type": "expert", "expert": "b"},
                "routes": [{"name": "r", "sampleRate": "3", "candidates": ["b"]}],
            },
            "sampleRate above 1",
        ),
    ],
)
def test_router_config_refuses_dangling_names(evaluation: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        RouterConfig.model_validate(router_config(evaluation))


def test_rendered_section_loads_in_the_router() -> None:
    rendered = render_evaluation(spec(candidates=["small"]))
    assert rendered is not None
    config = RouterConfig.model_validate(
        {
            "experts": [
                {"name": n, "urls": ["http://127.0.0.1:1"], "model": n}
                for n in ("small", "big", "judge")
            ],
            "routes": [{"name": n, "expert": "small"} for n in ("code", "chat", "rest")],
            "evaluation": rendered,
        }
    )
    assert config.evaluation is not None
    assert [r.name for r in config.evaluation.routes] == ["code", "chat", "rest"]
