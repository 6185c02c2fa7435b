"""Helpers shared by the integration and end-to-end tests: the operator as a subprocess,
polling with a deadline, reading objects as JSON."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from localcluster import DEFAULT_POOLS, LocalCluster, free_port, stop_process_group

T = TypeVar("T")


@contextlib.contextmanager
def fresh_namespace(cluster: LocalCluster, name: str) -> Iterator[str]:
    """A namespace for one test module, deleted (and waited for) afterwards: its pods hold
    fake GPUs that later modules need."""
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def model_expert(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A ModelExpert manifest."""
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "metadata": {"name": name},
        "spec": spec,
    }


# The external frontier expert several tests put beside their own (its key in Secret
# frontier-key/api-key, which each test creates or leaves missing on purpose).
FRONTIER_EXPERT = model_expert(
    "frontier",
    {
        "engine": "external",
        "external": {
            "baseURL": "https://frontier.example.com/v1",
            "model": "frontier-large",
            "apiKeySecretRef": {"name": "frontier-key", "key": "api-key"},
        },
        "cost": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"},
    },
)


def first_traceback(log: str, before: int = 5, after: int = 40) -> str:
    """The first Python traceback in a log with the lines around it ("" when there is none):
    what a failing assertion should show."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if "Traceback" in line), None)
    if start is None:
        return ""
    return "\n".join(lines[max(0, start - before) : start + after])


def wait_for(probe: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.25) -> T:
    """Poll until `probe()` returns something truthy; fail loudly with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.run_kubectl("get", *args, "-o", "json")
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise RuntimeError(f"kubectl get {' '.join(args)}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def apply(cluster: LocalCluster, namespace: str, doc: dict[str, Any] | str) -> str:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return cluster.kubectl(
        "apply", "--server-side", "--field-manager=tests", "-n", namespace, "-f", "-", input=text
    )


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    if not obj:
        return {}
    found: dict[str, Any] = next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {}
    )
    return found


def operator_config(flock_port: int, interval: float = 1.0) -> dict[str, Any]:
    return {
        "nodePools": [
            {
                "name": pool.name,
                "nodeSelector": {"modelflock.io/node-pool": pool.name},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "gpuMemoryGiB": pool.gpu_memory_gib,
                "gpusPerNode": pool.gpus_per_node,
            }
            for pool in DEFAULT_POOLS
        ],
        "autoscaler": {"intervalSeconds": interval, "scrapeTimeoutSeconds": 1},
        "resyncSeconds": 5,
        "operatorUrl": f"http://127.0.0.1:{flock_port}",
        "bindAddress": "127.0.0.1",
    }


@dataclass
class OperatorProcess:
    """`modelflock operator` against the test cluster, on loopback ports of its own."""

    cluster: LocalCluster
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    flock_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Serve the sidecar webhook with certificates made by openssl (see make_webhook_certs).
    webhook_dir: Path | None = None
    webhook_port: int = field(default_factory=free_port)
    # start() returns once this process leads (False: once it answers /healthz, maybe standing by).
    wait_leader: bool = True
    # Extra environment (e.g. KUBECONFIG with a ServiceAccount's token, POD_NAME).
    env: dict[str, str] = field(default_factory=dict)
    # Replaces --all-namespaces (e.g. ["--namespace", "a"]); None keeps --all-namespaces.
    scope_args: list[str] | None = None

    @property
    def flock_url(self) -> str:
        return f"http://127.0.0.1:{self.flock_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def start(self) -> None:
        config = {**operator_config(self.flock_port), **self.config_overrides}
        config_path = self.workdir / "operator-config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelflock",
                "operator",
                "--config",
                str(config_path),
                *(["--all-namespaces"] if self.scope_args is None else self.scope_args),
                "--metrics-port",
                str(self.metrics_port),
                "--flock-api-port",
                str(self.flock_port),
                "--liveness-port",
                str(self.liveness_port),
                "--bind-address",
                "127.0.0.1",
                *self._webhook_args(),
                *self.extra_args,
            ],
            env={**self.cluster.env(), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self._healthy, "operator liveness endpoint", timeout=60)
        if self.wait_leader:
            wait_for(self.is_leader, "operator leading (leader Lease held)", timeout=60)
            # Leading is not serving yet: the flock API (and webhook) open in kopf's startup
            # handler, after the Lease is won. /readyz says when they accept connections.
            wait_for(self.is_ready, "operator ready (its listeners accept connections)", timeout=60)

    def _webhook_args(self) -> list[str]:
        if self.webhook_dir is None:
            return []
        return [
            "--webhook-cert-dir",
            str(self.webhook_dir),
            "--webhook-port",
            str(self.webhook_port),
        ]

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log_path.read_text()[-3000:]}")
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def health(self) -> dict[str, Any]:
        """The /healthz document: {"leader": bool, "identity": str, "holder": str}."""
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def is_leader(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log_path.read_text()[-3000:]}")
        return bool(self.health()["leader"])

    def is_ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log_path.read_text()[-3000:]}")
        url = f"http://127.0.0.1:{self.liveness_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no goodbye: the Lease stays held until it expires."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process_group(self.process, timeout=20)
        self.process = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text


