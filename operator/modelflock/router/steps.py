"""The steps Dispatcher.run calls around the experts, and the pure decisions inside it.

run() is: before-steps (each may answer the request itself, or add context to it), then the
experts in order (admission, attempt, cascade check, escalation-steps, fallback), then the
after-steps. A feature arrives as a step here, not as another branch in the loop:
- before: retrieval (answer from a knowledge base, or add its passages as context);
- escalation: handoff (give the bigger expert the smaller one's draft);
- after: post-answer work such as shadow sampling. After-steps are called with
  `loop.call_soon` once the answer is complete (a Reply is written by the server in the same
  task step that returns it; a stream has ended when run() returns), so they are off the
  client's path. They must not block: anything slow goes into a task the step owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from modelflock.router.balance import Health
from modelflock.router.checks import CompiledChecks, failed_check
from modelflock.router.http_server import Result
from modelflock.router.job import Answer, Job, Served

Admission = Literal["go", "wait", "skip-cold", "skip-overloaded"]


class BeforeStep(Protocol):
    async def before(self, job: Job) -> Result | None:
        """Answer the request (a Result), or change the job and return None."""
        ...


class EscalationStep(Protocol):
    def on_escalation(self, job: Job, expert: str, answer: Answer) -> None:
        """A cascade check rejected `expert`'s answer; the next expert is tried after this."""
        ...


class AfterStep(Protocol):
    def after(self, job: Job, served: Served) -> None:
        """The answer is complete and sent; must not block (start a task for slow work)."""
        ...


@dataclass(frozen=True)
class Steps:
    before: tuple[BeforeStep, ...] = ()
    escalation: tuple[EscalationStep, ...] = ()
    after: tuple[AfterStep, ...] = ()


def admission(health: Health, has_next: bool, cold_start: float, budget: float) -> Admission:
    """Whether to try an expert now: a cold one is waited for unless a later expert exists
    and its cold start would not fit the budget; an overloaded one is skipped when a later
    expert exists."""
    if health == "cold":
        return "skip-cold" if has_next and cold_start > budget else "wait"
    if health == "overloaded" and has_next:
        return "skip-overloaded"
    return "go"


def escalation_check(
    answer: Answer,
    checks: CompiledChecks | None,
    wants_json: bool,
    index: int,
    cascade_len: int,
) -> str | None:
    """The failed cascade check that sends the request to the next cascade expert, if any
    (only for a 200 answer of a cascade expert that is not the last one)."""
    if answer.status != 200 or checks is None or index >= cascade_len - 1:
        return None
    return failed_check(answer.payload, checks, wants_json)
