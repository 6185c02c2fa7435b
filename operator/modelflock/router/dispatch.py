"""Dispatching one request: the steps around the experts (router/steps.py), then the experts:
cold/overload admission, attempts, cascade escalation, fallback.

Fallback happens only before the first byte reaches the client; once a stream is committed
it runs to its end (or the client's disconnect, which closes the upstream request too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from modelflock.router.accounting import RouterMetrics
from modelflock.router.balance import expert_health
from modelflock.router.errors import error_response
from modelflock.router.http1 import AnswerTooLarge, Response
from modelflock.router.http_server import Reply, Request, Result, Stream
from modelflock.router.job import Answer, Job, Served
from modelflock.router.request import parse_cost
from modelflock.router.sse import EventTooLarge, SseScanner
from modelflock.router.steps import Steps, admission, escalation_check
from modelflock.router.upstream import (
    ExpertRuntime,
    Upstream,
    UpstreamFailure,
    api_url,
    is_failing_status,
)
from modelflock.router.usage import UncheckedAnswer, usage_from_tail, usage_tokens

log = logging.getLogger(__name__)

__all__ = ["Answer", "Dispatcher", "Job", "build_payload", "with_context"]

_BROKEN_EVENT = (
    b'data: {"error": {"message": "the expert failed mid-stream", "type": '
    b'"server_error", "param": null, "code": "upstream_broken"}}\n\n'
)
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# One compact encoder for every request (json.dumps with separators builds one per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def with_context(body: dict[str, Any], kind: str, context: list[str]) -> dict[str, Any]:
    """The request with the steps' context in front: one system message for chat (after
    the client's own system messages), a prefix for a completion prompt."""
    text = "\n\n".join(context)
    if kind == "chat":
        messages = list(body.get("messages") or [])
        at = 0
        while at < len(messages) and isinstance(messages[at], dict):
            if messages[at].get("role") not in ("system", "developer"):
                break
            at += 1
        messages.insert(at, {"role": "system", "content": text})
        return {**body, "messages": messages}
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "\n".join(str(p) for p in prompt)
    return {**body, "prompt": f"{text}\n\n{prompt}"}


def build_payload(job: Job, expert: ExpertRuntime) -> bytes:
    body = dict(job.parsed.body)
    if (job.context or job.handoff) and job.parsed.kind != "embedding":
        context = [*job.context, job.handoff] if job.handoff else job.context
        body = with_context(body, job.parsed.kind, context)
    body["model"] = expert.config.model  # the router rewrites the model to the expert's
    if job.parsed.stream and not job.parsed.wants_usage:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    if job.adds_logprobs:
        body["logprobs"] = True if job.parsed.kind == "chat" else 1
    return _COMPACT.encode(body).encode()


def _usage(payload: object) -> tuple[int, int]:
    if isinstance(payload, UncheckedAnswer):
        return usage_tokens(payload.usage)
    return usage_tokens(payload.get("usage") if isinstance(payload, dict) else None)


def _answer_payload(body: bytes, request: Request) -> object:
    """The parsed answer, when its worst-case parse fits in the memory budget; otherwise an
    UncheckedAnswer with only its usage. ValueError when it is not JSON."""
    if not request.hold(parse_cost(body)):
        return UncheckedAnswer(usage_from_tail(body))
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the answer nests too deeply") from None


def _without_logprobs(payload: dict[str, Any]) -> bytes:
    for choice in payload.get("choices") or []:
        if isinstance(choice, dict):
            choice["logprobs"] = None
    return _COMPACT.encode(payload).encode()


