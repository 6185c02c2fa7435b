"""`make demo`: the example portfolio on a local control plane, driven by a mixed workload.

1. builds (or reuses) the control-plane binaries and starts them with kwok GPU pools;
2. installs the Helm chart and runs the operator with the configuration it rendered;
3. applies deploy/examples (the frontier API is simulated on loopback);
4. starts a simulated engine for every engine pod the scheduler placed, and the router;
5. drives code, writing, summaries, lookups and hard reasoning through the official OpenAI
   client, with a burst that makes the code expert scale, and a failing engine that makes
   summaries fall back;
6. prints the report, then stops everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from portfolio import NAMESPACE, Portfolio, wait_for  # noqa: E402

from modelflock.router.quality import format_quality, tallies_from_policy  # noqa: E402
from modelflock.router.report import (  # noqa: E402
    HandoffRow,
    format_retrieval,
    format_table,
    summarize,
    summarize_retrieval,
    total,
)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def experts_table(portfolio: Portfolio) -> list[str]:
    lines = [
        f"  {'expert':<14} {'engine':<9} {'tier':<9} {'pool':<6} {'replicas':>8}  ready  last scale"
    ]
    for expert in sorted(portfolio.experts(), key=lambda e: e["metadata"]["name"]):
        spec, status = expert["spec"], expert.get("status", {})
        ready = next(
            (c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "?"
        )
        lines.append(
            f"  {expert['metadata']['name']:<14} {spec['engine']:<9} {spec.get('tier', ''):<9}"
            f" {spec.get('nodePool', '-'):<6} {status.get('replicaSummary') or '-':>8}  {ready:<5}"
            f"  {status.get('lastScaleReason', '')}"
        )
    return lines


def handoff_lines(
    record: workload.Record | None, received: list[dict[str, Any]], prompt: str
) -> tuple[list[str], bool]:
    """The hard lookup's way through the cascade and what the frontier received with it;
    False when it did not escalate with a handoff."""
    if record is None or record.status != 200:
        return [f"  hard question on the lookup route: failed ({record})"], False
    sent = next(
        (c for c in reversed(received) if (c.get("messages") or [{}])[-1].get("content") == prompt),
        None,
    )
    system = [
        str(m.get("content", ""))
        for m in (sent or {}).get("messages", [])
        if m.get("role") == "system"
    ]
    lines = [
        f"  hard question on the lookup route: retrieval {record.retrieval or '-'}"
        f" (best score {record.retrieval_score or '-'}), {record.escalations} escalation(s),"
        f" answered by {record.expert}",
    ]
    if system:
        handed = " ".join(system[-1].split())
        lines.append(
            f"  the frontier received with it: {handed[:300]}{'…' if len(handed) > 300 else ''}"
        )
    ok = record.escalations > 0 and bool(system)
    if not ok:
        lines.append("  expected an escalation with a handoff to the frontier: there was none")
    return lines, ok


def knowledge_base_lines(
    portfolio: Portfolio, records: list[workload.Record], handoffs: list[HandoffRow]
) -> list[str]:
    """The KnowledgeBase's status, lookups answered without an LLM, what handoff added."""
    status = portfolio.knowledge_base().get("status", {})
    lookups = [r for r in records if r.kind == "lookup"]
    from_kb = [r for r in lookups if r.expert.startswith("kb:")]
    lines = [
        f"  KnowledgeBase facts: {status.get('documents')} documents, {status.get('chunks')}"
        f" chunks in {status.get('table')}, last ingest {status.get('lastIngestTime')}",
        f"  lookups answered from the knowledge base (no LLM): {len(from_kb)}/{len(lookups)}",
    ]
    tokens = sum(h.tokens for h in handoffs)
    escalations = sum(h.handoffs for h in handoffs)
    if escalations:
        # The frontier's input price (deploy/examples/50-frontier.yaml): $2.50 per million.
        lines.append(
            f"  handoff: {escalations:.0f} escalations gave the bigger expert {tokens:.0f}"
            f" tokens of draft and passages (~{tokens / escalations:.0f} per escalation,"
            f" ${tokens * 2.5 / 1e6:.6f} of input at the frontier's price)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", default=".modelflock/demo", help="state and logs (default: .modelflock/demo)"
    )
    parser.add_argument("--requests", type=int, default=60, help="mixed requests after the burst")
    parser.add_argument("--burst", type=int, default=48, help="code requests in the burst")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    portfolio = Portfolio(workdir=workdir, say=say)
    started = time.monotonic()
    try:
        portfolio.start()
        say(f"portfolio up in {time.monotonic() - started:.0f}s; router at {portfolio.router_url}")
        print("\n".join(experts_table(portfolio)))

        say(f"burst: {args.burst} code requests, 24 at a time (code-7b holds 4 per replica)")
        records = workload.run(
            portfolio.router_url, workload.plan({"code": args.burst}, args.seed), 24, "code burst"
        )

        mix = {"code": 3, "writing": 2, "summary": 2, "lookup": 3, "hard": 2}
        scale = max(1, args.requests // sum(mix.values()))
        jobs = workload.plan({k: v * scale for k, v in mix.items()}, args.seed + 1)
        half = len(jobs) // 2
        say(
            f"mixed workload: {len(jobs)} requests (code, writing, summaries, lookups, hard reasoning)"
        )
        records += workload.run(portfolio.router_url, jobs[:half], 6, "mixed (1/2)")
        assert portfolio.fleet is not None
        killed = portfolio.fleet.kill_expert("summarize-tgi")
        say(f"killed the summarize-tgi engine ({', '.join(killed)}): summaries must fall back")
        records += workload.run(portfolio.router_url, jobs[half:], 6, "mixed (2/2)")
        portfolio.fleet.revive_expert("summarize-tgi")

        (hard_prompt,) = workload.PROMPTS["hard-lookup"]
        say("a hard question on the lookup route: the knowledge base cannot answer it alone")
        hard = workload.run(portfolio.router_url, [("hard-lookup", hard_prompt)], 1, "hard lookup")
        records += hard
        hard_lines, handed_off = handoff_lines(hard[0], portfolio.frontier_chats(), hard_prompt)

        say("writer-70b was woken by the first writing requests (they fell back meanwhile)")
        wait_for(lambda: portfolio.ready_replicas("writer-70b") > 0, "writer-70b awake", 120)
        time.sleep(2)  # the router's next discovery poll sees the new replica
        records += workload.run(
            portfolio.router_url, workload.plan({"writing": 4}, args.seed + 2), 2, "writing, warm"
        )

        # Evaluate a settled portfolio: not while code-7b's burst replicas are going away.
        wait_for(lambda: portfolio.ready_replicas("code-7b") == 1, "code-7b back to 1 replica", 90)
        time.sleep(3)  # the router's next discovery poll drops the removed replicas
        say("shadow evaluation: every answer sampled for a while (kubectl patch: sampleRate 1)")
        portfolio.set_evaluation(sampleRate="1", maxConcurrent=8)
        # Distinct prompts: each sample is a different request (the engines' answer quality
        # is fixed per prompt, so repeating one would repeat its outcome).
        quality_mix = {"summary": 45, "code": 100, "writing": 32}
        quality_jobs = [
            (kind, f"{prompt} (case {i})")
            for i, (kind, prompt) in enumerate(workload.plan(quality_mix, args.seed + 3))
        ]
        records += workload.run(portfolio.router_url, quality_jobs, 4, "quality sampling")
        sampled = portfolio.wait_for_evaluation()
        say(f"the operator's status.evaluation holds {sampled} judged samples")

        say(
            f"idle: waiting {portfolio.scale_down_seconds + 10}s for the autoscaler to scale back down"
        )
        time.sleep(portfolio.scale_down_seconds + 10)

        print("\n== Experts (kubectl get modelexperts -n " + NAMESPACE + ")")
        print("\n".join(experts_table(portfolio)))
        print("\n== Where each kind of request went (x-modelflock-expert header)")
        print("\n".join(workload.routing_table(records)))
        print("\n== Intent mix (the router's classifier decisions, from its /metrics)")
        print("\n".join(workload.intent_mix(portfolio.router_metrics())))
        print("\n== Autoscaler actions (Events reason=Scaled)")
        for event in portfolio.scale_events():
            stamp = (event.get("lastTimestamp") or event.get("eventTime") or "")[11:19]
            print(f"  {stamp}  {event['involvedObject']['name']:<14} {event['message']}")
        metrics = portfolio.router_metrics()
        rows = summarize(metrics)
        print("\n== Cost by route (modelflock report, from the router's /metrics)")
        print("\n".join("  " + line for line in format_table(rows).splitlines()))
        retrieval, handoffs = summarize_retrieval(metrics)
        print("\n== Retrieval and handoff (modelflock report)")
        print("\n".join("  " + line for line in format_retrieval(retrieval, handoffs).splitlines()))
        print("\n".join(knowledge_base_lines(portfolio, records, handoffs)))
        print("\n".join(hard_lines))
        overall = total(rows)
        print(
            f"\n  {overall.requests:.0f} requests cost ${overall.cost:.6f}"
            f" (${overall.cost_per_query:.8f} per query); sending everything to the frontier"
            f" expert would have cost ${overall.baseline_cost:.6f}: {overall.savings:.1%} saved."
        )
        print("\n== Quality (modelflock report --quality, from status.evaluation of the policy)")
        tallies, thresholds = tallies_from_policy(portfolio.policy())
        print("\n".join("  " + line for line in format_quality(tallies, thresholds).splitlines()))
        for event in portfolio.recommendation_events():
            print(f"  Event {event['reason']}: {event['message']}")
        failed = [r for r in records if r.status != 200]
        print(
            f"  {len(records) - len(failed)}/{len(records)} requests answered"
            f"{'' if not failed else '; failures: ' + str(sorted({r.error for r in failed})[:3])}"
        )
        print(f"\nlogs and state: {workdir}")
        return 0 if not failed and handed_off else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("stopping everything the demo started")
        portfolio.stop()


if __name__ == "__main__":
    raise SystemExit(main())
