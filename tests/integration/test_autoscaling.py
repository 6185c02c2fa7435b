"""Queue-depth autoscaling against the real control plane, with one simulated engine per pod.

The operator under test scrapes each ready pod's `http://<podIP>:8000/metrics`. kwok gives
pods loopback IPs (a /16 inside 127.64.0.0/10), so `EngineFleet` binds an in-process engine-sim to every
engine pod the scheduler places, and load goes straight to those pod URLs. The session operator
ticks every `INTERVAL` seconds (support.operator_config).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml
from localcluster import LocalCluster
from prometheus_client.parser import text_string_to_metric_families

from modelflock.sim.config import SimSettings
from modelflock.sim.server import SimServer
from support import OperatorProcess, apply, condition, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

T = TypeVar("T")

INTERVAL = 1.0  # the session operator's autoscaler intervalSeconds
PORT = 8000  # vLLM
EXPERT_LABEL = "modelflock.io/expert"
# 8 fake GPUs; a test here holds at most 4 pods, and each namespace is gone before the next test.
POOL = "l4"
# Slow engines with a small batch, so that requests queue: 2 run at once, ~0.8 s each.
SLOW = SimSettings(
    max_batch=2, prefill_seconds=0.0, decode_seconds_per_token=0.05, output_tokens=16
)


# ---- reading the cluster without a kubectl process per poll ------------------------------------


class KubeReader:
    """GETs straight to the API server with the admin certificate: cheap enough to poll at 10 Hz."""

    def __init__(self, cluster: LocalCluster) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        self.server: str = config["clusters"][0]["cluster"]["server"]
        self.ssl = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        self.ssl.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.server + path, timeout=10, context=self.ssl) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as error:
            error.close()  # it holds the connection: a leaked socket warns in a later test
            if error.code == 404:
                return None
            raise

    def expert(self, namespace: str, name: str) -> Any:
        return self.get(f"/apis/modelflock.io/v1alpha1/namespaces/{namespace}/modelexperts/{name}")

    def deployment(self, namespace: str, name: str) -> Any:
        return self.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    def pods(self, namespace: str, expert: str) -> list[dict[str, Any]]:
        found = self.get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector={EXPERT_LABEL}%3D{expert}"
        )
        return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]

    def events(self, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
        found = self.get(f"/api/v1/namespaces/{namespace}/events")
        return [
            e
            for e in found["items"]
            if e["involvedObject"].get("name") == name and e.get("reason") == reason
        ]


def replicas_of(obj: dict[str, Any] | None) -> int | None:
    return None if obj is None else obj["spec"].get("replicas")


# ---- one engine-sim per engine pod ---------------------------------------------------------------


@dataclass
class Engine:
    pod: str
    expert: str
    ip: str
    server: SimServer

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{PORT}"


class EngineFleet:
    """Plays the engine containers of one namespace: an in-process engine-sim per engine pod.

    A watcher lists the namespace's engine pods every 0.3 s and starts a sim bound to
    `<podIP>:8000` for each pod of an expert registered with `serve()`, and stops it when the
    pod terminates or disappears. `kill()` stops a pod's sim and keeps it down (the pod stays);
    `revive()` lets the watcher start it again. A sampler records every sim's waiting/running
    every 50 ms. Load loops are bounded in time. Everything runs on one event loop in a
    background thread; `close()` stops it all and checks that no port is left bound.
    """

    SYNC_SECONDS = 0.3
    SAMPLE_SECONDS = 0.05

    def __init__(self, kube: KubeReader, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.settings: dict[str, SimSettings] = {}
        self.engines: dict[str, Engine] = {}
        self.killed: set[str] = set()
        self.bound: set[str] = set()  # every IP a sim ever listened on
        self.errors: list[str] = []
        # (monotonic time, expert, sims, waiting, running), appended when a value changes
        self.samples: list[tuple[float, str, int, int, int]] = []
        self.load_stats = {"ok": 0, "failed": 0}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self._load: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- driving the loop from the test thread
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.kube.ssl))
        self._tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._sample()),
        ]

    def serve(self, expert: str, settings: SimSettings = SLOW) -> None:
        self.settings[expert] = settings.model_copy(update={"model": expert})

    def urls(self, expert: str) -> list[str]:
        return self._call(self._urls(expert))

    async def _urls(self, expert: str) -> list[str]:
        return sorted(e.url for e in self.engines.values() if e.expert == expert)

    def pods_served(self, expert: str) -> list[str]:
        return self._call(self._pods_served(expert))

    async def _pods_served(self, expert: str) -> list[str]:
        return sorted(e.pod for e in self.engines.values() if e.expert == expert)

    def kill(self, pod: str) -> None:
        self._call(self._kill(pod))

    async def _kill(self, pod: str) -> None:
        self.killed.add(pod)
        engine = self.engines.pop(pod, None)
        if engine is not None:
            await engine.server.stop()

    def revive(self, pod: str) -> None:
        self._call(self._revive(pod))

    async def _revive(self, pod: str) -> None:
        self.killed.discard(pod)

    # -- the watcher
    async def _watch(self) -> None:
        while True:
            try:
                await self._sync()
            except Exception as error:  # reported by close(); never kills the watcher
                self.errors.append(f"sync: {error!r}")
            await asyncio.sleep(self.SYNC_SECONDS)

    async def _sync(self) -> None:
        assert self._session is not None
        url = f"{self.kube.server}/api/v1/namespaces/{self.namespace}/pods"
        async with self._session.get(url, params={"labelSelector": EXPERT_LABEL}) as response:
            response.raise_for_status()
            items = (await response.json())["items"]
        live: dict[str, tuple[str, str]] = {}
        for pod in items:
            meta, status = pod["metadata"], pod.get("status", {})
            expert = meta.get("labels", {}).get(EXPERT_LABEL)
            ip = status.get("podIP")
            if (
                expert in self.settings
                and ip
                and not meta.get("deletionTimestamp")
                and status.get("phase") not in {"Succeeded", "Failed"}
            ):
                live[meta["name"]] = (expert, ip)
        for name, engine in list(self.engines.items()):
            if live.get(name, ("", ""))[1] != engine.ip:
                del self.engines[name]
                await engine.server.stop()
        for name, (expert, ip) in live.items():
            if name in self.engines or name in self.killed:
                continue
            if not ip.startswith("127."):  # TESTING.md: loopback only
                self.errors.append(f"pod {name} has a non-loopback IP {ip}")
                continue
            server = SimServer(self.settings[expert])
            try:
                await server.start(ip, PORT)
            except OSError as error:
                await server.stop()
                # Another process holds the pod's address: typically a concurrent test run
                # whose kwok hands out the same loopback pod IPs.
                self.errors.append(f"cannot bind a sim for {name} on {ip}:{PORT}: {error}")
                continue
            self.bound.add(ip)
            self.engines[name] = Engine(pod=name, expert=expert, ip=ip, server=server)

    # -- the sampler
    async def _sample(self) -> None:
        last: dict[str, tuple[int, int, int]] = {}
        while True:
            for expert in self.settings:
                engines = [e for e in self.engines.values() if e.expert == expert]
                value = (
                    len(engines),
                    sum(e.server.state.queue.waiting for e in engines),
                    sum(e.server.state.queue.running for e in engines),
                )
                if last.get(expert) != value:
                    last[expert] = value
                    self.samples.append((time.monotonic(), expert, *value))
            await asyncio.sleep(self.SAMPLE_SECONDS)

    def first_time(self, expert: str, predicate: Callable[[int, int, int], bool]) -> float | None:
        samples = self._call(self._copy_samples())
        return next((s[0] for s in samples if s[1] == expert and predicate(*s[2:])), None)

    async def _copy_samples(self) -> list[tuple[float, str, int, int, int]]:
        return list(self.samples)

    def load(self, expert: str) -> tuple[int, int]:
        """(waiting, running) over the expert's sims right now."""
        return self._call(self._load_now(expert))

    async def _load_now(self, expert: str) -> tuple[int, int]:
        engines = [e for e in self.engines.values() if e.expert == expert]
        return (
            sum(e.server.state.queue.waiting for e in engines),
            sum(e.server.state.queue.running for e in engines),
        )

    # -- bounded load straight to the pod URLs
    def start_load(self, expert: str, concurrency: int, max_seconds: float) -> None:
        assert max_seconds <= 20, "load loops are bounded"
        self._call(self._start_load(expert, concurrency, max_seconds))

    async def _start_load(self, expert: str, concurrency: int, max_seconds: float) -> None:
        assert self._load is None
        self._load = asyncio.create_task(self._run_load(expert, concurrency, max_seconds))

    async def _run_load(self, expert: str, concurrency: int, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        body = {"model": expert, "messages": [{"role": "user", "content": "hello"}]}

        async def worker(session: aiohttp.ClientSession, turn: int) -> None:
            while (left := deadline - time.monotonic()) > 0:
                urls = [e.url for e in self.engines.values() if e.expert == expert]
                if not urls:
                    await asyncio.sleep(0.05)
                    continue
                turn += 1
                url = urls[turn % len(urls)] + "/v1/chat/completions"
                try:
                    timeout = aiohttp.ClientTimeout(total=left)
                    async with session.post(url, json=body, timeout=timeout) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                self.load_stats["ok" if ok else "failed"] += 1
                if not ok:
                    await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session, i) for i in range(concurrency)))

    def stop_load(self) -> None:
        self._call(self._stop_load())

    async def _stop_load(self) -> None:
        if self._load is not None:
            self._load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load
            self._load = None

    # -- teardown
    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        for ip in self.bound:  # no sim is left listening
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((ip, PORT))

    async def _close(self) -> None:
        await self._stop_load()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for engine in list(self.engines.values()):
            await engine.server.stop()
        self.engines.clear()
        if self._session is not None:
            await self._session.close()
            # Let the closed connections' transports finish closing before the loop stops
            # (aiohttp's graceful shutdown); otherwise an SSL socket to the API server is
            # collected open later and `filterwarnings = error` fails the session at exit.
            await asyncio.sleep(0.25)


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def kube(cluster: LocalCluster) -> KubeReader:
    return KubeReader(cluster)


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest,
    cluster: LocalCluster,
    operator: OperatorProcess,
    kube: KubeReader,
) -> Iterator[str]:
    name = "as-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
    # The next test needs the GPUs back; the rest of the namespace may go in the background
    # (waiting for the whole deletion, as support.fresh_namespace does, costs ~15 s per test).
    wait_for(
        lambda: not kube.get(f"/api/v1/namespaces/{name}/pods")["items"],
        f"the pods of namespace {name} gone",
        60,
        interval=0.5,
    )


