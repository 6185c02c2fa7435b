"""The local portfolio: control plane with kwok GPU pools, the chart, the operator, a simulated
engine for every engine pod the scheduler placed, and the router. Used by `make demo`
(demo/run.py) and by the end-to-end test (tests/e2e).

Everything listens on loopback: kwok gives pods IPs in a /16 of 127.64.0.0/10 and each simulated engine
binds its pod's IP, so the operator scrapes and the router calls "pods" without leaving the
machine. The operator runs as a local process with the configuration the chart rendered (the
chart's own Deployment stays Pending: the fake nodes are GPU-tainted and run no containers).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests")]

from localcluster import LocalCluster, stop_process_group  # noqa: E402

from modelflock.retrieval.localpg import LocalPostgres  # noqa: E402
from support import OperatorProcess, free_port, wait_for  # noqa: E402

NAMESPACE = "modelflock-demo"
RELEASE = "modelflock"
RELEASE_NAMESPACE = "modelflock"
DEMO_API_KEY = "demo-frontier-key"  # a local simulated frontier API checks it; not a real key
REFUSAL = "I'm sorry, I can't help with that request."
HARD_MARKER = "[hard]"


@dataclass(frozen=True)
class SimProfile:
    """How a simulated engine for one expert behaves (speed, batch, canned replies)."""

    flavour: str = "vllm"
    max_batch: int = 16
    prefill_ms: float = 10
    decode_ms: float = 5
    output_tokens: int = 32
    replies: dict[str, str] = field(default_factory=dict)
    degraded_rate: float = 0.0  # answer quality (shadow evaluation judges it)
    judge: bool = False  # answers judge prompts (the frontier judges shadow samples)
    engine_args: tuple[str, ...] = ()

    def args(self, host: str, port: int, model: str) -> list[str]:
        extra = ["--judge"] if self.judge else []
        return [
            sys.executable,
            "-m",
            "modelflock",
            "engine-sim",
            "--host",
            host,
            "--port",
            str(port),
            "--flavour",
            self.flavour,
            "--model",
            model,
            "--max-batch",
            str(self.max_batch),
            "--prefill-ms",
            str(self.prefill_ms),
            "--decode-ms",
            str(self.decode_ms),
            "--output-tokens",
            str(self.output_tokens),
            "--degraded-rate",
            str(self.degraded_rate),
            *extra,
            *self.engine_args,
        ]


# Small models refuse what is marked hard (so cascades escalate); big ones are slower.
# Answer quality (what shadow evaluation measures): the share of prompts each engine answers
# badly. intent-small is as good as summarize-tgi, but writes stories badly (a canned degraded
# answer); code-7b is often worse than the frontier.
DEGRADED_ANSWER = "unrelated vague guess perhaps nonsense filler random noise"
PROFILES: dict[str, SimProfile] = {
    "intent-small": SimProfile(
        max_batch=32,
        decode_ms=2,
        output_tokens=24,
        replies={
            HARD_MARKER: REFUSAL,
            "story": DEGRADED_ANSWER,
            "poem": DEGRADED_ANSWER,
            "blog post": DEGRADED_ANSWER,
        },
        degraded_rate=0.05,
    ),
    # A real embedding model (all-MiniLM-L6-v2 on CPU, 384 dims): it embeds the `facts`
    # knowledge base, the queries looked up in it, and the classifier's prompts and examples.
    "embed-small": SimProfile(
        max_batch=64, decode_ms=1, engine_args=("--embedding-model", "minilm")
    ),
    "code-7b": SimProfile(
        max_batch=4,
        prefill_ms=20,
        decode_ms=8,
        output_tokens=48,
        replies={HARD_MARKER: REFUSAL},
        degraded_rate=0.4,
    ),
    "writer-70b": SimProfile(max_batch=8, prefill_ms=40, decode_ms=12, output_tokens=96),
    "summarize-tgi": SimProfile(
        flavour="tgi", max_batch=8, decode_ms=5, output_tokens=40, degraded_rate=0.05
    ),
}
FRONTIER = SimProfile(max_batch=256, decode_ms=3, output_tokens=64, judge=True)


class EngineFleet:
    """Keeps one simulated engine per running engine pod, on the pod's IP; stops it when the
    pod goes. A background thread re-syncs every half second."""

    def __init__(self, cluster: LocalCluster, namespace: str, logdir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.logdir = logdir
        self.sims: dict[
            str, tuple[subprocess.Popen[bytes], str, str]
        ] = {}  # pod -> (proc, expert, url)
        self.killed: set[str] = set()  # experts whose engines were killed on purpose
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="engine-fleet", daemon=True)

    def start(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sync()
            self._stop.wait(0.5)

    def _pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", "modelflock.io/expert", "-o", "json"
        )
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def sync(self) -> None:
        wanted: dict[str, tuple[str, str, int, str]] = {}
        for pod in self._pods():
            meta, status = pod["metadata"], pod.get("status", {})
            ip = status.get("podIP")
            if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
                continue
            expert = meta["labels"]["modelflock.io/expert"]
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            wanted[meta["name"]] = (
                expert,
                ip,
                port,
                meta["labels"].get("app.kubernetes.io/name", "vllm"),
            )
        with self._lock:
            for name in [n for n in self.sims if n not in wanted]:
                self._stop_sim(name)
            for name, (expert, ip, port, _) in wanted.items():
                if name not in self.sims and expert not in self.killed:
                    self._start_sim(name, expert, ip, port)

    def _start_sim(self, pod: str, expert: str, ip: str, port: int) -> None:
        profile = PROFILES.get(expert, SimProfile())
        log = (self.logdir / f"{pod}.log").open("ab")
        proc = subprocess.Popen(
            profile.args(ip, port, expert),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        url = f"http://{ip}:{port}"
        self.sims[pod] = (proc, expert, url)
        if profile.replies:
            wait_for(lambda: _get(url + "/health") == 200, f"engine sim for {pod}", 15)
            _post(url + "/sim/behaviour", {"replies": profile.replies})

    def _stop_sim(self, pod: str) -> None:
        proc, _, _ = self.sims.pop(pod)
        stop_process_group(proc, timeout=5)

    def kill_expert(self, expert: str) -> list[str]:
        """Kill every engine of an expert (its pods stay: the router sees a failing expert)."""
        with self._lock:
            self.killed.add(expert)
            pods = [p for p, (_, e, _) in self.sims.items() if e == expert]
            for pod in pods:
                self._stop_sim(pod)
        return pods

    def revive_expert(self, expert: str) -> None:
        with self._lock:
            self.killed.discard(expert)

    def urls(self, expert: str) -> list[str]:
        with self._lock:
            return [url for _, e, url in self.sims.values() if e == expert]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for pod in list(self.sims):
                self._stop_sim(pod)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


@dataclass
class Portfolio:
    """The whole local portfolio; `start()` brings it up, `stop()` takes everything down."""

    workdir: Path
    scale_down_seconds: int = 20
    scale_to_zero_seconds: int = 30
    say: Any = print
    cluster: LocalCluster | None = None
    operator: OperatorProcess | None = None
    fleet: EngineFleet | None = None
    frontier: subprocess.Popen[bytes] | None = None
    router: subprocess.Popen[bytes] | None = None
    router_port: int = field(default_factory=free_port)
    frontier_port: int = field(default_factory=free_port)
    postgres: LocalPostgres | None = None

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}/v1"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.say(
            "starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU pools)"
        )
        self.cluster = LocalCluster(workdir=self.workdir / "cluster")
        self.cluster.start()
        self.say("installing the Helm chart (CRDs, RBAC, operator configuration, webhook)")
        self.helm_install()
        self.say("running the operator with the configuration the chart rendered")
        self.start_operator()
        self.say("starting PostgreSQL with pgvector on 127.0.0.1 (the `facts` knowledge base)")
        self.start_postgres()
        self.say(f"applying the example portfolio (deploy/examples) into namespace {NAMESPACE}")
        self.start_frontier()
        self.apply_examples()
        self.fleet = EngineFleet(self.cluster, NAMESPACE, self.workdir / "engines")
        self.fleet.start()
        self.say("waiting for the experts to become Ready on their GPU pools")
        wait_for(self.experts_ready, "every expert Ready", 120)
        wait_for(lambda: self.policy_ready(), "RoutingPolicy portfolio Ready", 60)
        self.say("ingesting the `facts` KnowledgeBase (embed-small embeds it into pgvector)")
        wait_for(self.knowledge_base_ready, "KnowledgeBase facts Ready", 180)
        # kwok marks pods Ready at once; make sure each has its engine (and canned replies).
        self.fleet.sync()
        self.say(
            "starting the router with the config the operator rendered for RoutingPolicy portfolio"
        )
        self.start_router()

    def start_postgres(self) -> None:
        # Under /tmp, readable by the unprivileged user the server runs as when we are root.
        root = Path(tempfile.mkdtemp(prefix="modelflock-demo-pg-"))
        root.chmod(0o755)
        self.postgres = LocalPostgres(root / "pg")
        self.postgres.start()

    def knowledge_base(self) -> dict[str, Any]:
        assert self.cluster is not None
        found: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", "knowledgebase", "facts", "-n", NAMESPACE, "-o", "json")
        )
        return found

    def knowledge_base_ready(self) -> bool:
        conditions = self.knowledge_base().get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def helm(self, *args: str) -> str:
        assert self.cluster is not None
        assert self.cluster.bin_dir is not None
        result = subprocess.run(
            [str(self.cluster.bin_dir / "helm"), *args],
            capture_output=True,
            text=True,
            env=self.cluster.env(),
            timeout=180,
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def helm_install(self) -> None:
        self.helm(
            "install",
            RELEASE,
            str(REPO / "charts" / "modelflock"),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "-f",
            str(REPO / "demo" / "values-local.yaml"),
            "--wait=false",
            "--timeout",
            "120s",
        )
        assert self.cluster is not None
        self.cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modelexperts.modelflock.io",
            "crd/routingpolicies.modelflock.io",
            "crd/knowledgebases.modelflock.io",
        )

    def chart_config(self) -> dict[str, Any]:
        assert self.cluster is not None
        out = self.cluster.kubectl(
            "get",
            "configmap",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            "app.kubernetes.io/instance=" + RELEASE,
            "-o",
            "json",
        )
        for item in json.loads(out)["items"]:
            if "config.yaml" in item.get("data", {}):
                config: dict[str, Any] = yaml.safe_load(item["data"]["config.yaml"])
                return config
        raise RuntimeError("the chart rendered no operator configuration ConfigMap")

    def start_operator(self) -> None:
        assert self.cluster is not None
        config = self.chart_config()
        # Run locally: listen on loopback, and tell routers where the local flock API is.
        operator = OperatorProcess(cluster=self.cluster, workdir=self.workdir)
        config["operatorUrl"] = operator.flock_url
        config["bindAddress"] = "127.0.0.1"
        operator.config_overrides = config
        operator.start()
        self.operator = operator

    def start_frontier(self) -> None:
        key_file = self.workdir / "frontier-key"
        key_file.write_text(DEMO_API_KEY)
        log = (self.workdir / "frontier.log").open("ab")
        self.frontier = subprocess.Popen(
            [
                *FRONTIER.args("127.0.0.1", self.frontier_port, "frontier-large"),
                "--api-key-file",
                str(key_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(
            lambda: _get(f"http://127.0.0.1:{self.frontier_port}/health") == 200, "frontier sim", 15
        )

    def example_documents(self) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        examples = REPO / "deploy" / "examples"
        # The Secrets first (deploy/examples/secrets/ holds them as files; the demo fills in
        # the key of its simulated frontier API), then the portfolio.
        for path in [
            *sorted((examples / "secrets").glob("*.yaml")),
            *sorted(examples.glob("*.yaml")),
        ]:
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                name = doc["metadata"]["name"]
                if doc["kind"] == "Secret" and name == "frontier-api-key":
                    doc["stringData"] = {"api-key": DEMO_API_KEY}
                if doc["kind"] == "Secret" and name in ("facts-store", "facts-store-readonly"):
                    # The local PostgreSQL's writer (operator) and reader (routers).
                    assert self.postgres is not None
                    creds = self.postgres.writer if name == "facts-store" else self.postgres.reader
                    doc["stringData"] = creds.secret_data()
                if doc["kind"] == "ModelExpert" and name == "frontier":
                    # The demo's frontier API is a simulated one on loopback.
                    doc["spec"]["external"]["baseURL"] = f"http://127.0.0.1:{self.frontier_port}/v1"
                    doc["spec"]["external"]["allowPlainHttp"] = True  # loopback, not a network
                if doc["kind"] == "RoutingPolicy" and "evaluation" in doc["spec"]:
                    # No samples until the demo's quality phase (set_evaluation).
                    doc["spec"]["evaluation"]["sampleRate"] = "0"
                if doc["kind"] == "RoutingPolicy":
                    # The demo's embedder is all-MiniLM-L6-v2 on this machine's CPU, not a GPU:
                    # give its stage the time a CPU needs (the shipped policy expects a GPU).
                    for stage in doc["spec"]["classifier"]["stages"]:
                        if stage["type"] == "embedding":
                            stage["timeoutMilliseconds"] = 3000
                if doc["kind"] == "ModelExpert" and "autoscaling" in doc["spec"]:
                    # Short windows so scale-down and scale-to-zero happen while you watch.
                    scaling = doc["spec"]["autoscaling"]
                    scaling["scaleDownStabilizationSeconds"] = self.scale_down_seconds
                    scaling["scaleToZeroAfterSeconds"] = self.scale_to_zero_seconds
                docs.append(doc)
        return docs

    def apply_examples(self) -> None:
        assert self.cluster is not None
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        text = "\n---\n".join(json.dumps(d) for d in self.example_documents())
        self.cluster.kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", "-", input=text)

    def experts(self) -> list[dict[str, Any]]:
        assert self.cluster is not None
        items: list[dict[str, Any]] = json.loads(
            self.cluster.kubectl("get", "modelexperts", "-n", NAMESPACE, "-o", "json")
        )["items"]
        return items

    def experts_ready(self) -> bool:
        experts = self.experts()
        return bool(experts) and all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in e.get("status", {}).get("conditions", [])
            )
            for e in experts
        )

    def ready_replicas(self, expert: str) -> int:
        found = next((e for e in self.experts() if e["metadata"]["name"] == expert), {})
        return int(found.get("status", {}).get("readyReplicas") or 0)

    def policy(self) -> dict[str, Any]:
        assert self.cluster is not None
        policy: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", "routingpolicy", "portfolio", "-n", NAMESPACE, "-o", "json")
        )
        return policy

    def policy_ready(self) -> bool:
        conditions = self.policy().get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def router_config(self) -> dict[str, Any]:
        """The ConfigMap the operator rendered, with in-cluster paths mapped to local files."""
        assert self.cluster is not None
        name = self.policy()["status"]["configMapName"]
        cm = json.loads(
            self.cluster.kubectl("get", "configmap", name, "-n", NAMESPACE, "-o", "json")
        )
        config: dict[str, Any] = yaml.safe_load(cm["data"]["router.yaml"])
        secret = json.loads(
            self.cluster.kubectl(
                "get", "secret", "portfolio-router-token", "-n", NAMESPACE, "-o", "json"
            )
        )
        token_file = self.workdir / "router-token"
        token_file.write_text(base64.b64decode(secret["data"]["token"]).decode())
        config["discovery"]["tokenFile"] = str(token_file)
        config["discovery"]["intervalSeconds"] = 1
        for expert in config["experts"]:
            if "apiKeyFile" in expert:
                expert["apiKeyFile"] = str(self.workdir / "frontier-key")
        for kb in config.get("knowledgeBases", []):
            # The read-only Secret as the pod would mount it (one file per key).
            assert self.postgres is not None
            kb["secretDir"] = str(self.postgres.reader.write_dir(self.workdir / "facts-readonly"))
        config["listen"] = {"host": "127.0.0.1", "port": self.router_port}
        return config

    def write_router_config(self) -> None:
        """The router's config file from the ConfigMap (the router reloads a changed file)."""
        path = self.workdir / "router.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.router_config(), sort_keys=False))
        tmp.replace(path)

    def set_evaluation(self, **fields: Any) -> None:
        """Change spec.evaluation (as GitOps would), wait for the operator's render, and hand
        the new config to the router."""
        assert self.cluster is not None
        patch = json.dumps({"spec": {"evaluation": fields}})
        self.cluster.kubectl(
            "patch", "routingpolicy", "portfolio", "-n", NAMESPACE, "--type", "merge", "-p", patch
        )
        wanted = {k: v for k, v in fields.items() if k != "sampleRate"}

        def rendered() -> bool:
            evaluation = self.router_config().get("evaluation") or {}
            rates = {r["sampleRate"] for r in evaluation.get("routes", [])}
            rate_ok = rates == {fields["sampleRate"]} if "sampleRate" in fields else True
            return rate_ok and all(evaluation.get(k) == v for k, v in wanted.items())

        wait_for(rendered, "the operator's new router config", 30)
        self.write_router_config()
        time.sleep(2)  # the router checks its file every second

    def start_router(self) -> None:
        path = self.workdir / "router.yaml"
        self.write_router_config()
        log = (self.workdir / "router.log").open("ab")
        self.router = subprocess.Popen(
            [sys.executable, "-m", "modelflock", "router", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        base = self.router_url.removesuffix("/v1")
        wait_for(lambda: _get(base + "/readyz") == 200, "router ready", 30)
        # The embedding stage embeds the policy's examples (inline and from the ConfigMap)
        # with the real model first; requests meanwhile would be classified without it.
        self.say("the router embeds the intent examples with all-MiniLM-L6-v2 (embed-small)")
        wait_for(self.examples_embedded, "intent examples embedded", 600, 1.0)

    def examples_embedded(self) -> bool:
        for line in self.router_metrics().splitlines():
            if line.startswith("modelflock_router_classifier_examples_ready{"):
                return float(line.rsplit(" ", 1)[1]) > 0
        return False

    def frontier_chats(self) -> list[dict[str, Any]]:
        """The last chat requests the simulated frontier received, as the router sent them."""
        url = f"http://127.0.0.1:{self.frontier_port}/sim/chats"
        with urllib.request.urlopen(url, timeout=5) as response:
            chats: list[dict[str, Any]] = json.load(response)["chats"]
            return chats

    def router_metrics(self) -> str:
        base = self.router_url.removesuffix("/v1")
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text

    def wait_for_evaluation(self, timeout: float = 90) -> int:
        """Until the policy's status.evaluation counts every sample the router judged (the
        router reports every few seconds; the operator sums the reports)."""
        from prometheus_client.parser import text_string_to_metric_families

        def judged() -> int:
            return int(
                sum(
                    s.value
                    for f in text_string_to_metric_families(self.router_metrics())
                    for s in f.samples
                    if s.name == "modelflock_router_shadow_samples_total"
                )
            )

        def in_status() -> int:
            results = (self.policy().get("status", {}).get("evaluation") or {}).get("results")
            count = sum(r["samples"] for r in results or [])
            if count and count == judged():
                return count
            # Raised, not returned: a timeout then shows how far apart the two were.
            raise AssertionError(f"status has {count} samples, the router judged {judged()}")

        time.sleep(3)  # the last samples finish off the client's path
        count: int = wait_for(in_status, "status.evaluation with every judged sample", timeout)
        return count

    def recommendation_events(self) -> list[dict[str, Any]]:
        assert self.cluster is not None
        items = json.loads(
            self.cluster.kubectl(
                "get",
                "events",
                "-n",
                NAMESPACE,
                "--field-selector",
                "involvedObject.kind=RoutingPolicy",
                "-o",
                "json",
            )
        )["items"]
        found = [e for e in items if e.get("reason", "").startswith("Recommend")]
        return sorted(found, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def scale_events(self) -> list[dict[str, Any]]:
        assert self.cluster is not None
        items = json.loads(
            self.cluster.kubectl(
                "get", "events", "-n", NAMESPACE, "--field-selector", "reason=Scaled", "-o", "json"
            )
        )["items"]
        events: list[dict[str, Any]] = sorted(
            items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""
        )
        return events

    def stop(self) -> None:
        for proc in (self.router, self.frontier):
            if proc is not None:
                stop_process_group(proc, timeout=5)
        if self.fleet is not None:
            self.fleet.stop()
        if self.operator is not None:
            self.operator.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.postgres is not None:
            root = self.postgres.root.parent
            self.postgres.destroy()
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_portfolio(workdir: Path, **kwargs: Any) -> Iterator[Portfolio]:
    portfolio = Portfolio(workdir=workdir, **kwargs)
    try:
        portfolio.start()
        yield portfolio
    finally:
        portfolio.stop()


def timestamp() -> str:
    return time.strftime("%H:%M:%S")
