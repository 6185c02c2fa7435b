"""Shadow evaluation on the real control plane: a policy with evaluation gets status.evaluation
filled from its router's reports (through the flock API), with a recommendation and an Event;
an overloaded candidate and a spent budget drop samples.

The experts' engines are in-process engine-sims on the pods' loopback IPs (test_autoscaling's
EngineFleet); the router is a `modelflock router` process with the config the operator
rendered; requests go through the official `openai` client.
"""

# ruff: noqa: F811 (the fixtures imported from test_autoscaling are test parameters here)
from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from localcluster import LocalCluster, free_port, stop_process_group
from prometheus_client.parser import text_string_to_metric_families

# The engine fleet and its fixtures live with the autoscaling tests.
from test_autoscaling import (  # noqa: F401 (fixtures)
    EngineFleet,
    KubeReader,
    expert,
    fleet,
    flock,
    kube,
    namespace,
    ready_with,
    wait_serving,
)

from modelflock.sim.config import Behaviour, SimSettings
from support import OperatorProcess, apply, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

POLICY = "quality"
FAST = SimSettings(
    max_batch=4, prefill_seconds=0.0, decode_seconds_per_token=0.002, output_tokens=8
)
# The candidate takes 4 requests at a time (~0.15 s each), so load makes requests wait in it.
NARROW = FAST.model_copy(update={"max_batch": 4, "decode_seconds_per_token": 0.02})


def priced(name: str, output_per_million: str, scraped: bool = False) -> dict[str, Any]:
    """One replica; `scraped`: autoscaling on with min = max = 1, so the operator scrapes the
    engine's queue (what discovery reports) without ever scaling it."""
    if scraped:
        doc = expert(name, minReplicas=1, maxReplicas=1)
    else:
        doc = expert(name, replicas=1, enabled=False)
    doc["spec"]["cost"] = {"inputPerMillion": "0", "outputPerMillion": output_per_million}
    return doc


def policy(budget: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "experts": ["qa-served", "qa-small", "qa-judge"],
            "classifier": {"intents": [{"name": "summarize"}], "defaultIntent": "summarize"},
            "routes": [{"name": "summarize", "expert": "qa-served"}],
            "evaluation": {
                "candidates": ["qa-small"],
                "sampleRate": "1",
                "judge": {"type": "expert", "expert": "qa-judge"},
                "dailyBudgetUSD": budget,
                "maxConcurrent": 4,
                "thresholds": {"minSamples": 20},
            },
        },
    }