def flock_post(operator: OperatorProcess, path: str, token: str, body: bytes | list[bytes]) -> int:
    """POST a body to the operator's flock API and return the status code; a list of parts
    is sent chunked, without a Content-Length."""
    request = urllib.request.Request(
        f"{operator.flock_url}{path}",
        data=body if isinstance(body, bytes) else iter(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def make_webhook_certs(directory: Path) -> Path:
    """A CA and a serving certificate for https://127.0.0.1 (tls.crt, tls.key, ca.crt)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=modelflock-webhook-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "tls.crt",
    )
    return directory


MINILM_MODEL = "all-MiniLM-L6-v2"  # the served model name of the `minilm_server` fixture


@dataclass
class EngineSimProcess:
    """`modelflock engine-sim` as a child process (a real HTTP server on loopback)."""

    args: list[str]
    log_path: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the file
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelflock", "engine-sim", "--port", "0", *self.args],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        # The first line says where it listens (after the model has loaded); EOF if it died.
        line = self.process.stdout.readline().decode()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(
                f"engine-sim {self.args} did not start: {line!r}; log: {self.log_path.read_text()}"
            )
        self.url = line.rsplit("listening on ", 1)[1].strip()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def service_account_kubeconfig(
    cluster: LocalCluster, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token), so a test
    runs the operator with exactly the permissions the chart grants it."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "2h").strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": admin["clusters"][0]["name"], "user": account},
            }
        ],
        "current-context": account,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def helm_template(cluster: LocalCluster, release: str, namespace: str, *args: str) -> str:
    """The chart rendered by the pinned helm (no cluster access)."""
    assert cluster.bin_dir is not None
    chart = Path(__file__).resolve().parents[1] / "charts" / "modelflock"
    result = subprocess.run(
        [
            str(cluster.bin_dir / "helm"),
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--kube-version",
            "v1.36.3",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=cluster.env(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    return result.stdout


def election_config(**leader: float) -> dict[str, Any]:
    """Operator configuration overrides for leader-election tests: short, but not so short that
    a busy 2-core CI machine misses renewals."""
    return {
        "leaderElection": {
            "leaseDurationSeconds": leader.get("lease", 4),
            "renewDeadlineSeconds": leader.get("renew", 3),
            "retryPeriodSeconds": leader.get("retry", 0.5),
        }
    }


@contextlib.contextmanager
def without_session_operator(
    cluster: LocalCluster, operator: OperatorProcess, *namespaces: str
) -> Iterator[None]:
    """Fresh namespaces for tests that run operators of their own: the session operator is
    stopped meanwhile (it would serve the same objects), and started again *before* the
    namespaces are deleted, so it removes the finalizers of what is left in them."""
    operator.stop()
    created: list[str] = []
    try:
        for name in namespaces:
            cluster.kubectl("create", "namespace", name)
            created.append(name)
        yield
    finally:
        operator.start()
        for name in created:
            delete_namespace(cluster, name)


def delete_namespace(cluster: LocalCluster, name: str, timeout: float = 180.0) -> None:
    """Delete a namespace and wait until it is gone (pods, finalizers and all)."""
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    wait_for(
        lambda: get_json(cluster, "namespace", name) is None,
        f"namespace {name} deleted",
        timeout,
        interval=1.0,
    )
