"""Turn an engine's Prometheus text exposition into the load numbers the autoscaler needs.

vLLM and TGI expose different metric names; both are reduced to one typed `EngineLoad`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


class Engine(enum.StrEnum):
    VLLM = "vllm"
    TGI = "tgi"


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition, or it lacks the engine's queue metrics."""


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """Load of one engine pod at scrape time.

    `waiting` and `running` are summed over every `model_name` (LoRA adapters) and `engine`
    (data-parallel ranks) label value, because they all share the pod's GPUs.
    `kv_cache_usage` is 0..1 (vLLM KV cache, or TGI's token budget in use), None if not exposed.
    `completed` is the pod's counter of finished requests (vLLM `vllm:request_success_total`,
    TGI `tgi_request_success`), None if not exposed.
    """

    engine: Engine
    waiting: float
    running: float
    kv_cache_usage: float | None = None
    completed: float | None = None


_VLLM_WAITING = "vllm:num_requests_waiting"
_VLLM_RUNNING = "vllm:num_requests_running"
# Newer vLLM renamed the KV gauge; older releases still in use expose the old name.
_VLLM_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_VLLM_COMPLETED = ("vllm:request_success_total",)
_TGI_COMPLETED = ("tgi_request_success", "tgi_request_success_total")
_TGI_WAITING = "tgi_queue_size"
_TGI_RUNNING = "tgi_batch_current_size"
_TGI_TOKENS_USED = "tgi_batch_current_max_tokens"
_TGI_TOKENS_MAX = "tgi_batch_max_total_tokens"


def _collect(text: str) -> dict[str, list[float]]:
    """Sample values by sample name, dropping NaN, infinities and negatives (no usable load)."""
    values: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                value = float(sample.value)
                if math.isfinite(value) and value >= 0:
                    values.setdefault(sample.name, []).append(value)
                else:
                    values.setdefault(sample.name, [])
    # The parser is third-party code fed with whatever a pod returned; any exception it
    # raises means "not valid exposition", which must never take the autoscaler loop down.
    except Exception as exc:
        raise MetricsParseError(f"invalid Prometheus text: {exc}") from exc
    return values


def _sum(values: dict[str, list[float]], name: str) -> float | None:
    samples = values.get(name)
    if samples is None:
        return None
    return float(sum(samples))


def _max(samples: Iterable[float]) -> float | None:
    found = list(samples)
    return max(found) if found else None


def detect_engine(values: dict[str, list[float]]) -> Engine | None:
    if _VLLM_WAITING in values:
        return Engine.VLLM
    if _TGI_WAITING in values:
        return Engine.TGI
    return None


def parse_engine_load(text: str, engine: Engine | None = None) -> EngineLoad:
    """Parse exposition text; `engine=None` detects the flavour from the metric names."""
    values = _collect(text)
    flavour = engine or detect_engine(values)
    if flavour is None:
        raise MetricsParseError("neither vLLM nor TGI queue metrics found")
    if flavour is Engine.VLLM:
        waiting_name, running_name = _VLLM_WAITING, _VLLM_RUNNING
        # The KV cache is per engine, not per adapter: report the fullest engine, not a sum.
        kv = _max(v for name in _VLLM_KV for v in values.get(name, []))
        completed = _first_sum(values, _VLLM_COMPLETED)
    else:
        waiting_name, running_name = _TGI_WAITING, _TGI_RUNNING
        kv = _tgi_token_usage(values)
        completed = _first_sum(values, _TGI_COMPLETED)
    waiting = _sum(values, waiting_name)
    if waiting is None:
        raise MetricsParseError(f"{waiting_name} missing")
    running = _sum(values, running_name)
    if running is None:
        raise MetricsParseError(f"{running_name} missing")
    if not values[waiting_name] and not values[running_name]:
        # Present but all NaN: the engine has no usable numbers yet (e.g. still starting).
        raise MetricsParseError(f"{waiting_name} and {running_name} have no finite value")
    return EngineLoad(
        engine=flavour, waiting=waiting, running=running, kv_cache_usage=kv, completed=completed
    )


def _first_sum(values: dict[str, list[float]], names: Iterable[str]) -> float | None:
    """Sum over every label set of the first of `names` present (all finish reasons, adapters
    and data-parallel ranks)."""
    for name in names:
        if values.get(name):
            return _sum(values, name)
    return None


def _tgi_token_usage(values: dict[str, list[float]]) -> float | None:
    used = _sum(values, _TGI_TOKENS_USED)
    budget = _sum(values, _TGI_TOKENS_MAX)
    if used is None or not budget:
        return None
    return min(1.0, used / budget)