@pytest.fixture
def fleet(kube: KubeReader, namespace: str) -> Iterator[EngineFleet]:
    engines = EngineFleet(kube, namespace)
    engines.start()
    try:
        yield engines
    finally:
        engines.close()
    assert not engines.errors, engines.errors


def expert(name: str, replicas: int | None = None, **autoscaling: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": "org/model-7b", "parameters": "7B"},
        "nodePool": POOL,
        "autoscaling": autoscaling,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": spec,
    }


def ready_with(kube: KubeReader, namespace: str, name: str, replicas: int) -> Any:
    obj = kube.expert(namespace, name)
    status = (obj or {}).get("status", {})
    ok = (
        condition(obj, "Ready").get("status") == "True"
        and status.get("readyReplicas", 0) == replicas
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )
    return obj if ok else None


def wait_serving(fleet: EngineFleet, expert: str, count: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        urls = fleet.urls(expert)
        if len(urls) == count:
            return urls
        assert not fleet.errors, f"engine sims failed: {fleet.errors}"
        if time.monotonic() > deadline:
            pods = [
                (
                    p["metadata"]["name"],
                    p["status"].get("phase"),
                    p["status"].get("podIP"),
                    [c.get("message") for c in p["status"].get("conditions", [])],
                )
                for p in fleet.kube.pods(fleet.namespace, expert)
            ]
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} sims: {urls}; {pods}"
            )
        time.sleep(0.1)


