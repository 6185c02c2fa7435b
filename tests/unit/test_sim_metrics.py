"""The simulated engine's /metrics text parses and carries the engines' real names."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from modelflock.sim.metrics import EngineCounters, Gauges, render
from modelflock.sim.queueing import BatchQueue

GAUGES = Gauges(waiting=3, running=8, kv_usage=0.25, kv_tokens=100, kv_capacity=400)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_vllm_metrics_have_vllm_names_and_labels() -> None:
    counters = EngineCounters(prompt_tokens=5, generation_tokens=7, success_stop=2)
    counters.queue_time.observe(0.03)
    got = samples(render("vllm", counters, GAUGES, "code-7b", legacy_kv=False))
    labels = (("engine", "0"), ("model_name", "code-7b"))
    assert got[("vllm:num_requests_waiting", labels)] == 3
    assert got[("vllm:num_requests_running", labels)] == 8
    assert got[("vllm:kv_cache_usage_perc", labels)] == 0.25
    assert got[("vllm:prompt_tokens_total", labels)] == 5
    assert got[("vllm:generation_tokens_total", labels)] == 7
    assert (
        got[("vllm:request_success_total", (*labels[:1], ("finished_reason", "stop"), labels[1]))]
        == 2
    )
    assert got[("vllm:request_queue_time_seconds_count", labels)] == 1
    inf = tuple(sorted((*labels, ("le", "+Inf"))))
    assert got[("vllm:request_queue_time_seconds_bucket", inf)] == 1


def test_vllm_legacy_kv_name() -> None:
    text = render("vllm", EngineCounters(), GAUGES, "m", legacy_kv=True)
    assert "vllm:gpu_cache_usage_perc{" in text
    assert "vllm:kv_cache_usage_perc" not in text


def test_tgi_metrics_have_tgi_names_without_total_suffix() -> None:
    counters = EngineCounters(requests=4, success_stop=3, failures=1)
    got = samples(render("tgi", counters, GAUGES, "m", legacy_kv=False))
    assert got[("tgi_queue_size", ())] == 3
    assert got[("tgi_batch_current_size", ())] == 8
    # TGI's exporter writes counters without `_total`; prometheus-client's parser adds it.
    text = render("tgi", counters, GAUGES, "m", legacy_kv=False)
    assert "\ntgi_request_count 4.0\n" in text
    assert "# TYPE tgi_request_count counter" in text
    assert got[("tgi_request_count_total", ())] == 4
    assert got[("tgi_request_success_total", ())] == 3
    assert got[("tgi_request_failure_total", (("err", "generation"),))] == 1
    assert ("tgi_request_queue_duration_count", ()) in got


async def test_batch_queue_admits_max_batch_and_queues_the_rest_in_order() -> None:
    queue = BatchQueue(max_batch=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with queue.slot(kv_tokens=10):
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert (queue.running, queue.waiting, queue.kv_tokens) == (2, 3, 20)
    tasks[3].cancel()  # a waiting request that goes away leaves the queue
    await asyncio.sleep(0.01)
    assert queue.waiting == 2
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 2, 4]
    assert (queue.running, queue.waiting, queue.kv_tokens) == (0, 0, 0)
