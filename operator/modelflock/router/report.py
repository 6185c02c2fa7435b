"""`modelflock report`: cost per query by route and savings against the baseline expert,
read from a router's /metrics (a URL or a saved file)."""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

_P = "modelflock_router_"


@dataclass
class RouteRow:
    route: str
    requests: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost: float = 0.0
    baseline_cost: float = 0.0
    escalations: float = 0.0
    fallbacks: float = 0.0

    @property
    def cost_per_query(self) -> float:
        return self.cost / self.requests if self.requests else 0.0

    @property
    def savings(self) -> float:
        """Share of the baseline cost saved (0.25 = 25% cheaper)."""
        return 1 - self.cost / self.baseline_cost if self.baseline_cost else 0.0


def summarize(text: str) -> list[RouteRow]:
    """Per-route totals from the exposition text (pure)."""
    rows: dict[str, RouteRow] = defaultdict(lambda: RouteRow(""))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            route = sample.labels.get("route")
            if route is None or route == "none":
                continue
            row = rows[route]
            row.route = route
            name, value = sample.name.removesuffix("_total"), sample.value
            if name == f"{_P}requests":
                row.requests += value
            elif name == f"{_P}tokens":
                if sample.labels.get("direction") == "input":
                    row.input_tokens += value
                else:
                    row.output_tokens += value
            elif name == f"{_P}cost_usd":
                row.cost += value
            elif name == f"{_P}baseline_cost_usd":
                row.baseline_cost += value
            elif name == f"{_P}escalations":
                row.escalations += value
            elif name == f"{_P}fallbacks":
                row.fallbacks += value
    return sorted(rows.values(), key=lambda r: r.route)


def total(rows: list[RouteRow]) -> RouteRow:
    t = RouteRow("TOTAL")
    for r in rows:
        t.requests += r.requests
        t.input_tokens += r.input_tokens
        t.output_tokens += r.output_tokens
        t.cost += r.cost
        t.baseline_cost += r.baseline_cost
        t.escalations += r.escalations
        t.fallbacks += r.fallbacks
    return t


def format_table(rows: list[RouteRow]) -> str:
    header = (
        "route",
        "requests",
        "in tok",
        "out tok",
        "cost $",
        "$/query",
        "baseline $",
        "savings",
        "escal.",
        "fallb.",
    )
    lines = [header]
    for r in [*rows, total(rows)]:
        lines.append(
            (
                r.route,
                f"{r.requests:.0f}",
                f"{r.input_tokens:.0f}",
                f"{r.output_tokens:.0f}",
                f"{r.cost:.6f}",
                f"{r.cost_per_query:.8f}",
                f"{r.baseline_cost:.6f}",
                f"{r.savings:.1%}",
                f"{r.escalations:.0f}",
                f"{r.fallbacks:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report", help="cost per query and savings from router metrics", description=__doc__
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a router's metrics URL, e.g. http://127.0.0.1:8787/metrics")
    source.add_argument("--file", type=Path, help="a saved metrics text file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.file:
            text = args.file.read_text()
        else:
            with urllib.request.urlopen(args.url, timeout=10) as resp:
                text = resp.read().decode()
    except OSError as exc:
        print(f"report: cannot read metrics: {exc}", file=sys.stderr)
        return 2
    rows = summarize(text)
    if not rows:
        print("no routed requests in these metrics")
        return 0
    print(format_table(rows))
    return 0