def poll_until(
    probe: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float
) -> tuple[float, T]:
    """Poll at 10 Hz; return the monotonic time when `done` first held, and the value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        time.sleep(0.1)
        value = probe()
    return time.monotonic(), value


def metric(operator: OperatorProcess, name: str, **labels: str) -> float:
    """Sum of the operator's samples called `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def flock(
    operator: OperatorProcess, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        operator.flock_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# ---- the tests ---------------------------------------------------------------------------------


def test_queue_above_target_scales_up_within_two_ticks_and_down_only_after_the_window(
    cluster: LocalCluster,
    kube: KubeReader,
    operator: OperatorProcess,
    namespace: str,
    fleet: EngineFleet,
) -> None:
    ns, name, target, window = namespace, "chat", 2, 8
    fleet.serve(name)
    apply(
        cluster,
        ns,
        expert(
            name,
            minReplicas=1,
            maxReplicas=4,
            targetQueueDepth=target,
            scaleDownStabilizationSeconds=window,
            # The queue rule alone, so the sizing below is exact (headroom: unit tests).
            burstHeadroom=0,
        ),
    )
    wait_for(lambda: ready_with(kube, ns, name, 1), "Ready with 1 replica", 60)
    wait_serving(fleet, name, 1)
    # The autoscaler has written replicas and scraped the idle engine at least once.
    wait_for(
        lambda: (
            (o := kube.expert(ns, name))
            and replicas_of(o) == 1
            and o["status"].get("queueDepth") == 0
        ),
        "a first autoscaler tick",
        15,
    )

    # 12 clients against a batch of 2: 10 wait. With the learned capacity (2 running per
    # replica) and 2 waiting allowed on top, 12 in flight need ceil(12 / 4) = 3 replicas.
    fleet.start_load(name, concurrency=12, max_seconds=20)
    try:
        scaled_at, _ = poll_until(
            lambda: kube.expert(ns, name),
            lambda o: (replicas_of(o) or 0) > 1,
            "spec.replicas to rise",
            15,
        )
        crossed_at = fleet.first_time(name, lambda sims, waiting, _: waiting > target * sims)
        assert crossed_at is not None and crossed_at <= scaled_at
        scale_up_latency = scaled_at - crossed_at
        print(f"scale-up latency: {scale_up_latency:.2f}s after the queue crossed the target")
        assert scale_up_latency <= 2 * INTERVAL + 3, scale_up_latency

        queue_seen: list[int] = []

        def sized(o: Any) -> bool:
            queue_seen.append(o["status"].get("queueDepth") or 0)
            return replicas_of(o) == 3 and o["status"].get("desiredReplicas") == 3

        status_at, obj = poll_until(
            lambda: kube.expert(ns, name),
            sized,
            "3 replicas, sized by learned capacity, in spec and status",
            10,
        )
        print(f"status.desiredReplicas 3 {status_at - scaled_at:.2f}s after spec.replicas rose")
        status = obj["status"]
        assert max(queue_seen) > target, queue_seen
        assert status["lastScaleReason"] == "QueueAboveTarget"
        assert status["lastScaleTime"]
        assert status["capacityPerReplica"] == 2  # the engines' batch, learned and kept
        wait_serving(fleet, name, 3)
        # The new replicas take load and the queue per replica falls to the target or below.
        wait_for(
            lambda: (load := fleet.load(name))[0] <= target * 3 and load[1] >= 5,
            "load spread over 3 replicas",
            10,
        )
        assert replicas_of(kube.expert(ns, name)) == 3  # steady load: no further step
    finally:
        fleet.stop_load()
    assert fleet.load_stats["ok"] > 0
    scaled = kube.events(ns, name, "Scaled")
    assert any(e["message"].startswith("1 -> ") for e in scaled), scaled

    idle_at, _ = poll_until(lambda: fleet.load(name), lambda load: load == (0, 0), "idle", 5)
    stabilizing_before = metric(
        operator, "modelflock_autoscaler_decisions_total", expert=name, reason="StabilizingDown"
    )
    fell_at, obj = poll_until(
        lambda: kube.expert(ns, name),
        lambda o: replicas_of(o) != 3,
        "scale-down after the window",
        window + 2 * INTERVAL + 8,
    )
    delay = fell_at - idle_at
    print(f"scale-down {delay:.2f}s after the load stopped (window {window}s)")
    # The last tick that saw load may be up to one interval before the engines went idle.
    assert delay >= window - INTERVAL, delay
    assert replicas_of(obj) == 1
    wait_for(
        lambda: kube.expert(ns, name)["status"].get("lastScaleReason") == "Idle",
        "status.lastScaleReason Idle",
        5,
    )
    assert (
        metric(
            operator,
            "modelflock_autoscaler_decisions_total",
            expert=name,
            reason="StabilizingDown",
        )
        > stabilizing_before
    )
    wait_for(lambda: ready_with(kube, ns, name, 1), "Ready with 1 replica again", 30)
    wait_serving(fleet, name, 1)
    assert any(e["message"].startswith("3 -> 1") for e in kube.events(ns, name, "Scaled"))
    # Nobody scaled this expert by hand: the autoscaler never mistakes its own writes for that.
    assert kube.events(ns, name, "ManualScaleOverridden") == []