class Dispatcher:
    def __init__(
        self, upstream: Upstream, metrics: RouterMetrics, steps: Steps | None = None
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.steps = steps or Steps()

    def _skip(self, job: Job, expert: str, reason: str, detail: str) -> None:
        job.reasons.append(f"{expert}: {detail}")
        self.metrics.fallbacks.inc((job.route, expert, reason))
        # Never the request or headers: only names and the failure (no secrets, no prompts).
        level = logging.INFO if reason in ("cold", "overloaded") else logging.WARNING
        log.log(level, "route %s: expert %s skipped (%s): %s", job.route, expert, reason, detail)

    def charge(self, job: Job, expert: str, tokens: tuple[int, int], baseline: bool) -> None:
        """Tokens and cost of one answer; the baseline counterfactual only for the final one."""
        prompt, completion = tokens
        if not (prompt or completion) or expert not in job.state.experts:
            return
        m, key = self.metrics, (job.route, expert)
        m.tokens.inc((*key, "input"), prompt)
        m.tokens.inc((*key, "output"), completion)
        runtime = job.state.experts[expert]
        cost = runtime.cost(prompt, completion)
        job.cost += cost
        m.cost.inc(key, cost)
        if baseline:
            base = job.state.baseline or runtime
            baseline_cost = base.cost(prompt, completion)
            job.baseline_cost += baseline_cost
            m.baseline_cost.inc(key, baseline_cost)

    def account(
        self,
        job: Job,
        expert: str,
        code: int,
        tokens: tuple[int, int],
        now: float | None = None,
        answer: Answer | None = None,
    ) -> None:
        """The final answer of a request (exactly once per request)."""
        job.outcome = Served(expert, code, answer)
        m, route = self.metrics, job.route
        m.requests.inc((route, expert, job.intent, str(code)))
        if now is None:
            now = asyncio.get_running_loop().time()
        m.latency.observe((route, expert), now - job.started)
        if code >= 400:
            m.errors.inc((route, expert, f"http_{code}"))
        self.charge(job, expert, tokens, baseline=True)

    async def run(self, job: Job) -> Result:
        """Before-steps (may answer), the experts in order, then the after-steps (off the
        client's path). Each feature is a step with pure decisions (router/steps.py)."""
        steps = self.steps
        result: Result | None = None
        for before in steps.before:
            result = await before.before(job)
            if result is not None:
                break
        if result is None:
            result = await self._experts(job)
        if steps.after and job.outcome is not None:
            # call_soon: runs once this task yields, i.e. after the server wrote the Reply
            # (a stream has already ended when run() returns).
            asyncio.get_running_loop().call_soon(self._after, job, job.outcome)
        return result

    def _after(self, job: Job, served: Served) -> None:
        for after in self.steps.after:
            try:
                after.after(job, served)
            except Exception:  # a post-answer step never affects serving
                log.exception("post-answer step %s failed", type(after).__name__)

    async def _admit(
        self, job: Job, name: str, expert: ExpertRuntime, has_next: bool, deadline: float
    ) -> bool:
        """May this expert be tried now? Waits for a cold one when the decision says so."""
        defaults = job.state.config.defaults
        discovery = self.upstream.discovery
        if discovery is None:
            return True
        live = discovery.live(name)
        health = expert_health(live, defaults.overload_queue_depth)
        if health == "ok":
            return True
        cold_start = expert.config.cold_start_seconds
        if live is not None and live.cold_start_seconds is not None:
            cold_start = live.cold_start_seconds
        loop = asyncio.get_running_loop()
        budget = max(0.0, min(defaults.cold_start_wait_seconds, deadline - loop.time()))
        decision = admission(health, has_next, cold_start, budget)
        if decision == "skip-cold":
            self._skip(job, name, "cold", "cold (no ready replica)")
            discovery.note_fallback(name)
            return False
        if decision == "skip-overloaded":
            self._skip(job, name, "overloaded", "overloaded (queue above threshold)")
            return False
        if decision == "wait":
            self.metrics.waiting.add((name,), 1)
            try:
                why = await discovery.wait_until_warm(name, budget, defaults.max_waiting_requests)
            finally:
                self.metrics.waiting.add((name,), -1)
            if why is not None:
                self._skip(job, name, "cold", f"cold, {why}")
                return False
        return True

    def _escalate(self, job: Job, name: str, to: str, check: str, answer: Answer) -> None:
        job.escalations += 1
        self.metrics.escalations.inc((job.route, name, to, check))
        job.reasons.append(f"{name}: escalated ({check})")
        if job.rejected is not None:  # superseded: its tokens were still paid for
            self.charge(job, job.rejected[0], _usage(job.rejected[1].payload), False)
        job.rejected = (name, answer)
        for step in self.steps.escalation:
            step.on_escalation(job, name, answer)

    async def _experts(self, job: Job) -> Result:
        """Try the experts in order: cold/overload admission, attempts, cascade, fallback."""
        defaults = job.state.config.defaults
        deadline = job.started + defaults.request_timeout_seconds
        seq, i = job.sequence, 0
        while i < len(seq):
            name, has_next = seq[i], i + 1 < len(seq)
            expert = job.state.experts[name]
            if not await self._admit(job, name, expert, has_next, deadline):
                i += 1
                continue
            # A replica that refused the connection never saw the request: it is not an attempt
            # (after a scale-down, several may be refused before discovery drops them).
            if job.attempts - len(job.refused) >= defaults.max_attempts:
                job.reasons.append(f"attempt limit {defaults.max_attempts} reached")
                break
            job.attempts += 1
            try:
                if job.parsed.stream:
                    return await self._stream(job, expert, deadline)
                answer = await self._once(job, expert, deadline)
            except UpstreamFailure as failure:
                self.metrics.attempts.inc((name, failure.kind))
                if failure.kind == "connect":
                    job.refused.add(job.last_endpoint)
                    if self.upstream.has_other_endpoint(expert, job.refused):
                        # A replica that just went away: another replica of the same expert
                        # before any fallback (discovery will drop it within seconds).
                        job.reasons.append(f"{name}: {job.last_endpoint} refused the connection")
                        continue
                self._skip(job, name, failure.kind, failure.detail)
                i += 1
                continue
            self.metrics.attempts.inc((name, "ok"))
            check = escalation_check(answer, job.checks, job.parsed.wants_json, i, job.cascade_len)
            if check is not None:
                self._escalate(job, name, seq[i + 1], check, answer)
                i += 1
                continue
            if job.rejected is not None:
                self.charge(job, job.rejected[0], _usage(job.rejected[1].payload), False)
            return self._respond(job, name, answer)
        if job.rejected is not None:  # every bigger expert failed: the small answer is all
            name, answer = job.rejected
            job.rejected = None
            return self._respond(job, name, answer)
        self.account(job, "none", 503, (0, 0))
        message = "no expert could serve the request: " + "; ".join(job.reasons or ["none"])
        return error_response(503, message, code="all_experts_failed", headers=job.headers("none"))

    def _respond(self, job: Job, expert: str, answer: Answer) -> Reply:
        body = answer.body
        if job.adds_logprobs and isinstance(answer.payload, dict):
            body = _without_logprobs(answer.payload)
        # For a non-streaming answer the first byte is the whole answer: one clock reading.
        now = asyncio.get_running_loop().time()
        self.metrics.ttfb.observe((job.route, expert), now - job.started)
        self.account(job, expert, answer.status, _usage(answer.payload), now, answer)
        # Non-streaming answers also carry their cost (streams commit headers before usage).
        headers = job.headers(expert)
        headers["x-modelflock-cost"] = repr(job.cost)
        headers["x-modelflock-baseline-cost"] = repr(job.baseline_cost)
        # The header the `content_type` setter would write (a bare mimetype, no charset),
        # without its parse-and-regenerate round trip.
        headers["Content-Type"] = answer.content_type or "application/json"
        return Reply(answer.status, body, headers)

    async def _once(self, job: Job, expert: ExpertRuntime, deadline: float) -> Answer:
        base = job.last_endpoint = self.upstream.endpoint(expert, job.refused)
        self.upstream.outstanding.acquire(base)
        loop = asyncio.get_running_loop()
        # For a non-streaming answer the first byte is the whole answer.
        first_byte_by = min(
            deadline, loop.time() + job.state.config.defaults.first_byte_timeout_seconds
        )
        try:
            async with asyncio.timeout_at(first_byte_by):
                resp = await self.upstream.client.post(
                    api_url(base, job.path), build_payload(job, expert), expert.headers
                )
                body = await resp.read(job.state.config.defaults.max_answer_bytes, job.request.hold)
                status, content_type = resp.status, resp.content_type
        except TimeoutError:
            raise UpstreamFailure("timeout", "no answer within the request budget") from None
        except AnswerTooLarge as exc:
            raise UpstreamFailure("too_large", str(exc)) from None
        except OSError as exc:
            raise UpstreamFailure("connect", str(exc) or type(exc).__name__) from None
        finally:
            self.upstream.outstanding.release(base)
        if is_failing_status(status):
            raise UpstreamFailure("status", f"HTTP {status}")
        try:
            payload = _answer_payload(body, job.request)
        except ValueError:
            if status == 200:
                raise UpstreamFailure("protocol", "answer is not JSON") from None
            payload = None
        return Answer(status, body, content_type, payload)

    async def _stream(self, job: Job, expert: ExpertRuntime, deadline: float) -> Result:
        loop = asyncio.get_running_loop()
        defaults = job.state.config.defaults
        base = job.last_endpoint = self.upstream.endpoint(expert, job.refused)
        self.upstream.outstanding.acquire(base)
        resp: Response | None = None
        finished = False
        try:
            first_byte_by = min(deadline, loop.time() + defaults.first_byte_timeout_seconds)
            try:
                async with asyncio.timeout_at(first_byte_by):
                    resp = await self.upstream.client.post(
                        api_url(base, job.path), build_payload(job, expert), expert.headers
                    )
                    if is_failing_status(resp.status):
                        raise UpstreamFailure("status", f"HTTP {resp.status}")
                    if resp.status != 200:  # the client's own mistake: pass it on
                        body = await resp.read(defaults.max_answer_bytes, job.request.hold)
                        answer = Answer(resp.status, body, resp.content_type, None)
                        finished = True
                        return self._respond(job, expert.name, answer)
                    first = await resp.readany()
            except TimeoutError:
                raise UpstreamFailure("timeout", "no first byte in time") from None
            except OSError as exc:
                raise UpstreamFailure("connect", str(exc) or type(exc).__name__) from None
            if not first:
                raise UpstreamFailure("protocol", "empty stream")
            self.metrics.attempts.inc((expert.name, "ok"))
            # Committed: from here on, no fallback.
            out = await job.request.stream(200, {**_SSE_HEADERS, **job.headers(expert.name)})
            self.metrics.ttfb.observe((job.route, expert.name), loop.time() - job.started)
            finished = await self._relay(job, expert.name, resp, first, out, deadline)
            return out
        finally:
            if resp is not None:
                if finished:
                    resp.release()
                else:
                    resp.close()  # closes the connection: the engine aborts the request
            self.upstream.outstanding.release(base)

    async def _relay(
        self,
        job: Job,
        expert: str,
        resp: Response,
        first: bytes,
        out: Stream,
        deadline: float,
    ) -> bool:
        """Copy the stream chunk by chunk; True when it ended normally."""
        scanner = SseScanner(strip_usage=not job.parsed.wants_usage, hold=job.request.hold)
        kind = "ok"
        try:
            data = scanner.feed(first)
            if data:
                await out.write(data)
            async with asyncio.timeout_at(deadline):
                async for chunk in resp.iter_chunks():
                    data = scanner.feed(chunk)
                    if data:
                        await out.write(data)
            tail = scanner.flush()
            if tail:
                await out.write(tail)
            await out.end()
        except (ConnectionResetError, asyncio.CancelledError):
            kind = "client_disconnected"
            raise
        except (TimeoutError, OSError, EventTooLarge):
            # Bytes were already sent, so no fallback: tell the client in-band (the OpenAI
            # SDKs raise on an `error` event) and end the stream; a client that is not reading
            # (the deadline passed while writing to it) is cut off instead.
            kind = "upstream_broken"
            with contextlib.suppress(ConnectionResetError):
                await out.finish_with(_BROKEN_EVENT)
        finally:
            tokens = (
                (scanner.usage or {}).get("prompt_tokens", 0),
                ((scanner.usage or {}).get("completion_tokens", scanner.content_events)),
            )
            self.account(job, expert, 200, tokens)
            if kind != "ok":
                self.metrics.errors.inc((job.route, expert, kind))
        return kind == "ok"
