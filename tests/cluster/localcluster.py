"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), with certificates made by the openssl CLI.

    python tests/cluster/localcluster.py up [--dir DIR]     # start, print the kubeconfig
    python tests/cluster/localcluster.py down [--dir DIR]   # stop everything it started

Binaries come from tests/cluster/build.sh (built from Go modules, cached outside the repo).
Everything listens on 127.0.0.1; kwok gives pods IPs in a /16 inside 127.64.0.0/10 and nodes 127.0.0.2,
so nothing ever dials outside the loopback range (see TESTING.md's network rule).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Each cluster draws its own /16 for pod IPs from 127.64.0.0-127.127.255.255, so clusters (and
# the simulated engines bound to their pod IPs) running side by side never collide.
POD_CIDR_SECOND_OCTETS = range(64, 128)
NODE_IP = "127.0.0.2"
SERVICE_CIDR = "10.96.0.0/16"  # ClusterIPs are allocated, never dialled.
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
POOL_LABEL = "modelflock.io/node-pool"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class GpuPool:
    """A pool of identical fake GPU nodes."""

    name: str
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: int
    product: str


DEFAULT_POOLS = (
    GpuPool(name="l4", nodes=8, gpus_per_node=1, gpu_memory_gib=24, product="NVIDIA-L4"),
    GpuPool(name="h100", nodes=2, gpus_per_node=8, gpu_memory_gib=80, product="NVIDIA-H100-80GB"),
)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group started with start_new_session, SIGKILL it after `timeout`,
    and reap the process, so nothing outlives its owner."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (32768 by default)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range. The components bind their ports seconds
    after they are chosen; a port from the ephemeral range could meanwhile be taken by any
    outgoing connection on the machine (it happened: "bind: address already in use" for the
    scheduler in CI), while a port below it can only be taken by another explicit bind."""
    rng = random.SystemRandom()
    top = max(_ephemeral_low(), 10_001)
    for _ in range(500):
        port = rng.randrange(10_000, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in 10000-{top - 1}")


def build_binaries() -> Path:
    """Runs build.sh (seconds when cached) and returns the bin directory."""
    result = subprocess.run([str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def node_manifest(pool: GpuPool, index: int) -> dict[str, Any]:
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(pool.gpus_per_node),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"gpu-{pool.name}-{index}",
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": f"gpu-{pool.name}-{index}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                POOL_LABEL: pool.name,
                "nvidia.com/gpu.product": pool.product,
                "nvidia.com/gpu.count": str(pool.gpus_per_node),
                "nvidia.com/gpu.memory": str(pool.gpu_memory_gib * 1024),
            },
        },
        "spec": {"taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
        },
    }


@dataclass
class LocalCluster:
    """Starts and stops the control plane; state lives in `workdir`."""

    workdir: Path
    pools: Sequence[GpuPool] = DEFAULT_POOLS
    bin_dir: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each component was started, so a test can stop and start it again (outage tests).
    argv: dict[str, list[str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pod_cidr: str = field(
        default_factory=lambda: f"127.{random.choice(POD_CIDR_SECOND_OCTETS)}.0.0/16"
    )

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm/clients: the admin kubeconfig and our binaries first."""
        assert self.bin_dir is not None
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        if self.bin_dir is None:
            self.bin_dir = build_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        ports = self.ports = {
            name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "sched", "kwok")
        }
        self._make_certificates()
        self._write_kubeconfig(ports["apiserver"])
        try:
            self._start_etcd(ports["etcd"], ports["etcd-peer"])
            self._wait_http(f"http://127.0.0.1:{ports['etcd']}/health", "etcd", timeout)
            self._start_apiserver(ports["apiserver"], ports["etcd"])
            self._wait_https(
                f"https://127.0.0.1:{ports['apiserver']}/readyz", "kube-apiserver", timeout
            )
            self._start_controller_manager(ports["kcm"])
            self._start_scheduler(ports["sched"])
            self._start_kwok(ports["kwok"])
            self._create_nodes()
            self._wait_for(self._nodes_ready, "kwok nodes Ready", timeout)
            self._wait_for(self._default_service_account, "default ServiceAccount", timeout)
        except BaseException:
            self.stop()
            raise
        (self.workdir / "pids.json").write_text(
            json.dumps({name: p.pid for name, p in self.processes.items()})
        )
        print(
            f"cluster up in {time.monotonic() - started:.1f}s; KUBECONFIG={self.kubeconfig}",
            file=sys.stderr,
        )

    def stop(self) -> None:
        """Stop in reverse start order (clients before etcd); SIGKILL what ignores SIGTERM."""
        for name in reversed(list(self.processes)):
            stop_process_group(self.processes[name], timeout=10)
        self.processes.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "pids.json").unlink()

    # ---- outages (tests that stop a component and start it again) ---------------------------

    def stop_component(self, name: str, *, kill: bool = False) -> None:
        """Stop one component (SIGTERM, or SIGKILL with `kill`) and keep it down."""
        proc = self.processes.pop(name)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            stop_process_group(proc, timeout=10)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped component again with its original command line; wait until it
        answers (etcd /health, kube-apiserver /readyz)."""
        if name in self.processes:
            raise RuntimeError(f"{name} is running")
        self._spawn(name, self.argv[name])
        if name == "etcd":
            self._wait_http(f"http://127.0.0.1:{self.ports['etcd']}/health", "etcd", timeout)
        elif name == "kube-apiserver":
            self._wait_https(
                f"https://127.0.0.1:{self.ports['apiserver']}/readyz", "kube-apiserver", timeout
            )

    def restart_component(
        self, name: str, down_seconds: float = 0.0, timeout: float = 60.0
    ) -> None:
        self.stop_component(name)
        time.sleep(down_seconds)
        self.start_component(name, timeout)

    def api_ready(self) -> bool:
        """Whether kube-apiserver answers /readyz with 200 now (etcd included)."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        url = f"https://127.0.0.1:{self.ports['apiserver']}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def run_kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.bin_dir is not None
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.run_kubectl(*args, input=input)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout if check else result.stdout + result.stderr

    # ---- pieces ----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.argv[name] = argv
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        # New session: stop() signals the whole group, so no child outlives the cluster.
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir
        )
        log.close()

    def _bin(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    def _start_etcd(self, port: int, peer: int) -> None:
        self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{port}",
                f"--advertise-client-urls=http://127.0.0.1:{port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, port: int, etcd: int) -> None:
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self, port: int) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                "--use-service-account-credentials=false",
                # Faster garbage collection and replica reconciliation in tests.
                "--concurrent-gc-syncs=10",
                "--v=1",
            ],
        )

    def _start_scheduler(self, port: int) -> None:
        self._spawn(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_kwok(self, port: int) -> None:
        assert self.bin_dir is not None
        stages = sorted(str(p) for p in (self.bin_dir.parent / "kwok-stages").glob("*.yaml"))
        if not stages:
            raise RuntimeError(f"no kwok stage files under {self.bin_dir.parent / 'kwok-stages'}")
        self._spawn(
            "kwok",
            [
                self._bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--cidr={self.pod_cidr}",
                f"--node-ip={NODE_IP}",
                "--node-lease-duration-seconds=40",
                "--server-address=127.0.0.1:" + str(port),
                *[f"--config={s}" for s in stages],
            ],
        )

    def _create_nodes(self) -> None:
        items = [node_manifest(pool, i) for pool in self.pools for i in range(pool.nodes)]
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        )
        statuses = out.split()
        return len(statuses) == sum(p.nodes for p in self.pools) and all(
            s == "True" for s in statuses
        )

    def _default_service_account(self) -> bool:
        out = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return "default" in out and "NotFound" not in out

    def _wait_for(self, predicate: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if predicate():
                    return
            except Exception as error:
                last_error = str(error)
            time.sleep(0.25)
        raise TimeoutError(
            f"timed out waiting for {what}: {last_error} (logs: {self.workdir / 'logs'})"
        )

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                log = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")

    def _wait_http(self, url: str, what: str, timeout: float) -> None:
        def ok() -> bool:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        self._wait_for(ok, what, timeout)

    def _wait_https(self, url: str, what: str, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))

        def ok() -> bool:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)

        self._wait_for(ok, what, timeout)

    # ---- certificates and kubeconfig -------------------------------------------------------

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.pki)

    def _make_certificates(self) -> None:
        pki = self.pki
        if (pki / "admin.crt").exists():
            return
        pki.mkdir(parents=True, exist_ok=True)
        self._openssl("genrsa", "-out", "ca.key", "2048")
        self._openssl(
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-key",
            "ca.key",
            "-subj",
            "/CN=modelflock-test-ca",
            "-days",
            "365",
            "-out",
            "ca.crt",
        )
        (pki / "apiserver.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\n"
        )
        (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        for name, subject, ext in (
            ("apiserver", "/CN=kube-apiserver", "apiserver.ext"),
            ("admin", "/O=system:masters/CN=modelflock-admin", "client.ext"),
        ):
            self._openssl("genrsa", "-out", f"{name}.key", "2048")
            self._openssl(
                "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr"
            )
            self._openssl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                ext,
                "-out",
                f"{name}.crt",
            )
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _write_kubeconfig(self, port: int) -> None:
        pki = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "modelflock-test",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "modelflock-test",
                    "context": {"cluster": "modelflock-test", "user": "admin"},
                }
            ],
            "current-context": "modelflock-test",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir=workdir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def stop_from_pidfile(workdir: Path) -> None:
    """`down` for a cluster started by another process (`up` leaves pids.json behind)."""
    pidfile = workdir / "pids.json"
    if not pidfile.exists():
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        return
    pids: dict[str, int] = json.loads(pidfile.read_text())
    for pid in reversed(list(pids.values())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in pids.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pidfile.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["build", "up", "down"])
    parser.add_argument("--dir", default=".modelflock/cluster", help="state directory")
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    if args.action == "build":
        print(build_binaries())
    elif args.action == "up":
        cluster = LocalCluster(workdir=workdir)
        cluster.start()
        # Detach: the processes keep running in their own sessions after we exit.
        cluster.processes.clear()
        print(cluster.kubeconfig)
    else:
        stop_from_pidfile(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
