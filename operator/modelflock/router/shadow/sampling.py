"""Whether an answered request is sampled, and whether a candidate may take a sample (pure).

Called for every answered request, so the common "no" is a couple of dict lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from modelflock.api.evaluation import OPT_OUT_HEADER
from modelflock.router.balance import ExpertLive
from modelflock.router.config import Evaluation

Skip = Literal["off", "opted-out", "not-answered", "stream", "not-drawn", "no-candidate"]
CandidateAdmission = Literal["go", "cold", "overloaded"]
_OFF_VALUES = frozenset({"off", "0", "false", "no"})


@dataclass(frozen=True)
class RoutePlan:
    rate: float
    candidates: tuple[str, ...]


def route_plans(evaluation: Evaluation | None) -> dict[str, RoutePlan]:
    """Per sampled route: its rate and candidates (compiled once per config)."""
    if evaluation is None:
        return {}
    return {r.name: RoutePlan(float(r.sample_rate), tuple(r.candidates)) for r in evaluation.routes}


def opted_out(headers: Mapping[str, str]) -> bool:
    """The application's opt-out: `x-modelflock-shadow: off` (or 0, false, no)."""
    value = headers.get(OPT_OUT_HEADER)
    return value is not None and value.strip().lower() in _OFF_VALUES


def sample(
    plans: Mapping[str, RoutePlan],
    route: str,
    served: str,
    status: int,
    streamed: bool,
    headers: Mapping[str, str],
    draw: float,
) -> tuple[str, ...] | Skip:
    """The candidates to replay this request to, or why it is not sampled. `draw` is uniform
    in [0, 1): the request is sampled when it is below the route's rate."""
    plan = plans.get(route)
    if plan is None:
        return "off"
    if status != 200 or served == "none":
        return "not-answered"
    if streamed:
        return "stream"
    if draw >= plan.rate:
        return "not-drawn"
    if opted_out(headers):
        return "opted-out"
    candidates = tuple(c for c in plan.candidates if c != served)
    return candidates or "no-candidate"


def candidate_admission(live: ExpertLive | None) -> CandidateAdmission:
    """A sample never waits and never queues: a candidate with no ready replica is cold, one
    with any request waiting in its engines is overloaded (stricter than for user requests:
    samples only use idle batch slots). Without discovery data the Service is trusted."""
    if live is None:
        return "go"
    ready = [e for e in live.endpoints if e.ready]
    if live.ready_replicas <= 0 or not ready:
        return "cold"
    if any((e.queue_depth or 0) > 0 for e in ready):
        return "overloaded"
    return "go"
