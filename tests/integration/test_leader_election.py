"""Operator availability: replicas elect a leader on a Lease; only the leader writes.

On the real control plane: a standby takes over when the leader is SIGKILLed (after the lease
duration) or stops (at once: it releases the Lease), and keeps reconciling; two operators
started together with different configurations do not fight (before: a Deployment flipped
between 0 and 1 replicas, the router ConfigMap was rewritten ~21 times a second and every
event was posted twice).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localcluster import LocalCluster

from support import (
    OperatorProcess,
    apply,
    condition,
    election_config,
    first_traceback,
    get_json,
    wait_for,
    without_session_operator,
)

pytestmark = pytest.mark.cluster

NS = "leader"
LEASE = 6  # seconds (election_config): a standby waits this long on a silent leader


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[str]:
    """These tests run their own operators on the session operator's Lease: stop it meanwhile."""
    with without_session_operator(cluster, operator, NS):
        yield NS


def replica(cluster: LocalCluster, workdir: Path, name: str, leader: bool) -> OperatorProcess:
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    process = OperatorProcess(
        cluster=cluster,
        workdir=directory,
        config_overrides=election_config(lease=LEASE, renew=4),
        wait_leader=leader,
    )
    process.start()
    return process


def expert(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": f"org/{name}", "parameters": "7B"},
        "nodePool": "l4",
        "autoscaling": {"enabled": False},
        "replicas": 1,
        "cost": {"inputPerMillion": "0.10", "outputPerMillion": "0.20"},
    }
    base.update(spec)
    base = {key: value for key, value in base.items() if value is not None}
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": base,
    }


def deployment_replicas(cluster: LocalCluster, name: str) -> int | None:
    found = get_json(cluster, "deployment", name, "-n", NS)
    return None if found is None else int(found["spec"]["replicas"])


def observed(cluster: LocalCluster, name: str) -> Any:
    obj = get_json(cluster, "modelexpert", name, "-n", NS)
    status = (obj or {}).get("status", {})
    return (
        obj
        if status.get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation")
        and condition(obj, "Ready").get("status") == "True"
        else None
    )


def lease(cluster: LocalCluster) -> dict[str, Any]:
    found: dict[str, Any] = get_json(cluster, "lease", "modelflock-operator", "-n", "default")
    return found


