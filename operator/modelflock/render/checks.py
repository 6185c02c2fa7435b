"""What the schema cannot check about a ModelExpert, given the operator configuration.

Pure: spec + config in, problems out. Blocking problems stop the operator from creating
engine pods (nothing would ever become ready); warnings go into the condition message.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelflock.api.modelexpert import ModelExpertSpec
from modelflock.autoscale.schedule import known_time_zone
from modelflock.operator_config import OperatorConfig

BYTES_PER_PARAMETER = {
    "none": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "eetq": 1.0,
    "awq": 0.5,
    "gptq": 0.5,
    "int4": 0.5,
    "bitsandbytes": 0.5,
}
# Weights plus ~20% for activations and a minimal KV cache, inside the engine's default
# 90% share of GPU memory.
OVERHEAD = 1.2
USABLE_GPU_FRACTION = 0.9
GIB = 1024**3


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    blocking: bool


def parameter_count(size: str) -> float:
    """'7B' → 7e9, '500M' → 5e8."""
    scale = 1e9 if size.endswith("B") else 1e6
    return float(size[:-1]) * scale


def weights_gib(spec: ModelExpertSpec) -> float | None:
    if spec.model is None or spec.model.parameters is None:
        return None
    return (
        parameter_count(spec.model.parameters) * BYTES_PER_PARAMETER[spec.model.quantization] / GIB
    )


def check_expert(spec: ModelExpertSpec, config: OperatorConfig) -> list[Problem]:
    if spec.engine == "external":
        return []
    problems: list[Problem] = [
        Problem(
            "UnknownTimeZone",
            f"spec.autoscaling.schedules[{i}].timeZone {s.time_zone!r} is not a known IANA time"
            " zone; that schedule is ignored",
            blocking=False,
        )
        for i, s in enumerate(spec.effective_autoscaling().schedules)
        if not known_time_zone(s.time_zone)
    ]
    if spec.node_pool is None:
        return problems
    pool = config.pool(spec.node_pool)
    if pool is None:
        known = ", ".join(p.name for p in config.node_pools) or "none configured"
        return [
            *problems,
            Problem(
                "UnknownNodePool",
                f"nodePool {spec.node_pool!r} is not in the operator configuration (known: {known})",
                blocking=True,
            ),
        ]
    gpus = spec.resources.gpus
    if gpus > pool.gpus_per_node:
        problems.append(
            Problem(
                "GPUsExceedNode",
                f"each replica asks for {gpus} GPUs but nodes of pool {pool.name} have"
                f" {pool.gpus_per_node}",
                blocking=False,
            )
        )
    needed = weights_gib(spec)
    if needed is not None and gpus > 0:
        available = gpus * pool.gpu_memory_gib * USABLE_GPU_FRACTION
        if needed * OVERHEAD > available:
            assert spec.model is not None
            problems.append(
                Problem(
                    "InsufficientGPUMemory",
                    f"{spec.model.parameters} parameters ({spec.model.quantization}) need about"
                    f" {needed * OVERHEAD:.0f} GiB of GPU memory; {gpus} x {pool.gpu_memory_gib}"
                    f" GiB on pool {pool.name} gives {available:.0f} GiB usable",
                    blocking=True,
                )
            )
    return problems