class Router:
    """`modelflock router` with the operator's rendered config (paths mapped to local files)."""

    def __init__(self, kube: KubeReader, namespace: str, operator: OperatorProcess, workdir: Path):
        self.kube, self.namespace, self.operator, self.workdir = kube, namespace, operator, workdir
        self.port = free_port()
        self.path = workdir / "router.yaml"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, check: Any = None) -> dict[str, Any]:
        def rendered() -> dict[str, Any] | None:
            cm = self.kube.get(
                f"/api/v1/namespaces/{self.namespace}/configmaps/{POLICY}-router-config"
            )
            if cm is None:
                return None
            config: dict[str, Any] = yaml.safe_load(cm["data"]["router.yaml"])
            return config if check is None or check(config) else None

        config = wait_for(rendered, "the rendered router config", 30)
        secret = self.kube.get(f"/api/v1/namespaces/{self.namespace}/secrets/{POLICY}-router-token")
        token = self.workdir / "token"
        token.write_text(base64.b64decode(secret["data"]["token"]).decode())
        config["discovery"].update(tokenFile=str(token), intervalSeconds=0.5)
        config["evaluation"]["reportIntervalSeconds"] = 0.5  # router-side: report often
        config["listen"] = {"host": "127.0.0.1", "port": self.port}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.replace(self.path)
        return config

    def start(self) -> None:
        self.write_config()
        log = (self.workdir / "router.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelflock", "router", "--config", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(lambda: self.get("/readyz") == "ready", "router ready", 30)

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            error.close()
            return None
        except OSError:
            return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics") or ""):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=5)


@pytest.fixture
def router(
    kube: KubeReader, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> Iterator[Router]:
    running = Router(kube, namespace, operator, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def evaluation_of(kube: KubeReader, namespace: str) -> dict[str, Any]:
    obj = kube.get(f"/apis/modelflock.io/v1alpha1/namespaces/{namespace}/routingpolicies/{POLICY}")
    return ((obj or {}).get("status") or {}).get("evaluation") or {}


def ask_all(router: Router, prompts: list[str], pause: float = 0.0) -> None:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0) as client:
        for prompt in prompts:
            answer = client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert answer.choices[0].message.content
            time.sleep(pause)


def test_policy_status_recommendations_budget_and_overload(
    cluster: LocalCluster,
    kube: KubeReader,
    operator: OperatorProcess,
    namespace: str,
    fleet: EngineFleet,
    router: Router,
) -> None:
    ns = namespace
    # served and small are equally good (the same prompts degrade); small costs half as much
    fleet.serve("qa-served", FAST.model_copy(update={"behaviour": Behaviour(degraded_rate=0.2)}))
    fleet.serve("qa-small", NARROW.model_copy(update={"behaviour": Behaviour(degraded_rate=0.2)}))
    fleet.serve("qa-judge", FAST.model_copy(update={"behaviour": Behaviour(judge=True)}))
    apply(cluster, ns, priced("qa-served", "2000"))
    apply(cluster, ns, priced("qa-small", "1000", scraped=True))  # $0.008 per 8-token answer
    apply(cluster, ns, priced("qa-judge", "0"))
    apply(cluster, ns, policy(budget="100"))
    for name in ("qa-served", "qa-small", "qa-judge"):
        wait_for(lambda name=name: ready_with(kube, ns, name, 1), f"{name} Ready", 60)
        wait_serving(fleet, name, 1)
    router.start()

    # 1. Samples reach the policy's status through the flock API, with a recommendation.
    prompts = [f"Summarize change request {i} for the release notes." for i in range(40)]
    ask_all(router, prompts, pause=0.1)  # samples never wait in the candidate's engine

    def filled() -> dict[str, Any] | None:
        results = evaluation_of(kube, ns).get("results") or []
        return results[0] if results and results[0]["samples"] == 40 else None

    result = wait_for(filled, "status.evaluation with 40 samples", 40)
    assert (result["route"], result["expert"], result["candidate"]) == (
        "summarize",
        "qa-served",
        "qa-small",
    )
    assert result["judge"] == "pairwise" and result["ties"] == 40
    assert result["recommendation"] == "MoveDown"
    assert result["message"] == (
        "route `summarize`: `qa-small` matched `qa-served` on 100 % ± 9 % of 40 samples at"
        " 50 % of the cost — consider moving it down"
    )
    assert float(result["candidateCostUSD"]) == pytest.approx(40 * 0.008)
    spent = float(evaluation_of(kube, ns)["spentTodayUSD"])
    assert spent == pytest.approx(40 * 0.008)
    wait_for(lambda: kube.events(ns, POLICY, "RecommendMoveDown"), "a RecommendMoveDown Event", 10)
    # routing never changed by itself: every answer still came from the served expert
    assert router.metric("modelflock_router_requests_total", expert="qa-served") == 40

    # The flock API refuses reports about experts the policy does not name, and bad ones.
    secret = kube.get(f"/api/v1/namespaces/{ns}/secrets/{POLICY}-router-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    prefix = f"/flock/v1/namespaces/{ns}/routingpolicies/{POLICY}"
    item = {"route": "summarize", "expert": "qa-served", "candidate": "other", "judge": "pairwise"}
    body = {"router": "x", "day": "2026-11-29", "results": [{**item, "samples": 1, "ties": 1}]}
    assert flock(operator, "POST", prefix + "/evaluation", token, body)[0] == 403
    body["results"] = [{**item, "candidate": "qa-small", "samples": 2, "ties": 1}]
    code, doc = flock(operator, "POST", prefix + "/evaluation", token, body)
    assert code == 400 and "samples" in doc["error"]["message"]
    assert flock(operator, "POST", prefix + "/evaluation", "wrong", body)[0] == 401

    # 2. An overloaded candidate (requests waiting in its engine) drops samples, no queueing.
    fleet.start_load("qa-small", concurrency=16, max_seconds=15)

    def busy() -> bool:
        code, doc = flock(operator, "GET", prefix + "/endpoints", token)
        endpoints = doc["experts"]["qa-small"]["endpoints"] if code == 200 else []
        return any((e.get("queueDepth") or 0) > 0 for e in endpoints)

    wait_for(busy, "the candidate's queue in the flock API", 15)
    time.sleep(1.0)  # the router's next discovery poll
    ask_all(router, [f"Summarize outage {i} briefly." for i in range(5)])
    fleet.stop_load()
    dropped = router.metric("modelflock_router_shadow_dropped_total", reason="overloaded")
    assert dropped == 5
    wait_for(
        lambda: evaluation_of(kube, ns).get("dropped", 0) >= 5, "dropped samples in status", 30
    )

    # 3. The daily budget: 0.32 spent, 0.34 allowed: three more samples, then drops.
    apply(cluster, ns, policy(budget="0.34"))
    router.write_config(lambda c: c["evaluation"]["dailyBudgetUSD"] == "0.34")
    wait_for(
        lambda: router.metric("modelflock_router_config_reloads_total", result="success") >= 1,
        "the router reloaded the new budget",
        15,
    )
    wait_for(lambda: not busy(), "the candidate idle again", 20)
    time.sleep(1.0)
    before = router.metric("modelflock_router_shadow_samples_total")
    ask_all(router, [f"Summarize ticket {i} for the digest." for i in range(8)], pause=0.8)
    time.sleep(1.0)
    assert router.metric("modelflock_router_shadow_samples_total") - before == 3
    assert router.metric("modelflock_router_shadow_dropped_total", reason="budget") == 5

    def spent_reported() -> float | None:
        value = float(evaluation_of(kube, ns).get("spentTodayUSD") or 0)
        return value if value == pytest.approx(43 * 0.008) else None

    wait_for(spent_reported, "the budget spent in status", 30)
