"""Which HTTP stack for the router's hot path: bare pass-throughs, side by side in one run.

    python bench/http_stacks.py [--duration 3] [--reps 3]

Every proxy forwards the same request to the same simulated engine (instant mode) without
parsing or routing; only the HTTP server and client differ. Servers: aiohttp, uvicorn (with
httptools and uvloop, a bare ASGI app), the router's own (`router/http_server.py`). Clients:
aiohttp, the router's own (`router/http1.py`). Same setup as router_bench.py: proxies pinned
to core 0, the engine and `wrk` on core 1, targets interleaved run by run, medians. Needs
uvicorn (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from router_bench import (
    HOST,
    WrkResult,
    cpu_seconds,
    free_port,
    process,
    run_wrk,
    wait_http,
    write_wrk_script,
)

STACKS = [
    ("aiohttp", "aiohttp"),
    ("uvicorn", "aiohttp"),
    ("modelflock", "aiohttp"),
    ("aiohttp", "modelflock"),
    ("uvicorn", "modelflock"),
    ("modelflock", "modelflock"),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved runs per point")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("needs wrk and taskset", file=sys.stderr)
        return 2
    python, here = sys.executable, Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        script = Path(tmp) / "body.lua"
        write_wrk_script(script, {})
        engine_port = free_port()
        engine = f"http://{HOST}:{engine_port}"
        sim = [python, "-m", "modelflock", "engine-sim", "--host", HOST, "--loop", "uvloop"]
        stack.enter_context(
            process([*sim, "--port", str(engine_port), "--model", "auto", "--instant"], 1)
        )
        wait_http(f"{engine}/health")
        targets: dict[str, tuple[str, int | None]] = {"direct (engine)": (engine, None)}
        for server, client in STACKS:
            port = free_port()
            cmd = [python, str(here / "stack_proxy.py"), server, client, engine, str(port)]
            proc = stack.enter_context(process(cmd, 0))
            url = f"http://{HOST}:{port}"
            wait_http(f"{url}/health")
            targets[f"{server} server + {client} client"] = (url, proc.pid)
        for url, _ in targets.values():
            run_wrk(f"{url}/v1/chat/completions", 8, 1, script)  # warm up
        results: dict[tuple[str, int], list[WrkResult]] = {}
        cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
        requests: dict[str, int] = dict.fromkeys(targets, 0)
        for concurrency in (1, 32):
            for _ in range(args.reps):
                for name, (url, pid) in targets.items():
                    before = cpu_seconds(pid) if pid else 0.0
                    r = run_wrk(f"{url}/v1/chat/completions", concurrency, args.duration, script)
                    if pid and concurrency == 32:
                        cpu[name] += cpu_seconds(pid) - before
                        requests[name] += r.requests
                    results.setdefault((name, concurrency), []).append(r)
        direct = "direct (engine)"

        def med(name: str, c: int, field: str) -> float:
            return statistics.median(getattr(r, field) for r in results[(name, c)])

        rows = [["stack", "added p50 c=1", "added p99 c=1", "req/s c=32", "CPU/req"]]
        for name in targets:
            is_direct = name == direct
            rows.append(
                [
                    name,
                    "-"
                    if is_direct
                    else f"+{med(name, 1, 'p50_ms') - med(direct, 1, 'p50_ms'):.2f} ms",
                    "-"
                    if is_direct
                    else f"+{med(name, 1, 'p99_ms') - med(direct, 1, 'p99_ms'):.2f} ms",
                    f"{med(name, 32, 'rps'):,.0f}",
                    "-" if is_direct else f"{cpu[name] * 1000 / max(requests[name], 1):.3f} ms",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows
        ]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        print("\n".join(lines))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"\nload average at the end: {load} on {os.cpu_count()} cores; medians of "
            f"{args.reps} interleaved wrk runs of {args.duration} s; CPU/req over the c=32 runs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
