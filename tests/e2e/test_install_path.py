"""A platform engineer's first day, on the local control plane: docs/install.md's path from
nothing to a working portfolio, its commands run as written (tests/docpath.py extracts them),
then observed with a real Prometheus and uninstalled.

What the local control plane cannot do, and what the test does instead:
- no container runtime: the image is not built (step `image`); the chart's operator pod is
  placed on a fake CPU node that kwok reports Ready, and the operator runs as a local process
  with the configuration the chart rendered (as `make demo` does);
- no real pods: a simulated engine serves each engine pod's IP (demo/portfolio.py's
  EngineFleet); the frontier API is simulated on loopback with the key the settings step's
  variable holds, over plain http, so after step `apply` the test points the frontier expert
  at it (with `allowPlainHttp`); the router runs as a local process with the
  configuration the operator rendered, standing in for the gateway pod step `gateway` created
  (step `request` port-forwards to that pod, which the test cannot);
- no Prometheus Operator: its CRDs are applied from tests/data/upstream-crds, and the scrape
  configuration it would generate from the installed ServiceMonitor and PodMonitor comes from
  tests/monitoring/promop.py, with discovery swapped for a target file built from the real
  Service and pods (nothing dials outside 127.0.0.0/8).

Then, against that Prometheus: each alert of the installed PrometheusRule fires under its
condition and resolves without it; every dashboard query returns series for the experts'
namespace; the cost-per-request and savings panels agree with `modelflock report`.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from localcluster import KWOK_ANNOTATION, LocalCluster, free_port, stop_process_group

from docpath import doc_steps, run_step, shell_env
from monitoring.prometheus import Prometheus, scrape_config_file, write_targets
from monitoring.promop import (
    endpoints_target,
    pod_monitor_scrape_configs,
    pod_target,
    service_monitor_scrape_configs,
    with_file_sd,
)
from support import OperatorProcess, get_json, wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))

from portfolio import FRONTIER, EngineFleet  # noqa: E402

from modelflock.router.report import RouteRow, summarize, total  # noqa: E402

pytestmark = pytest.mark.e2e

NS, RELEASE_NS, RELEASE = "llm", "modelflock", "modelflock"
STEPS = doc_steps()
UPSTREAM_CRDS = REPO / "tests" / "data" / "upstream-crds"
SCRAPE = "1s"  # scrape and rule evaluation interval of the test's Prometheus
CODE_PROMPT = "Write a Python function that parses a CSV file."
SUMMARY_PROMPT = "Summarize this article in three bullet points: the council met on Tuesday."
# One of each kind the measured traffic sends: routes code, summarize and chat, and an
# escalation from intent-small to the frontier (small models refuse what is marked hard).
MIX = [
    CODE_PROMPT,
    SUMMARY_PROMPT,
    "What is the capital of France?",
    "[hard] What is the meaning of this riddle?",
]


@dataclass
class Day:
    workdir: Path
    cluster: LocalCluster
    checkout: Path
    env: dict[str, str]
    frontier_key: str
    frontier_port: int
    operator: OperatorProcess | None = None
    fleet: EngineFleet | None = None
    frontier: subprocess.Popen[bytes] | None = None
    router: subprocess.Popen[bytes] | None = None
    router_port: int = field(default_factory=free_port)
    router_metrics_port: int = field(default_factory=free_port)
    gateway_key: str = ""
    prometheus: Prometheus | None = None

    def run(self, name: str) -> str:
        return run_step(STEPS[name], self.checkout, self.env)

    @property
    def router_base(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def router_ops(self) -> str:
        return f"http://127.0.0.1:{self.router_metrics_port}"

    def router_metrics(self) -> str:
        with urllib.request.urlopen(self.router_ops + "/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def client(self, key: str | None = None) -> openai.OpenAI:
        """An OpenAI client of the gateway, with its client key (as Authorization: Bearer)."""
        return openai.OpenAI(
            base_url=self.router_base + "/v1",
            api_key=key or self.gateway_key,
            max_retries=0,
            timeout=60,
        )

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for proc in (self.router, self.frontier):
            if proc is not None:
                stop_process_group(proc, timeout=5)
        if self.fleet is not None:
            self.fleet.stop()
        if self.operator is not None:
            self.operator.stop()
        self.cluster.stop()


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def cpu_node() -> dict[str, Any]:
    """A node without GPUs or taints, for the operator pod and the gateway (kwok runs it)."""
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "cpu-system-0",
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": "cpu-system-0",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    workdir = tmp_path_factory.mktemp("first-day")
    cluster = LocalCluster(workdir=workdir / "cluster")
    cluster.start()
    # A checkout's worth of the repository: what the commands read, and room for my-values.yaml.
    checkout = workdir / "checkout"
    for folder in ("charts", "deploy", "crds"):
        shutil.copytree(REPO / folder, checkout / folder)
    frontier_key, frontier_port = "fk-" + secrets.token_hex(12), free_port()
    assert cluster.bin_dir is not None
    env = shell_env(
        cluster.bin_dir,
        cluster.kubeconfig,
        workdir,
        IMAGE_REPOSITORY="registry.internal.example/platform/modelflock",
        # What a reader sets (https is required); after step `apply` the test points the
        # expert at its simulated frontier on loopback instead (plain http, allowPlainHttp).
        FRONTIER_BASE_URL="https://frontier.invalid/v1",
        FRONTIER_API_KEY=frontier_key,
        HF_TOKEN="hf_" + secrets.token_hex(12),
    )
    running = Day(workdir, cluster, checkout, env, frontier_key, frontier_port)
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(cpu_node()))
        yield running
    finally:
        running.stop()


# ---- the path, step by step ------------------------------------------------------------------


def test_01_values_and_install(day: Day) -> None:
    day.run("values")
    values = yaml.safe_load((day.checkout / "my-values.yaml").read_text())
    assert values["image"]["repository"] == day.env["IMAGE_REPOSITORY"]
    assert [p["name"] for p in values["nodePools"]] == ["l4", "h100"]
    day.run("install")
    deployment = get_json(day.cluster, "deployment", "modelflock", "-n", RELEASE_NS)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{day.env['IMAGE_REPOSITORY']}:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The operator itself, as a local process with the configuration the chart rendered.
    config_map = get_json(day.cluster, "configmap", "modelflock-config", "-n", RELEASE_NS)
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    operator = OperatorProcess(cluster=day.cluster, workdir=day.workdir)
    config["operatorUrl"], config["bindAddress"] = operator.flock_url, "127.0.0.1"
    operator.config_overrides = config
    operator.start()
    day.operator = operator
    # `helm test`'s Pod cannot run here (kwok completes only Jobs' pods): run its script with
    # the Service's address swapped for the local operator's.
    hooks = subprocess.run(
        ["helm", "get", "hooks", RELEASE, "-n", RELEASE_NS],
        env=day.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [pod] = [d for d in yaml.safe_load_all(hooks) if d and d["kind"] == "Pod"]
    [container] = pod["spec"]["containers"]
    script = container["args"][0].replace(
        f"modelflock.{RELEASE_NS}.svc:8090", f"127.0.0.1:{operator.flock_port}"
    )
    assert f"127.0.0.1:{operator.flock_port}/readyz" in script
    check = subprocess.run(
        [sys.executable, *container["command"][1:], script], capture_output=True, text=True
    )
    assert check.returncode == 0 and "200 ok" in check.stdout, check.stdout + check.stderr


def test_02_secrets_apply_and_watch(day: Day) -> None:
    day.run("secrets")
    key_file = day.workdir / "frontier-key"
    key_file.write_text(day.frontier_key)
    day.frontier = spawn(
        [
            *FRONTIER.args("127.0.0.1", day.frontier_port, "frontier-large"),
            "--api-key-file",
            str(key_file),
        ],
        day.workdir / "frontier.log",
    )
    day.run("apply")
    frontier = get_json(day.cluster, "modelexpert", "frontier", "-n", NS)
    assert frontier["spec"]["external"]["baseURL"] == day.env["FRONTIER_BASE_URL"]
    local = {"baseURL": f"http://127.0.0.1:{day.frontier_port}/v1", "allowPlainHttp": True}
    day.cluster.kubectl(
        "patch",
        "modelexpert",
        "frontier",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"external": local}}),
    )
    day.fleet = EngineFleet(day.cluster, NS, day.workdir / "engines")
    day.fleet.start()
    out = day.run("watch")
    assert "condition met" in out
    for expert in get_json(day.cluster, "modelexperts", "-n", NS)["items"]:
        ready = next(c for c in expert["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (expert["metadata"]["name"], ready)
    frontier = get_json(day.cluster, "modelexpert", "frontier", "-n", NS)
    assert frontier["status"]["endpoint"] == local["baseURL"]


def secret_value(day: Day, name: str, key: str) -> str:
    return base64.b64decode(get_json(day.cluster, "secret", name, "-n", NS)["data"][key]).decode()


def router_config(day: Day) -> dict[str, Any]:
    """The gateway's router configuration as the operator rendered it, with the files the
    gateway pod mounts (router token, frontier key, client keys) mapped to local files."""
    policy = get_json(day.cluster, "routingpolicy", "portfolio", "-n", NS)
    cm = get_json(day.cluster, "configmap", policy["status"]["configMapName"], "-n", NS)
    config: dict[str, Any] = yaml.safe_load(cm["data"]["gateway.yaml"])
    for index, key in enumerate((config.get("auth") or {}).get("keys", [])):
        key_file = day.workdir / f"client-key-{index}"
        secret, item = Path(key["file"]).parts[-2:]
        key_file.write_text(secret_value(day, secret, item))
        key["file"] = str(key_file)
    token_file = day.workdir / "router-token"
    token_file.write_text(secret_value(day, "portfolio-router-token", "token"))
    config["discovery"]["tokenFile"] = str(token_file)
    config["discovery"]["intervalSeconds"] = 1
    for expert in config["experts"]:
        if "apiKeyFile" in expert:
            expert["apiKeyFile"] = str(day.workdir / "frontier-key")
    config["listen"] = {"host": "127.0.0.1", "port": day.router_port}
    return config


def write_router_config(day: Day) -> Path:
    """The router's config file, from the operator's ConfigMap (the router reloads it when it
    changes, as a gateway pod's mounted ConfigMap would)."""
    path = day.workdir / "router.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(router_config(day), sort_keys=False))
    tmp.replace(path)
    return path


def test_03_gateway_and_a_request(day: Day) -> None:
    day.run("gateway")
    pods = get_json(day.cluster, "pods", "-n", NS, "-l", "modelflock.io/router-metrics")["items"]
    assert [p["metadata"]["labels"]["modelflock.io/router-metrics"] for p in pods] == ["gateway"]
    assert "kubectl -n llm port-forward service/portfolio-router" in STEPS["request"].script
    day.gateway_key = secret_value(day, "gateway-key", "key")
    assert day.fleet is not None
    day.fleet.sync()  # every engine pod has its simulated engine
    path = write_router_config(day)
    # As in the gateway pod: the API needs a client key, /metrics and probes are on their own
    # port (the PodMonitor's mf-metrics).
    day.router = spawn(
        [
            *(sys.executable, "-m", "modelflock", "router", "--config", str(path)),
            *("--metrics-port", str(day.router_metrics_port)),
        ],
        day.workdir / "router.log",
    )
    wait_for(lambda: _status(day.router_ops + "/readyz") == 200, "router ready", 30)
    with day.client("wrong-key") as client:
        assert ask(client, CODE_PROMPT)[0] == 401
    with day.client() as client:
        # Until the router's first discovery brings code-7b's endpoints, its fallback answers.
        headers = wait_for(
            lambda: (
                (h := ask(client, CODE_PROMPT)[1]).get("x-modelflock-expert") == "code-7b" and h
            ),
            "an answer from code-7b",
            30,
            0.5,
        )
        assert headers["x-modelflock-route"] == "code"
        assert float(headers["x-modelflock-cost"]) < float(headers["x-modelflock-baseline-cost"])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except OSError:
        return 0


# ---- observe: a real Prometheus --------------------------------------------------------------


def monitoring_objects(day: Day) -> dict[str, dict[str, Any]]:
    found = {}
    for kind in ("servicemonitor", "podmonitor", "prometheusrule"):
        [item] = get_json(day.cluster, kind, "-n", RELEASE_NS)["items"]
        found[kind] = item
    return found


def test_04_observe_with_prometheus(day: Day) -> None:
    # The Prometheus Operator's CRDs (in a real cluster, it installs them).
    crds = sorted(UPSTREAM_CRDS.glob("monitoring.coreos.com_*.yaml"))
    day.cluster.kubectl("apply", "--server-side", *[a for f in crds for a in ("-f", str(f))])
    names = [
        f"crd/{p}.monitoring.coreos.com"
        for p in ("servicemonitors", "podmonitors", "prometheusrules")
    ]
    wait_for(
        lambda: (
            day.cluster.run_kubectl(
                "wait", "--for=condition=Established", "--timeout=10s", *names
            ).returncode
            == 0
        ),
        "the monitoring CRDs established",
        60,
        1,
    )
    day.run("observe")
    dashboard = get_json(day.cluster, "configmap", "modelflock-dashboard", "-n", RELEASE_NS)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    # The test's own upgrade (not in the docs): scrape every second, alert without waiting.
    fast = [
        "metrics.serviceMonitor.interval=1s",
        "metrics.serviceMonitor.scrapeTimeout=1s",
        "metrics.podMonitor.interval=1s",
        "metrics.podMonitor.scrapeTimeout=1s",
        "metrics.prometheusRule.degradedFor=0s",
        "metrics.prometheusRule.queueAboveTargetFor=0s",
        "metrics.prometheusRule.routerErrorFor=0s",
    ]
    subprocess.run(
        ["helm", "upgrade", RELEASE, "charts/modelflock", "-n", RELEASE_NS, "--reuse-values"]
        + [a for s in fast for a in ("--set", s)],
        cwd=day.checkout,
        env=day.env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    objects = monitoring_objects(day)
    service = get_json(day.cluster, "service", "modelflock", "-n", RELEASE_NS)
    # The chart runs two operator replicas (leader election); the local operator process stands
    # in for the first of them, as the one the Service would send the scrape to.
    operator_pod = min(
        get_json(
            day.cluster, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/component=operator"
        )["items"],
        key=lambda pod: pod["metadata"]["name"],
    )
    [gateway_pod] = get_json(day.cluster, "pods", "-n", NS, "-l", "modelflock.io/router-metrics")[
        "items"
    ]
    assert day.operator is not None
    targets = day.workdir / "prometheus-targets"
    targets.mkdir()
    write_targets(
        targets / "operator.json",
        [
            endpoints_target(
                f"127.0.0.1:{day.operator.metrics_port}", service, operator_pod, "metrics"
            )
        ],
    )
    write_targets(
        targets / "routers.json",
        [pod_target(f"127.0.0.1:{day.router_metrics_port}", gateway_pod, "mf-metrics")],
    )
    rules = day.workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": objects["prometheusrule"]["spec"]["groups"]}))
    jobs = [
        with_file_sd(j, str(targets / "operator.json"))
        for j in service_monitor_scrape_configs(objects["servicemonitor"])
    ]
    jobs += [
        with_file_sd(j, str(targets / "routers.json"))
        for j in pod_monitor_scrape_configs(objects["podmonitor"])
    ]
    day.prometheus = Prometheus(
        day.workdir / "prometheus", scrape_config_file(jobs, [str(rules)], SCRAPE)
    )
    day.prometheus.start()
    prom = day.prometheus
    prom.wait_for(
        lambda: len([t for t in prom.targets() if t["health"] == "up"]) == 2, "both targets up", 30
    )
    [queue] = prom.wait_for(
        lambda: prom.query(
            f'modelflock_autoscaler_queue_depth{{expert="code-7b",namespace="{NS}"}}'
        ),
        "code-7b's queue depth in the experts' namespace",
        30,
    )
    assert queue["metric"]["service"] == "modelflock"
    assert not prom.query('{__name__=~"modelflock_.*",exported_namespace!=""}')


def ask(client: openai.OpenAI, prompt: str, max_tokens: int = 256) -> tuple[int, dict[str, str]]:
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
        )
    except openai.APIStatusError as error:
        return error.status_code, dict(error.response.headers)
    raw.parse()
    return 200, dict(raw.headers)


def firing(prom: Prometheus, alert: str, **labels: str) -> bool:
    return any(all(a.get(k) == v for k, v in labels.items()) for a in prom.firing(alert))


def test_05_alert_expert_degraded(day: Day) -> None:
    prom = day.prometheus
    assert prom is not None
    assert not prom.firing("ModelFlockExpertDegraded")  # every expert is healthy
    too_big = {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": "too-big", "namespace": NS},
        "spec": {
            "engine": "vllm",
            "tier": "large",
            "capabilities": ["chat"],
            "model": {"name": "org/huge-405b", "parameters": "405B"},
            "resources": {"gpus": 1},
            "nodePool": "l4",
            "cost": {"inputPerMillion": "1", "outputPerMillion": "1"},
        },
    }
    day.cluster.kubectl("apply", "-f", "-", input=json.dumps(too_big))
    prom.wait_for(
        lambda: firing(prom, "ModelFlockExpertDegraded", namespace=NS, expert="too-big"),
        "ModelFlockExpertDegraded for llm/too-big",
        60,
    )
    assert {a["expert"] for a in prom.firing("ModelFlockExpertDegraded")} == {"too-big"}
    day.cluster.kubectl("delete", "modelexpert", "too-big", "-n", NS, "--timeout=60s")
    prom.wait_for(lambda: not prom.firing("ModelFlockExpertDegraded"), "the alert resolved", 60)


def test_06_alert_queue_above_target(day: Day) -> None:
    prom = day.prometheus
    assert prom is not None
    assert not prom.firing("ModelFlockQueueAboveTarget")
    # At its maximum of one replica, a burst leaves requests waiting above the target (4).
    patch = {"spec": {"autoscaling": {"maxReplicas": 1}}}
    day.cluster.kubectl(
        "patch", "modelexpert", "code-7b", "-n", NS, "--type", "merge", "-p", json.dumps(patch)
    )
    seen = False
    with day.client() as client, ThreadPoolExecutor(max_workers=24) as pool:
        deadline = time.monotonic() + 60

        def burst(_: int) -> None:
            while time.monotonic() < deadline and not done:
                ask(client, "Refactor this python loop into a comprehension.")

        done = False
        futures = [pool.submit(burst, i) for i in range(24)]
        try:
            seen = bool(
                prom.wait_for(
                    lambda: firing(
                        prom, "ModelFlockQueueAboveTarget", namespace=NS, expert="code-7b"
                    ),
                    "ModelFlockQueueAboveTarget for llm/code-7b",
                    55,
                )
            )
        finally:
            done = True
            for future in futures:
                future.result()
    assert seen
    assert {a["expert"] for a in prom.firing("ModelFlockQueueAboveTarget")} <= {"code-7b"}
    prom.wait_for(lambda: not prom.firing("ModelFlockQueueAboveTarget"), "the alert resolved", 60)
    patch = {"spec": {"autoscaling": {"maxReplicas": 4}}}
    day.cluster.kubectl(
        "patch", "modelexpert", "code-7b", "-n", NS, "--type", "merge", "-p", json.dumps(patch)
    )


def test_07_alert_router_error_rate(day: Day) -> None:
    prom, fleet = day.prometheus, day.fleet
    assert prom is not None and fleet is not None
    assert not prom.firing("ModelFlockRouterErrorRate")
    # summarize-tgi and its fallback intent-small down: the summarize route answers 5xx.
    fleet.kill_expert("summarize-tgi")
    fleet.kill_expert("intent-small")
    codes = []
    try:
        with day.client() as client:
            for _ in range(8):  # spread over several scrapes, so rate() sees them grow
                codes.append(ask(client, SUMMARY_PROMPT)[0])
                time.sleep(0.6)
            prom.wait_for(
                lambda: firing(prom, "ModelFlockRouterErrorRate", namespace=NS, route="summarize"),
                "ModelFlockRouterErrorRate for llm/summarize",
                30,
            )
    finally:
        fleet.revive_expert("summarize-tgi")
        fleet.revive_expert("intent-small")
    assert codes and all(c >= 500 for c in codes), codes
    assert {a["route"] for a in prom.firing("ModelFlockRouterErrorRate")} == {"summarize"}
    wait_for(lambda: fleet.urls("summarize-tgi") and fleet.urls("intent-small"), "engines back", 30)
    with day.client() as client:
        wait_for(lambda: ask(client, SUMMARY_PROMPT)[0] == 200, "summaries answered again", 60, 1)
    # Healthy again: enough good answers bring the 5-minute ratio under 5%.
    with day.client() as client, ThreadPoolExecutor(max_workers=16) as pool:
        good = list(pool.map(lambda _: ask(client, SUMMARY_PROMPT)[0], range(400)))
    assert good.count(200) >= 390, good
    prom.wait_for(lambda: not prom.firing("ModelFlockRouterErrorRate"), "the alert resolved", 60)


# ---- the dashboard ---------------------------------------------------------------------------


def dashboard(day: Day) -> dict[str, Any]:
    config = get_json(day.cluster, "configmap", "modelflock-dashboard", "-n", RELEASE_NS)
    data: dict[str, Any] = json.loads(config["data"]["modelflock.json"])
    return data


def panel_query(expr: str, namespace: str, window: str, route: str = ".*") -> str:
    """A panel's query as Grafana sends it with one namespace (and route) picked and a time
    range."""
    return (
        expr.replace("$namespace", namespace)
        .replace("$route", route)
        .replace("$__rate_interval", window)
        .replace("$__range", window)
    )


def requests_total(exposition: str) -> float:
    return sum(row.requests for row in summarize(exposition))


def scraped(prom: Prometheus, exposition: str) -> float:
    """Wait until Prometheus's newest scrape of the router counts the requests `exposition`
    counts; returns that scrape's timestamp."""
    want = requests_total(exposition)
    selector = f'modelflock_router_requests_total{{namespace="{NS}",route!="none"}}'

    def newest() -> float | None:
        [count] = prom.query(f"sum({selector})") or [{"value": [0, "nan"]}]
        if float(count["value"][1]) != want:
            return None
        [stamp] = prom.query(f"max(timestamp({selector}))")
        return float(stamp["value"][1])

    found: float = prom.wait_for(newest, f"a scrape counting {want:g} requests", 60)
    return found


def report_delta(before: str, after: str) -> dict[str, RouteRow]:
    """What `modelflock report` says happened between two scrapes of the router's /metrics."""
    old = {r.route: r for r in summarize(before)}
    rows = {}
    for row in summarize(after):
        base = old.get(row.route, RouteRow(row.route))
        rows[row.route] = RouteRow(
            row.route,
            requests=row.requests - base.requests,
            cost=row.cost - base.cost,
            baseline_cost=row.baseline_cost - base.baseline_cost,
        )
    return {k: v for k, v in rows.items() if v.requests}


def test_08_cost_and_savings_panels_agree_with_the_report(day: Day) -> None:
    prom = day.prometheus
    assert prom is not None
    panels = {p["title"]: p for p in dashboard(day)["panels"]}
    with day.client() as client:
        # Warm-up: every series the measured traffic touches exists before it starts (a
        # counter's first sample is never counted by increase() or rate()).
        for prompt in MIX:
            assert ask(client, prompt)[0] == 200
        before = day.router_metrics()
        # The window starts at the first scrape that saw the warm-up complete (whenever a
        # loaded machine ran it) and ends once a scrape has seen the measured traffic complete.
        first = scraped(prom, before)
        for _ in range(10):
            for prompt in MIX:
                assert ask(client, prompt)[0] == 200
            time.sleep(1)
        after = day.router_metrics()
        scraped(prom, after)
        end = time.time()
    expected = report_delta(before, after)
    # code, summarize, and the routes the policy gives the lookup and the hard question.
    assert set(expected) >= {"code", "summarize"} and len(expected) >= 3, expected
    # Inside the window: the samples from `first` (the warm-up's totals) to the last one (the
    # measured traffic's); every request of the measured phase, none of the warm-up's.
    milliseconds = math.ceil((end - first) * 1000) + 100  # 0.1 s before the first sample
    seconds = milliseconds / 1000
    window = f"{milliseconds}ms"

    def value(title: str, target: int = 0, route: str | None = None) -> float:
        expr = panel_query(panels[title]["targets"][target]["expr"], NS, window)
        result = prom.query(expr, at=end)
        if route is not None:
            result = [r for r in result if r["metric"].get("route") == route]
        [sample] = result
        return float(sample["value"][1])

    # Cost per request by route, and the baseline's: ratios of rates, exact.
    for route, row in expected.items():
        title = "Cost per request per route (vs baseline)"
        assert value(title, 0, route) == pytest.approx(row.cost / row.requests, rel=1e-6)
        assert value(title, 1, route) == pytest.approx(row.baseline_cost / row.requests, rel=1e-6)
    whole = total(list(expected.values()))
    cost = value("Cost (range)")
    saved = value("Savings vs baseline (range)")
    # The savings share from the two stat panels is the report's, exactly.
    assert saved / (saved + cost) == pytest.approx(whole.savings, rel=1e-6)
    # In dollars, increase() extrapolates to the window's edges: at most two scrape intervals.
    stretch = seconds / (seconds - 2.2)
    assert whole.cost <= cost * (1 + 1e-9) <= whole.cost * stretch
    assert whole.baseline_cost - whole.cost <= saved * (1 + 1e-9)
    assert saved <= (whole.baseline_cost - whole.cost) * stretch
    assert value("Requests (range)") == pytest.approx(whole.requests, rel=stretch - 1)


def test_09_shadow_evaluation_samples_reach_prometheus(day: Day) -> None:
    """The quality panels read shadow-evaluation series: sample every answer for a while
    (the example policy samples 2%), with room for one sample at a time so some are dropped."""
    prom = day.prometheus
    assert prom is not None
    patch = {"spec": {"evaluation": {"sampleRate": "1", "maxConcurrent": 1}}}
    day.cluster.kubectl(
        "patch", "routingpolicy", "portfolio", "-n", NS, "--type", "merge", "-p", json.dumps(patch)
    )

    def rendered() -> bool:
        evaluation = router_config(day).get("evaluation") or {}
        rates = {r["sampleRate"] for r in evaluation.get("routes", [])}
        return rates == {"1"} and evaluation.get("maxConcurrent") == 1

    wait_for(rendered, "the operator's router config with sampleRate 1", 30)
    write_router_config(day)
    time.sleep(2)  # the router checks its file every second
    prompts = [f"Write a Python function number {i} that parses a CSV file." for i in range(24)]
    prompts += [f"Summarize this article in three bullet points: story {i}." for i in range(24)]
    with day.client() as client, ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda p: ask(client, p)[0], prompts))
    assert codes.count(200) == len(codes), codes
    prom.wait_for(
        lambda: (
            prom.query(f'modelflock_router_shadow_samples_total{{namespace="{NS}"}}')
            and prom.query(f'modelflock_router_shadow_dropped_total{{namespace="{NS}"}}')
        ),
        "judged and dropped shadow samples in Prometheus",
        60,
    )


