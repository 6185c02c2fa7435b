"""What the container image would run, without a Docker engine: build the wheel, install it into
a clean virtual environment, and run the operator, router and engine-sim commands from there —
including a short router smoke test with the official OpenAI client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("package")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("modelflock-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env_dir


def test_the_wheel_carries_only_the_package(venv: Path) -> None:
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import modelflock, sys; print(modelflock.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout
    assert str(venv) in site, "modelflock was imported from outside the clean environment"


@pytest.mark.parametrize("command", ["operator", "router", "engine-sim", "crds", "report"])
def test_commands_start_from_the_clean_environment(venv: Path, command: str) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "modelflock"), command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert "usage: modelflock " + command in result.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_router_smoke_from_the_clean_environment(
    venv: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    engine_port, router_port = free_port(), free_port()
    modelflock = str(venv / "bin" / "modelflock")
    processes.append(
        subprocess.Popen(
            [
                modelflock,
                "engine-sim",
                "--host",
                "127.0.0.1",
                "--port",
                str(engine_port),
                "--model",
                "small",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    config = {
        "listen": {"host": "127.0.0.1", "port": router_port},
        "experts": [
            {"name": "small", "urls": [f"http://127.0.0.1:{engine_port}"], "model": "small"}
        ],
        "routes": [{"name": "all", "expert": "small"}],
    }
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    processes.append(
        subprocess.Popen(
            [modelflock, "router", "--config", str(tmp_path / "router.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{router_port}/v1", api_key="x", max_retries=0
    )

    def answered() -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hello"}]
        )
        return (
            str(raw.headers.get("x-modelflock-expert"))
            if raw.parse().choices[0].message.content
            else ""
        )

    assert (
        wait_for(answered, "an answer through the router from the clean environment", 30) == "small"
    )
    client.close()
