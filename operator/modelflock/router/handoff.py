"""The handoff step (on escalation): the bigger expert gets the smaller one's draft and, in
mode `context`, the passages retrieval found, bounded by `handoffMaxTokens`."""

from __future__ import annotations

from modelflock.router.accounting import RouterMetrics
from modelflock.router.answer import estimate_tokens, handoff_text
from modelflock.router.checks import answer_text
from modelflock.router.job import Answer, Job


def _first_choice_text(payload: object) -> str:
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    return answer_text(choices[0])


class HandoffStep:
    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics

    def on_escalation(self, job: Job, expert: str, answer: Answer) -> None:
        cascade = job.route_spec.cascade if job.route_spec is not None else None
        if cascade is None or cascade.handoff == "none":
            return
        draft = _first_choice_text(answer.payload)
        passages = job.retrieved if cascade.handoff == "context" else []
        job.handoff = handoff_text(cascade.handoff, draft, passages, cascade.handoff_max_tokens)
        if job.handoff:
            self.metrics.handoffs.inc((job.route, cascade.handoff))
            self.metrics.handoff_tokens.inc(
                (job.route, cascade.handoff), estimate_tokens(job.handoff)
            )