def test_10_every_dashboard_query_returns_series_for_the_experts_namespace(day: Day) -> None:
    prom = day.prometheus
    assert prom is not None
    board = dashboard(day)
    # The namespace picker (label_values of the router's requests) offers the experts' one.
    variable = next(v for v in board["templating"]["list"] if v["name"] == "namespace")
    assert "label_values(modelflock_router_requests_total, namespace)" in variable["definition"]
    values = prom.api("label/namespace/values", **{"match[]": "modelflock_router_requests_total"})
    assert NS in values
    # The route picker of the quality panels (label_values of the shadow samples).
    route = next(v for v in board["templating"]["list"] if v["name"] == "route")
    assert "modelflock_router_shadow_samples_total" in route["definition"]
    routes = prom.api(
        "label/route/values",
        **{"match[]": f'modelflock_router_shadow_samples_total{{namespace=~"{NS}"}}'},
    )
    assert "code" in routes

    def empty_panels() -> list[str]:
        empty = []
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                result = prom.query(panel_query(target["expr"], NS, "10m", "code"))
                if not result:
                    empty.append(f"{panel['title']}: {target['expr']}")
                for sample in result:
                    assert sample["metric"].get("namespace", NS) == NS, (panel["title"], sample)
        return empty

    # increase() needs two scrapes of a series: a counter first seen in the newest scrape
    # has no increase yet, so give the panels a few scrape intervals before judging them.
    deadline = time.monotonic() + 15
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not empty, "panels without series for namespace llm:\n" + "\n".join(empty)
    # Picking the operator's namespace shows no experts: they are not attributed to it.
    queue = next(p for p in board["panels"] if p["title"] == "Queue depth per expert")
    assert not prom.query(panel_query(queue["targets"][0]["expr"], RELEASE_NS, "10m"))


