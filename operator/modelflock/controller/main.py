"""`modelflock operator`: load the configuration, connect, and run kopf with our settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

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


def watched_namespaces(
    config: OperatorConfig, args: argparse.Namespace
) -> tuple[bool, tuple[str, ...]] | str:
    """(clusterwide, namespaces) from the command line, else the configuration; or an error.
    --all-namespaces and --namespace override the configuration's watchNamespaces."""
    if args.all_namespaces and args.namespace:
        return "pass either --all-namespaces or --namespace, not both"
    if args.all_namespaces:
        return True, ()
    if args.namespace:
        return False, tuple(dict.fromkeys(args.namespace))
    if config.watch_namespaces:
        return False, tuple(config.watch_namespaces)
    return "pass --all-namespaces or --namespace NS (or set watchNamespaces in the configuration)"


def run(args: argparse.Namespace) -> int:
    try:
        config = _override(load_operator_config(Path(args.config) if args.config else None), args)
    except ConfigError as error:
        print(f"modelflock operator: invalid configuration: {error}", file=sys.stderr)
        return 2
    scope = watched_namespaces(config, args)
    if isinstance(scope, str):
        print(f"modelflock operator: {scope}", file=sys.stderr)
        return 2
    clusterwide, namespaces = scope
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # kopf reports every handler run and each start and stop of a leadership term at INFO;
    # our own logs say what matters (modelflock.operator, modelflock.leader).
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # Imported here so `modelflock operator --help` and config errors stay fast.
    from modelflock.controller.runtime import RunOptions, run_operator

    options = RunOptions(
        config=config,
        clusterwide=clusterwide,
        namespaces=namespaces,
        liveness_host=args.bind_address or config.bind_address,
        liveness_port=args.liveness_port,
        webhook_cert_dir=Path(args.webhook_cert_dir) if args.webhook_cert_dir else None,
        webhook_port=args.webhook_port,
        webhook_path=args.webhook_path,
    )
    return asyncio.run(run_operator(options))


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
    parser.add_argument(
        "--liveness-port", type=int, default=8081, help="/healthz port, every replica (8081)"
    )
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
