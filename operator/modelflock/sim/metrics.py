"""The engine's Prometheus exposition, with vLLM's or TGI's real metric names and labels.

Written by hand rather than with prometheus-client so the names are exactly the engines'
(TGI counters carry no `_total` suffix; vLLM names contain colons and no `_created` series).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelflock.sim.config import Flavour

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TOKEN_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class EngineCounters:
    """Everything the engine counts; gauges are read from the queue when rendering."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    success_stop: int = 0
    success_length: int = 0
    failures: int = 0
    requests: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    inter_token: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(_LATENCY_BUCKETS))
    input_length: Histogram = field(default_factory=lambda: Histogram(_TOKEN_BUCKETS))
    generated: Histogram = field(default_factory=lambda: Histogram(_TOKEN_BUCKETS))


@dataclass(frozen=True)
class Gauges:
    waiting: int
    running: int
    kv_usage: float
    kv_tokens: int
    kv_capacity: int


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    merged = {**labels, **(extra or {})}
    if not merged:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(merged.items()))
    return "{" + inner + "}"


class _Writer:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.lines: list[str] = []

    def header(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, extra: dict[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(self.labels, extra)} {_fmt(value)}")

    def gauge(self, name: str, value: float, help_text: str) -> None:
        self.header(name, "gauge", help_text)
        self.sample(name, value)

    def histogram(self, name: str, hist: Histogram, help_text: str) -> None:
        self.header(name, "histogram", help_text)
        for bound, count in zip(hist.buckets, hist.counts, strict=True):
            self.sample(f"{name}_bucket", count, {"le": _fmt(bound)})
        self.sample(f"{name}_bucket", hist.count, {"le": "+Inf"})
        self.sample(f"{name}_sum", hist.total)
        self.sample(f"{name}_count", hist.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_vllm(c: EngineCounters, g: Gauges, model: str, legacy_kv: bool) -> str:
    w = _Writer({"model_name": model, "engine": "0"})
    w.gauge(
        "vllm:num_requests_running", g.running, "Number of requests in model execution batches."
    )
    w.gauge("vllm:num_requests_waiting", g.waiting, "Number of requests waiting to be processed.")
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv else "vllm:kv_cache_usage_perc"
    w.gauge(kv_name, g.kv_usage, "KV-cache usage. 1 means 100 percent usage.")
    w.header("vllm:num_preemptions_total", "counter", "Cumulative number of preemption.")
    w.sample("vllm:num_preemptions_total", 0)
    w.header("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
    w.sample("vllm:prompt_tokens_total", c.prompt_tokens)
    w.header("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
    w.sample("vllm:generation_tokens_total", c.generation_tokens)
    w.header("vllm:request_success_total", "counter", "Count of successfully processed requests.")
    w.sample("vllm:request_success_total", c.success_stop, {"finished_reason": "stop"})
    w.sample("vllm:request_success_total", c.success_length, {"finished_reason": "length"})
    w.histogram("vllm:time_to_first_token_seconds", c.ttft, "Histogram of time to first token.")
    w.histogram(
        "vllm:inter_token_latency_seconds",
        c.inter_token,
        "Histogram of inter-token latency in seconds.",
    )
    w.histogram(
        "vllm:e2e_request_latency_seconds", c.e2e, "Histogram of e2e request latency in seconds."
    )
    w.histogram(
        "vllm:request_queue_time_seconds",
        c.queue_time,
        "Histogram of time spent in WAITING phase for request.",
    )
    w.histogram("vllm:request_prompt_tokens", c.input_length, "Number of prefill tokens processed.")
    w.histogram(
        "vllm:request_generation_tokens", c.generated, "Number of generation tokens processed."
    )
    return w.text()


def render_tgi(c: EngineCounters, g: Gauges) -> str:
    w = _Writer({})
    w.gauge("tgi_queue_size", g.waiting, "Requests waiting in the queue")
    w.gauge("tgi_batch_current_size", g.running, "Current batch size")
    w.gauge("tgi_batch_current_max_tokens", g.kv_tokens, "Maximum tokens of the current batch")
    w.gauge("tgi_batch_max_total_tokens", g.kv_capacity, "Token budget of a batch")
    w.header("tgi_request_count", "counter", "Requests received")
    w.sample("tgi_request_count", c.requests)
    w.header("tgi_request_success", "counter", "Requests served")
    w.sample("tgi_request_success", c.success_stop + c.success_length)
    w.header("tgi_request_failure", "counter", "Requests failed")
    w.sample("tgi_request_failure", c.failures, {"err": "generation"})
    w.histogram("tgi_request_duration", c.e2e, "Request duration")
    w.histogram("tgi_request_queue_duration", c.queue_time, "Time spent in the queue")
    w.histogram("tgi_request_input_length", c.input_length, "Input length in tokens")
    w.histogram("tgi_request_generated_tokens", c.generated, "Generated tokens")
    w.histogram(
        "tgi_request_mean_time_per_token_duration", c.inter_token, "Mean time per generated token"
    )
    return w.text()


def render(flavour: Flavour, c: EngineCounters, g: Gauges, model: str, legacy_kv: bool) -> str:
    if flavour == "tgi":
        return render_tgi(c, g)
    return render_vllm(c, g, model, legacy_kv)
