"""A mixed workload for the portfolio, sent with the official OpenAI client, and its summary."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

ARTICLE = (
    "The city council met on Tuesday to discuss the new cycling lanes. Residents praised the"
    " safer junctions but shop owners worried about deliveries. The council agreed to a trial"
    " of six months with loading bays every two hundred metres and a review in spring. "
)

PROMPTS: dict[str, list[str]] = {
    "code": [
        "Write a Python function that parses a CSV file and returns the rows as dicts.",
        "Why does this golang function deadlock when two goroutines lock the same mutex?",
        "Refactor this Python loop into a list comprehension: for x in xs: out.append(x*2)",
        "Explain this stack trace: KeyError in python dict lookup inside a for loop.",
    ],
    "writing": [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Write a poem about autumn rain on a tin roof.",
        "Draft a blog post announcing our new open-source release.",
    ],
    "summary": [
        "Summarize this article in three bullet points: " + ARTICLE,
        "TL;DR please, key points only: " + ARTICLE * 2,
    ],
    "lookup": [
        "What is the capital of France?",
        "How many days are there in a leap year?",
        "Who wrote Pride and Prejudice?",
    ],
    "hard": [
        "[hard] Prove step by step that the square root of two is irrational.",
        "[hard] Plan a three-phase migration of a payments database with zero downtime.",
    ],
    # A hard question on the lookup route (the rules' "capital of"): the knowledge base has
    # related passages but none close enough to answer (best ~0.44 < minScore 0.6), the small
    # model refuses "[hard]" prompts, so the cascade escalates and hands the frontier the
    # passages and the draft (handoff: context).
    "hard-lookup": [
        "[hard] Compare the capital of France with the capital of Japan as places to found a"
        " university, weighing history and cost."
    ],
}


@dataclass(frozen=True)
class Record:
    kind: str
    status: int
    expert: str
    route: str
    intent: str
    classifier: str
    attempts: int
    escalations: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    error: str = ""
    retrieval: str = ""  # x-modelflock-retrieval: hit, miss, unavailable (or none)
    retrieval_score: str = ""


def send(client: openai.OpenAI, kind: str, prompt: str) -> Record:
    started = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=256
        )
    except openai.APIStatusError as error:
        return Record(
            kind,
            error.status_code,
            "",
            "",
            "",
            "",
            0,
            0,
            0,
            0,
            time.monotonic() - started,
            error.message[:200],
        )
    except openai.APIConnectionError as error:
        return Record(
            kind, 0, "", "", "", "", 0, 0, 0, 0, time.monotonic() - started, str(error)[:200]
        )
    completion = raw.parse()
    headers = raw.headers
    usage = completion.usage
    return Record(
        kind=kind,
        status=raw.http_response.status_code,
        expert=headers.get("x-modelflock-expert", ""),
        route=headers.get("x-modelflock-route", ""),
        intent=headers.get("x-modelflock-intent", ""),
        classifier=headers.get("x-modelflock-classifier", ""),
        attempts=int(headers.get("x-modelflock-attempts", "0") or 0),
        escalations=int(headers.get("x-modelflock-escalations", "0") or 0),
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        seconds=time.monotonic() - started,
        retrieval=headers.get("x-modelflock-retrieval", ""),
        retrieval_score=headers.get("x-modelflock-retrieval-score", ""),
    )


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.done = 0
        self.lock = threading.Lock()
        self.enabled = sys.stderr.isatty()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.enabled or self.done == self.total:
                filled = self.width * self.done // max(1, self.total)
                bar = "#" * filled + "." * (self.width - filled)
                end = "\n" if self.done == self.total else ""
                print(
                    f"\r  {self.label:<18} [{bar}] {self.done}/{self.total}",
                    end=end,
                    file=sys.stderr,
                    flush=True,
                )


def plan(mix: dict[str, int], seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    jobs = [(kind, rng.choice(PROMPTS[kind])) for kind, count in mix.items() for _ in range(count)]
    rng.shuffle(jobs)
    return jobs


def run(
    base_url: str,
    jobs: Sequence[tuple[str, str]],
    concurrency: int,
    label: str,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    client = openai.OpenAI(
        base_url=base_url, api_key="unused-by-the-router", max_retries=0, timeout=180
    )
    progress = Progress(len(jobs), label)
    records: list[Record] = []

    def one(job: tuple[str, str]) -> Record:
        record = send(client, *job)
        progress.step()
        if on_record is not None:
            on_record(record)
        return record

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        records = list(pool.map(one, jobs))
    client.close()
    return records


def routing_table(records: Sequence[Record]) -> list[str]:
    """Where each kind of request went: kind → expert (count), escalations, errors."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    escalated: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for record in records:
        by_kind[record.kind][record.expert or f"error {record.status}"] += 1
        escalated[record.kind] += record.escalations
        errors[record.kind] += record.status != 200
    intents: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        intents[record.kind][f"{record.intent or '?'} ({record.classifier or '?'})"] += 1
    lines = [
        f"  {'request kind':<12} {'answered by':<46} {'escalations':>11} {'errors':>6}  intent (classifier)"
    ]
    for kind in sorted(by_kind):
        served = ", ".join(f"{expert} x{n}" for expert, n in by_kind[kind].most_common())
        decided = ", ".join(f"{intent} x{n}" for intent, n in intents[kind].most_common())
        lines.append(
            f"  {kind:<12} {served:<46} {escalated[kind]:>11} {errors[kind]:>6}  {decided}"
        )
    return lines


def intent_mix(metrics_text: str) -> list[str]:
    """Intents the router decided, and by which stage (modelflock_router_classifier_decisions_total)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "modelflock_router_classifier_decisions_total":
                counts[sample.labels["intent"]][sample.labels["classifier"]] += int(sample.value)
    total = sum(sum(c.values()) for c in counts.values()) or 1
    lines = [f"  {'intent':<12} {'requests':>8} {'share':>6}  decided by"]
    for intent, by in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(by.values())
        stages = ", ".join(f"{stage} x{k}" for stage, k in by.most_common())
        lines.append(f"  {intent:<12} {n:>8} {n / total:>6.0%}  {stages}")
    return lines