def test_scale_to_zero_when_idle_and_wake_on_router_demand(
    cluster: LocalCluster,
    kube: KubeReader,
    operator: OperatorProcess,
    namespace: str,
    fleet: EngineFleet,
) -> None:
    ns, name, policy, idle_seconds = namespace, "cold", "front", 5
    fleet.serve(name)
    created_at = time.monotonic()
    apply(
        cluster,
        ns,
        expert(
            name, replicas=1, minReplicas=0, maxReplicas=2, scaleToZeroAfterSeconds=idle_seconds
        ),
    )
    apply(
        cluster,
        ns,
        {
            "apiVersion": "modelflock.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": policy},
            "spec": {
                "experts": [name],
                "classifier": {"intents": [{"name": "chat"}], "defaultIntent": "chat"},
                "routes": [{"name": "all", "match": {"intents": ["chat"]}, "expert": name}],
            },
        },
    )
    secret = wait_for(
        lambda: kube.get(f"/api/v1/namespaces/{ns}/secrets/{policy}-router-token"),
        "router token Secret",
        30,
    )
    token = base64.b64decode(secret["data"]["token"]).decode()
    prefix = f"/flock/v1/namespaces/{ns}/routingpolicies/{policy}"

    # Discovery lists the ready pod with its last scraped load.
    wait_for(lambda: ready_with(kube, ns, name, 1), "Ready with 1 replica", 60)
    (url,) = wait_serving(fleet, name, 1)
    (pod,) = kube.pods(ns, name)
    assert url == f"http://{pod['status']['podIP']}:{PORT}"

    def listed() -> Any:
        code, doc = flock(operator, "GET", prefix + "/endpoints", token)
        assert code == 200, doc
        endpoints = doc["experts"][name]["endpoints"]
        return endpoints if endpoints and "queueDepth" in endpoints[0] else None

    endpoints = wait_for(listed, "the pod in the flock API with its queue depth", 15)
    assert endpoints == [{"url": url, "ready": True, "queueDepth": 0, "running": 0}]

    # A token opens only its own policy, and only the experts it names.
    assert flock(operator, "GET", prefix + "/endpoints", token + "x")[0] == 401
    assert flock(operator, "POST", prefix + "/demand", "wrong", {"expert": name})[0] == 401
    code, doc = flock(
        operator, "POST", prefix + "/demand", token, {"expert": "other", "waiting": 1}
    )
    assert code == 403, doc

    zero_at, obj = poll_until(
        lambda: kube.expert(ns, name),
        lambda o: replicas_of(o) == 0 and condition(o, "Ready").get("reason") == "ScaledToZero",
        "ScaledToZero",
        idle_seconds + 20,
    )
    print(f"scaled to zero {zero_at - created_at:.2f}s after the expert was created")
    assert zero_at - created_at >= idle_seconds
    assert condition(obj, "Ready")["status"] == "True"
    assert obj["status"]["lastScaleReason"] == "ScaledToZero"
    wait_for(lambda: not kube.pods(ns, name) and not fleet.urls(name), "pod and sim gone", 30)
    code, doc = flock(operator, "GET", prefix + "/endpoints", token)
    assert code == 200 and doc["experts"][name]["endpoints"] == []

    # A router holding a request wakes it.
    demanded_at = time.monotonic()
    code, doc = flock(operator, "POST", prefix + "/demand", token, {"expert": name, "waiting": 1})
    assert code == 202, doc
    woken_at, obj = poll_until(
        lambda: kube.expert(ns, name), lambda o: replicas_of(o) == 1, "woken to 1 replica", 10
    )
    print(f"woken {woken_at - demanded_at:.2f}s after the demand")
    assert woken_at - demanded_at <= 2 * INTERVAL + 2
    wait_for(
        lambda: kube.expert(ns, name)["status"].get("lastScaleReason") == "WokenByDemand",
        "status.lastScaleReason WokenByDemand",
        5,
    )
    obj = wait_for(lambda: ready_with(kube, ns, name, 1), "Ready again", 60)
    assert condition(obj, "Ready")["reason"] == "AllReplicasReady"
    (url,) = wait_serving(fleet, name, 1)
    assert wait_for(listed, "the new pod in the flock API", 15)[0]["url"] == url
    assert any("WokenByDemand" in e["message"] for e in kube.events(ns, name, "Scaled")), (
        "a Scaled event for the wake-up"
    )


