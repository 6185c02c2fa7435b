"""The Prometheus load source against a real Prometheus (Debian's package, `make prometheus`)
that scrapes engine exposition text served on 127.0.0.1: every pod must read the same
waiting, running, KV-cache usage and completion counter through Prometheus as a direct scrape
of the same text gives (`parse_engine_load`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from test_autoscale_metrics_parse import TGI, VLLM_OLD_KV

from modelflock.autoscale.algorithm import PodLoad
from modelflock.autoscale.metrics_parse import Engine, parse_engine_load
from modelflock.autoscale.sources import PodTarget, PrometheusSource, SourceMetrics
from monitoring.prometheus import running_prometheus, scrape_config_file

NAMESPACE = "team-a"
# vLLM V1 with a LoRA adapter on two data-parallel engines: counters per finish reason.
VLLM_DP = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama-3-8b"} 12.0
vllm:num_requests_running{engine="0",model_name="sql-lora"} 4.0
vllm:num_requests_running{engine="1",model_name="llama-3-8b"} 10.0
vllm:num_requests_running{engine="1",model_name="sql-lora"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama-3-8b"} 3.0
vllm:num_requests_waiting{engine="0",model_name="sql-lora"} 2.0
vllm:num_requests_waiting{engine="1",model_name="llama-3-8b"} 1.0
vllm:num_requests_waiting{engine="1",model_name="sql-lora"} NaN
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama-3-8b"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="llama-3-8b"} 0.61
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="llama-3-8b"} 90.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="llama-3-8b"} 7.0
vllm:request_success_total{engine="1",finished_reason="stop",model_name="sql-lora"} 3.0
"""
TGI_COUNTED = TGI + "# TYPE tgi_request_success counter\ntgi_request_success 4700\n"
# pod name -> (engine, exposition text); p-old has neither a counter nor the new KV name.
PODS = {
    "chat-7b-0": (Engine.VLLM, VLLM_DP),
    "chat-7b-old": (Engine.VLLM, VLLM_OLD_KV),
    "tgi-70b-0": (Engine.TGI, TGI_COUNTED),
}


class _Exposition(BaseHTTPRequestHandler):
    text = ""

    def do_GET(self) -> None:
        body = self.text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def engines() -> Iterator[dict[str, int]]:
    """One HTTP server per pod on 127.0.0.1 serving its text at /metrics; pod -> port."""
    servers = {}
    for pod, (_, text) in PODS.items():
        handler = type(f"Handler_{pod}", (_Exposition,), {"text": text})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[pod] = server
    yield {pod: s.server_address[1] for pod, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


def _expected(engine: Engine, text: str) -> PodLoad:
    load = parse_engine_load(text, engine)
    return PodLoad(load.waiting, load.running, load.kv_cache_usage, load.completed)


async def test_prometheus_source_reads_what_a_scrape_reads(
    tmp_path: Path, engines: dict[str, int]
) -> None:
    config = scrape_config_file(
        [
            {
                "job_name": pod,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        "labels": {"namespace": NAMESPACE, "pod": pod},
                    }
                ],
            }
            for pod, port in engines.items()
        ]
    )
    pods = [PodTarget(name, "", engine) for name, (engine, _) in PODS.items()]
    expected = [_expected(engine, text) for engine, text in PODS.values()]
    # Each engine's own numbers, so a swapped or dropped series cannot pass unnoticed.
    assert expected[0] == PodLoad(6.0, 26.0, 0.61, 100.0)
    assert expected[1].completed is None and expected[1].kv_cache_usage == 0.93
    assert expected[2].completed == 4700.0 and expected[2].kv_cache_usage == 0.75
    with running_prometheus(tmp_path / "prometheus", config) as prometheus:
        # Every pod scraped at least once (a count of series could be reached by two pods).
        prometheus.wait_for(
            lambda: (
                {
                    sample["metric"]["pod"]
                    for sample in prometheus.query(
                        f'count by (pod) ({{namespace="{NAMESPACE}",__name__=~"tgi_.+|vllm:.+"}})'
                    )
                }
                == set(PODS)
            ),
            "every pod's series",
            60,
        )
        registry = CollectorRegistry()
        metrics = SourceMetrics(registry)
        async with aiohttp.ClientSession() as session:
            source = PrometheusSource(session, metrics, prometheus.url, NAMESPACE)
            got = await source.sample(pods)
            # A pod Prometheus has never seen has no load; the others still do.
            unknown = PodTarget("chat-7b-gone", "", Engine.VLLM)
            partial = await source.sample([*pods, unknown])
            # Another namespace's pods of the same name are not this expert's.
            other = PrometheusSource(session, metrics, prometheus.url, "team-b")
            elsewhere = await other.sample(pods)
    assert got == expected
    assert partial == [*expected, None]
    assert elsewhere == [None, None, None]
    missing = registry.get_sample_value(
        "modelflock_autoscaler_scrape_failures_total",
        {"source": "prometheus", "reason": "missing"},
    )
    assert missing == 4


def test_prometheus_queries_per_engine() -> None:
    source = PrometheusSource(None, None, "http://127.0.0.1:9", "ns")  # type: ignore[arg-type]
    pods = [PodTarget("a-0", "", Engine.VLLM), PodTarget("a.1", "", Engine.VLLM)]
    vllm = source.queries(Engine.VLLM, pods)
    selector = r'namespace="ns",pod=~"a-0|a\\.1"'
    finite = ">= 0 < Inf"
    assert vllm == {
        "waiting": f"sum by (pod) (vllm:num_requests_waiting{{{selector}}} {finite})",
        "running": f"sum by (pod) (vllm:num_requests_running{{{selector}}} {finite})",
        "completed": f"sum by (pod) (vllm:request_success_total{{{selector}}} {finite})",
        "kv": (
            'max by (pod) ({__name__=~"vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc",'
            f"{selector}}} {finite})"
        ),
    }
    tgi = source.queries(Engine.TGI, pods[:1])
    assert tgi["kv"] == (
        'clamp_max(sum by (pod) (tgi_batch_current_max_tokens{namespace="ns",pod=~"a-0"} '
        '>= 0 < Inf) / sum by (pod) (tgi_batch_max_total_tokens{namespace="ns",pod=~"a-0"} '
        ">= 0 < Inf), 1)"
    )
    assert tgi["completed"] == (
        'sum by (pod) ({__name__=~"tgi_request_success|tgi_request_success_total",'
        'namespace="ns",pod=~"a-0"} >= 0 < Inf)'
    )