# ---- uninstall, and recovering from the wrong order ------------------------------------------


def test_11_uninstall(day: Day) -> None:
    for proc in (day.router, day.frontier):
        if proc is not None:
            stop_process_group(proc, timeout=5)
    day.router = day.frontier = None
    day.run("uninstall")
    assert get_json(day.cluster, "namespace", NS) is None
    assert not get_json(day.cluster, "modelexperts", "-A")["items"]
    # The CRDs stay (crds.keep).
    assert get_json(day.cluster, "crd", "modelexperts.modelflock.io") is not None
    status = subprocess.run(
        ["helm", "status", RELEASE, "-n", RELEASE_NS], env=day.env, capture_output=True, check=False
    )
    assert status.returncode != 0  # the release is gone


def test_12_recover_from_a_stuck_uninstall(day: Day) -> None:
    """The wrong order: the operator is gone first, and deleting an expert hangs on its
    finalizer; step `recover`, as written, gets it deleted."""
    operator = day.operator
    assert operator is not None and operator.process is not None
    day.cluster.kubectl("create", "namespace", "team-b")
    expert = {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": "frontier", "namespace": "team-b"},
        "spec": {
            "engine": "external",
            "tier": "frontier",
            "capabilities": ["chat"],
            "external": {"baseURL": "https://api.frontier.example/v1", "model": "m"},
            "cost": {"inputPerMillion": "1", "outputPerMillion": "1"},
        },
    }
    day.cluster.kubectl("apply", "-f", "-", input=json.dumps(expert))
    wait_for(
        lambda: (
            "modelflock.io/finalizer"
            in (get_json(day.cluster, "modelexpert", "frontier", "-n", "team-b") or {})
            .get("metadata", {})
            .get("finalizers", [])
        ),
        "the operator's finalizer",
        30,
    )
    operator.stop()  # what `helm uninstall` does to the operator
    day.cluster.kubectl("delete", "modelexpert", "frontier", "-n", "team-b", "--wait=false")
    time.sleep(3)
    stuck = get_json(day.cluster, "modelexpert", "frontier", "-n", "team-b")
    assert stuck is not None and stuck["metadata"].get("deletionTimestamp")
    day.run("recover")
    wait_for(
        lambda: get_json(day.cluster, "modelexpert", "frontier", "-n", "team-b") is None,
        "the stuck expert deleted",
        30,
    )
