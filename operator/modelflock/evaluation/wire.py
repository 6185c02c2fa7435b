"""The flock API's evaluation report (router → operator), both ways (pure).

    POST /flock/v1/namespaces/{ns}/routingpolicies/{policy}/evaluation
    {"router": "3f2a…", "sequence": 7, "acknowledged": 6,
     "day": "2026-11-29", "spentUSD": 0.0123, "dropped": 4,
     "results": [{"route": "code", "expert": "code-7b", "candidate": "frontier",
                  "judge": "pairwise", "samples": 3, "wins": 1, "ties": 2, "losses": 0,
                  "agreements": 0, "disagreements": 0, "servedCostUSD": 0.0001,
                  "candidateCostUSD": 0.002, "judgeCostUSD": 0.0004,
                  "servedSeconds": 0.9, "candidateSeconds": 2.1}]}

Every number is a delta since the router's previous *acknowledged* report. A router whose
report got no answer (a timeout: the operator may have applied it) sends everything since
its last acknowledged report again, with the next `sequence` and the `acknowledged` sequence
it last got an answer for; the operator subtracts what it applied from that router after
`acknowledged` (controller/evaluation.py), so a lost answer does not count samples twice.
Both fields are optional (a report without them is added as it is).
"""

from __future__ import annotations

import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from typing import Any

from modelflock.evaluation.stats import Tally

TallyKey = tuple[str, str, str, str]  # route, served expert, candidate, judge
MAX_RESULTS_PER_REPORT = 256
_WIRE = {
    "served_cost": "servedCostUSD",
    "candidate_cost": "candidateCostUSD",
    "judge_cost": "judgeCostUSD",
    "served_seconds": "servedSeconds",
    "candidate_seconds": "candidateSeconds",
}
_INTS = ("samples", "wins", "ties", "losses", "agreements", "disagreements")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class NotNamedError(ValueError):
    """The report names an expert its policy does not (the router may not report on it)."""


@dataclass(frozen=True)
class Report:
    router: str
    day: str
    spent: float
    dropped: int
    results: dict[TallyKey, Tally]
    sequence: int | None = None  # this report's number (per router process), if it sent one
    acknowledged: int = 0  # the last of its reports the router got an answer for


def tally_wire(key: TallyKey, tally: Tally) -> dict[str, Any]:
    route, expert, candidate, judge = key
    item: dict[str, Any] = {"route": route, "expert": expert, "candidate": candidate}
    item["judge"] = judge
    for f in fields(Tally):
        item[_WIRE.get(f.name, f.name)] = getattr(tally, f.name)
    return item


def _count(item: dict[str, Any], name: str) -> int:
    value = item.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9:
        raise ValueError(f"{name}: expected a count, got {value!r}")
    return value


def _amount(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= 1e9:
        raise ValueError(f"{name}: out of range: {value!r}")
    return float(value)


def _name(item: dict[str, Any], field: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or len(value) > 63 or not _NAME.match(value):
        raise ValueError(f"{field}: expected a name, got {value!r}")
    return value


def parse_report(payload: object, experts: AbstractSet[str]) -> Report:
    """Validate a report; ValueError (with the field) for anything off, including experts the
    policy does not name."""
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    router = payload.get("router")
    if not isinstance(router, str) or not 0 < len(router) <= 64:
        raise ValueError("router: expected an id string")
    day = payload.get("day")
    if not isinstance(day, str) or not _DAY.match(day):
        raise ValueError("day: expected YYYY-MM-DD")
    items = payload.get("results", [])
    if not isinstance(items, list) or len(items) > MAX_RESULTS_PER_REPORT:
        raise ValueError(f"results: expected a list of at most {MAX_RESULTS_PER_REPORT}")
    results: dict[TallyKey, Tally] = {}
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("results: expected objects")
        judge = item.get("judge")
        if judge not in ("pairwise", "similarity"):
            raise ValueError(f"judge: expected pairwise or similarity, got {judge!r}")
        key = (_name(item, "route"), _name(item, "expert"), _name(item, "candidate"), judge)
        for expert in key[1:3]:
            if expert not in experts:
                raise NotNamedError(f"expert {expert!r} is not named by this routing policy")
        counts = {f: _count(item, f) for f in _INTS}
        if counts["samples"] != sum(v for f, v in counts.items() if f != "samples"):
            raise ValueError("samples: must equal the sum of the outcomes")
        amounts = {python: _amount(item.get(wire, 0), wire) for python, wire in _WIRE.items()}
        tally = Tally(
            samples=counts["samples"],
            wins=counts["wins"],
            ties=counts["ties"],
            losses=counts["losses"],
            agreements=counts["agreements"],
            disagreements=counts["disagreements"],
            served_cost=amounts["served_cost"],
            candidate_cost=amounts["candidate_cost"],
            judge_cost=amounts["judge_cost"],
            served_seconds=amounts["served_seconds"],
            candidate_seconds=amounts["candidate_seconds"],
        )
        results[key] = results[key] + tally if key in results else tally
    return Report(
        router=router,
        day=day,
        spent=_amount(payload.get("spentUSD", 0), "spentUSD"),
        dropped=_count(payload, "dropped"),
        results=results,
        sequence=_count(payload, "sequence") if "sequence" in payload else None,
        acknowledged=_count(payload, "acknowledged"),
    )
