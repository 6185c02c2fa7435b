"""The shell blocks of docs/install.md that tests run as written.

A block is marked by an HTML comment right above it:

    <!-- path-step: NAME -->                       run by the test, as written
    <!-- path-step: NAME; local: REASON -->        not runnable on the local control plane
                                                   (REASON says why); the test does its part

`crds-step` marks the blocks of "When the CRDs already exist" the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL_DOC = REPO / "docs" / "install.md"

_BLOCK = re.compile(
    r"<!-- (?P<kind>[a-z]+-step): (?P<name>[a-z-]+)(?:; local: (?P<local>[^>]*?))? -->\n"
    r"```sh\n(?P<script>.*?)```",
    re.DOTALL,
)


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    local: str | None  # why the local control plane cannot run it, or None


def doc_steps(kind: str = "path-step", doc: Path = INSTALL_DOC) -> dict[str, Step]:
    """The marked blocks of one kind, in document order."""
    steps: dict[str, Step] = {}
    for match in _BLOCK.finditer(doc.read_text()):
        if match["kind"] != kind:
            continue
        assert match["name"] not in steps, f"{kind} {match['name']} appears twice in {doc}"
        steps[match["name"]] = Step(match["name"], match["script"], match["local"])
    return steps


def run_step(step: Step, cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Runs a block as written with bash (-e: the first failing command fails the step)."""
    assert step.local is None, f"step {step.name} cannot run locally: {step.local}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", step.script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"docs/install.md step {step.name!r} failed ({result.returncode}):\n{step.script}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    return result.stdout


def shell_env(bin_dir: Path, kubeconfig: Path, home: Path, **extra: str) -> dict[str, str]:
    """What a platform engineer's shell has: kubectl and helm on PATH, a kubeconfig, helm's
    own folders (kept out of the user's), and the variables the path's settings step sets."""
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig),
        "HELM_CONFIG_HOME": str(home / "helm-config"),
        "HELM_CACHE_HOME": str(home / "helm-cache"),
        "HELM_DATA_HOME": str(home / "helm-data"),
        **extra,
    }
