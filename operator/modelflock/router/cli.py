"""`modelflock router --config FILE`: the routing sidecar / gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from modelflock.aio import loop_factory, until_signalled
from modelflock.router.app import RouterServer
from modelflock.router.config import load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "router", help="run the OpenAI-compatible routing sidecar/gateway", description=__doc__
    )
    p.add_argument("--config", type=Path, required=True, help="router config (YAML or JSON)")
    p.add_argument("--host", help="override listen.host")
    p.add_argument("--port", type=int, help="override listen.port (0: a free port)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="also serve /metrics, /healthz and /readyz on this port (a sidecar keeps the API"
        " on localhost and exposes only these on the pod IP)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of --metrics-port (rendered pods pass 0.0.0.0 for probes and Prometheus,"
        " with the gateway's NetworkPolicy deciding who else may connect)",
    )
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


async def _serve(config_path: Path, host: str, port: int, ops: tuple[str, int] | None) -> None:
    server = RouterServer(config_path)
    await server.start(host, port)
    print(f"router listening on {server.url}", flush=True)
    try:
        if ops is not None:
            await server.start_ops(*ops)
            print(f"router metrics and probes on {ops[0]}:{server.ops_port}", flush=True)
        await until_signalled()
    finally:
        await server.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"router: cannot load {args.config}: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    kwargs: dict[str, Any] = {"loop_factory": loop_factory(args.loop)}
    with asyncio.Runner(**kwargs) as runner:
        ops = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None
        runner.run(_serve(args.config, host, port, ops))
    return 0
