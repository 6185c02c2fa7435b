"""RoutingPolicy.spec.evaluation (shadow evaluation) and its status.

A small sample of finished requests is replayed, off the user's path, to candidate experts and
judged against the answer that was served. The counts become per-route recommendations in
`status.evaluation`; routing itself never changes because of them (docs/evaluation.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from pydantic.config import JsonValue

from modelflock.api.common import DECIMAL_PATTERN, DNS_LABEL_PATTERN, ApiModel

MAX_CANDIDATES = 4
MAX_RESULTS = 64  # status.evaluation.results: bounded, largest samples first
# A probability as a decimal string: 0, 0.02, 1, 1.0 …
RATE_PATTERN = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"
_NAME_ITEMS: dict[str, Any] = {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN}
OPT_OUT_HEADER = "x-modelflock-shadow"  # the application sets it to "off" to opt a request out


class EvaluationJudge(ApiModel):
    """How a candidate's answer is compared with the served one."""

    type: Literal["expert", "similarity"] = Field(
        description="expert: an LLM judge compares both answers pairwise (order randomised) by"
        " the rubric; similarity: cosine of the answers' embeddings from an embedding expert."
    )
    expert: str = Field(
        description="The judge LLM (type expert) or the embedding expert (type similarity).",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    rubric: str = Field(
        default="",
        max_length=4096,
        description="type expert: the judge's instructions (system prompt); empty: a built-in"
        " rubric (correctness, completeness, relevance, clarity).",
    )
    min_similarity: str = Field(
        default="0.85",
        pattern=RATE_PATTERN,
        description="type similarity: answers at or above this cosine agree.",
    )
    timeout_seconds: int = Field(
        default=60, ge=1, le=600, description="Budget of one sample (candidate and judge calls)."
    )


class RouteEvaluation(ApiModel):
    """Per-route settings; routes not listed use the policy-wide ones."""

    name: str = Field(
        description="A route of spec.routes.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
    enabled: bool = Field(default=True, description="false: never sample this route (opt-out).")
    candidates: list[str] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="Candidates for this route; empty: spec.evaluation.candidates.",
        json_schema_extra={"items": _NAME_ITEMS},
    )
    sample_rate: str | None = Field(
        default=None, pattern=RATE_PATTERN, description="Share of this route's requests sampled."
    )


class EvaluationThresholds(ApiModel):
    """When a result becomes a recommendation (lower ends of 95 % Wilson intervals)."""

    min_samples: int = Field(
        default=30, ge=1, le=1_000_000, description="Fewer samples: no recommendation."
    )
    match_target: str = Field(
        default="0.9",
        pattern=RATE_PATTERN,
        description="A cheaper candidate is recommended when the lower end of its match rate"
        " (as good or agreeing) reaches this.",
    )
    loss_limit: str = Field(
        default="0.2",
        pattern=RATE_PATTERN,
        description="A cascade check or bigger expert is recommended when the lower end of the"
        " served expert's loss rate against a reference candidate reaches this.",
    )


class EvaluationSpec(ApiModel):
    """Shadow evaluation: replay a sample of answered requests to candidates and judge them."""

    enabled: bool = Field(default=True, description="false: no sampling anywhere.")
    candidates: list[str] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="Experts compared with the one that served (for every route): smaller ones"
        " answer 'would it do?', larger ones serve as reference.",
        json_schema_extra={"items": _NAME_ITEMS},
    )
    sample_rate: str = Field(
        default="0.02", pattern=RATE_PATTERN, description="Share of answered requests sampled."
    )
    judge: EvaluationJudge = Field(description="How answers are compared.")
    routes: list[RouteEvaluation] = Field(
        default_factory=list,
        max_length=32,
        description="Per-route candidates, sample rates and opt-outs.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    daily_budget_usd: str = Field(
        default="1",
        alias="dailyBudgetUSD",
        pattern=DECIMAL_PATTERN,
        description="Most spent on candidate and judge calls per UTC day, across the policy's"
        " routers; once spent, samples are dropped until the next day.",
    )
    max_concurrent: int = Field(
        default=2, ge=1, le=64, description="Samples in flight per router; more are dropped."
    )
    wake_cold_candidates: bool = Field(
        default=False,
        description="Whether a sample for a candidate at zero replicas wakes it (the sample is"
        " dropped either way, never held).",
    )
    thresholds: EvaluationThresholds = Field(
        default_factory=EvaluationThresholds, description="When results become recommendations."
    )


