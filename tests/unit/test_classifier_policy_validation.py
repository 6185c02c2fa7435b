"""The classifier's policy side, pure: example ConfigMaps, rendering (stages the router cannot
run are left out and said so), the ClassifierDegraded condition from routers' reports, the
router's report, and the evaluation tables of `modelflock classify`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelflock.api.modelexpert import ModelExpert
from modelflock.api.routingpolicy import ExamplesSource, RoutingPolicy
from modelflock.render.classifier_health import (
    REPORT_MAX_AGE_SECONDS,
    ClassifierReport,
    Problem,
    keep_recent,
    report_problems,
)
from modelflock.render.examples import MAX_EXAMPLE_CHARS, load_examples, parse_jsonl
from modelflock.render.policy import (
    RouterSettings,
    compute_policy_status,
    examples_problems,
    render_router_config,
    stage_problems,
)
from modelflock.router.accounting import RouterMetrics
from modelflock.router.classify.evaluate import (
    Labelled,
    Outcome,
    format_confusion,
    read_labelled,
    suggest_threshold,
    summarize,
    threshold_table,
)
from modelflock.router.classify.features import Decision, StageOutcome
from modelflock.router.config import RouterConfig
from modelflock.router.health_report import build_report, stage_counts

NOW = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)


def policy(stages: list[dict[str, Any]] | None = None, **classifier: Any) -> RoutingPolicy:
    return RoutingPolicy.model_validate(
        {
            "metadata": {"name": "p", "namespace": "ns", "generation": 3},
            "spec": {
                "experts": ["emb", "small"],
                "classifier": {
                    "stages": stages or [{"type": "rules"}, {"type": "embedding", "expert": "emb"}],
                    "intents": [
                        {"name": "code", "examples": ["write a function"]},
                        {"name": "chat"},
                    ],
                    "defaultIntent": "chat",
                    **classifier,
                },
                "routes": [{"name": "r", "expert": "small"}],
            },
        }
    )


def expert(name: str, capabilities: list[str]) -> ModelExpert:
    return ModelExpert.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "engine": "vllm",
                "capabilities": capabilities,
                "model": {"name": f"org/{name}"},
                "nodePool": "l4",
            },
        }
    )


EXPERTS: dict[str, ModelExpert | None] = {
    "emb": expert("emb", ["embed"]),
    "small": expert("small", ["chat"]),
}


def test_jsonl_examples_are_parsed_and_bad_lines_named() -> None:
    text = "\n".join(
        [
            '{"prompt": "fix my bug", "intent": "code", "hard": true}',
            "# a comment",
            "",
            "not json",
            '["a list"]',
            '{"prompt": "", "intent": "code"}',
            '{"prompt": "hello", "intent": "poetry"}',
            '{"prompt": "' + "x" * (MAX_EXAMPLE_CHARS + 1) + '", "intent": "code"}',
            '{"prompt": "hi there", "intent": "chat"}',
        ]
    )
    examples, problems = parse_jsonl(text, "cm/key", {"code", "chat"})
    assert examples == [("code", "fix my bug"), ("chat", "hi there")]
    assert problems == [
        "cm/key line 4: not JSON",
        "cm/key line 5: not a JSON object",
        "cm/key line 6: 'prompt' must be a non-empty string",
        "cm/key line 7: intent 'poetry' is not defined",
        f"cm/key line 8: prompt longer than {MAX_EXAMPLE_CHARS}",
    ]


def test_missing_config_maps_and_keys_are_reported() -> None:
    sources = [
        ExamplesSource(config_map="a", key="x.jsonl"),
        ExamplesSource(config_map="a", key="other"),
        ExamplesSource(config_map="gone", key="x.jsonl"),
    ]
    loaded = load_examples(
        sources, {"a": {"x.jsonl": '{"prompt": "p", "intent": "code"}'}, "gone": None}, {"code"}
    )
    assert loaded.examples == (("code", "p"),)
    assert loaded.missing == ("a/other", "gone/x.jsonl")
    assert [p.reason for p in examples_problems(loaded)] == ["ExamplesNotFound", "ExamplesNotFound"]


def test_config_map_examples_are_rendered_into_the_intents() -> None:
    p = policy(examplesFrom=[{"configMap": "cm", "key": "k"}])
    config = render_router_config(
        p,
        EXPERTS,
        RouterSettings(operator_url=None),
        examples=[("code", "debug this"), ("chat", "hi")],
    )
    classifier = config["classifier"]
    assert "examplesFrom" not in classifier  # the router reads no ConfigMaps
    assert classifier["intents"][0]["examples"] == ["write a function", "debug this"]
    assert classifier["intents"][1]["examples"] == ["hi"]
    assert RouterConfig.model_validate(config).classifier.stages[1].type == "embedding"


@pytest.mark.parametrize(
    ("experts", "reason"),
    [
        ({"emb": expert("emb", ["chat"]), "small": None}, "StageExpertCannotEmbed"),
        ({"emb": None, "small": None}, "StageExpertNotFound"),
    ],
)
def test_an_embedding_stage_the_router_cannot_run_is_left_out_and_named(
    experts: dict[str, ModelExpert | None], reason: str
) -> None:
    p = policy()
    config = render_router_config(p, experts, RouterSettings(operator_url=None))
    assert config["classifier"]["stages"] == [
        {"type": "rules", "timeoutMilliseconds": 250, "minConfidence": "0.5"}
    ]
    RouterConfig.model_validate(config)  # loads: the router keeps serving with rules
    problems = stage_problems(p, experts)
    assert [x.reason for x in problems] == [reason]
    assert "emb" in problems[0].message
    # Only an embedding stage: rules stand in, so the config still loads.
    alone = policy([{"type": "embedding", "expert": "emb"}])
    assert render_router_config(alone, experts, RouterSettings(operator_url=None))["classifier"][
        "stages"
    ] == [{"type": "rules"}]


def _report(router: str, **failures: int) -> ClassifierReport:
    return ClassifierReport.model_validate(
        {
            "router": router,
            "windowSeconds": 10,
            "stages": [
                {
                    "stage": "embedding",
                    "answered": 10,
                    "failures": failures,
                    "lastFailure": "timeout: no answer within 200 ms" if failures else "",
                }
            ],
        }
    )


def test_reports_become_problems_most_frequent_first_and_expire() -> None:
    reports = [
        (100.0, _report("a", timeout=3, unavailable=1)),
        (105.0, _report("b", timeout=2)),
        (100.0 - REPORT_MAX_AGE_SECONDS - 10, _report("old", bad_response=9)),
        (106.0, _report("c")),
    ]
    problems = report_problems(reports, now=110.0)
    assert [p.reason for p in problems] == ["EmbeddingTimeout", "EmbeddingUnavailable"]
    assert problems[0].message.startswith("embedding stage timed out on 5 of 30 requests")
    assert "2 router(s)" in problems[0].message and "no answer within 200 ms" in problems[0].message
    assert report_problems(reports[3:], now=110.0) == []
    kept = keep_recent({r.router: (t, r) for t, r in reports}, now=110.0)
    assert set(kept) == {"a", "b", "c"}


def test_classifier_degraded_condition() -> None:
    p = policy()
    healthy = compute_policy_status(p, EXPERTS, "cm", "h", None, NOW)
    cond = next(c for c in healthy.conditions if c.type == "ClassifierDegraded")
    assert (cond.status, cond.reason, cond.observed_generation) == ("False", "StagesAnswering", 3)
    problems = [Problem("EmbeddingTimeout", "embedding stage timed out"), Problem("X", "second")]
    later = NOW + timedelta(minutes=1)
    degraded = compute_policy_status(
        p, EXPERTS, "cm", "h", healthy, later, classifier_problems=problems
    )
    cond = next(c for c in degraded.conditions if c.type == "ClassifierDegraded")
    assert (cond.status, cond.reason) == ("True", "EmbeddingTimeout")
    assert cond.message == "embedding stage timed out; second"
    assert cond.last_transition_time == later
    again = compute_policy_status(
        p, EXPERTS, "cm", "h", degraded, later + timedelta(minutes=1), classifier_problems=problems
    )
    cond = next(c for c in again.conditions if c.type == "ClassifierDegraded")
    assert cond.last_transition_time == later  # unchanged status: the transition time stays


def test_router_report_counts_only_what_happened_since_the_last_one() -> None:
    metrics = RouterMetrics()
    metrics.stage_seconds.observe(("embedding", "decided"), 0.01)
    metrics.stage_seconds.observe(("rules", "unsure"), 0.0)
    before = stage_counts(metrics)
    for outcome in ("decided", "timeout", "timeout", "unsure"):
        metrics.stage_seconds.observe(("embedding", outcome), 0.01)
    metrics.stage_failures.inc(("embedding", "timeout"), 2)
    metrics.last_stage_failure["embedding"] = "timeout: no answer within 200 ms"
    report = build_report("r1", 10.0, before, stage_counts(metrics), metrics.last_stage_failure)
    assert report.failing
    [stage] = report.stages  # rules are never reported
    assert (stage.stage, stage.answered, stage.failures) == ("embedding", 4, {"timeout": 2})
    quiet = build_report("r1", 10.0, stage_counts(metrics), stage_counts(metrics), {})
    assert quiet.stages == [] and not quiet.failing


def _outcome(
    intent: str,
    decided: str,
    classifier: str,
    hard: bool = False,
    guess: str = "",
    confidence: float | None = None,
) -> Outcome:
    trail = [
        StageOutcome(
            "rules",
            "decided" if classifier == "rules" else "unsure",
            0.0,
            decided if classifier == "rules" else "",
        )
    ]
    if classifier != "rules":
        trail.append(
            StageOutcome(
                "embedding",
                "decided" if classifier == "embedding" else "unsure",
                0.01,
                guess or decided,
                confidence=confidence,
            )
        )
    return Outcome(Labelled("p", intent, hard), Decision(decided, classifier, 0.01, tuple(trail)))


def test_evaluation_tables() -> None:
    outcomes = [
        _outcome("code", "code", "rules"),
        _outcome("code", "code", "embedding", confidence=0.9),
        _outcome("chat", "code", "embedding", hard=True, confidence=0.45),
        _outcome("chat", "chat", "default", guess="code", confidence=0.2),
    ]
    summary = summarize("rules+embedding", outcomes)
    assert (summary.correct, summary.total, summary.hard_correct, summary.hard_total) == (
        3,
        4,
        0,
        1,
    )
    assert summary.per_intent == {"chat": (1, 2), "code": (2, 2)}
    assert summary.decided_by == {"embedding": 2, "rules": 1, "default": 1}
    assert summary.confusion[("chat", "code")] == 1
    assert any(
        "chat" in line and line.split()[-2:] == ["1", "1"] for line in format_confusion(summary)
    )
    table = threshold_table(outcomes, "embedding", "chat", (0.3, 0.5, 0.95))
    # 0.3: the 0.45 guess (wrong) decides; 0.5: it falls to chat (right); 0.95: code is lost.
    assert table == [(0.3, 0.75, 0.5), (0.5, 1.0, 0.25), (0.95, 0.75, 0.0)]
    assert suggest_threshold(table) == 0.5


def test_labelled_files_are_checked() -> None:
    assert read_labelled('{"prompt": "a", "intent": "b"}\n') == [Labelled("a", "b", False)]
    with pytest.raises(ValueError, match="line 2: not JSON"):
        read_labelled('{"prompt": "a", "intent": "b"}\nnope')
    with pytest.raises(ValueError, match="line 1: expected"):
        read_labelled('{"text": "a"}')
    with pytest.raises(ValueError, match="no labelled prompts"):
        read_labelled("\n")
