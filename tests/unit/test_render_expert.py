"""Rendering a ModelExpert into its Deployment and Service: table tests per engine and option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelflock.api.modelexpert import ModelExpertSpec
from modelflock.operator_config import OperatorConfig, parse_operator_config
from modelflock.render.checks import check_expert, weights_gib
from modelflock.render.expert import (
    ExpertRef,
    render_deployment,
    render_service,
    selector_string,
    startup_failure_threshold,
)

REPO = Path(__file__).resolve().parents[2]
REF = ExpertRef(name="code-7b", namespace="team-a", uid="uid-1")


@pytest.fixture(scope="module")
def config() -> OperatorConfig:
    return parse_operator_config(
        yaml.safe_load((REPO / "deploy" / "operator-config.example.yaml").read_text())
    )


def _spec(**overrides: Any) -> ModelExpertSpec:
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": {"name": "Qwen/Qwen2.5-Coder-7B-Instruct", "parameters": "7B"},
        "nodePool": "l4",
    }
    base.update(overrides)
    return ModelExpertSpec.model_validate(base)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(
    ("overrides", "expected_args"),
    [
        (
            {},
            [
                "--model=Qwen/Qwen2.5-Coder-7B-Instruct",
                "--served-model-name=code-7b",
                "--port=8000",
            ],
        ),
        (
            {"model": {"name": "m/x", "revision": "abc", "servedName": "coder"}},
            ["--model=m/x", "--served-model-name=coder", "--port=8000", "--revision=abc"],
        ),
        ({"resources": {"gpus": 4}, "nodePool": "h100"}, ["--tensor-parallel-size=4"]),
        (
            {"model": {"name": "m/x", "maxContextLength": 8192, "quantization": "awq"}},
            ["--max-model-len=8192", "--quantization=awq"],
        ),
        (
            {"model": {"name": "m/x", "adapters": [{"name": "sql", "source": "org/sql-lora"}]}},
            ["--enable-lora", "--max-loras=1", "--lora-modules", "sql=org/sql-lora"],
        ),
        ({"engineArgs": ["--max-num-seqs", "64"]}, ["--max-num-seqs", "64"]),
    ],
)
def test_vllm_arguments(
    config: OperatorConfig, overrides: dict[str, Any], expected_args: list[str]
) -> None:
    args = _container(render_deployment(REF, _spec(**overrides), config, 1))["args"]
    for arg in expected_args:
        assert arg in args
    if expected_args and expected_args[0] == "--max-num-seqs":
        assert args[-2:] == expected_args  # engineArgs come last, as given


@pytest.mark.parametrize(
    ("overrides", "expected_args"),
    [
        ({}, ["--model-id=Qwen/Qwen2.5-Coder-7B-Instruct", "--port=8080"]),
        ({"resources": {"gpus": 2}, "nodePool": "h100"}, ["--num-shard=2"]),
        (
            {
                "model": {
                    "name": "m/x",
                    "maxContextLength": 4096,
                    "quantization": "int8",
                    "revision": "r1",
                }
            },
            ["--max-total-tokens=4096", "--quantize=eetq", "--revision=r1"],
        ),
    ],
)
def test_tgi_arguments(
    config: OperatorConfig, overrides: dict[str, Any], expected_args: list[str]
) -> None:
    deployment = render_deployment(REF, _spec(engine="tgi", **overrides), config, 1)
    container = _container(deployment)
    for arg in expected_args:
        assert arg in container["args"]
    assert container["ports"][0]["containerPort"] == 8080
    assert container["image"] == config.images.tgi


def test_gpu_pool_placement_and_resources(config: OperatorConfig) -> None:
    spec = _spec(
        resources={"gpus": 4, "cpu": "8", "memory": "64Gi"},
        nodePool="h100",
        placement={
            "nodeSelector": {"zone": "a"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
            ],
            "priorityClassName": "llm-high",
            "runtimeClassName": "nvidia",
        },
    )
    pod = render_deployment(REF, spec, config, 2)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"modelflock.io/node-pool": "h100", "zone": "a"}
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu", "dedicated"}
    assert pod["priorityClassName"] == "llm-high" and pod["runtimeClassName"] == "nvidia"
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 4, "cpu": "8", "memory": "64Gi"}
    assert resources["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_single_gpu_has_no_shm_volume_and_no_tp(config: OperatorConfig) -> None:
    pod = render_deployment(REF, _spec(), config, 1)["spec"]["template"]["spec"]
    assert "volumes" not in pod
    assert not any(a.startswith("--tensor-parallel-size") for a in pod["containers"][0]["args"])


def test_secrets_are_references_never_values(config: OperatorConfig) -> None:
    spec = _spec(
        model={"name": "m/x", "tokenSecretRef": {"name": "hf", "key": "token"}},
        env=[
            {"name": "EXTRA", "secretKeyRef": {"name": "s", "key": "k"}},
            {"name": "PLAIN", "value": "1"},
        ],
    )
    env = _container(render_deployment(REF, spec, config, 1))["env"]
    assert env[0] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert {"name": "PLAIN", "value": "1"} in env


@pytest.mark.parametrize(
    ("cache", "volume"),
    [
        (
            {"type": "pvc", "claimName": "weights"},
            {"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}},
        ),
        (
            {"type": "emptyDir", "sizeLimit": "40Gi"},
            {"name": "weights", "emptyDir": {"sizeLimit": "40Gi"}},
        ),
    ],
)
def test_weights_cache(
    config: OperatorConfig, cache: dict[str, Any], volume: dict[str, Any]
) -> None:
    deployment = render_deployment(REF, _spec(cache=cache), config, 1)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [volume]
    assert {"name": "HF_HOME", "value": "/data"} in pod["containers"][0]["env"]


def test_probes_labels_owner_and_service(config: OperatorConfig) -> None:
    deployment = render_deployment(REF, _spec(), config, 3)
    container = _container(deployment)
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["modelflock.io/expert"] == "code-7b"
    assert labels["app.kubernetes.io/managed-by"] == "modelflock"
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelExpert" and owner["uid"] == "uid-1" and owner["controller"]
    service = render_service(REF, _spec())
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert selector_string(REF) == "app.kubernetes.io/component=engine,modelflock.io/expert=code-7b"
    sec = container["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"] == {"drop": ["ALL"]}


def test_rendering_is_deterministic(config: OperatorConfig) -> None:
    first = json.dumps(render_deployment(REF, _spec(), config, 1), sort_keys=False)
    second = json.dumps(render_deployment(REF, _spec(), config, 1), sort_keys=False)
    assert first == second


def test_replicas_do_not_touch_the_pod_template(config: OperatorConfig) -> None:
    one = render_deployment(REF, _spec(), config, 1)["spec"]["template"]
    five = render_deployment(REF, _spec(), config, 5)["spec"]["template"]
    assert one == five


def test_big_models_get_a_longer_startup() -> None:
    assert startup_failure_threshold(
        _spec(model={"name": "m", "parameters": "70B"})
    ) > startup_failure_threshold(_spec())


@pytest.mark.parametrize(
    ("overrides", "reasons"),
    [
        ({}, []),
        ({"model": {"name": "m", "parameters": "70B"}}, ["InsufficientGPUMemory"]),
        (
            {
                "model": {"name": "m", "parameters": "70B", "quantization": "awq"},
                "resources": {"gpus": 2},
            },
            ["GPUsExceedNode"],
        ),
        (
            {
                "model": {"name": "m", "parameters": "70B"},
                "resources": {"gpus": 4},
                "nodePool": "h100",
            },
            [],
        ),
        (
            {
                "model": {"name": "m", "parameters": "405B"},
                "resources": {"gpus": 8},
                "nodePool": "h100",
            },
            ["InsufficientGPUMemory"],
        ),
        ({"nodePool": "tpu"}, ["UnknownNodePool"]),
        (
            {
                "autoscaling": {
                    "schedules": [
                        {"start": "09:00", "end": "17:00", "minReplicas": 1},
                        {
                            "start": "09:00",
                            "end": "17:00",
                            "minReplicas": 1,
                            "timeZone": "Mars/Base",
                        },
                    ]
                },
                "nodePool": "tpu",
            },
            ["UnknownTimeZone", "UnknownNodePool"],
        ),
        ({"resources": {"gpus": 4}}, ["GPUsExceedNode"]),
    ],
)
def test_checks(config: OperatorConfig, overrides: dict[str, Any], reasons: list[str]) -> None:
    assert [p.reason for p in check_expert(_spec(**overrides), config)] == reasons


def test_weights_estimate() -> None:
    assert weights_gib(_spec()) == pytest.approx(7e9 * 2 / 1024**3)
    assert weights_gib(
        _spec(model={"name": "m", "parameters": "500M", "quantization": "int4"})
    ) == pytest.approx(0.25e9 / 1024**3)
