"""Confidence intervals and the recommendation rules (pure, table-tested).

A (route, served expert, candidate) pair is judged on a sample of real prompts. Two questions,
depending on which of the two is cheaper on those prompts:

- the candidate is cheaper ("would it do?"): the *match rate* is the share of samples where the
  candidate was at least as good (pairwise win or tie) or agreed (similarity). When the lower
  end of its 95 % Wilson interval reaches `match_target`, moving the route down is recommended;
- the candidate is not cheaper (a reference): the *loss rate* is the share where the served
  expert lost to it (pairwise) or disagreed with it (similarity). When the lower end reaches
  `loss_limit`, a cascade check or a bigger expert is recommended.

Keeping things as they are needs evidence too: the whole interval below the target (or the
limit). Using the interval, not the point estimate, keeps recommendations from resting on a
few lucky samples; below `min_samples`, or while the interval spans the threshold, nothing is
recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Z95 = 1.959963984540054  # two-sided 95 %
JudgeKind = Literal["pairwise", "similarity"]
Recommendation = Literal["MoveDown", "Escalate", "Keep", "NeedMoreSamples"]
Question = Literal["downsize", "reference"]


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float

    @property
    def margin(self) -> float:
        """The larger distance from the estimate to an end (what "± x %" prints)."""
        return max(self.estimate - self.lower, self.upper - self.estimate)


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """Wilson score interval of a binomial proportion; (0, 0, 1) without trials."""
    if successes < 0 or trials < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return Interval(0.0, 0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    center = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # Clamp rounding noise: at p = 0 (or 1) the lower (upper) end is exactly 0 (1).
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == trials else min(1.0, center + half)
    return Interval(p, lower, upper)


@dataclass(frozen=True)
class Tally:
    """Counters of one (route, served expert, candidate, judge): what routers report."""

    samples: int = 0
    wins: int = 0  # pairwise: the candidate's answer was better
    ties: int = 0
    losses: int = 0  # pairwise: the candidate's answer was worse
    agreements: int = 0  # similarity: the answers agreed (cosine at or above the threshold)
    disagreements: int = 0
    served_cost: float = 0.0  # USD of the served answers on the sampled prompts
    candidate_cost: float = 0.0  # USD of the candidate's answers to the same prompts
    judge_cost: float = 0.0
    served_seconds: float = 0.0  # summed latency of the served answers
    candidate_seconds: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            *(
                getattr(self, f) + getattr(other, f)
                for f in self.__dataclass_fields__  # declaration order
            )
        )

    def without(self, other: Tally) -> Tally:
        """What `self` holds beyond `other`, field by field, never below zero."""
        return Tally(
            *(
                max(getattr(self, f) - getattr(other, f), 0)
                for f in self.__dataclass_fields__  # declaration order
            )
        )

    @property
    def matched(self) -> int:
        """Samples where the candidate did at least as well as the served expert."""
        return self.wins + self.ties + self.agreements

    @property
    def served_lost(self) -> int:
        """Samples where the served expert lost to (or disagreed with) the candidate."""
        return self.wins + self.disagreements

    @property
    def cost_ratio(self) -> float | None:
        """Candidate cost / served cost on the same prompts (None when the served cost is 0)."""
        return self.candidate_cost / self.served_cost if self.served_cost > 0 else None

    def mean(self, total: float) -> float:
        return total / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class Thresholds:
    min_samples: int = 30
    match_target: float = 0.9
    loss_limit: float = 0.2


@dataclass(frozen=True)
class Decision:
    recommendation: Recommendation
    question: Question
    rate: Interval  # the match rate (downsize) or the loss rate (reference)


def question(tally: Tally) -> Question:
    """Downsize when the candidate was strictly cheaper on the sampled prompts."""
    return "downsize" if tally.candidate_cost < tally.served_cost else "reference"


def decide(tally: Tally, thresholds: Thresholds) -> Decision:
    """MoveDown or Escalate when the interval lies at or beyond the threshold, Keep when it
    lies entirely on the other side; NeedMoreSamples below `min_samples` or while the
    interval still straddles the threshold (the data cannot tell yet)."""
    asked = question(tally)
    if asked == "downsize":
        rate, threshold = wilson(tally.matched, tally.samples), thresholds.match_target
    else:
        rate, threshold = wilson(tally.served_lost, tally.samples), thresholds.loss_limit
    if tally.samples < thresholds.min_samples:
        return Decision("NeedMoreSamples", asked, rate)
    if rate.lower >= threshold:
        return Decision("MoveDown" if asked == "downsize" else "Escalate", asked, rate)
    if rate.upper < threshold:
        return Decision("Keep", asked, rate)
    return Decision("NeedMoreSamples", asked, rate)


def percent(value: float) -> str:
    return f"{round(value * 100):d} %"


def describe(
    route: str,
    served: str,
    candidate: str,
    judge: JudgeKind,
    tally: Tally,
    decision: Decision,
    thresholds: Thresholds,
) -> str:
    """One sentence a platform team can act on, in the words of the report."""
    rate = f"{percent(decision.rate.estimate)} ± {percent(decision.rate.margin)}"
    of = f"of {tally.samples} samples"
    ratio = tally.cost_ratio
    cost = f" at {percent(ratio)} of the cost" if ratio is not None else ""
    if decision.question == "downsize":
        verb = "matched" if judge == "pairwise" else "agreed with"
        head = f"route `{route}`: `{candidate}` {verb} `{served}` on {rate} {of}{cost}"
        if decision.recommendation == "MoveDown":
            return f"{head} — consider moving it down"
        if decision.recommendation == "NeedMoreSamples":
            return f"{head} — {_undecided(tally, decision, thresholds.match_target, thresholds)}"
        return f"{head} — below the {percent(thresholds.match_target)} target: keep `{served}`"
    verb = "lost to" if judge == "pairwise" else "disagreed with"
    head = f"route `{route}`: `{served}` {verb} `{candidate}` on {rate} {of}"
    if decision.recommendation == "Escalate":
        return f"{head} — consider a cascade check or a bigger expert"
    if decision.recommendation == "NeedMoreSamples":
        return f"{head} — {_undecided(tally, decision, thresholds.loss_limit, thresholds)}"
    return f"{head} — within the {percent(thresholds.loss_limit)} limit: `{served}` holds up"


def _undecided(tally: Tally, decision: Decision, threshold: float, thresholds: Thresholds) -> str:
    if tally.samples < thresholds.min_samples:
        return f"too few samples (need {thresholds.min_samples})"
    low, high = percent(decision.rate.lower), percent(decision.rate.upper)
    return f"the interval {low} to {high} still spans {percent(threshold)}: more samples needed"