# CEL rules on RoutingPolicy.spec (they need spec.experts and spec.routes).
SPEC_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.evaluation) || !has(self.evaluation.candidates)"
        " || self.evaluation.candidates.all(e, e in self.experts)",
        "message": "every evaluation candidate must be listed in spec.experts",
        "fieldPath": ".evaluation.candidates",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.evaluation) || self.evaluation.judge.expert in self.experts",
        "message": "the evaluation judge expert must be listed in spec.experts",
        "fieldPath": ".evaluation.judge.expert",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.evaluation) || !has(self.evaluation.routes)"
        " || self.evaluation.routes.all(r, self.routes.exists(x, x.name == r.name))",
        "message": "evaluation routes must name routes of spec.routes",
        "fieldPath": ".evaluation.routes",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.evaluation) || !has(self.evaluation.routes)"
        " || self.evaluation.routes.all(r, !has(r.candidates)"
        " || r.candidates.all(e, e in self.experts))",
        "message": "every evaluation route candidate must be listed in spec.experts",
        "fieldPath": ".evaluation.routes",
        "reason": "FieldValueInvalid",
    },
]


Recommendation = Literal["MoveDown", "Escalate", "Keep", "NeedMoreSamples"]


class EvaluationResult(ApiModel):
    """What the policy's routers measured for one (route, served expert, candidate)."""

    route: str = Field(description="Route name.")
    expert: str = Field(description="The expert that served the sampled requests.")
    candidate: str = Field(description="The expert the samples were replayed to.")
    judge: Literal["pairwise", "similarity"] = Field(description="How they were compared.")
    samples: int = Field(default=0, ge=0, description="Judged samples.")
    wins: int = Field(default=0, ge=0, description="pairwise: the candidate was better.")
    ties: int = Field(default=0, ge=0, description="pairwise: as good.")
    losses: int = Field(default=0, ge=0, description="pairwise: the candidate was worse.")
    agreements: int = Field(default=0, ge=0, description="similarity: the answers agreed.")
    disagreements: int = Field(default=0, ge=0, description="similarity: they did not.")
    served_cost_usd: str = Field(
        default="0", alias="servedCostUSD", description="Cost of the served answers sampled."
    )
    candidate_cost_usd: str = Field(
        default="0", alias="candidateCostUSD", description="Cost of the candidate's answers."
    )
    judge_cost_usd: str = Field(
        default="0", alias="judgeCostUSD", description="Cost of judging them."
    )
    served_seconds: str = Field(default="0", description="Summed latency of the served answers.")
    candidate_seconds: str = Field(default="0", description="Summed latency of the candidate's.")
    rate: str = Field(
        default="0",
        description="Match rate (a cheaper candidate) or the served expert's loss rate (a"
        " reference candidate).",
    )
    rate_lower: str = Field(default="0", description="Lower end of its 95 % Wilson interval.")
    rate_upper: str = Field(default="1", description="Upper end of its 95 % Wilson interval.")
    recommendation: Recommendation = Field(
        default="NeedMoreSamples", description="MoveDown, Escalate, Keep or NeedMoreSamples."
    )
    message: str = Field(default="", max_length=1024, description="The recommendation in words.")


class EvaluationStatus(ApiModel):
    """Shadow evaluation results aggregated across the policy's routers."""

    results: list[EvaluationResult] = Field(
        default_factory=list,
        max_length=MAX_RESULTS,
        description=f"At most {MAX_RESULTS} results, most samples first.",
    )
    day: str | None = Field(default=None, description="The UTC day the spend below belongs to.")
    spent_today_usd: str = Field(
        default="0", alias="spentTodayUSD", description="Spent on samples that day."
    )
    dropped: int = Field(
        default=0, ge=0, description="Samples dropped (budget, overload, cold, concurrency)."
    )
    last_report_time: datetime | None = Field(
        default=None, description="When a router last reported."
    )
