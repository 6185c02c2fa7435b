"""Router soak: twice its capacity for ten minutes, with hostile requests mixed in.

Everything on 127.0.0.1. The router (uvloop, pinned to core 0) serves one simulated engine whose
answers take ~200 ms (20 tokens at 10 ms) and a second, instant one for huge answers. Its
capacity is `defaults.maxConcurrentRequests` requests at a time; the script first measures
what that admits per second (closed loop at exactly that concurrency), then offers twice that
rate open-loop (arrivals do not wait for answers) for `--seconds`. Every 10 s it also sends a
4 MiB body of empty objects, a request for a ~15 MB answer, and a streaming request whose client
never reads. Optionally the router runs in a memory cgroup (`--memory-limit-mib`, cgroup v1 or
v2, created below this process's own cgroup and removed at the end), as in a pod.

    python bench/router_soak.py [--seconds 600] [--capacity 32] [--memory-limit-mib 128]

Prints one row per minute (offered and answered requests, admitted latency, router RSS) and a
summary. Bounded: every phase has a fixed duration; the load generator shares core 1 with the
engines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"
CHAT = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "hello"}]}
HUGE = {
    "model": "big",
    "max_tokens": 11000,
    "logprobs": True,
    "top_logprobs": 20,
    "messages": [{"role": "user", "content": "write at length"}],
}
_MAX_IN_FLIGHT = 900  # requests the generator keeps open at most (file descriptors)
HOSTILE = b'{"model":"auto","messages":[{"role":"user","content":"x"}],"x":['
HOSTILE += b"{}," * 1_300_000 + b"{}]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class MemoryCgroup:
    """A memory-limited cgroup below this process's own (v2, else v1), or an explanation why
    there is none."""

    def __init__(self, limit_mib: int) -> None:
        self.path: Path | None = None
        self.version = 0
        self.why = ""
        try:
            self._create(limit_mib * 1024 * 1024)
        except OSError as exc:
            self.why = f"no writable memory cgroup ({exc})"

    def _create(self, limit: int) -> None:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        unified = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        v1 = next((ln.split(":", 2)[2] for ln in lines if ":memory:" in ln), None)
        name = f"modelflock-soak-{os.getpid()}"
        if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
            path = Path("/sys/fs/cgroup/memory") / v1.lstrip("/") / name
            path.mkdir()
            self.path, self.version = path, 1
            (path / "memory.limit_in_bytes").write_text(str(limit))
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        elif unified is not None and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            path = Path("/sys/fs/cgroup") / unified.lstrip("/") / name
            path.mkdir()
            self.path, self.version = path, 2
            (path / "memory.max").write_text(str(limit))
            (path / "memory.swap.max").write_text("0")
        else:
            raise OSError("neither cgroup v1 memory nor cgroup v2 is mounted")

    def add(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def peak_mib(self) -> float | None:
        if self.path is None:
            return None
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        with contextlib.suppress(OSError):
            return int((self.path / name).read_text()) / 2**20
        return None

    def oom_kills(self) -> int | None:
        if self.path is None:
            return None
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return None

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()


@contextlib.contextmanager
def process(
    cmd: list[str], core: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["taskset", "-c", str(core), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
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


def wait_http(url: str, seconds: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Minute:
    offered: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    admitted_ms: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    extras: Counter[str] = field(default_factory=Counter)


@dataclass
class Soak:
    url: str
    pid: int
    seconds: float
    minutes: list[Minute] = field(default_factory=list)
    started: float = 0.0

    def minute(self) -> Minute:
        # What finishes after the end (answers still on their way) counts in the last minute.
        last = max(0, int((self.seconds - 1) // 60))
        index = min(last, int((time.monotonic() - self.started) // 60))
        while len(self.minutes) <= index:
            self.minutes.append(Minute())
        return self.minutes[index]


async def one(session: aiohttp.ClientSession, soak: Soak) -> None:
    minute = soak.minute()
    minute.offered += 1
    start = time.perf_counter()
    try:
        async with session.post(f"{soak.url}/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            code = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        code = type(exc).__name__
    minute.codes[code] += 1
    if code == "200":
        minute.admitted_ms.append((time.perf_counter() - start) * 1000)


async def measure_capacity(session: aiohttp.ClientSession, url: str, workers: int) -> float:
    """Admitted requests per second with exactly `workers` requests in flight (closed loop)."""
    done = 0
    stop = time.monotonic() + 10

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 1

    await asyncio.gather(*[worker() for _ in range(workers)])
    return done / 10


async def hostile_round(session: aiohttp.ClientSession, soak: Soak) -> None:
    """One of each attack; their outcomes are counted apart from the load."""
    minute = soak.minute()
    try:
        async with session.post(
            f"{soak.url}/v1/chat/completions", data=io.BytesIO(HOSTILE)
        ) as resp:
            minute.extras[f"hostile body {resp.status}"] += 1
        async with session.post(f"{soak.url}/v1/chat/completions", json=HUGE) as resp:
            size = len(await resp.read())
            minute.extras[f"huge answer {resp.status}"] += 1
            if resp.status == 200:
                minute.extras["huge answer MB"] += round(size / 1e6)
    except (aiohttp.ClientError, TimeoutError) as exc:
        minute.extras[f"attack {type(exc).__name__}"] += 1
    # A streaming client that never reads: the router must cut it at the deadline.
    host, port = soak.url.removeprefix("http://").split(":")
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({**HUGE, "stream": True}).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await asyncio.sleep(15)  # past the 10 s deadline, never reading
        writer.close()
        minute.extras["stalled stream"] += 1


async def soak_run(soak: Soak, rate: float, seconds: float) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        soak.started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        next_at = soak.started
        next_sample = next_attack = soak.started
        while (now := time.monotonic()) < soak.started + seconds:
            if now >= next_sample:
                soak.minute().rss.append(rss_mib(soak.pid))
                next_sample += 5
            if now >= next_attack:
                task = asyncio.create_task(hostile_round(session, soak))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_attack += 10
            while next_at <= now:  # open loop: arrivals on schedule, answered or not
                next_at += interval
                if len(tasks) >= _MAX_IN_FLIGHT:  # the generator's own bound
                    soak.minute().codes["not sent"] += 1
                    continue
                task = asyncio.create_task(one(session, soak))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, min(next_at, next_sample) - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def report(soak: Soak, capacity: int, rate: float, cgroup: MemoryCgroup | None, alive: bool) -> str:
    head = ["minute", "offered/s", "200", "503 shed", "other", "admitted p50", "p99", "RSS MiB"]
    rows = [head]
    for i, m in enumerate(soak.minutes):
        other = sum(v for k, v in m.codes.items() if k not in ("200", "503"))
        rows.append(
            [
                str(i + 1),
                f"{m.offered / 60:.0f}",
                f"{m.codes['200']:,}",
                f"{m.codes['503']:,}",
                str(other),
                f"{percentile(m.admitted_ms, 50):.0f} ms",
                f"{percentile(m.admitted_ms, 99):.0f} ms",
                f"{min(m.rss, default=0):.0f}-{max(m.rss, default=0):.0f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    admitted = [ms for m in soak.minutes for ms in m.admitted_ms]
    codes: Counter[str] = Counter()
    extras: Counter[str] = Counter()
    for m in soak.minutes:
        codes.update(m.codes)
        extras.update(m.extras)
    rss = [r for m in soak.minutes for r in m.rss] or [0.0]
    sampled = [m for m in soak.minutes if m.rss] or [Minute(rss=[0.0])]
    total = sum(codes.values())
    lines += [
        "",
        f"capacity: maxConcurrentRequests {capacity}, measured {rate / 2:.0f} req/s admitted;"
        f" offered {rate:.0f} req/s (2x)",
        f"answered: {total:,}; 200: {codes['200']:,}; 503 shed: {codes['503']:,}"
        f" ({codes['503'] / max(total, 1):.0%}); other: "
        + (", ".join(f"{k} {v}" for k, v in codes.items() if k not in ("200", "503")) or "none"),
        f"admitted latency: p50 {percentile(admitted, 50):.0f} ms, p99"
        f" {percentile(admitted, 99):.0f} ms, max {max(admitted, default=0):.0f} ms",
        f"router RSS: first minute {statistics.mean(sampled[0].rss):.0f} MiB, last minute"
        f" {statistics.mean(sampled[-1].rss):.0f} MiB, max {max(rss):.0f} MiB",
        "attacks: " + ", ".join(f"{k} {v}" for k, v in sorted(extras.items())),
        f"router alive at the end: {'yes' if alive else 'NO'}",
    ]
    if cgroup is not None:
        if cgroup.path is None:
            lines.append(f"memory cgroup: {cgroup.why}")
        else:
            lines.append(
                f"memory cgroup v{cgroup.version}: peak {cgroup.peak_mib():.0f} MiB,"
                f" OOM kills {cgroup.oom_kills()}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--capacity", type=int, default=32, help="maxConcurrentRequests")
    parser.add_argument("--memory-limit-mib", type=int, default=0, help="0: no cgroup")
    parser.add_argument(
        "--tree",
        type=Path,
        help="run the router from this source tree (e.g. one from before the hardening: then"
        " without maxConcurrentRequests)",
    )
    args = parser.parse_args()
    python = sys.executable
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})  # the load generator: core 1, with the engines
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small_port, big_port = free_port(), free_port()
        sim = [python, "-m", "modelflock", "engine-sim", "--host", HOST, "--loop", "uvloop"]
        small = [*sim, "--port", str(small_port), "--model", "auto", "--prefill-ms", "0"]
        small += ["--decode-ms", "10", "--output-tokens", "20", "--max-batch", "100000"]
        small += ["--max-concurrent", "100000"]
        big = [*sim, "--port", str(big_port), "--model", "big", "--instant"]
        big += ["--output-tokens", "11000"]
        config = work / "router.json"
        config.write_text(
            json.dumps(
                {
                    "listen": {"host": HOST, "port": free_port()},
                    "experts": [
                        {"name": "auto", "urls": [f"http://{HOST}:{small_port}"], "model": "auto"},
                        {"name": "big", "urls": [f"http://{HOST}:{big_port}"], "model": "big"},
                    ],
                    "routes": [{"name": "all", "expert": "auto"}],
                    "defaults": _defaults(args.capacity, args.tree is not None),
                }
            )
        )
        env = {"PYTHONPATH": str(args.tree.resolve() / "operator")} if args.tree else None
        router_cmd = [python, "-m", "modelflock", "router", "--config", str(config)]
        router_cmd += ["--loop", "uvloop", "--log-level", "WARNING"]
        cgroup = MemoryCgroup(args.memory_limit_mib) if args.memory_limit_mib else None
        try:
            with (
                process(small, 1),
                process(big, 1),
                process(router_cmd, 0, env) as router,
            ):
                if cgroup is not None:
                    cgroup.add(router.pid)
                assert router.stdout is not None
                url = router.stdout.readline().decode().split()[-1]
                for port in (small_port, big_port):
                    wait_http(f"http://{HOST}:{port}/health")
                wait_http(f"{url}/healthz")
                rate = 2 * asyncio.run(_capacity(url, args.capacity))
                print(f"offering {rate:.0f} req/s for {args.seconds:.0f} s", file=sys.stderr)
                soak = Soak(url, router.pid, args.seconds)
                asyncio.run(soak_run(soak, rate, args.seconds))
                alive = router.poll() is None
                print(report(soak, args.capacity, rate, cgroup, alive))
        finally:
            if cgroup is not None:
                cgroup.remove()
    return 0


def _defaults(capacity: int, other_tree: bool) -> dict[str, object]:
    defaults: dict[str, object] = {"requestTimeoutSeconds": 10}
    if not other_tree:  # a tree from before the concurrency cap would refuse the field
        defaults["maxConcurrentRequests"] = capacity
    return defaults


async def _capacity(url: str, workers: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await measure_capacity(session, url, workers)


if __name__ == "__main__":
    sys.exit(main())
