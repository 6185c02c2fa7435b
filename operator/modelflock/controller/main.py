"""`modelflock operator`: load the configuration, connect, and run kopf with our settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from modelflock.controller.readiness import Listener
from modelflock.operator_config import ConfigError, OperatorConfig, load_operator_config


def _override(config: OperatorConfig, args: argparse.Namespace) -> OperatorConfig:
    updates = {
        key: value
        for key, value in (
            ("bind_address", args.bind_address),
            ("metrics_port", args.metrics_port),
            ("flock_api_port", args.flock_api_port),
        )
        if value is not None
    }
    return config.model_copy(update=updates) if updates else config


def run(args: argparse.Namespace) -> int:
    try:
        config = _override(load_operator_config(Path(args.config) if args.config else None), args)
    except ConfigError as error:
        print(f"modelflock operator: invalid configuration: {error}", file=sys.stderr)
        return 2
    if not args.all_namespaces and not args.namespace:
        print("modelflock operator: pass --all-namespaces or --namespace NS", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # kopf reports every handler run at INFO; our own logs say what matters.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # Imported here so `modelflock operator --help` and config errors stay fast.
    import kopf

    from modelflock.controller.context import new_context
    from modelflock.controller.handlers import build_registry
    from modelflock.controller.kube import Kube

    webhook = None
    if args.webhook_cert_dir:
        cert_dir = Path(args.webhook_cert_dir)
        webhook = kopf.WebhookServer(
            addr=args.bind_address or config.bind_address,
            port=args.webhook_port,
            certfile=str(cert_dir / "tls.crt"),
            pkeyfile=str(cert_dir / "tls.key"),
        )
    ctx = new_context(config, Kube.connect())
    if webhook is not None:
        ctx.readiness_listeners = (
            Listener("webhook", args.bind_address or config.bind_address, args.webhook_port),
        )
    registry = build_registry(webhook, args.webhook_path)
    liveness_host = args.bind_address or config.bind_address
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=args.all_namespaces,
            namespaces=args.namespace or (),
            standalone=True,
            liveness_endpoint=f"http://{liveness_host}:{args.liveness_port}/healthz",
            memo=kopf.Memo(ctx=ctx),
        )
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the operator (ModelExpert and RoutingPolicy controllers, sidecar webhook)",
    )
    parser.add_argument("--config", help="operator configuration YAML (node pools, images, …)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    parser.add_argument("--liveness-port", type=int, default=8081, help="/healthz port (8081)")
    parser.add_argument("--bind-address", help="listen address (default: from the configuration)")
    parser.add_argument("--metrics-port", type=int, help="override metricsPort")
    parser.add_argument("--flock-api-port", type=int, help="override flockApiPort")
    parser.add_argument(
        "--webhook-cert-dir", help="directory with tls.crt and tls.key: serve the sidecar webhook"
    )
    parser.add_argument("--webhook-port", type=int, default=9443, help="webhook port (9443)")
    parser.add_argument(
        "--webhook-path", default="/inject-sidecar", help="webhook path (/inject-sidecar)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)
