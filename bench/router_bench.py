"""Router benchmark: direct to the engine vs the ModelFlock router vs the LiteLLM proxy.

Everything on 127.0.0.1. The proxy under test is pinned to core 0; the simulated engine
(instant mode) and the load generators share core 1. Load: `wrk` (non-streaming) and an
aiohttp client (streaming time to first chunk, 1,000 concurrent streams).

    python bench/router_bench.py [--duration 4] [--litellm PATH | --no-litellm]
                                 [--compare-tree DIR]

--compare-tree DIR adds a second router run from another checkout's `operator/` (e.g. a
worktree of main) to the same interleaved run: a before/after comparison of a change.

--embedding adds a router whose classifier runs rules, then an embedding stage against the
real all-MiniLM-L6-v2 (engine-sim --embedding-model minilm, on core 1), with a different
prompt in every request so that each one is embedded (no LRU hits): the row shows what the
embedding call costs a request; what the classifier adds beyond the call is measured by
`bench/classifier_eval.py --overhead`.

--shadow-rate 0.05 adds a second router whose only difference is shadow evaluation sampling
5 % of the answers (a candidate replay and a pairwise judge call each, to an instant engine
on core 1), in the same interleaved run, and prints its latency and throughput relative to
the router with sampling off (docs/router.md).

Prints one table. Bounded: every phase has a fixed duration or count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"
BODY = {
    "model": "auto",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "write a python function to sort a list"}],
}
MASTER_KEY = "sk-bench-local"
CONCURRENCY = (1, 8, 16, 32, 64)
DEFAULT_LITELLM = Path.home() / ".cache/modelflock-bench/litellm-venv/bin/litellm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 90.0) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(
    cmd: list[str], core: int, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        ["taskset", "-c", str(core), *cmd],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (taskset execs in place; LiteLLM may fork)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = [pid]
    for child in out:
        pids += tree_pids(int(child))
    return pids


def peak_rss_mib(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, concurrency: int, duration: int, script: Path) -> WrkResult:
    cmd = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert m, text
        return float(m.group(1)) * _UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        text,
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    assert rps and total, text
    return WrkResult(float(rps.group(1)), pct("50"), pct("99"), int(total.group(1)), errors)


async def stream_ttfc(url: str, headers: dict[str, str], count: int) -> float:
    """Median time to the first content chunk of sequential streaming requests (ms)."""
    body = {**BODY, "stream": True}
    samples = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(count):
            start = time.perf_counter()
            async with session.post(url, json=body) as resp:
                assert resp.status == 200, await resp.text()
                async for line in resp.content:
                    if b'"content"' in line:
                        samples.append((time.perf_counter() - start) * 1000)
                        break
                await resp.read()
    return statistics.median(samples)


async def many_streams(url: str, headers: dict[str, str], count: int, model: str) -> int:
    """Open `count` concurrent streams to a slow engine; returns how many completed."""
    body = {**BODY, "model": model, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout
    ) as session:

        async def one() -> bool:
            try:
                async with session.post(url, json=body) as resp:
                    data = await resp.read()
                    return resp.status == 200 and b"[DONE]" in data
            except (aiohttp.ClientError, TimeoutError):
                return False

        results = await asyncio.gather(*[one() for _ in range(count)])
    return sum(results)


@dataclass
class Target:
    name: str
    url: str  # base URL
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    rows: dict[int, WrkResult] = field(default_factory=dict)
    cpu_ms_per_request: float | None = None
    ttfc_ms: float | None = None
    rss_mib: float | None = None
    streams_ok: int | None = None
    unique_prompts: bool = False  # every request a new prompt (defeats the embedding LRU)


def write_wrk_script(path: Path, headers: dict[str, str], unique: bool = False) -> None:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(BODY))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if unique:  # no rule matches it, and no two requests share a prompt
        lines += [
            "counter = 0",
            "request = function()",
            "  counter = counter + 1",
            '  local text = "any tips for a relaxing weekend, idea " .. counter .. " of "'
            " .. math.random(1, 1000000000)",
            '  local body = \'{"model":"auto","max_tokens":16,"messages":[{"role":"user",'
            '"content":"\' .. text .. \'"}]}\'',
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n")


def median_result(results: list[WrkResult]) -> WrkResult:
    return WrkResult(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
    )


def measure_all(targets: list[Target], duration: int, reps: int, workdir: Path) -> None:
    """Interleave targets run by run (the machine is shared: its speed drifts), keep medians."""
    scripts = {}
    for t in targets:
        scripts[t.name] = workdir / f"{t.name.split()[0]}.lua"
        write_wrk_script(scripts[t.name], t.headers, t.unique_prompts)
        run_wrk(f"{t.url}/v1/chat/completions", 8, 1, scripts[t.name])  # warm up
    cpu: dict[str, float] = dict.fromkeys(scripts, 0.0)
    for concurrency in CONCURRENCY:
        runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
        for _ in range(reps):
            for t in targets:
                pids = tree_pids(t.pid) if t.pid else []
                before = sum(cpu_seconds(p) for p in pids)
                result = run_wrk(
                    f"{t.url}/v1/chat/completions", concurrency, duration, scripts[t.name]
                )
                if pids and concurrency == 32:
                    cpu[t.name] += sum(cpu_seconds(p) for p in pids) - before
                runs[t.name].append(result)
        for t in targets:
            t.rows[concurrency] = median_result(runs[t.name])
            r = t.rows[concurrency]
            if concurrency == 32 and t.pid:
                t.cpu_ms_per_request = cpu[t.name] * 1000 / max(r.requests, 1)
            print(
                f"  {t.name:<18} c={concurrency:<3} {r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms"
                f"  p99 {r.p99_ms:6.2f} ms  errors {r.errors}",
                file=sys.stderr,
                flush=True,
            )
    ttfc: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            ttfc[t.name].append(
                asyncio.run(stream_ttfc(f"{t.url}/v1/chat/completions", t.headers, 100))
            )
    for t in targets:
        t.ttfc_ms = statistics.median(ttfc[t.name])


EMBEDDING_EXAMPLES = {
    "code": ["write a python function to sort a list", "fix this bug in my code"],
    "summarize": ["summarize this article in three bullets", "give me the key points"],
    "chat": ["any ideas for a fun evening?", "how was your day?", "recommend a good movie"],
}


def router_config(
    path: Path,
    fast: str,
    slow: str,
    candidate: str | None = None,
    rate: float = 0.0,
    limits: bool = True,
    embedder: str | None = None,
) -> None:
    """The benchmark's router; with `candidate`, shadow evaluation samples `rate` of answers
    to it (it also judges them). With `limits`, the concurrency and connection caps are raised
    so the 1,000-stream phase is admitted (leave it out for a tree from before the caps). With
    `embedder`, an embedding stage follows the rules."""
    extra: dict[str, object] = {}
    defaults: dict[str, object] = {"maxWaitingRequests": 2000}
    if limits:
        defaults |= {"maxConcurrentRequests": 2000, "maxConnections": 4096}
    if candidate is not None:
        extra = {
            "evaluation": {
                "judge": {"type": "expert", "expert": "cand"},
                "routes": [
                    {"name": r, "sampleRate": f"{rate:g}", "candidates": ["cand"]}
                    for r in ("code", "other")
                ],
                "dailyBudgetUSD": "1000000",
            }
        }
    experts = [{"name": "cand", "urls": [candidate], "model": "cand"}] if candidate else []
    stages: list[dict[str, object]] = [{"type": "rules"}]
    if embedder is not None:
        experts.append(
            {
                "name": "embed",
                "urls": [embedder],
                "model": "all-MiniLM-L6-v2",
                "capabilities": ["embed"],
            }
        )
        stages.append({"type": "embedding", "expert": "embed", "timeoutMilliseconds": 5000})
    path.write_text(
        json.dumps(
            {
                **extra,
                "listen": {"host": HOST, "port": 0},
                "models": ["auto"],
                "experts": [
                    {
                        "name": "fast",
                        "urls": [fast],
                        "model": "auto",
                        "prices": {"inputPerMillion": "0.1", "outputPerMillion": "0.2"},
                    },
                    {"name": "slow", "urls": [slow], "model": "slow"},
                    *experts,
                ],
                "classifier": {
                    "stages": stages,
                    "intents": [
                        {
                            "name": "code",
                            "keywords": ["python", "function", "bug"],
                            "patterns": [r"\bdef \w+\("],
                            "examples": EMBEDDING_EXAMPLES["code"],
                        },
                        {
                            "name": "summarize",
                            "keywords": ["summarize", "tl;dr"],
                            "examples": EMBEDDING_EXAMPLES["summarize"],
                        },
                        {"name": "chat", "examples": EMBEDDING_EXAMPLES["chat"]},
                    ],
                    "defaultIntent": "chat",
                },
                "routes": [
                    {"name": "code", "match": {"intents": ["code"]}, "expert": "fast"},
                    {"name": "other", "expert": "fast"},
                ],
                "defaults": defaults,
            }
        )
    )


def litellm_config(path: Path, fast: str, slow: str) -> None:
    path.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "auto",
                        "litellm_params": {
                            "model": "openai/auto",
                            "api_base": f"{fast}/v1",
                            "api_key": "sk-unused",
                        },
                    },
                    {
                        "model_name": "slow",
                        "litellm_params": {
                            "model": "openai/slow",
                            "api_base": f"{slow}/v1",
                            "api_key": "sk-unused",
                        },
                    },
                ],
                "general_settings": {"master_key": MASTER_KEY},
                "litellm_settings": {"telemetry": False},
            }
        )
    )


def table(targets: list[Target], direct: Target, streams: int) -> str:
    head = [
        "",
        "added p50 c=1",
        "added p99 c=1",
        "req/s c=32",
        "max req/s (p99 +<5ms)",
        "stream TTFC (+)",
        "CPU/req",
        "req/s per CPU-s",
        f"peak RSS, {streams} streams",
    ]
    rows = [head]
    for t in targets:
        c1, d1 = t.rows[1], direct.rows[1]
        sustainable = max(
            (
                r.rps
                for c, r in t.rows.items()
                if r.p99_ms - direct.rows[c].p99_ms < 5.0 and r.errors == 0
            ),
            default=0.0,
        )
        is_direct = t is direct
        rows.append(
            [
                t.name,
                "-" if is_direct else f"+{c1.p50_ms - d1.p50_ms:.2f} ms",
                "-" if is_direct else f"+{c1.p99_ms - d1.p99_ms:.2f} ms",
                f"{t.rows[32].rps:,.0f}",
                f"{sustainable:,.0f}",
                f"{t.ttfc_ms:.2f} ms"
                if is_direct or t.ttfc_ms is None or direct.ttfc_ms is None
                else f"+{t.ttfc_ms - direct.ttfc_ms:.2f} ms",
                "-" if t.cpu_ms_per_request is None else f"{t.cpu_ms_per_request:.2f} ms",
                "-" if not t.cpu_ms_per_request else f"{1000 / t.cpu_ms_per_request:,.0f}",
                "-" if t.rss_mib is None else f"{t.rss_mib:.0f} MiB ({t.streams_ok} ok)",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def shadow_samples(base: str) -> dict[str, float]:
    """What the sampling router did: judged samples and drops by reason."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "modelflock_router_shadow_samples_total":
                found["judged"] = found.get("judged", 0) + s.value
            elif s.name == "modelflock_router_shadow_dropped_total":
                key = f"dropped ({s.labels['reason']})"
                found[key] = found.get(key, 0) + s.value
            elif s.name == "modelflock_router_requests_total":
                found["requests"] = found.get("requests", 0) + s.value
    return found


