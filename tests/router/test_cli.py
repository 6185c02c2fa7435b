"""The real commands as processes: `modelflock engine-sim` and `modelflock router`; an engine
process killed with SIGTERM makes the router fall back; the key stays out of the logs."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import openai

SECRET = "sk-cli-SECRET-abcdef0123"


async def start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelflock",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = (await proc.stdout.readline()).decode()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, line
    return proc, match.group(0)


async def stop(proc: asyncio.subprocess.Process) -> bytes:
    if proc.returncode is None:
        proc.terminate()
    _, err = await proc.communicate()
    return err


async def test_router_and_engine_processes(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET)
    primary, primary_url = await start(
        "engine-sim", "--port", "0", "--model", "primary", "--instant"
    )
    backup, backup_url = await start(
        "engine-sim", "--port", "0", "--model", "backup", "--instant", "--api-key-file", str(key)
    )
    config = tmp_path / "router.json"
    config.write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "experts": [
                    {"name": "primary", "urls": [primary_url], "model": "primary"},
                    {
                        "name": "backup",
                        "engine": "external",
                        "urls": [backup_url],
                        "model": "backup",
                        "apiKeyFile": str(key),
                        "allowPlainHttp": True,  # the test's engine is on loopback
                    },
                ],
                "routes": [{"name": "r", "expert": "primary", "fallbacks": ["backup"]}],
            }
        )
    )
    router, router_url = await start("router", "--config", str(config), "--log-level", "DEBUG")
    client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-modelflock-expert"] == "primary"
        await stop(primary)  # SIGTERM: the engine process is gone
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-modelflock-expert"] == "backup"
    finally:
        await client.close()
        logs = await stop(router)
        await stop(backup)
    assert router.returncode == 0
    assert b"expert primary skipped" in logs  # the failure is logged...
    assert SECRET.encode() not in logs


async def test_router_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("routes: [{name: r, expert: ghost}]\nexperts: []\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelflock",
        "router",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"cannot load" in err