def test_kubectl_scale_is_overridden_while_autoscaling_and_rules_when_disabled(
    cluster: LocalCluster,
    kube: KubeReader,
    namespace: str,
    fleet: EngineFleet,
) -> None:
    ns = namespace
    fleet.serve("auto")
    fleet.serve("manual")
    apply(cluster, ns, expert("auto", minReplicas=1, maxReplicas=4))
    apply(cluster, ns, expert("manual", replicas=1, enabled=False))
    wait_for(lambda: ready_with(kube, ns, "auto", 1), "auto Ready", 60)
    wait_for(lambda: ready_with(kube, ns, "manual", 1), "manual Ready", 60)
    wait_serving(fleet, "auto", 1)
    # The autoscaler owns spec.replicas once it has written it.
    wait_for(lambda: replicas_of(kube.expert(ns, "auto")) == 1, "autoscaler wrote replicas", 15)

    cluster.kubectl("scale", "modelexpert/auto", "--replicas=3", "-n", ns)
    deployment_replicas: set[int] = set()

    def overridden() -> bool:
        deployment_replicas.add(kube.deployment(ns, "auto")["spec"]["replicas"])
        return replicas_of(kube.expert(ns, "auto")) == 1 and bool(
            kube.events(ns, "auto", "ManualScaleOverridden")
        )

    wait_for(overridden, "the manual scale overridden", 3 * INTERVAL + 5, interval=0.1)
    (event,) = kube.events(ns, "auto", "ManualScaleOverridden")
    assert "3" in event["message"] and event["type"] == "Warning"
    wait_for(lambda: ready_with(kube, ns, "auto", 1), "auto back to 1 ready replica", 30)
    assert kube.deployment(ns, "auto")["spec"]["replicas"] == 1
    # The hand-made 3 never reached the Deployment (no GPU pods started only to be removed).
    assert deployment_replicas == {1}, deployment_replicas

    cluster.kubectl("scale", "modelexpert/manual", "--replicas=3", "-n", ns)
    obj = wait_for(lambda: ready_with(kube, ns, "manual", 3), "manual Ready with 3", 60)
    assert obj["status"]["desiredReplicas"] == 3
    assert kube.deployment(ns, "manual")["spec"]["replicas"] == 3
    wait_serving(fleet, "manual", 3)
    time.sleep(3 * INTERVAL)  # several ticks later, still what the user asked for
    assert replicas_of(kube.expert(ns, "manual")) == 3
    assert kube.events(ns, "manual", "ManualScaleOverridden") == []
    assert kube.events(ns, "manual", "Scaled") == []