def counter_value(process: OperatorProcess, name: str) -> float:
    """Sum of the samples of exactly `name` (all label sets)."""
    total = 0.0
    for line in process.metrics().splitlines():
        if line.startswith("#"):
            continue
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        if sample == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_standby_takes_over_when_the_leader_dies_or_stops(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    first = replica(cluster, tmp_path, "first", leader=True)
    second = replica(cluster, tmp_path, "second", leader=False)
    try:
        health = second.health()
        assert health["leader"] is False
        assert health["holder"] == first.health()["identity"]
        apply(cluster, NS, expert("handover"))
        wait_for(lambda: observed(cluster, "handover"), "handover Ready", 60)
        assert counter_value(second, "modelflock_applies_total") == 0, "a standby wrote"
        transitions = lease(cluster)["spec"].get("leaseTransitions", 0)

        # SIGKILL: no goodbye, so the standby waits for the lease to expire, then leads.
        first.kill()
        killed = time.monotonic()
        wait_for(second.is_leader, "standby leading", timeout=LEASE + 10)
        took = time.monotonic() - killed
        # Bounded by the lease duration (plus a retry period and a loaded CI machine).
        assert took <= LEASE + 5, f"takeover took {took:.1f}s with a {LEASE}s lease"
        assert lease(cluster)["spec"]["holderIdentity"] == second.health()["identity"]
        assert lease(cluster)["spec"]["leaseTransitions"] == transitions + 1
        # The new leader reconciles: a spec change reaches the Deployment.
        apply(cluster, NS, expert("handover", replicas=2))
        wait_for(lambda: deployment_replicas(cluster, "handover") == 2, "2 replicas", 20)
        wait_for(lambda: observed(cluster, "handover"), "status of generation 2", 30)

        # A graceful stop releases the Lease: the standby leads at once, not after LEASE.
        third = replica(cluster, tmp_path, "third", leader=False)
        try:
            assert third.health()["leader"] is False
            second.stop()
            stopped = time.monotonic()
            wait_for(third.is_leader, "third leading", timeout=LEASE + 10)
            took = time.monotonic() - stopped
            # Well below LEASE: the Lease was released, not left to expire.
            assert took < 4.0, f"handover after a graceful stop took {took:.1f}s"
            assert "released Lease default/modelflock-operator" in second.log_path.read_text()
            apply(cluster, NS, expert("handover", replicas=1))
            wait_for(lambda: deployment_replicas(cluster, "handover") == 1, "1 replica", 20)
        finally:
            third.stop()
    finally:
        first.stop()
        second.stop()
    for process in (first, second):
        assert not (found := first_traceback(process.log_path.read_text())), found


def test_two_operators_started_together_do_not_fight(cluster: LocalCluster, tmp_path: Path) -> None:
    """Both start at once, with configurations that differ (each its own operatorUrl, as in
    the review): exactly one leads, and nothing flips."""
    a = OperatorProcess(
        cluster=cluster,
        workdir=tmp_path / "a",
        config_overrides=election_config(lease=LEASE, renew=4),
        wait_leader=False,
    )
    b = OperatorProcess(
        cluster=cluster,
        workdir=tmp_path / "b",
        config_overrides=election_config(lease=LEASE, renew=4),
        wait_leader=False,
    )
    for process in (a, b):
        process.workdir.mkdir(parents=True)
    assert a.flock_url != b.flock_url
    a.start()
    b.start()
    try:
        wait_for(lambda: a.is_leader() or b.is_leader(), "a leader", timeout=LEASE + 10)
        apply(
            cluster,
            NS,
            expert(
                "sleepy",
                autoscaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 0},
                replicas=None,
            ),
        )
        apply(cluster, NS, expert("steady"))
        apply(
            cluster,
            NS,
            {
                "apiVersion": "modelflock.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "pair"},
                "spec": {
                    "experts": ["sleepy", "steady"],
                    "routes": [{"name": "chat", "expert": "steady"}],
                },
            },
        )
        wait_for(lambda: observed(cluster, "steady"), "steady Ready", 60)
        wait_for(
            lambda: get_json(cluster, "configmap", "pair-router-config", "-n", NS),
            "router ConfigMap",
            30,
        )
        time.sleep(5)  # let the first transitions (scale to zero, readiness) settle

        leaders: list[tuple[bool, bool]] = []
        config_versions: set[str] = set()
        hashes: set[str] = set()
        generations: set[int] = set()
        replicas: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            leaders.append((a.is_leader(), b.is_leader()))
            config = get_json(cluster, "configmap", "pair-router-config", "-n", NS)
            config_versions.add(config["metadata"]["resourceVersion"])
            hashes.add(get_json(cluster, "routingpolicy", "pair", "-n", NS)["status"]["configHash"])
            sleepy = get_json(cluster, "deployment", "sleepy", "-n", NS)
            generations.add(sleepy["metadata"]["generation"])
            replicas.append(sleepy["spec"]["replicas"])
            time.sleep(0.5)
        assert not any(both for both in leaders if all(both)), "two leaders at once"
        assert all(any(pair) for pair in leaders), "no leader for a while"
        assert len(config_versions) == 1, f"router ConfigMap rewritten: {config_versions}"
        assert len(hashes) == 1, f"configHash alternated: {hashes}"
        assert len(generations) == 1 and len(set(replicas)) == 1, (
            f"sleepy rescaled: generations {generations}, replicas {replicas}"
        )
        events = json.loads(cluster.kubectl("get", "events", "-n", NS, "-o", "json"))["items"]
        reasons = Counter(e["reason"] for e in events)
        assert reasons["ManualScaleOverridden"] == 0
        posted = Counter(
            (e["involvedObject"]["name"], e["reason"], e["message"])
            for e in events
            if e["involvedObject"]["name"] in ("sleepy", "steady", "pair")
        )
        doubled = {key: count for key, count in posted.items() if count > 1}
        assert posted and not doubled, f"events posted more than once: {doubled}"
        standby = b if a.is_leader() else a
        assert counter_value(standby, "modelflock_applies_total") == 0, "the standby wrote"
        assert counter_value(standby, "modelflock_leader") == 0
    finally:
        a.stop()
        b.stop()
    for process in (a, b):
        assert not (found := first_traceback(process.log_path.read_text())), found
