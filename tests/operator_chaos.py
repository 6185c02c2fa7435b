"""Chaos against the operator on the real control plane: two replicas (leader + standby), spec
changes, and the leader SIGKILLed at random points of its reconciles; afterwards the
invariants that matter are checked. Used by tests/integration/test_operator_chaos.py (bounded)
and bench/operator_chaos.py (longer, with API-server and etcd restarts, prints a table).

Invariants, after the last kill:
- convergence: every ModelExpert's status observes its generation and its Deployment has the
  replicas its spec asks for, within a bound;
- no orphans: every child in the namespace is owned by a live ModelExpert or RoutingPolicy,
  and a deleted expert's children are gone;
- no double scaling or spurious rollout: a Deployment's generation grows at most once per
  spec change that touches it, its ReplicaSets at most once per template change, and the
  autoscaled expert (no load) is never rescaled;
- no operator traceback.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import LocalCluster

from support import (
    OperatorProcess,
    apply,
    condition,
    election_config,
    first_traceback,
    get_json,
    wait_for,
)

FIXED = ("fixed-a", "fixed-b", "fixed-c")
AUTOSCALED = "scaled"
EXTERNAL = "external"
POLICY = "chaos"


def expert(name: str, replicas: int = 1, generation: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": {
            "engine": "vllm",
            "model": {"name": f"org/{name}", "parameters": "7B"},
            "nodePool": "h100",
            "autoscaling": {"enabled": False},
            "replicas": replicas,
            # A template change: each new value is one rollout.
            "env": [{"name": "CHAOS_GENERATION", "value": str(generation)}],
            "cost": {"inputPerMillion": "0.10", "outputPerMillion": "0.20"},
        },
    }


def autoscaled() -> dict[str, Any]:
    doc = expert(AUTOSCALED)
    doc["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    del doc["spec"]["replicas"]
    return doc


def external() -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": EXTERNAL},
        "spec": {
            "engine": "external",
            "external": {"baseURL": "https://frontier.example.com/v1", "model": "frontier"},
            "cost": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"},
        },
    }


def policy(experts: list[str], gateway: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "experts": experts,
            "routes": [{"name": "chat", "expert": experts[0]}],
            "gateway": {"replicas": gateway, "allowUnauthenticated": True},
        },
    }


@dataclass
class ExpertPlan:
    replicas: int = 1
    template: int = 0
    # Spec changes that touch the Deployment (replicas or template), and template changes.
    deployment_changes: int = 0
    template_changes: int = 0


@dataclass
class ChaosReport:
    kills: int = 0
    spec_changes: int = 0
    takeovers: list[float] = field(default_factory=list)
    converged_seconds: float = 0.0
    orphans: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    extra_generations: list[str] = field(default_factory=list)
    extra_rollouts: list[str] = field(default_factory=list)
    rescaled: list[str] = field(default_factory=list)
    tracebacks: int = 0
    first_traceback: str = ""  # the first one, with the log lines before it, for the failure
    events_repeated: int = 0  # at-least-once: a killed leader's transition may be posted again

    def problems(self) -> list[str]:
        return [
            *(f"orphan {o}" for o in self.orphans),
            *(f"left over {o}" for o in self.leftovers),
            *(f"double scaling/rollout: {o}" for o in self.extra_generations),
            *(f"spurious rollout: {o}" for o in self.extra_rollouts),
            *(f"rescaled: {o}" for o in self.rescaled),
            *(
                [f"{self.tracebacks} operator tracebacks; the first:\n{self.first_traceback}"]
                if self.tracebacks
                else []
            ),
        ]


class Chaos:
    def __init__(
        self, cluster: LocalCluster, namespace: str, workdir: Path, seed: int, lease: int = 4
    ) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.lease = lease
        self.plans: dict[str, ExpertPlan] = {}
        self.deleted: set[str] = set()
        self.created = 0
        self.gateway = 0
        self.replicas: list[OperatorProcess] = []
        self.logs: list[Path] = []
        self.report = ChaosReport()

    # ---- operators ---------------------------------------------------------------------

    def _spawn(self, leader: bool) -> OperatorProcess:
        directory = self.workdir / f"operator-{len(self.logs)}"
        directory.mkdir(parents=True)
        process = OperatorProcess(
            cluster=self.cluster,
            workdir=directory,
            config_overrides=election_config(lease=self.lease),
            wait_leader=leader,
        )
        process.start()
        self.logs.append(process.log_path)
        return process

    def start(self) -> None:
        self.replicas = [self._spawn(leader=True), self._spawn(leader=False)]
        for name in FIXED:
            self.plans[name] = ExpertPlan()
            apply(self.cluster, self.ns, expert(name))
        apply(self.cluster, self.ns, autoscaled())
        apply(self.cluster, self.ns, external())
        apply(self.cluster, self.ns, policy(self._policy_experts(), self.gateway))
        self.wait_converged(120)

    def leader(self) -> OperatorProcess:
        leading = [p for p in self.replicas if p.running and p.is_leader()]
        assert len(leading) == 1, f"{len(leading)} leaders"
        return leading[0]

    def stop(self) -> None:
        for process in self.replicas:
            process.stop()

    # ---- spec changes --------------------------------------------------------------------

    def _policy_experts(self) -> list[str]:
        return sorted({*self.plans, AUTOSCALED, EXTERNAL})

    def mutate(self) -> str:
        """One random spec change; returns what it was."""
        self.report.spec_changes += 1
        choice = self.rng.choice(
            ["replicas", "template", "template", "create", "delete", "gateway"]
        )
        live = sorted(self.plans)
        if choice == "create" or (choice == "delete" and len(live) <= 2):
            self.created += 1
            name = f"made-{self.created}"
            self.plans[name] = ExpertPlan()
            apply(self.cluster, self.ns, expert(name))
            apply(self.cluster, self.ns, policy(self._policy_experts(), self.gateway))
            return f"create {name}"
        if choice == "delete":
            name = self.rng.choice(live)
            del self.plans[name]
            self.deleted.add(name)
            apply(self.cluster, self.ns, policy(self._policy_experts(), self.gateway))
            self.cluster.kubectl("delete", "modelexpert", name, "-n", self.ns, "--wait=false")
            return f"delete {name}"
        if choice == "gateway":
            self.gateway = 1 - self.gateway
            apply(self.cluster, self.ns, policy(self._policy_experts(), self.gateway))
            return f"gateway {self.gateway}"
        name = self.rng.choice(live)
        plan = self.plans[name]
        if choice == "replicas":
            plan.replicas = 3 - plan.replicas  # 1 <-> 2
        else:
            plan.template += 1
            plan.template_changes += 1
        plan.deployment_changes += 1
        apply(self.cluster, self.ns, expert(name, plan.replicas, plan.template))
        return f"{choice} {name}"

    # ---- the kill loop ---------------------------------------------------------------------

    def kill_leader(self, max_delay: float) -> float:
        """Spec change(s), a random pause (the leader is mid-reconcile), SIGKILL the leader,
        start a new standby; returns how long the takeover took."""
        for _ in range(self.rng.randint(1, 2)):
            self.mutate()
        time.sleep(self.rng.uniform(0, max_delay))
        victim = self.leader()
        survivor = next(p for p in self.replicas if p is not victim)
        victim.kill()
        killed = time.monotonic()
        self.report.kills += 1
        fresh = self._spawn(leader=False)
        self.replicas = [survivor, fresh]
        wait_for(lambda: survivor.is_leader() or fresh.is_leader(), "a new leader", self.lease + 20)
        took = time.monotonic() - killed
        self.report.takeovers.append(took)
        return took

    # ---- checks -----------------------------------------------------------------------------

    def _converged(self) -> bool:
        for name in self.deleted - set(self.plans):
            # Gone, finalizer removed by the operator; its children garbage-collected.
            if get_json(self.cluster, "modelexpert", name, "-n", self.ns) is not None:
                return False
            if get_json(self.cluster, "deployment", name, "-n", self.ns) is not None:
                return False
        for name, plan in self.plans.items():
            obj = get_json(self.cluster, "modelexpert", name, "-n", self.ns)
            if (
                obj is None
                or obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]
            ):
                return False
            deployment = get_json(self.cluster, "deployment", name, "-n", self.ns)
            if deployment is None or deployment["spec"]["replicas"] != plan.replicas:
                return False
            env = deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])
            if {"name": "CHAOS_GENERATION", "value": str(plan.template)} not in env:
                return False
        for name in (AUTOSCALED, EXTERNAL):
            obj = get_json(self.cluster, "modelexpert", name, "-n", self.ns)
            if condition(obj, "Ready").get("observedGeneration") != obj["metadata"]["generation"]:
                return False
        rp = get_json(self.cluster, "routingpolicy", POLICY, "-n", self.ns)
        if rp.get("status", {}).get("observedGeneration") != rp["metadata"]["generation"]:
            return False
        names = {e["name"] for e in rp["status"].get("experts", [])}
        if names != set(self._policy_experts()):
            return False
        gateway = get_json(self.cluster, "deployment", f"{POLICY}-router", "-n", self.ns)
        return (gateway is not None) == bool(self.gateway)

    def wait_converged(self, timeout: float) -> float:
        started = time.monotonic()
        wait_for(self._converged, "everything converged", timeout, interval=0.25)
        return time.monotonic() - started

    def _items(self, kind: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", kind, "-n", self.ns, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def check(self) -> ChaosReport:
        report = self.report
        owners = {
            item["metadata"]["uid"]
            for kind in ("modelexperts", "routingpolicies")
            for item in self._items(kind)
        }
        replica_sets = self._items("replicasets")
        for kind in ("deployments", "services", "configmaps", "secrets"):
            for item in self._items(kind):
                meta = item["metadata"]
                labels = meta.get("labels") or {}
                ours = (
                    "modelflock.io/expert" in labels
                    or labels.get("app.kubernetes.io/managed-by") == "modelflock"
                )
                refs = meta.get("ownerReferences") or []
                if ours and not any(ref["uid"] in owners for ref in refs):
                    report.orphans.append(f"{kind}/{meta['name']}")
                gone = meta["name"] in self.deleted and meta["name"] not in self.plans
                if kind in ("deployments", "services") and gone:
                    report.leftovers.append(f"{kind}/{meta['name']}")
        for name, plan in self.plans.items():
            deployment = get_json(self.cluster, "deployment", name, "-n", self.ns)
            generation = deployment["metadata"]["generation"]
            if generation > 1 + plan.deployment_changes:
                report.extra_generations.append(
                    f"{name}: generation {generation} after {plan.deployment_changes} changes"
                )
            uid = deployment["metadata"]["uid"]
            sets = [
                rs
                for rs in replica_sets
                if any(ref["uid"] == uid for ref in rs["metadata"].get("ownerReferences") or [])
            ]
            if len(sets) > 1 + plan.template_changes:
                report.extra_rollouts.append(
                    f"{name}: {len(sets)} ReplicaSets after {plan.template_changes} template changes"
                )
        scaled = get_json(self.cluster, "deployment", AUTOSCALED, "-n", self.ns)
        if scaled["metadata"]["generation"] != 1 or scaled["spec"]["replicas"] != 1:
            report.rescaled.append(
                f"{AUTOSCALED}: generation {scaled['metadata']['generation']}, "
                f"replicas {scaled['spec']['replicas']}"
            )
        for path in self.logs:
            text = path.read_text(errors="replace")
            report.tracebacks += text.count("Traceback")
            report.first_traceback = report.first_traceback or first_traceback(text)
        events = self._items("events")
        posted = Counter(
            (e["involvedObject"]["name"], e["reason"], e["message"])
            for e in events
            if e["involvedObject"]["kind"] in ("ModelExpert", "RoutingPolicy")
        )
        report.events_repeated = sum(count - 1 for count in posted.values() if count > 1)
        return report


@dataclass
class Outage:
    down: float  # seconds the component was stopped
    back: float  # seconds from its start until the API server was ready again
    resumed: float  # seconds from API ready until a new spec reached its Deployment
    lines: list[str]  # the operator's log from the stop until after the resume


def outage_closed(log: str) -> bool:
    """Whether every "Kubernetes API unreachable" line of an operator log has its "reachable
    again" line (the operator logs the pair once per outage)."""
    return log.count("Kubernetes API unreachable") == log.count("Kubernetes API reachable again")


