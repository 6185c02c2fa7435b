"""Shared fixtures. The control plane is real (tests/cluster); a failure to start it is an
error in every test that needs it, never a skip."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from localcluster import LocalCluster  # noqa: E402

from modelflock.retrieval.localpg import LocalPostgres  # noqa: E402
from support import MINILM_MODEL, EngineSimProcess, OperatorProcess, make_webhook_certs  # noqa: E402


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(workdir=tmp_path_factory.mktemp("cluster"))
    local.start()
    try:
        local.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        local.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modelexperts.modelflock.io",
            "crd/routingpolicies.modelflock.io",
            "crd/knowledgebases.modelflock.io",
        )
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the whole session (tests that restart it put it back)."""
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        cluster=cluster, workdir=workdir, webhook_dir=make_webhook_certs(workdir / "webhook")
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def minilm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of an engine-sim serving /v1/embeddings with the real all-MiniLM-L6-v2 model
    (served name `support.MINILM_MODEL`). A missing model is an error, never a skip."""
    engine = EngineSimProcess(
        ["--embedding-model", "minilm", "--model", MINILM_MODEL, "--instant"],
        tmp_path_factory.mktemp("minilm") / "engine-sim.log",
    )
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL with pgvector on 127.0.0.1 (binaries of the pgserver wheel), with a
    writer and a read-only role. Tests that stop it start it again. Failing to start is an
    error, never a skip."""
    root = Path(tempfile.mkdtemp(prefix="modelflock-pg-"))
    root.chmod(0o755)  # as root, the server runs as another user: it must reach its data
    server = LocalPostgres(root / "pg")
    server.start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)