def test_a_failing_scrape_never_scales_down_by_itself(
    cluster: LocalCluster,
    kube: KubeReader,
    operator: OperatorProcess,
    namespace: str,
    fleet: EngineFleet,
) -> None:
    ns, name, window = namespace, "flaky", 3
    fleet.serve(name)
    # minReplicas 2 holds it at 2 until both engines have been seen idle (no race).
    apply(
        cluster,
        ns,
        expert(name, minReplicas=2, maxReplicas=4, scaleDownStabilizationSeconds=window),
    )
    wait_for(lambda: ready_with(kube, ns, name, 2), "Ready with 2 replicas", 60)
    wait_serving(fleet, name, 2)
    wait_for(
        lambda: (
            (o := kube.expert(ns, name))
            and replicas_of(o) == 2
            and o["status"].get("queueDepth") == 0
        ),
        "a tick that scraped both idle engines",
        15,
    )

    failures_before = metric(
        operator, "modelflock_autoscaler_scrape_failures_total", source="scrape"
    )
    victim = fleet.pods_served(name)[1]
    fleet.kill(victim)
    wait_for(
        lambda: (
            metric(operator, "modelflock_autoscaler_scrape_failures_total", source="scrape")
            > failures_before
        ),
        "the failed scrape counted",
        3 * INTERVAL + 3,
    )
    # Now the idle load alone asks for 1 replica; only the unknown pod stands in the way.
    apply(
        cluster,
        ns,
        expert(name, minReplicas=1, maxReplicas=4, scaleDownStabilizationSeconds=window),
    )
    wait_for(
        lambda: (
            (o := kube.expert(ns, name))["status"].get("observedGeneration")
            == o["metadata"]["generation"]
        ),
        "the new minReplicas observed",
        15,
    )
    held_until = time.monotonic() + window + 4 * INTERVAL
    while time.monotonic() < held_until:
        assert replicas_of(kube.expert(ns, name)) == 2, "scaled down while a scrape failed"
        time.sleep(0.2)
    assert (
        metric(
            operator,
            "modelflock_autoscaler_decisions_total",
            expert=name,
            reason="MetricsUnavailable",
        )
        > 0
    )
    assert (
        metric(
            operator,
            "modelflock_autoscaler_scrape_failures_total",
            source="scrape",
            reason="connection",
        )
        >= failures_before + 2
    )
    # Logged once per failure streak, not once per tick.
    log = operator.log_path.read_text(errors="replace")
    assert log.count(f"cannot scrape {victim}") == 1, log[-3000:]

    # Control: once the engine answers again (idle), the same expert does scale down.
    fleet.revive(victim)
    revived_at = time.monotonic()
    fell_at, _ = poll_until(
        lambda: kube.expert(ns, name),
        lambda o: replicas_of(o) == 1,
        "scale-down once every scrape works",
        window + 3 * INTERVAL + 5,
    )
    print(f"scaled down {fell_at - revived_at:.2f}s after the engine came back")
    wait_for(
        lambda: kube.expert(ns, name)["status"].get("lastScaleReason") == "Idle",
        "status.lastScaleReason Idle",
        5,
    )
    wait_for(lambda: ready_with(kube, ns, name, 1), "Ready with 1 replica", 30)


