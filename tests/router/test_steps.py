"""Dispatcher.run's steps: a before-step may answer, an escalation-step sees the rejected
answer, an after-step runs once the answer is complete and sent."""

from __future__ import annotations

import asyncio

from modelflock.router.app import RouterServer
from modelflock.router.http_server import Reply, Result
from modelflock.router.job import Answer, Job, Served
from modelflock.router.steps import Steps

from .conftest import Flock


class AnswerWhenAsked:
    async def before(self, job: Job) -> Result | None:
        if "from the step" not in job.parsed.prompt:
            job.context.append("CONTEXT FROM A STEP")
            return None
        return Reply(200, b'{"answered": "by the step"}', {"Content-Type": "application/json"})


class Recorder:
    def __init__(self) -> None:
        self.escalated: list[tuple[str, object]] = []
        self.served: list[tuple[str, Served, bool]] = []

    def on_escalation(self, job: Job, expert: str, answer: Answer) -> None:
        self.escalated.append((expert, answer.payload))

    def after(self, job: Job, served: Served) -> None:
        # The request's task has finished by now: the answer was already written.
        task = asyncio.current_task()
        self.served.append((job.route, served, task is None))


async def test_steps_around_the_experts(flock: Flock) -> None:
    await flock.sim("small", behaviour={"mode": "truncate"})
    await flock.sim("big", behaviour={"mode": "echo"})
    recorder = Recorder()
    steps = Steps(before=(AnswerWhenAsked(),), escalation=(recorder,), after=(recorder,))
    server = RouterServer(
        flock.write(
            {
                "experts": [flock.expert("small"), flock.expert("big")],
                "routes": [{"name": "c", "cascade": {"experts": ["small", "big"]}}],
            }
        ),
        extra_steps=steps,
    )
    await server.start("127.0.0.1", 0)
    flock.stack.push_async_callback(server.stop)
    session = await flock.http()
    body = {"model": "auto", "messages": [{"role": "user", "content": "answer from the step"}]}
    async with session.post(f"{server.url}/v1/chat/completions", json=body) as resp:
        assert await resp.json() == {"answered": "by the step"}
    assert flock.sims["small"].stats.requests == 0
    client = flock.client(server)
    answer = await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}]
    )
    # The small answer was truncated: escalated, and the step saw the rejected answer.
    assert [e for e, _ in recorder.escalated] == ["small"]
    # The before-step's context reached the expert (engine-sim echoes what it received).
    assert "CONTEXT FROM A STEP" in (answer.choices[0].message.content or "")
    for _ in range(50):
        if recorder.served:
            break
        await asyncio.sleep(0.01)
    [(route, served, off_path)] = recorder.served
    assert (route, served.expert, served.status, off_path) == ("c", "big", 200, True)
    assert served.answer is not None and served.answer.payload is not None
