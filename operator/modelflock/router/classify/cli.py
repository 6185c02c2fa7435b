"""`modelflock classify`: evaluate a RoutingPolicy's classifier against labelled prompts,
through the router's own classifier code, before the policy reaches a cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from modelflock.router.classify.embedding import EmbeddingStage
from modelflock.router.classify.evaluate import (
    THRESHOLDS,
    format_confusion,
    format_summary,
    read_labelled,
    suggest_threshold,
    summarize,
    threshold_table,
)
from modelflock.router.classify.offline import (
    Endpoint,
    Evaluator,
    PolicyBundle,
    bundle_from_cluster,
    bundle_from_files,
    offline_config,
    stage_configurations,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "classify",
        help="evaluate a RoutingPolicy's classifier on labelled prompts (JSONL)",
        description=__doc__,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-f",
        "--filename",
        type=Path,
        action="append",
        help="YAML file or directory with the RoutingPolicy (and its ModelExperts and example"
        " ConfigMaps); repeatable",
    )
    source.add_argument(
        "--cluster", metavar="NAMESPACE/NAME", help="read the policy from the cluster (kubeconfig)"
    )
    p.add_argument("--name", help="the RoutingPolicy's name when the files hold several")
    p.add_argument(
        "--data", type=Path, required=True, help='JSONL: {"prompt", "intent", "hard"?} per line'
    )
    p.add_argument(
        "--embeddings-url", help="base URL serving /v1/embeddings for the embedding stage"
    )
    p.add_argument("--embeddings-model", help="served model name (default: as the policy renders)")
    p.add_argument("--llm-url", help="base URL serving /v1/chat/completions for the llm stage")
    p.add_argument("--llm-model", help="served model name (default: as the policy renders)")
    p.add_argument(
        "--stage-timeout-ms",
        type=int,
        help="time budget of the embedding and llm stages (default: the policy's); raise it when"
        " the endpoints given are slower than production ones",
    )
    p.add_argument(
        "--all-configurations",
        action="store_true",
        help="evaluate every prefix of the chain (rules; rules+embedding; …), not only the whole",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--show-errors", action="store_true", help="list the misclassified prompts")
    p.add_argument(
        "--min-accuracy",
        type=float,
        help="exit 1 when the whole chain's accuracy is below this (a CI gate), e.g. 0.9",
    )
    p.set_defaults(func=run)


def _endpoints(bundle: PolicyBundle, args: argparse.Namespace) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    for stage in bundle.policy.spec.classifier.stages:
        url, model = (
            (args.embeddings_url, args.embeddings_model)
            if stage.type == "embedding"
            else (args.llm_url, args.llm_model)
        )
        if stage.expert is not None and url:
            endpoints[stage.expert] = Endpoint(url.rstrip("/"), model)
    return endpoints


async def evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """(JSON result, report lines)."""
    if args.cluster:
        namespace, _, name = str(args.cluster).partition("/")
        if not name:
            raise ValueError("--cluster takes NAMESPACE/NAME")
        bundle = await bundle_from_cluster(namespace, name)
    else:
        bundle = bundle_from_files(args.filename, args.name)
    rows = read_labelled(args.data.read_text(), str(args.data))
    offline = offline_config(bundle, _endpoints(bundle, args), args.stage_timeout_ms)
    config = offline.config
    known = {i.name for i in config.classifier.intents} | {config.classifier.default_intent}
    unknown = sorted({r.intent for r in rows} - known)
    lines = [f"policy {bundle.policy.metadata.name}: {len(rows)} labelled prompts from {args.data}"]
    lines += [f"note: {n}" for n in offline.notes]
    if unknown:
        lines.append(f"note: labelled intents the policy does not define: {', '.join(unknown)}")
    configurations = stage_configurations(config)
    if not args.all_configurations:
        configurations = configurations[-1:]
    result: dict[str, Any] = {"policy": bundle.policy.metadata.name, "configurations": []}
    evaluator = Evaluator()
    try:
        for name, staged in configurations:
            chain, warm = await evaluator.chain(staged)
            outcomes = await evaluator.run(chain, rows)
            summary = summarize(name, outcomes)
            entry = summary.to_json()
            lines += ["", *format_summary(summary), "   confusion:", *format_confusion(summary)]
            wrong = [o for o in outcomes if not o.correct]
            if wrong and args.show_errors:
                lines.append("   misclassified (labelled -> decided, by):")
                lines += [
                    f"     {o.row.intent} -> {o.decision.intent} ({o.decision.classifier}):"
                    f" {o.row.prompt[:100]!r}"
                    for o in wrong
                ]
            for stage in chain.stages:
                if isinstance(stage, EmbeddingStage) and stage.index is not None:
                    c = stage.index.calibration
                    entry["calibration"] = {
                        "examples": c.examples,
                        "heldOutAccuracy": round(c.held_out_accuracy, 4),
                        "temperature": c.temperature,
                        "calibrationError": round(c.calibration_error, 4),
                        "calibrated": c.calibrated,
                    }
                    lines.append(
                        f"   embedding: {c.examples} examples embedded in {warm:.1f}s;"
                        f" held-out accuracy {c.held_out_accuracy:.1%}, temperature"
                        f" {c.temperature:.4f}, calibration error {c.calibration_error:.3f}"
                        + ("" if c.calibrated else " (too few examples: uncalibrated)")
                    )
                    table = threshold_table(
                        outcomes, "embedding", config.classifier.default_intent, THRESHOLDS
                    )
                    suggested = suggest_threshold(table)
                    entry["thresholds"] = [
                        {
                            "minConfidence": t,
                            "accuracy": round(a, 4),
                            "decidedByEmbedding": round(d, 4),
                        }
                        for t, a, d in table
                    ]
                    entry["suggestedMinConfidence"] = suggested
                    lines.append(
                        f"   minConfidence (now {stage.min_confidence:g}): accuracy if it were …"
                        " (the default intent below it; tune on a dev split, never on test)"
                    )
                    lines += [
                        f"     {t:.1f}: {a:6.1%}, {d:6.1%} decided by embedding"
                        + ("   <- suggested" if t == suggested else "")
                        for t, a, d in table
                    ]
            result["configurations"].append(entry)
    finally:
        evaluator.close()
    return result, lines


def run(args: argparse.Namespace) -> int:
    try:
        result, lines = asyncio.run(evaluate(args))
    except (OSError, ValueError) as exc:
        print(f"classify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    final = result["configurations"][-1]["accuracy"]
    if args.min_accuracy is not None and final < args.min_accuracy:
        print(
            f"classify: accuracy {final:.1%} is below --min-accuracy {args.min_accuracy:.1%}",
            file=sys.stderr,
        )
        return 1
    return 0
