"""A PostgreSQL server with pgvector on loopback, for tests, the demo and benchmarks.

The binaries come from the `pgserver` wheel (PostgreSQL 16 with pgvector). The server listens
on 127.0.0.1 with password authentication, and has two login roles, as a real deployment
would: a writer (owns the database; for the operator) and a read-only reader (for routers).
PostgreSQL refuses to run as root, so as root it runs as the system user `pgserver`.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE = "modelflock"
WRITER = "modelflock_writer"
READER = "modelflock_reader"
_SYSTEM_USER = "pgserver"


def _bin(name: str) -> str:
    # The wheel that ships the server binaries (dev extra); found, not imported (importing
    # it starts its own machinery).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver wheel is not installed (pip install -e '.[dev]')")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    host: str
    port: int
    dbname: str
    username: str
    password: str

    def secret_data(self) -> dict[str, str]:
        """The keys of a CloudNativePG `<cluster>-app` Secret (what ModelFlock reads)."""
        return {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "username": self.username,
            "password": self.password,
        }

    def write_dir(self, path: Path) -> Path:
        """The Secret as a mounted directory (one file per key), as a router sees it."""
        path.mkdir(parents=True, exist_ok=True)
        for key, value in self.secret_data().items():
            (path / key).write_text(value)
        return path


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None unless we are root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", _SYSTEM_USER], check=True)
        entry = pwd.getpwnam(_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


class LocalPostgres:
    """initdb once into `root`, then start/stop the server (same port, same data)."""

    def __init__(self, root: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.port = port or free_port(host)
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log_path = root / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._as = _run_as()
        secrets_file = root / "passwords"
        if secrets_file.exists():
            admin, writer, reader = secrets_file.read_text().split()
        else:
            admin, writer, reader = (secrets.token_hex(12) for _ in range(3))
        self._admin_password = admin
        self.writer = Credentials(host, self.port, DATABASE, WRITER, writer)
        self.reader = Credentials(host, self.port, DATABASE, READER, reader)
        self._passwords = secrets_file

    @property
    def admin(self) -> Credentials:
        return Credentials(self.host, self.port, "postgres", "postgres", self._admin_password)

    @property
    def _user(self) -> int | None:
        return None if self._as is None else self._as[0]

    @property
    def _group(self) -> int | None:
        return None if self._as is None else self._as[1]

    def _chown(self, path: Path) -> None:
        if self._as is not None:
            os.chown(path, *self._as)

    def init(self) -> None:
        """Create the data directory (idempotent: an existing one is kept)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.data / "PG_VERSION").exists():
            return
        for path in (self.root, self.sockets):
            path.mkdir(parents=True, exist_ok=True)
            self._chown(path)
            path.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._admin_password)
        self._chown(pwfile)
        subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self._user,
            group=self._group,
        )
        pwfile.unlink()
        self._passwords.write_text(
            f"{self._admin_password} {self.writer.password} {self.reader.password}\n"
        )
        self._passwords.chmod(0o600)

    def start(self, timeout: float = 30.0) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.init()
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                _bin("postgres"),
                "-D",
                str(self.data),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user,
            group=self._group,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [_bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-q"], check=False
            )
            if ready.returncode == 0:
                self._bootstrap()
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start; see {self.log_path}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self._admin_password}
        result = subprocess.run(
            [
                _bin("psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return result.stdout

    def _bootstrap(self) -> None:
        """Roles, database and extension (idempotent): what a DBA does once."""
        w, r = self.writer, self.reader
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{WRITER}'").strip()
        if exists:
            return
        self.psql(f"CREATE ROLE {WRITER} LOGIN PASSWORD '{w.password}'")
        self.psql(f"CREATE ROLE {READER} LOGIN PASSWORD '{r.password}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {WRITER}")
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", DATABASE)
        self.psql(f"GRANT CONNECT ON DATABASE {DATABASE} TO {READER}", DATABASE)
        self.psql(f"GRANT USAGE ON SCHEMA public TO {READER}", DATABASE)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): the data stays; start() brings it back on the same port."""
        proc, self._process = self._process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(2)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