def shadow_comparison(off: Target, on: Target, direct: Target, samples: dict[str, float]) -> str:
    """Sampling on vs off, same run: the router's added latency and its throughput."""
    lines = [
        "| sampling | added p50 c=1 | added p99 c=1 | p50 c=32 | p99 c=32 | req/s c=32 |",
        "|---|---|---|---|---|---|",
    ]
    for t in (off, on):
        lines.append(
            f"| {t.name} | +{t.rows[1].p50_ms - direct.rows[1].p50_ms:.3f} ms"
            f" | +{t.rows[1].p99_ms - direct.rows[1].p99_ms:.3f} ms"
            f" | {t.rows[32].p50_ms:.2f} ms | {t.rows[32].p99_ms:.2f} ms"
            f" | {t.rows[32].rps:,.0f} |"
        )

    def change(a: float, b: float) -> str:
        return f"{(b - a) / a:+.1%}" if a else "-"

    lines.append(
        f"| change | {change(off.rows[1].p50_ms, on.rows[1].p50_ms)} (total p50)"
        f" | {change(off.rows[1].p99_ms, on.rows[1].p99_ms)} (total p99)"
        f" | {change(off.rows[32].p50_ms, on.rows[32].p50_ms)}"
        f" | {change(off.rows[32].p99_ms, on.rows[32].p99_ms)}"
        f" | {change(off.rows[32].rps, on.rows[32].rps)} |"
    )
    share = samples.get("judged", 0) / max(samples.get("requests", 1), 1)
    drops = ", ".join(f"{k} {v:.0f}" for k, v in sorted(samples.items()) if k.startswith("drop"))
    lines.append(
        f"\nshadow router: {samples.get('requests', 0):.0f} requests,"
        f" {samples.get('judged', 0):.0f} judged samples ({share:.1%}){'; ' + drops if drops else ''}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--litellm", type=Path, default=DEFAULT_LITELLM)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3, help="interleaved runs per point")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="another checkout: its router (DIR/operator on PYTHONPATH) runs beside this one",
    )
    parser.add_argument(
        "--embedding",
        action="store_true",
        help="add a router with an embedding stage against the real all-MiniLM-L6-v2",
    )
    parser.add_argument(
        "--shadow-rate",
        type=float,
        help="add a router with shadow evaluation sampling this share (e.g. 0.05)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("needs wrk and taskset", file=sys.stderr)
        return 2
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fast_port, slow_port, router_port, litellm_port, bare_port, other_port = (
            free_port() for _ in range(6)
        )
        cand_port, shadow_port = free_port(), free_port()
        cand = f"http://{HOST}:{cand_port}"
        fast, slow = f"http://{HOST}:{fast_port}", f"http://{HOST}:{slow_port}"
        sim = [python, "-m", "modelflock", "engine-sim", "--host", HOST, "--loop", "uvloop"]
        with (
            process([*sim, "--port", str(fast_port), "--model", "auto", "--instant"], 1),
            process([*sim, "--port", str(cand_port), "--model", "cand", "--instant", "--judge"], 1),
            process(
                [
                    *sim,
                    "--port",
                    str(slow_port),
                    "--model",
                    "slow",
                    "--prefill-ms",
                    "0",
                    "--decode-ms",
                    "100",
                    "--output-tokens",
                    "20",
                    "--max-batch",
                    "5000",
                    "--max-concurrent",
                    "5000",
                ],
                1,
            ),
        ):
            wait_http(f"{fast}/health")
            wait_http(f"{slow}/health")
            targets = [Target("direct (engine)", fast)]
            router_config(work / "router.json", fast, slow)
            router_cmd = [
                python,
                "-m",
                "modelflock",
                "router",
                "--config",
                str(work / "router.json"),
                "--port",
                str(router_port),
                "--loop",
                "uvloop",
                "--log-level",
                "WARNING",
            ]
            env = {
                "LITELLM_MASTER_KEY": MASTER_KEY,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_TELEMETRY": "False",
            }
            litellm_config(work / "litellm.json", fast, slow)
            litellm_cmd = [
                str(args.litellm),
                "--config",
                str(work / "litellm.json"),
                "--host",
                HOST,
                "--port",
                str(litellm_port),
                "--num_workers",
                "1",
            ]
            bare_cmd = [
                python,
                str(Path(__file__).with_name("bare_proxy.py")),
                fast,
                str(bare_port),
            ]
            with contextlib.ExitStack() as stack:
                bare = stack.enter_context(process(bare_cmd, 0))
                wait_http(f"http://{HOST}:{bare_port}/health")
                targets.append(
                    Target("bare aiohttp proxy", f"http://{HOST}:{bare_port}", pid=bare.pid)
                )
                router = stack.enter_context(process(router_cmd, 0, log=work / "router.log"))
                base = f"http://{HOST}:{router_port}"
                wait_http(f"{base}/readyz")
                targets.append(Target("ModelFlock router", base, pid=router.pid))
                shadow: Target | None = None
                samples: dict[str, float] = {}
                if args.shadow_rate is not None:
                    wait_http(f"{cand}/health")
                    shadow_config = work / "router-shadow.json"
                    router_config(shadow_config, fast, slow, cand, args.shadow_rate)
                    shadow_cmd = [*router_cmd]
                    shadow_cmd[shadow_cmd.index(str(work / "router.json"))] = str(shadow_config)
                    shadow_cmd[shadow_cmd.index(str(router_port))] = str(shadow_port)
                    shadow_proc = stack.enter_context(
                        process(shadow_cmd, 0, log=work / "router-shadow.log")
                    )
                    sbase = f"http://{HOST}:{shadow_port}"
                    wait_http(f"{sbase}/readyz")
                    shadow = Target(
                        f"router, shadow {args.shadow_rate:.0%}", sbase, pid=shadow_proc.pid
                    )
                    targets.append(shadow)
                if args.embedding:
                    embed_port, emb_router_port = free_port(), free_port()
                    embedder = f"http://{HOST}:{embed_port}"
                    stack.enter_context(
                        process(
                            [
                                *sim,
                                "--port",
                                str(embed_port),
                                "--model",
                                "all-MiniLM-L6-v2",
                                "--embedding-model",
                                "minilm",
                                "--instant",
                            ],
                            1,
                            log=work / "minilm.log",
                        )
                    )
                    wait_http(f"{embedder}/health", 180)
                    emb_config = work / "router-embedding.json"
                    router_config(emb_config, fast, slow, embedder=embedder)
                    emb_cmd = [*router_cmd]
                    emb_cmd[emb_cmd.index(str(work / "router.json"))] = str(emb_config)
                    emb_cmd[emb_cmd.index(str(router_port))] = str(emb_router_port)
                    emb_proc = stack.enter_context(
                        process(emb_cmd, 0, log=work / "router-embedding.log")
                    )
                    ebase = f"http://{HOST}:{emb_router_port}"
                    wait_http(f"{ebase}/readyz")
                    time.sleep(5)  # the examples are embedded in the background
                    targets.append(
                        Target(
                            "router, rules+embedding (MiniLM)",
                            ebase,
                            pid=emb_proc.pid,
                            unique_prompts=True,
                        )
                    )
                if args.compare_tree is not None:
                    tree = args.compare_tree.resolve()
                    other_config = work / "router-other.json"
                    router_config(other_config, fast, slow, limits=False)
                    other_cmd = [*router_cmd[:-6], "--port", str(other_port), *router_cmd[-4:]]
                    other_cmd[other_cmd.index(str(work / "router.json"))] = str(other_config)
                    other = stack.enter_context(
                        process(
                            other_cmd,
                            0,
                            env={"PYTHONPATH": str(tree / "operator")},
                            log=work / "router-other.log",
                        )
                    )
                    obase = f"http://{HOST}:{other_port}"
                    wait_http(f"{obase}/readyz")
                    targets.append(Target(f"router ({tree.name})", obase, pid=other.pid))
                if not args.no_litellm:
                    litellm = stack.enter_context(
                        process(litellm_cmd, 0, env=env, log=work / "litellm.log")
                    )
                    lbase = f"http://{HOST}:{litellm_port}"
                    wait_http(f"{lbase}/health/liveliness", 180)
                    targets.append(
                        Target(
                            "LiteLLM proxy",
                            lbase,
                            {"Authorization": f"Bearer {MASTER_KEY}"},
                            litellm.pid,
                        )
                    )
                measure_all(targets, args.duration, args.reps, work)
                if shadow is not None:
                    samples = shadow_samples(shadow.url)
                for t in targets[2:]:
                    assert t.pid is not None
                    t.streams_ok = asyncio.run(
                        many_streams(
                            f"{t.url}/v1/chat/completions", t.headers, args.streams, "slow"
                        )
                    )
                    t.rss_mib = peak_rss_mib(t.pid)
    load = os.getloadavg()
    print(table(targets, targets[0], args.streams))
    if args.shadow_rate is not None:
        off = next(t for t in targets if t.name == "ModelFlock router")
        on = next(t for t in targets if t.name.startswith("router, shadow"))
        print()
        print(shadow_comparison(off, on, targets[0], samples))
    print(
        f"\nload average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"on {os.cpu_count()} cores; medians of {args.reps} interleaved wrk runs of "
        f"{args.duration} s each"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
