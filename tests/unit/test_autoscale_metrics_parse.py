"""Parsing real-looking vLLM and TGI exposition into EngineLoad."""

from __future__ import annotations

import math
import random

import pytest

from modelflock.autoscale.metrics_parse import (
    Engine,
    EngineLoad,
    MetricsParseError,
    parse_engine_load,
)

VLLM_LORA = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama-3-8b"} 12.0
vllm:num_requests_running{engine="0",model_name="sql-lora"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama-3-8b"} 3.0
vllm:num_requests_waiting{engine="0",model_name="sql-lora"} 2.0
vllm:num_requests_waiting{engine="0",model_name="idle-lora"} NaN
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama-3-8b"} 0.42
vllm:kv_cache_usage_perc{engine="0",model_name="sql-lora"} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama-3-8b"} 123456.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="llama-3-8b"} 5.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="llama-3-8b"} 9.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="llama-3-8b"} 9.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="llama-3-8b"} 20.5
"""

VLLM_OLD_KV = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="mistral-7b"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="mistral-7b"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="mistral-7b"} 0.93
"""

TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 12000
# TYPE tgi_batch_max_total_tokens gauge
tgi_batch_max_total_tokens 16000
# TYPE tgi_request_count counter
tgi_request_count 4711
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 10
tgi_request_duration_bucket{le="+Inf"} 20
tgi_request_duration_sum 14.2
tgi_request_duration_count 20
"""


def test_vllm_sums_lora_model_names_and_skips_nan() -> None:
    load = parse_engine_load(VLLM_LORA)
    assert load == EngineLoad(Engine.VLLM, waiting=5.0, running=16.0, kv_cache_usage=0.42)


def test_vllm_old_kv_metric_name_is_read() -> None:
    load = parse_engine_load(VLLM_OLD_KV, Engine.VLLM)
    assert load.kv_cache_usage == pytest.approx(0.93)
    assert (load.waiting, load.running) == (0.0, 7.0)


def test_vllm_kv_takes_fullest_data_parallel_engine() -> None:
    text = VLLM_OLD_KV + 'vllm:gpu_cache_usage_perc{model_name="mistral-7b",engine="1"} 0.5\n'
    assert parse_engine_load(text).kv_cache_usage == pytest.approx(0.93)


def test_tgi_queue_batch_and_token_budget() -> None:
    load = parse_engine_load(TGI)
    assert load == EngineLoad(Engine.TGI, waiting=6.0, running=16.0, kv_cache_usage=0.75)


def test_engine_flavour_mismatch_is_an_error() -> None:
    with pytest.raises(MetricsParseError, match="tgi_queue_size missing"):
        parse_engine_load(VLLM_LORA, Engine.TGI)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world {",
        "}}}",
        "\x00\xff\xfe",
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{a="b"} notanumber\n',
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n",
        # Present but only NaN: nothing usable.
        "vllm:num_requests_waiting NaN\nvllm:num_requests_running NaN\n",
        # Queue without batch.
        "vllm:num_requests_waiting 3\n",
    ],
)
def test_bad_text_raises_typed_error(text: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_engine_load(text)


def test_negative_and_infinite_values_are_ignored() -> None:
    text = (
        'vllm:num_requests_waiting{model_name="a"} -1\n'
        'vllm:num_requests_waiting{model_name="b"} 2\n'
        'vllm:num_requests_running{model_name="a"} +Inf\n'
        'vllm:num_requests_running{model_name="b"} 1\n'
    )
    load = parse_engine_load(text)
    assert (load.waiting, load.running) == (2.0, 1.0)
    assert load.kv_cache_usage is None


def test_random_garbage_never_escapes_as_another_exception() -> None:
    rng = random.Random(1234)
    alphabet = 'vllm:_num{}="#\n \t0123456789.eE+-NaInf,tgi'
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        try:
            load = parse_engine_load(text)
        except MetricsParseError:
            continue
        assert math.isfinite(load.waiting) and load.waiting >= 0
        assert math.isfinite(load.running) and load.running >= 0


def test_completion_counters_are_summed_over_reasons_and_adapters() -> None:
    text = VLLM_LORA + (
        "# TYPE vllm:request_success counter\n"
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="a"} 90.0\n'
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="a"} 7.0\n'
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="b"} 3.0\n'
    )
    assert parse_engine_load(text).completed == 100.0
    assert parse_engine_load(VLLM_LORA).completed is None


def test_tgi_completion_counter_is_read() -> None:
    text = TGI + "# TYPE tgi_request_success counter\ntgi_request_success 4700\n"
    assert parse_engine_load(text).completed == 4700.0
