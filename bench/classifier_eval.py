"""Intent classification of the shipped example policy, measured with a real embedding model.

    python bench/classifier_eval.py                 # test split: rules; rules+embedding
    python bench/classifier_eval.py --scorers       # kNN vs centroid vs linear head (held out)
    python bench/classifier_eval.py --tune          # minConfidence from dev, held out
    python bench/classifier_eval.py --overhead      # time added beyond the embedding call
    python bench/classifier_eval.py --write-examples  # deploy/examples/59-… from dev.jsonl

Starts `modelflock engine-sim --embedding-model minilm` (all-MiniLM-L6-v2 on CPU, on
127.0.0.1) and runs the labelled prompts of bench/data/intents/ through the router's own
classifier code (`modelflock classify` does the same for any policy). The policy's example
ConfigMap is generated from the dev split, so dev numbers are held out (each dev prompt
judged by a scorer fitted without it: leave-one-out, or 5-fold for the linear head); the
test split is never used for anything but the final numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data" / "intents"
EXAMPLES = REPO / "deploy" / "examples"
CONFIGMAP_FILE = EXAMPLES / "59-intent-examples.yaml"
POLICY_FILES = [
    EXAMPLES / "11-embed-small.yaml",
    CONFIGMAP_FILE,
    EXAMPLES / "60-routing-policy.yaml",
]
MODEL = "all-MiniLM-L6-v2"

from modelflock.router.classify.cache import vector_key  # noqa: E402
from modelflock.router.classify.calibrate import (  # noqa: E402
    build_index,
    softmax,
)
from modelflock.router.classify.embedding import EmbeddingStage, embedding_text  # noqa: E402
from modelflock.router.classify.evaluate import (  # noqa: E402
    THRESHOLDS,
    format_confusion,
    format_summary,
    read_labelled,
    suggest_threshold,
    summarize,
)
from modelflock.router.classify.features import Features  # noqa: E402
from modelflock.router.classify.offline import (  # noqa: E402
    Endpoint,
    Evaluator,
    bundle_from_files,
    offline_config,
    stage_configurations,
)
from modelflock.router.classify.rules import classify_rules, compile_rules  # noqa: E402
from modelflock.router.classify.scoring import METHODS  # noqa: E402


def write_examples() -> None:
    """The example policy's ConfigMap of examples: the dev split and the extra examples
    written for the policy (bench/data/intents/examples-extra.jsonl), verbatim."""
    rows = read_labelled((DATA / "dev.jsonl").read_text())
    rows += read_labelled((DATA / "examples-extra.jsonl").read_text())
    lines = [json.dumps({"prompt": r.prompt, "intent": r.intent}, ensure_ascii=False) for r in rows]
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "portfolio-intent-examples",
            "labels": {"modelflock.io/intent-examples": "true"},
        },
        "data": {"examples.jsonl": "\n".join(lines) + "\n"},
    }
    header = (
        "# Example prompts for the portfolio policy's embedding stage (spec.classifier.examplesFrom),\n"
        "# one JSON object per line. Generated from bench/data/intents/dev.jsonl and\n"
        "# examples-extra.jsonl by"
        " `python bench/classifier_eval.py --write-examples`; the test split is never used here.\n"
    )
    CONFIGMAP_FILE.write_text(
        header + yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)
    )
    print(f"wrote {CONFIGMAP_FILE} ({len(lines)} examples)")


class MiniLMServer:
    """engine-sim with the real model, on a free loopback port, for the run's duration."""

    def __init__(self, embedder: str = "minilm") -> None:
        self.embedder = embedder
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> MiniLMServer:
        args = [
            sys.executable,
            "-m",
            "modelflock",
            "engine-sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        args += ["--embedding-model", self.embedder, "--model", MODEL, "--instant"]
        if self.embedder == "hash":
            args += ["--embedding-dim", "384"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if "listening on " not in line:
            raise RuntimeError(f"engine-sim did not start: {line!r}")
        self.url = line.rsplit("listening on ", 1)[1].strip()
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _offline(url: str):  # type: ignore[no-untyped-def]
    bundle = bundle_from_files(POLICY_FILES)
    # A generous stage budget: accuracy is measured here, latency by bench/router_bench.py.
    return bundle, offline_config(bundle, {"embed-small": Endpoint(url, MODEL)}, 30_000)


async def evaluate_split(url: str, split: str) -> None:
    rows = read_labelled((DATA / f"{split}.jsonl").read_text())
    bundle, offline = _offline(url)
    for note in offline.notes:
        print(f"note: {note}")
    print(
        f"policy {bundle.policy.metadata.name} ({POLICY_FILES[-1].relative_to(REPO)}), {split} split:"
        f" {len(rows)} prompts, {sum(r.hard for r in rows)} hard; embedder {MODEL} (engine-sim, CPU)"
    )
    if split == "dev":
        print("warning: the dev split is the policy's example set: these numbers are not held out")
    evaluator = Evaluator()
    summaries = []
    try:
        # rules; rules+embedding. The llm stage needs a real small LLM: not measured here.
        for name, config in stage_configurations(offline.config)[:2]:
            chain, warm = await evaluator.chain(config)
            outcomes = await evaluator.run(chain, rows)
            summary = summarize(name, outcomes)
            summaries.append(summary)
            print()
            print("\n".join(format_summary(summary)))
            for stage in chain.stages:
                if isinstance(stage, EmbeddingStage) and stage.index is not None:
                    c = stage.index.calibration
                    print(
                        f"   {c.examples} examples (embedded in {warm:.1f}s), held-out"
                        f" accuracy {c.held_out_accuracy:.1%}, temperature {c.temperature:.4f},"
                        f" calibration error {c.calibration_error:.3f}; minConfidence {stage.min_confidence:g}"
                    )
        print("\n   confusion (rules+embedding):")
        print("\n".join(format_confusion(summaries[-1])))
    finally:
        evaluator.close()
    print("\n| configuration | accuracy | hard subset | decided by |")
    print("|---|---|---|---|")
    for s in summaries:
        decided = ", ".join(f"{k} {v}" for k, v in s.decided_by.items())
        print(
            f"| {s.name} | {s.accuracy:.1%} ({s.correct}/{s.total}) |"
            f" {s.hard_accuracy:.1%} ({s.hard_correct}/{s.hard_total}) | {decided} |"
        )
    intents = list(summaries[-1].per_intent)
    print("\n| intent | " + " | ".join(s.name for s in summaries) + " |")
    print("|---|" + "---|" * len(summaries))
    for intent in intents:
        cells = []
        for s in summaries:
            good, total = s.per_intent[intent]
            cells.append(f"{good / total:.1%} ({good}/{total})")
        print(f"| {intent} | " + " | ".join(cells) + " |")


async def _vectors(evaluator: Evaluator, url: str, texts: Sequence[str]) -> np.ndarray:
    from modelflock.router.classify.build import embed_function
    from modelflock.router.config import Expert
    from modelflock.router.upstream import ExpertRuntime

    expert = ExpertRuntime(config=Expert(name="embed", urls=[url], model=MODEL), headers=b"")
    embed = embed_function(evaluator.upstream, expert)
    out = []
    for start in range(0, len(texts), 64):
        out += await embed([embedding_text(t) for t in texts[start : start + 64]])
    return np.asarray(out, dtype=np.float32)


def _share(picked: Sequence[str], truth: Sequence[str], rows: Sequence[int]) -> str:
    right = sum(picked[n] == truth[n] for n in rows)
    return f"{right / len(rows):.1%} ({right}/{len(rows)})"


async def compare_scorers(embedders: Sequence[str]) -> None:
    """kNN vs centroid vs head, held out: on the policy's whole example set (inline and
    ConfigMap: each example judged by the others, as the router calibrates) and on the dev
    prompts among them, without and with the rules in front."""
    bundle, offline = _offline("http://127.0.0.1:9")  # the URL is replaced per embedder
    config = stage_configurations(offline.config)[1][1]
    rules = compile_rules(config.classifier.intents)
    from modelflock.router.classify.build import examples_of

    examples = examples_of(config)
    dev = {(r.intent, r.prompt): r for r in read_labelled((DATA / "dev.jsonl").read_text())}
    ruled = [classify_rules(rules, Features(t, len(t), "auto", {})) for _, t in examples]
    truth = [i for i, _ in examples]
    everything = range(len(examples))
    on_dev = [n for n, e in enumerate(examples) if e in dev]
    hard = [n for n in on_dev if dev[examples[n]].hard]
    print(
        f"policy {bundle.policy.metadata.name}: {len(examples)} examples"
        f" ({sum((i, t) in dev for i, t in examples)} of them the dev split); held out:"
        " kNN and centroid leave-one-out, the head 5-fold (what the router calibrates on)"
    )
    print(
        "\n| embedder | scorer | examples, embedding alone | examples, rules first |"
        " dev, embedding alone | dev, rules first | dev hard, rules first |"
        " calibration error | temperature |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gates = []
    for embedder in embedders:
        with MiniLMServer(embedder) as server:
            evaluator = Evaluator()
            try:
                vectors = await _vectors(evaluator, server.url, [t for _, t in examples])
            finally:
                evaluator.close()
        for method in METHODS:
            index = build_index(
                [(i, v) for (i, _), v in zip(examples, vectors, strict=True)], method
            )
            # Rows of the index are grouped by intent: map them back to the examples.
            order = [n for label in index.labels for n, (i, _) in enumerate(examples) if i == label]
            held = index.scorer.held_out_scores()
            guess = [""] * len(examples)
            for row, n in enumerate(order):
                guess[n] = index.labels[int(held[row].argmax())]
            final = [r if r is not None else g for r, g in zip(ruled, guess, strict=True)]
            cells = [
                _share(picked, truth, rows)
                for picked, rows in (
                    (guess, everything),
                    (final, everything),
                    (guess, on_dev),
                    (final, on_dev),
                    (final, hard),
                )
            ]
            print(
                f"| {embedder} | {method} | " + " | ".join(cells) + " |"
                f" {index.calibration.calibration_error:.3f} | {index.calibration.temperature:.4f} |"
            )
            probs = softmax(held, index.calibration.temperature)
            top2 = np.sort(held, axis=1)[:, -2:]
            right = held.argmax(axis=1) == index.scorer.examples.owners
            gates.append((embedder, method, probs.max(axis=1), top2[:, 1] - top2[:, 0], right))
    _gate_table(gates)


def _gate_table(gates):  # type: ignore[no-untyped-def]
    """What to threshold: the calibrated probability or the raw margin between the best two
    scores. Both rank the examples by how sure the scorer is; what matters is the accuracy of
    the share it decides (the rest goes to the next stage), and whether one threshold value
    means the same on every embedder."""
    print(
        "\nDeciding only when sure, held out on all examples (embedding alone): accuracy of the"
        " share decided when ranked by the calibrated probability / by the raw margin (best"
        " minus second-best score), and the threshold value that keeps that share"
    )
    print("\n| embedder | scorer | decide 70 % | decide 80 % | decide 90 % |")
    print("|---|---|---|---|---|")
    for embedder, method, prob, margin, right in gates:
        cells = []
        for share in (0.7, 0.8, 0.9):
            keep = round(share * len(right))
            by_p, by_m = np.argsort(-prob)[:keep], np.argsort(-margin)[:keep]
            cells.append(
                f"{right[by_p].mean():.1%} (p ≥ {prob[by_p].min():.2f}) /"
                f" {right[by_m].mean():.1%} (margin ≥ {margin[by_m].min():.3f})"
            )
        print(f"| {embedder} | {method} | " + " | ".join(cells) + " |")


async def tune(url: str, methods: Sequence[str]) -> None:
    """minConfidence for rules+embedding from dev, held out: a dev prompt is judged by the
    policy's examples without itself (leave-one-out; 5-fold for the linear head)."""
    dev = read_labelled((DATA / "dev.jsonl").read_text())
    _, offline = _offline(url)
    config = stage_configurations(offline.config)[1][1]
    evaluator = Evaluator()
    try:
        chain, _ = await evaluator.chain(config)
    finally:
        evaluator.close()
    stage = next(s for s in chain.stages if isinstance(s, EmbeddingStage))
    rules = compile_rules(config.classifier.intents)
    for method in methods:
        print(f"\nscorer {method}:")
        _tune_table(stage, method, rules, dev, config.classifier.default_intent)
    _rules_report(rules, dev)


def _rules_report(rules, dev):  # type: ignore[no-untyped-def]
    rules_only = [
        (r, classify_rules(rules, Features(r.prompt, len(r.prompt), "auto", {}))) for r in dev
    ]
    fired = [(r, a) for r, a in rules_only if a is not None]
    wrong = [(r, a) for r, a in fired if a != r.intent]
    print(f"rules: decided {len(fired)} dev prompts, {len(wrong)} wrongly:")
    for r, a in wrong:
        print(f"   {r.intent} -> {a}: {r.prompt[:90]!r}")


def _tune_table(stage, method, rules, dev, default):  # type: ignore[no-untyped-def]
    pairs = [(i, stage.vectors[vector_key(stage.model, text)]) for i, text in stage.examples]
    index = build_index(pairs, method)
    # Rows of the grouped example set, by (intent, text), to find each dev prompt's row.
    order = [(label, text) for label in index.labels for (i, text) in stage.examples if i == label]
    row_of = {pair: n for n, pair in enumerate(order)}
    probs = softmax(index.scorer.held_out_scores(), index.calibration.temperature)
    print(f"dev split, held out, rules first; default intent {default}")
    print("| minConfidence | accuracy | decided by embedding | hard subset |")
    print("|---|---|---|---|")
    table = []
    for t in THRESHOLDS:
        correct = hard_correct = decided = 0
        for r in dev:
            answer = classify_rules(rules, Features(r.prompt, len(r.prompt), "auto", {}))
            if answer is None:
                p = probs[row_of[(r.intent, r.prompt)]]
                if p.max() >= t:
                    answer, decided = index.labels[int(p.argmax())], decided + 1
                else:
                    answer = default
            correct += answer == r.intent
            hard_correct += r.hard and answer == r.intent
        hard = sum(r.hard for r in dev)
        table.append((t, correct / len(dev), decided / len(dev)))
        print(
            f"| {t:.1f} | {correct / len(dev):.1%} | {decided / len(dev):.0%} | {hard_correct}/{hard} |"
        )
    print(f"suggested minConfidence: {suggest_threshold(table)}")


async def overhead(url: str) -> None:
    """Classification time beyond the embedding call: the shipped policy's rules+embedding
    chain (the router's classes), its embedding function timed on its own; dev prompts."""
    from modelflock.router.classify.build import embed_function
    from modelflock.router.classify.chain import ClassifierChain

    dev = read_labelled((DATA / "dev.jsonl").read_text())
    _, offline = _offline(url)
    config = stage_configurations(offline.config)[1][1]
    evaluator = Evaluator()
    try:
        chain, _ = await evaluator.chain(config)
        stage = next(s for s in chain.stages if isinstance(s, EmbeddingStage))
        expert = next(e for e in evaluator_experts(config, evaluator))
        spent: list[float] = []
        inner = embed_function(evaluator.upstream, expert)

        async def timed(texts: list[str]) -> list[list[float]]:
            t0 = time.perf_counter()
            try:
                return await inner(texts)
            finally:
                spent.append(time.perf_counter() - t0)

        timed_stage = EmbeddingStage(
            stage.examples,
            timed,
            stage.model,
            stage.min_confidence,
            30.0,
            known=stage.vectors,
            fitted=stage.fitted(),
        )
        assert timed_stage.ready
        timed_chain = ClassifierChain([chain.stages[0], timed_stage], chain.default_intent)
        rows: dict[str, list[float]] = {"miss": [], "hit": []}
        for kind in ("miss", "hit"):  # the second pass finds every prompt in the LRU
            for r in dev:
                spent.clear()
                t0 = time.perf_counter()
                decision = await timed_chain.classify(Features(r.prompt, len(r.prompt), "auto", {}))
                total = time.perf_counter() - t0
                if any(o.stage == "embedding" for o in decision.trail):
                    rows[kind].append((total - sum(spent)) * 1000)
    finally:
        evaluator.close()
    print(f"{len(dev)} dev prompts through rules+embedding ({len(stage.examples)} examples)")
    print("| path | prompts reaching the embedding stage | added p50 | added p99 | max |")
    print("|---|---|---|---|---|")
    for kind, label in (("miss", "LRU miss (embedding call)"), ("hit", "LRU hit (no call)")):
        values = sorted(rows[kind])
        p50, p99 = (values[min(len(values) - 1, round(q * (len(values) - 1)))] for q in (0.5, 0.99))
        print(f"| {label} | {len(values)} | {p50:.3f} ms | {p99:.3f} ms | {values[-1]:.3f} ms |")


def evaluator_experts(config, evaluator):  # type: ignore[no-untyped-def]
    from modelflock.router.state import Secrets, build_state

    state = build_state(config, Secrets({}), evaluator.upstream, "overhead")
    return [state.experts[str(s.expert)] for s in config.classifier.stages if s.type == "embedding"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=["test", "dev"], default="test")
    parser.add_argument(
        "--scorers", action="store_true", help="compare kNN, centroid, head (held out)"
    )
    parser.add_argument("--embedders", default="minilm,hash", help="for --scorers")
    parser.add_argument("--tune", action="store_true", help="minConfidence from dev, held out")
    parser.add_argument("--methods", default="head,centroid,knn", help="scorers for --tune")
    parser.add_argument(
        "--overhead", action="store_true", help="classification time beyond the embedding call"
    )
    parser.add_argument(
        "--write-examples", action="store_true", help="regenerate the example ConfigMap"
    )
    args = parser.parse_args(argv)
    if args.write_examples:
        write_examples()
        return 0
    started = time.monotonic()
    if args.scorers:
        asyncio.run(compare_scorers(args.embedders.split(",")))
    else:
        with MiniLMServer() as server:
            if args.tune:
                asyncio.run(tune(server.url, args.methods.split(",")))
            elif args.overhead:
                asyncio.run(overhead(server.url))
            else:
                asyncio.run(evaluate_split(server.url, args.split))
    print(
        f"\n({time.monotonic() - started:.0f}s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
