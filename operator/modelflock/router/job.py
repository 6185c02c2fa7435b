"""One request on its way through the router, and what it was answered with."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelflock.retrieval.store import Passage
from modelflock.router.checks import CompiledChecks
from modelflock.router.config import Route
from modelflock.router.http_server import Request
from modelflock.router.request import ParsedRequest
from modelflock.router.state import RouterState


@dataclass(frozen=True)
class Answer:
    """A complete (non-streaming) answer of an expert, or of a step that answers itself."""

    status: int
    body: bytes
    content_type: str
    payload: object  # parsed JSON, or None


@dataclass(slots=True)
class Served:
    """How a request was finally answered; what post-answer steps see."""

    expert: str  # "none" when no expert could answer (503)
    status: int
    answer: Answer | None  # the non-streaming answer the client got; None for streams


@dataclass
class Job:
    """One request on its way through the router."""

    request: Request
    parsed: ParsedRequest
    state: RouterState
    path: str  # e.g. "/chat/completions"
    route: str
    intent: str
    classifier: str
    sequence: list[str]  # experts in trying order: cascade (or expert), then fallbacks
    cascade_len: int
    checks: CompiledChecks | None  # set only for non-streaming cascades
    started: float  # loop time
    route_spec: Route | None = None  # the matched route (None for direct/embedding requests)
    attempts: int = 0
    escalations: int = 0
    reasons: list[str] = field(default_factory=list)
    # What this request cost (every answer paid for, escalated ones included) and what the
    # final answer would have cost at the baseline expert's prices.
    cost: float = 0.0
    baseline_cost: float = 0.0
    # Replicas that refused a connection during this request (another one is tried first).
    refused: set[str] = field(default_factory=set)
    last_endpoint: str = ""
    # The last answer a cascade check rejected (the fallback answer if bigger experts fail).
    rejected: tuple[str, Answer] | None = None
    # Text that steps add to the expert's request (retrieved passages, a handed-off draft);
    # build_payload puts it in front of the conversation as one system message.
    context: list[str] = field(default_factory=list)
    # Headers that steps add to the answer (e.g. retrieval hit/miss and score).
    extra_headers: dict[str, str] = field(default_factory=dict)
    # What an escalation hands the next expert (replaced at each escalation).
    handoff: str = ""
    # Passages the retrieval step found (all of them, also below minScore).
    retrieved: list[Passage] = field(default_factory=list)
    outcome: Served | None = None  # set when the final answer is accounted

    def headers(self, expert: str) -> dict[str, str]:
        headers = {
            "x-modelflock-expert": expert,
            "x-modelflock-route": self.route,
            "x-modelflock-intent": self.intent,
            "x-modelflock-classifier": self.classifier,
            "x-modelflock-attempts": str(self.attempts),
            "x-modelflock-escalations": str(self.escalations),
        }
        if self.extra_headers:
            headers.update(self.extra_headers)
        return headers

    @property
    def adds_logprobs(self) -> bool:
        """lowConfidence needs logprobs; ask for them even if the client did not."""
        return (
            self.checks is not None
            and "lowConfidence" in self.checks.checks
            and not self.parsed.wants_logprobs
        )
