"""`modelflock engine-sim`: run a simulated vLLM or TGI engine until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, get_args

from modelflock.aio import loop_factory, until_signalled
from modelflock.sim.config import Behaviour, FailMode, SimSettings
from modelflock.sim.server import SimServer


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "engine-sim", help="run a simulated vLLM/TGI engine", description=__doc__
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--flavour", choices=["vllm", "tgi"], default="vllm")
    p.add_argument("--model", default="sim-model", help="served model name")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--prefill-ms", type=float, default=20.0)
    p.add_argument("--decode-ms", type=float, default=10.0, help="per generated token")
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--kv-capacity", type=int, default=16384, help="KV cache size in tokens")
    p.add_argument("--max-concurrent", type=int, default=1024)
    p.add_argument("--instant", action="store_true", help="no queueing or delays")
    p.add_argument("--embedding-dim", type=int, default=64, help="for --embedding-model hash")
    p.add_argument(
        "--embedding-model",
        choices=["hash", "minilm"],
        default="hash",
        help="/v1/embeddings: hashed bag of words, or all-MiniLM-L6-v2 on CPU (384 dims)",
    )
    p.add_argument(
        "--embedding-runtime",
        choices=["onnx", "numpy"],
        default="onnx",
        help="minilm: onnxruntime (fast) or numpy (the reference implementation)",
    )
    p.add_argument("--embedding-threads", type=int, default=1, help="minilm: onnxruntime's threads")
    p.add_argument("--api-key-file", type=Path, help="require this bearer token")
    p.add_argument("--legacy-kv-metric", action="store_true")
    p.add_argument(
        "--fail-mode",
        default="ok",
        choices=list(get_args(FailMode)),
    )
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--first-byte-delay", type=float, default=0.0, help="seconds")
    p.add_argument("--not-ready", action="store_true", help="/health answers 503")
    p.add_argument(
        "--degraded-rate",
        type=float,
        default=0.0,
        help="share of prompts (by a hash of the prompt) that get a degraded answer",
    )
    p.add_argument(
        "--judge", action="store_true", help="answer judge prompts with A, B or TIE (scored)"
    )
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    key = args.api_key_file.read_text().strip() if args.api_key_file else None
    return SimSettings(
        flavour=args.flavour,
        model=args.model,
        max_batch=args.max_batch,
        prefill_seconds=args.prefill_ms / 1000,
        decode_seconds_per_token=args.decode_ms / 1000,
        output_tokens=args.output_tokens,
        kv_capacity_tokens=args.kv_capacity,
        max_concurrent=args.max_concurrent,
        instant=args.instant,
        embedding_dim=args.embedding_dim,
        embedding_model=args.embedding_model,
        embedding_runtime=args.embedding_runtime,
        embedding_threads=args.embedding_threads,
        api_key=key,
        legacy_kv_metric=args.legacy_kv_metric,
        behaviour=Behaviour(
            mode=args.fail_mode,
            status=args.fail_status,
            first_byte_delay_seconds=args.first_byte_delay,
            ready=not args.not_ready,
            degraded_rate=args.degraded_rate,
            judge=args.judge,
        ),
    )


async def _serve(settings: SimSettings, host: str, port: int) -> None:
    server = SimServer(settings)
    await server.start(host, port)
    # Printed so a parent process using --port 0 learns the address.
    print(
        f"engine-sim {settings.flavour} model={settings.model} listening on {server.url}",
        flush=True,
    )
    try:
        await until_signalled()
    finally:
        await server.stop()


def run(args: argparse.Namespace) -> int:
    if args.embedding_model == "minilm":
        # One BLAS thread: the engine shares a small machine with the router and the tests, and
        # OpenBLAS threads that spin for a busy core cost more than they gain (set it to override).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        settings = settings_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"engine-sim: {exc}", file=sys.stderr)
        return 2
    kwargs: dict[str, Any] = {"loop_factory": loop_factory(args.loop)}
    with asyncio.Runner(**kwargs) as runner:
        runner.run(_serve(settings, args.host, args.port))
    return 0
