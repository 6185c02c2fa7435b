"""Scoring a classifier against labelled prompts (pure): accuracy per intent, on the hard
subset, the confusion table, which stage decided, latency, and suggested thresholds."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelflock.router.classify.features import Decision

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Labelled:
    prompt: str
    intent: str
    hard: bool = False


def read_labelled(text: str, where: str = "labelled file") -> list[Labelled]:
    """JSONL lines {"prompt": str, "intent": str, "hard": bool (optional)}."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ValueError(f"{where} line {number}: not JSON") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("intent"), str)
        ):
            raise ValueError(f'{where} line {number}: expected {{"prompt": str, "intent": str}}')
        rows.append(Labelled(row["prompt"], row["intent"], bool(row.get("hard", False))))
    if not rows:
        raise ValueError(f"{where}: no labelled prompts")
    return rows


@dataclass(frozen=True)
class Outcome:
    row: Labelled
    decision: Decision

    @property
    def correct(self) -> bool:
        return self.decision.intent == self.row.intent

    def stage_seconds(self, stage: str) -> float | None:
        return next((o.seconds for o in self.decision.trail if o.stage == stage), None)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _share(hits: int, total: int) -> str:
    return f"{hits / total:6.1%} ({hits}/{total})" if total else "     - (0/0)"


@dataclass(frozen=True)
class Summary:
    name: str
    total: int
    correct: int
    hard_total: int
    hard_correct: int
    decided_by: dict[str, int]
    per_intent: dict[str, tuple[int, int]]  # intent -> (correct, total)
    confusion: dict[tuple[str, str], int]  # (labelled, decided) -> count
    classify_p50_ms: float
    classify_p95_ms: float
    embedding_p50_ms: float | None

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def hard_accuracy(self) -> float:
        return self.hard_correct / self.hard_total if self.hard_total else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "configuration": self.name,
            "accuracy": round(self.accuracy, 4),
            "correct": self.correct,
            "total": self.total,
            "hardAccuracy": round(self.hard_accuracy, 4),
            "decidedBy": self.decided_by,
            "perIntent": {k: {"correct": c, "total": t} for k, (c, t) in self.per_intent.items()},
            "classifyP50Ms": round(self.classify_p50_ms, 3),
            "classifyP95Ms": round(self.classify_p95_ms, 3),
        }


def summarize(name: str, outcomes: Sequence[Outcome]) -> Summary:
    per_intent: dict[str, tuple[int, int]] = {}
    for o in outcomes:
        good, total = per_intent.get(o.row.intent, (0, 0))
        per_intent[o.row.intent] = (good + o.correct, total + 1)
    hard = [o for o in outcomes if o.row.hard]
    embedding = [s for o in outcomes if (s := o.stage_seconds("embedding")) is not None]
    return Summary(
        name=name,
        total=len(outcomes),
        correct=sum(o.correct for o in outcomes),
        hard_total=len(hard),
        hard_correct=sum(o.correct for o in hard),
        decided_by=dict(Counter(o.decision.classifier for o in outcomes).most_common()),
        per_intent=dict(sorted(per_intent.items())),
        confusion=dict(Counter((o.row.intent, o.decision.intent) for o in outcomes)),
        classify_p50_ms=_percentile([o.decision.seconds for o in outcomes], 0.5) * 1000,
        classify_p95_ms=_percentile([o.decision.seconds for o in outcomes], 0.95) * 1000,
        embedding_p50_ms=_percentile(embedding, 0.5) * 1000 if embedding else None,
    )


def threshold_table(
    outcomes: Sequence[Outcome], stage: str, default_intent: str, thresholds: Iterable[float]
) -> list[tuple[float, float, float]]:
    """For each threshold: (threshold, accuracy, share decided by `stage`), as if the stage's
    minConfidence were that value and the default intent answered below it. Uses the stage's
    best guess and confidence recorded for every prompt the earlier stages left to it."""
    rows = []
    for t in thresholds:
        correct = decided = 0
        for o in outcomes:
            answer = o.decision.intent
            mine = next((s for s in o.decision.trail if s.stage == stage), None)
            if mine is not None and mine.confidence is not None and mine.intent:
                if mine.confidence >= t:
                    answer, decided = mine.intent, decided + 1
                else:
                    answer = default_intent
            correct += answer == o.row.intent
        rows.append((t, correct / len(outcomes), decided / len(outcomes)))
    return rows


def suggest_threshold(table: Sequence[tuple[float, float, float]]) -> float:
    """The highest threshold within half a point of the best accuracy (sure beats lucky)."""
    best = max(accuracy for _, accuracy, _ in table)
    return max(t for t, accuracy, _ in table if accuracy >= best - 0.005)


def format_summary(summary: Summary) -> list[str]:
    lines = [
        f"== {summary.name}: accuracy {_share(summary.correct, summary.total).strip()},"
        f" hard subset {_share(summary.hard_correct, summary.hard_total).strip()}",
        "   decided by: " + ", ".join(f"{k} {v}" for k, v in summary.decided_by.items()),
        f"   classification time p50 {summary.classify_p50_ms:.2f} ms,"
        f" p95 {summary.classify_p95_ms:.2f} ms"
        + (
            f" (embedding stage p50 {summary.embedding_p50_ms:.2f} ms)"
            if summary.embedding_p50_ms is not None
            else ""
        ),
        f"   {'intent':<12} {'accuracy':>18}",
    ]
    for intent, (good, total) in summary.per_intent.items():
        lines.append(f"   {intent:<12} {_share(good, total):>18}")
    return lines


def format_confusion(summary: Summary) -> list[str]:
    labels = sorted({a for a, _ in summary.confusion} | {b for _, b in summary.confusion})
    width = max(8, *(len(label) for label in labels))
    corner = "labelled \\ decided"
    head = f"   {corner:<{width + 8}}" + "".join(f"{x:>{width + 1}}" for x in labels)
    lines = [head]
    for truth in labels:
        if not any(a == truth for a, _ in summary.confusion):
            continue
        cells = "".join(f"{summary.confusion.get((truth, x), 0):>{width + 1}}" for x in labels)
        lines.append(f"   {truth:<{width + 8}}{cells}")
    return lines
