"""`modelflock report`: cost per query by route and savings against the baseline expert, and
the quality section (shadow evaluation: docs/evaluation.md), read from a router's /metrics (a
URL or a saved file) or, for quality, from a RoutingPolicy (`kubectl get rp NAME -o json`)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelflock.evaluation.stats import Thresholds
from modelflock.router.quality import format_quality, tallies_from_metrics, tallies_from_policy

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


@dataclass
class RetrievalRow:
    route: str
    knowledge_base: str
    hits: float = 0.0
    misses: float = 0.0
    unavailable: float = 0.0
    answered: float = 0.0  # requests answered from the knowledge base (no LLM)
    embedding_cost: float = 0.0
    saved: float = 0.0


@dataclass
class HandoffRow:
    route: str
    mode: str
    handoffs: float = 0.0
    tokens: float = 0.0


def summarize_retrieval(text: str) -> tuple[list[RetrievalRow], list[HandoffRow]]:
    """Knowledge-base lookups per route and handoffs per route, from exposition text."""
    rows: dict[tuple[str, str], RetrievalRow] = {}
    handoffs: dict[tuple[str, str], HandoffRow] = {}
    answered: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            name, labels, value = sample.name.removesuffix("_total"), sample.labels, sample.value
            route = labels.get("route", "")
            if name == f"{_P}requests" and labels.get("expert", "").startswith("kb:"):
                answered[(route, labels["expert"][3:])] += value
                continue
            if name in (f"{_P}handoffs", f"{_P}handoff_tokens"):
                h = handoffs.setdefault((route, labels["mode"]), HandoffRow(route, labels["mode"]))
                if name == f"{_P}handoffs":
                    h.handoffs += value
                else:
                    h.tokens += value
                continue
            kb = labels.get("knowledge_base")
            if kb is None:
                continue
            row = rows.setdefault((route, kb), RetrievalRow(route, kb))
            if name == f"{_P}retrievals":
                outcome = labels.get("outcome")
                if outcome == "hit":
                    row.hits += value
                elif outcome == "miss":
                    row.misses += value
                else:
                    row.unavailable += value
            elif name == f"{_P}retrieval_embedding_cost_usd":
                row.embedding_cost += value
            elif name == f"{_P}retrieval_saved_usd":
                row.saved += value
    for key, count in answered.items():
        rows.setdefault(key, RetrievalRow(*key)).answered = count
    return (
        sorted(rows.values(), key=lambda r: (r.route, r.knowledge_base)),
        sorted(handoffs.values(), key=lambda h: (h.route, h.mode)),
    )


def format_retrieval(rows: list[RetrievalRow], handoffs: list[HandoffRow]) -> str:
    lines = []
    if rows:
        header = (
            "route",
            "knowledge base",
            "hits",
            "misses",
            "unavail.",
            "answered (no LLM)",
            "embed $",
            "saved $",
        )
        table: list[tuple[str, ...]] = [header]
        table += [
            (
                r.route,
                r.knowledge_base,
                f"{r.hits:.0f}",
                f"{r.misses:.0f}",
                f"{r.unavailable:.0f}",
                f"{r.answered:.0f}",
                f"{r.embedding_cost:.6f}",
                f"{r.saved:.6f}",
            )
            for r in rows
        ]
        lines += _aligned(table)
    if handoffs:
        if lines:
            lines.append("")
        handed: list[tuple[str, ...]] = [("route", "handoff", "escalations", "tokens handed over")]
        handed += [(h.route, h.mode, f"{h.handoffs:.0f}", f"{h.tokens:.0f}") for h in handoffs]
        lines += _aligned(handed)
    return "\n".join(lines)


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i > 1 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report",
        help="cost per query, savings and quality recommendations from router metrics",
        description=__doc__,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a router's metrics URL, e.g. http://127.0.0.1:8787/metrics")
    source.add_argument("--file", type=Path, help="a saved metrics text file")
    source.add_argument(
        "--policy",
        help="a RoutingPolicy as JSON (a file, or - for stdin: kubectl get rp NAME -o json);"
        " its status.evaluation sums every router of the policy (implies --quality)",
    )
    p.add_argument("--quality", action="store_true", help="only the quality section")
    defaults = Thresholds()
    p.add_argument(
        "--min-samples",
        type=int,
        default=defaults.min_samples,
        help="metrics sources: the policy's thresholds.minSamples (default %(default)s)",
    )
    p.add_argument(
        "--match-target",
        type=float,
        default=defaults.match_target,
        help="metrics sources: thresholds.matchTarget (default %(default)s)",
    )
    p.add_argument(
        "--loss-limit",
        type=float,
        default=defaults.loss_limit,
        help="metrics sources: thresholds.lossLimit (default %(default)s)",
    )
    p.set_defaults(func=run)


def _read(args: argparse.Namespace) -> str:
    if args.policy == "-":
        return sys.stdin.read()
    if args.policy:
        return Path(args.policy).read_text()
    if args.file:
        return str(args.file.read_text())
    with urllib.request.urlopen(args.url, timeout=10) as resp:
        return str(resp.read().decode())


def run(args: argparse.Namespace) -> int:
    try:
        text = _read(args)
    except OSError as exc:
        print(
            f"report: cannot read {'the policy' if args.policy else 'metrics'}: {exc}",
            file=sys.stderr,
        )
        return 2
    if args.policy:
        try:
            tallies, thresholds = tallies_from_policy(json.loads(text))
        except (ValueError, AttributeError) as exc:
            print(f"report: not a RoutingPolicy as JSON: {exc}", file=sys.stderr)
            return 2
        print(format_quality(tallies, thresholds) if tallies else "no shadow samples yet")
        return 0
    thresholds = Thresholds(args.min_samples, args.match_target, args.loss_limit)
    tallies = tallies_from_metrics(text)
    if not args.quality:
        rows = summarize(text)
        print(format_table(rows) if rows else "no routed requests in these metrics")
        retrieval, handoffs = summarize_retrieval(text)
        if retrieval or handoffs:
            print("\n== Retrieval and handoff")
            print(format_retrieval(retrieval, handoffs))
        if not tallies:
            return 0
        print("\n== Quality (shadow evaluation)")
    print(format_quality(tallies, thresholds) if tallies else "no shadow samples in these metrics")
    return 0
