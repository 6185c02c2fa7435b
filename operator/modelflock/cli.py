"""The `modelflock` command: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code. Modules are imported
only when their subcommand table entry is loaded, so `modelflock crds` does not
import aiohttp or kopf.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence

# subcommand name -> module that provides register(subparsers)
SUBCOMMANDS: dict[str, str] = {
    "crds": "modelflock.api.crdgen",
    "operator": "modelflock.controller.main",
    "engine-sim": "modelflock.sim.cli",
    "router": "modelflock.router.cli",
    "report": "modelflock.router.report",
    "classify": "modelflock.router.classify.cli",
}


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelflock",
        description="ModelFlock: deploy, autoscale and route a portfolio of LLM experts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names if names is not None else SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[name])
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = module.register
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the requested subcommand (fast start, few deps).
    wanted = [args_list[0]] if args_list and args_list[0] in SUBCOMMANDS else None
    parser = build_parser(wanted)
    args = parser.parse_args(args_list)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
