"""The shadow step: after an answer is complete, replay a sample to candidates and judge it.

Off the client's path by construction: `after()` runs once the answer was written (an
after-step of Dispatcher.run) and only starts tasks. A sample never waits: no free slot
(maxConcurrent), no budget, a cold or busy candidate or judge — it is dropped and counted.
Prompts and answers live in memory for the sample's duration only; only counters and costs
are kept (and exported as metrics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from modelflock.evaluation.judge import (
    DEFAULT_RUBRIC,
    Outcome,
    cosine,
    judge_payload,
    pairwise_outcome,
    parse_verdict,
    similarity_outcome,
)
from modelflock.router.config import Evaluation, RouterConfig
from modelflock.router.dispatch import build_payload
from modelflock.router.job import Job, Served
from modelflock.router.shadow.budget import DailyBudget
from modelflock.router.shadow.metrics import ShadowMetrics
from modelflock.router.shadow.sampling import RoutePlan, candidate_admission, route_plans, sample
from modelflock.router.upstream import ExpertRuntime, Upstream, UpstreamFailure, api_url

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # route, served expert, candidate


def answer_text(payload: object) -> str | None:
    """The text of the first choice of a chat or completion answer."""
    if not isinstance(payload, dict):
        return None
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = first.get("text")
    return text if isinstance(text, str) else None


def usage_tokens(payload: object) -> tuple[int, int]:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


@dataclass(frozen=True)
class Sample:
    """One sampled request and candidate (in memory only while it runs)."""

    key: Key
    job: Job
    served_text: str
    candidate: ExpertRuntime
    judge: ExpertRuntime
    evaluation: Evaluation
    candidate_first: bool  # pairwise: the candidate's answer is shown as A


class ShadowStep:
    """The after-step of Dispatcher.run that samples answered requests."""

    def __init__(
        self,
        upstream: Upstream,
        metrics: ShadowMetrics,
        budget: DailyBudget,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.budget = budget
        self.rng = rng or random.Random()
        self._config: RouterConfig | None = None
        self._plans: dict[str, RoutePlan] = {}
        self.running = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def _plans_for(self, config: RouterConfig) -> dict[str, RoutePlan]:
        if config is not self._config:  # compiled once per config (reloads swap it)
            self._config, self._plans = config, route_plans(config.evaluation)
        return self._plans

    def after(self, job: Job, served: Served) -> None:
        config = job.state.config
        if config.evaluation is None or served.expert not in job.state.experts:
            # Only expert answers are compared: one served from a knowledge base (`kb:<name>`,
            # docs/retrieval.md) has no expert to weigh a candidate against.
            return
        decision = sample(
            self._plans_for(config),
            job.route,
            served.expert,
            served.status,
            served.answer is None,
            job.request.headers,
            self.rng.random(),
        )
        if isinstance(decision, str) or served.answer is None:
            return
        served_text = answer_text(served.answer.payload)
        if served_text is None:
            return
        loop = asyncio.get_running_loop()
        served_seconds = loop.time() - job.started
        prompt_tokens, completion_tokens = usage_tokens(served.answer.payload)
        runtime = job.state.experts.get(served.expert)
        served_cost = runtime.cost(prompt_tokens, completion_tokens) if runtime else 0.0
        for name in decision:
            key = (job.route, served.expert, name)
            reason = self._admit(job, name, config.evaluation)
            if reason is not None:
                self.metrics.dropped.inc((*key, reason))
                continue
            sample_ = Sample(
                key=key,
                job=job,
                served_text=served_text,
                candidate=job.state.experts[name],
                judge=job.state.experts[config.evaluation.judge.expert],
                evaluation=config.evaluation,
                candidate_first=self.rng.random() < 0.5,
            )
            self.running += 1
            self.metrics.in_flight.add((), 1)
            task = loop.create_task(self._run(sample_, served_cost, served_seconds))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.running -= 1
        self.metrics.in_flight.add((), -1)

    def _admit(self, job: Job, candidate: str, evaluation: Evaluation) -> str | None:
        """Why this sample is dropped now, or None to run it."""
        if self.running >= evaluation.max_concurrent:
            return "concurrency"
        self.metrics.limit.values[()] = float(evaluation.daily_budget_usd)
        if not self.budget.allows():
            return "budget"
        discovery = self.upstream.discovery
        if discovery is None:
            return None
        health = candidate_admission(discovery.live(candidate))
        if health == "cold" and evaluation.wake_cold_candidates:
            discovery.wake(candidate)  # for a later sample; this one is not held
        if health != "go":
            return health
        if candidate_admission(discovery.live(evaluation.judge.expert)) != "go":
            return "judge-unavailable"
        return None

    def _spend(self, amount: float) -> None:
        if amount:
            self.budget.spend(amount)
        self.metrics.spent.values[()] = self.budget.spent

    async def _run(self, s: Sample, served_cost: float, served_seconds: float) -> None:
        m = self.metrics
        try:
            async with asyncio.timeout(s.evaluation.judge.timeout_seconds):
                loop = asyncio.get_running_loop()
                started = loop.time()
                payload = await self._call(s.candidate, s.job.path, self._candidate_body(s))
                candidate_seconds = loop.time() - started
                candidate_cost = s.candidate.cost(*usage_tokens(payload))
                self._spend(candidate_cost)
                text = answer_text(payload)
                if text is None:
                    raise UpstreamFailure("protocol", "the candidate's answer has no text")
                outcome, judge_cost = await self._judge(s, text)
        except TimeoutError:
            m.dropped.inc((*s.key, "timeout"))
            return
        except _JudgeFailure as failure:
            self._spend(failure.cost)
            m.cost.inc((*s.key, "judge"), failure.cost)
            m.dropped.inc((*s.key, "judge-error"))
            log.info("shadow sample %s: judge failed: %s", "/".join(s.key), failure)
            return
        except UpstreamFailure as failure:
            m.dropped.inc((*s.key, "candidate-error"))
            log.info("shadow sample %s: candidate failed: %s", "/".join(s.key), failure.kind)
            return
        except Exception:  # a sample must never take anything else down
            m.dropped.inc((*s.key, "candidate-error"))
            log.exception("shadow sample %s failed", "/".join(s.key))
            return
        self._spend(judge_cost)
        judge_kind = "pairwise" if s.evaluation.judge.type == "expert" else "similarity"
        m.samples.inc((*s.key, judge_kind, outcome))
        m.cost.inc((*s.key, "served"), served_cost)
        m.cost.inc((*s.key, "candidate"), candidate_cost)
        m.cost.inc((*s.key, "judge"), judge_cost)
        m.latency.observe((*s.key, "served"), served_seconds)
        m.latency.observe((*s.key, "candidate"), candidate_seconds)

    def _candidate_body(self, s: Sample) -> bytes:
        # The request as the served expert got it (context steps included), for the candidate.
        return build_payload(s.job, s.candidate)

    async def _call(self, expert: ExpertRuntime, path: str, body: bytes) -> dict[str, Any]:
        upstream = self.upstream
        base = upstream.endpoint(expert)
        upstream.outstanding.acquire(base)
        try:
            resp = await upstream.client.post(api_url(base, path), body, expert.headers)
            raw = await resp.read()
        except OSError as exc:
            raise UpstreamFailure("connect", str(exc) or type(exc).__name__) from None
        finally:
            upstream.outstanding.release(base)
        if resp.status != 200:
            raise UpstreamFailure("status", f"HTTP {resp.status}")
        try:
            payload = json.loads(raw)
        except ValueError:
            raise UpstreamFailure("protocol", "answer is not JSON") from None
        if not isinstance(payload, dict):
            raise UpstreamFailure("protocol", "answer is not a JSON object")
        return payload

    async def _judge(self, s: Sample, candidate_text: str) -> tuple[Outcome, float]:
        judge = s.evaluation.judge
        if judge.type == "similarity":
            body = {
                "model": s.judge.config.model,
                "input": [s.served_text, candidate_text],
                "encoding_format": "float",
            }
            try:
                payload = await self._call(s.judge, "/embeddings", json.dumps(body).encode())
            except UpstreamFailure as failure:
                raise _JudgeFailure(str(failure), 0.0) from None
            cost = s.judge.cost(usage_tokens(payload)[0], 0)
            try:
                data = sorted(payload["data"], key=lambda d: d["index"])
                served_vec, candidate_vec = (list(map(float, d["embedding"])) for d in data[:2])
                similarity = cosine(served_vec, candidate_vec)
            except (KeyError, TypeError, ValueError) as exc:
                raise _JudgeFailure(f"bad embeddings: {exc}", cost) from None
            return similarity_outcome(similarity, float(judge.min_similarity)), cost
        question = s.job.parsed.prompt
        first, second = (
            (candidate_text, s.served_text)
            if s.candidate_first
            else (s.served_text, candidate_text)
        )
        request = judge_payload(
            s.judge.config.model,
            s.judge.config.engine,
            judge.rubric or DEFAULT_RUBRIC,
            question,
            first,
            second,
        )
        try:
            payload = await self._call(s.judge, "/chat/completions", json.dumps(request).encode())
        except UpstreamFailure as failure:
            raise _JudgeFailure(str(failure), 0.0) from None
        cost = s.judge.cost(*usage_tokens(payload))
        verdict = parse_verdict(answer_text(payload) or "")
        if verdict is None:
            raise _JudgeFailure("the judge gave no verdict", cost)
        return pairwise_outcome(verdict, s.candidate_first), cost

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _JudgeFailure(Exception):
    def __init__(self, detail: str, cost: float) -> None:
        super().__init__(detail)
        self.cost = cost