def replicas_of(cluster: LocalCluster, namespace: str, name: str) -> int | None:
    found = get_json(cluster, "deployment", name, "-n", namespace)
    return None if found is None else int(found["spec"]["replicas"])


def measure_outage(
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    component: str,
    down_seconds: float,
) -> Outage:
    """Stop `component` (kube-apiserver or etcd) for `down_seconds`, start it, change the
    replicas of ModelExpert `steady` (autoscaling off) as soon as the API is ready, and time
    how long the change takes to reach its Deployment."""
    current = replicas_of(cluster, namespace, "steady")
    wanted = 1 if current == 2 else 2
    # An outage the operator saw before this one (a freshly started API server refuses
    # requests while its storage initialises) ends at the elector's next good read. Measured
    # before it ended, this outage would only extend that one and log no line of its own.
    wait_for(
        lambda: outage_closed(operator.log_path.read_text(errors="replace")),
        "the operator's earlier API outage, if any, reported over",
        30,
    )
    offset = operator.log_path.stat().st_size
    stopped = time.monotonic()
    # SIGKILL: a crash, and an outage of exactly `down_seconds` (a graceful apiserver
    # shutdown takes seconds of its own on a loaded machine).
    cluster.stop_component(component, kill=True)
    time.sleep(down_seconds)
    started = time.monotonic()
    cluster.start_component(component, timeout=120)
    wait_for(cluster.api_ready, "API server ready", 120, interval=0.1)
    back = time.monotonic()
    # The change the operator must pick up once the API is back (retried: the API server may
    # still refuse a request or two while it settles).
    wait_for(
        lambda: apply(cluster, namespace, expert("steady", wanted)) is not None,
        "spec change accepted",
        30,
        interval=0.2,
    )
    wait_for(
        lambda: replicas_of(cluster, namespace, "steady") == wanted,
        "spec reached Deployment",
        60,
        0.1,
    )
    resumed = time.monotonic() - back
    wait_for(
        lambda: (
            condition(get_json(cluster, "modelexpert", "steady", "-n", namespace), "Ready").get(
                "status"
            )
            == "True"
        ),
        "steady Ready again",
        60,
    )
    time.sleep(3)
    with operator.log_path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    # Not about the API: a new term's autoscaler reports once that the (absent) engines of
    # the autoscaled expert cannot be scraped.
    lines = [line for line in lines if "modelflock.autoscale" not in line]
    return Outage(started - stopped, back - started, resumed, lines)
