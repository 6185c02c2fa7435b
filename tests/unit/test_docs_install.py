"""docs/install.md's path from nothing to a working portfolio is complete and in order, and the
README's install block is that path's commands (tests/e2e/test_install_path.py runs them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from docpath import INSTALL_DOC, REPO, doc_steps

PATH_STEPS = [
    "settings",
    "image",
    "values",
    "install",
    "secrets",
    "apply",
    "watch",
    "gateway",
    "request",
    "observe",
    "uninstall",
    "recover",
]
SETTINGS = {"IMAGE_REPOSITORY", "FRONTIER_BASE_URL", "FRONTIER_API_KEY", "HF_TOKEN"}


def test_the_path_has_every_step_in_order() -> None:
    steps = doc_steps()
    assert list(steps) == PATH_STEPS
    # Only what the local control plane truly cannot do is left to the test.
    assert {n for n, s in steps.items() if s.local} == {"settings", "image", "request"}
    assert all(s.local and len(s.local) > 10 for s in steps.values() if s.local)


def test_settings_only_export_the_variables_the_path_reads() -> None:
    steps = doc_steps()
    exported = set(re.findall(r"^export (\w+)=", steps["settings"].script, re.MULTILINE))
    assert exported == SETTINGS
    used = set()
    for step in steps.values():
        used |= set(re.findall(r"\$\{?(\w+)", step.script))
    assert used >= SETTINGS


def test_uninstall_deletes_the_portfolio_before_the_operator() -> None:
    lines = doc_steps()["uninstall"].script.splitlines()
    delete = next(i for i, ln in enumerate(lines) if "kubectl delete modelexperts" in ln)
    uninstall = next(i for i, ln in enumerate(lines) if ln.startswith("helm uninstall"))
    assert delete < uninstall


def test_every_block_is_valid_bash() -> None:
    for kind in ("path-step", "crds-step"):
        for step in doc_steps(kind).values():
            result = subprocess.run(
                ["bash", "-n", "-c", step.script], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, (step.name, result.stderr)
    assert list(doc_steps("crds-step")) == ["disabled", "adopt"]


def _readme_install_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Installing into a real cluster")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_install_commands_are_the_paths_commands() -> None:
    section = _readme_install_section()
    [block] = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    path_lines = {
        line.strip() for step in doc_steps().values() for line in step.script.splitlines()
    }
    for line in block.strip().splitlines():
        assert line.strip() in path_lines, f"README command not in docs/install.md's path: {line}"
    # Namespace before anything is applied into it, Secrets before the portfolio.
    commands = block.strip().splitlines()
    order = [
        next(i for i, c in enumerate(commands) if word in c)
        for word in (
            "create namespace llm",
            "create secret generic frontier-api-key",
            "apply -f deploy/examples/",
        )
    ]
    assert order == sorted(order)


def test_readme_values_are_the_paths_values() -> None:
    [values] = re.findall(r"```yaml\n(.*?)```", _readme_install_section(), re.DOTALL)
    steps = doc_steps()
    repository = re.search(r"^export IMAGE_REPOSITORY=(\S+)", steps["settings"].script, re.M)
    assert repository
    heredoc = re.search(r"<<EOF\n(.*?)^EOF$", steps["values"].script, re.DOTALL | re.MULTILINE)
    assert heredoc
    written = yaml.safe_load(heredoc[1].replace("$IMAGE_REPOSITORY", repository[1]))
    written.pop("imagePullSecrets")
    assert yaml.safe_load(values) == written


def test_examples_apply_no_secrets() -> None:
    """Applying deploy/examples/ can never put a placeholder over a real key."""
    for path in sorted((REPO / "deploy" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc["kind"] != "Secret", path
    secrets = sorted(p.name for p in (REPO / "deploy" / "examples" / "secrets").glob("*.yaml"))
    assert secrets == ["facts-store.yaml", "frontier-api-key.yaml", "hf-token.yaml"]


def test_install_doc_links_resolve() -> None:
    text = INSTALL_DOC.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, anchor
    for target in re.findall(r"\]\(((?:\.\./)?[\w./-]+)\)", text):
        assert (INSTALL_DOC.parent / target).resolve().exists(), target


def test_no_path_is_left_to_a_real_registry() -> None:
    path = Path(INSTALL_DOC).read_text()
    assert "not published" in path
    assert "docker push" in doc_steps()["image"].script
