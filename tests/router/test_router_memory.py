"""Memory per request is bounded (issue 14, finding 1), measured on a real router process: a
4 MiB body of empty objects and a valid ~15 MB answer (max_tokens 11000 with top_logprobs 20)
used to take the router past its 128 MiB container limit (RSS +107 MB and +130 MB)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modelflock.sim import SimServer, SimSettings

CONTAINER_LIMIT_MIB = 128  # the sidecar's and gateway's default memory limit
BUDGET_MIB = 32  # defaults.maxBufferedBytes


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
async def router_process(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    sim = SimServer(
        SimSettings(
            model="big",
            prefill_seconds=0,
            decode_seconds_per_token=0,
            output_tokens=11_000,
            instant=True,
        )
    )
    await sim.start("127.0.0.1", 0)
    config = tmp_path / "router.json"
    config.write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "experts": [{"name": "big", "urls": [sim.url], "model": "big"}],
                "routes": [{"name": "all", "expert": "big"}],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "modelflock", "router", "--config", str(config), "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("router listening on "), line
        yield line.split()[-1], proc.pid
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await sim.stop()


async def test_a_hostile_body_and_a_huge_answer_stay_within_the_budget(
    router_process: tuple[str, int],
) -> None:
    url, pid = router_process
    chat = f"{url}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(5):  # warm: imports, pools, first allocations
            small = {
                "model": "auto",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}],
            }
            async with session.post(chat, json=small) as resp:
                assert resp.status == 200
        warm = peak_rss_mib(pid)
        hostile = b'{"model":"auto","messages":[{"role":"user","content":"x"}],"x":['
        hostile += b"{}," * 1_300_000 + b"{}]}"
        async with session.post(chat, data=io.BytesIO(hostile)) as resp:
            hostile_status = resp.status
        huge = {
            "model": "auto",
            "max_tokens": 11000,
            "logprobs": True,
            "top_logprobs": 20,
            "messages": [{"role": "user", "content": "write at length"}],
        }
        async with session.post(chat, json=huge) as resp:
            assert resp.status == 200
            answer = json.loads(await resp.read())
        assert len(answer["choices"][0]["logprobs"]["content"]) == 11000
        assert answer["usage"]["completion_tokens"] == 11000
    peak = peak_rss_mib(pid)
    assert peak - warm < BUDGET_MIB, f"peak RSS grew {peak - warm:.0f} MiB from {warm:.0f} MiB"
    assert peak < CONTAINER_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
    assert hostile_status == 413  # refused before parsing: it would not fit in the budget