def test_a_scheduled_minimum_holds_replicas_in_its_window_and_lets_go_after(
    cluster: LocalCluster,
    kube: KubeReader,
    namespace: str,
    fleet: EngineFleet,
) -> None:
    ns, name, idle_seconds = namespace, "office", 3
    fleet.serve(name)
    # A window around now in a zone that is not UTC (UTC+5:30, no daylight saving time), so
    # the operator must read the time of day in the schedule's zone. It may cross midnight.
    zone = ZoneInfo("Asia/Kolkata")
    local = datetime.now(zone)
    window = {
        "start": f"{local - timedelta(hours=1):%H:%M}",
        "end": f"{local + timedelta(hours=1):%H:%M}",
        "timeZone": "Asia/Kolkata",
        "minReplicas": 2,
    }
    # No spec.replicas: the autoscaler owns it (a re-apply below would otherwise conflict).
    spec = expert(name, minReplicas=0, maxReplicas=3, scaleToZeroAfterSeconds=idle_seconds)
    spec["spec"]["autoscaling"]["schedules"] = [window]
    apply(cluster, ns, spec)

    # Idle, min 0, no demand: only the schedule asks for replicas.
    obj = wait_for(lambda: ready_with(kube, ns, name, 2), "Ready with the scheduled 2", 60)
    assert replicas_of(obj) == 2
    assert obj["status"]["lastScaleReason"] == "ScheduledMinimum"
    wait_serving(fleet, name, 2)
    (event,) = kube.events(ns, name, "Scaled")
    assert "0 -> 2 replicas: ScheduledMinimum" in event["message"], event["message"]
    assert "Asia/Kolkata" in event["message"], event["message"]
    time.sleep(idle_seconds + 3 * INTERVAL)  # idle past scaleToZeroAfterSeconds: still held
    assert replicas_of(kube.expert(ns, name)) == 2

    # The window moved to later today: the normal rules apply again (idle, min 0: zero).
    later = {**window, "start": f"{local + timedelta(hours=2):%H:%M}"}
    later["end"] = f"{local + timedelta(hours=3):%H:%M}"
    spec["spec"]["autoscaling"]["schedules"] = [later]
    apply(cluster, ns, spec)
    obj = wait_for(
        lambda: (o := kube.expert(ns, name)) and replicas_of(o) == 0 and o,
        "scaled to zero once outside the window",
        idle_seconds + 30,
    )
    assert obj["status"]["lastScaleReason"] == "ScaledToZero"
