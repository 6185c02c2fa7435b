"""Lock-free labelled counters, gauges and histograms for the hot path.

prometheus-client's `labels(...).inc()` costs several microseconds (validation, locks) and
the router makes about ten such calls per request; these are plain dict updates on the
event loop thread, exported through a prometheus-client Collector when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

Key = tuple[str, ...]


class Counter:
    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}

    def inc(self, key: Key, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


class Gauge:
    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}

    def add(self, key: Key, amount: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value

    def family(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


class Histogram:
    def __init__(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.buckets = list(buckets)
        # key -> [count per bucket (last: +Inf)], sum
        self.values: dict[Key, tuple[list[int], list[float]]] = {}

    def observe(self, key: Key, value: float) -> None:
        entry = self.values.get(key)
        if entry is None:
            entry = self.values[key] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect_left(self.buckets, value)] += 1
        entry[1][0] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, (counts, total) in self.values.items():
            cumulative, running = [], 0
            for bound, count in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(list(key), cumulative, total[0])
        return family


class Exporter(Collector):
    """Hands the current values to prometheus-client at scrape time."""

    def __init__(self, metrics: Sequence[Counter | Gauge | Histogram]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()
