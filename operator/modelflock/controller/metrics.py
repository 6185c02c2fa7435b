"""The operator's Prometheus metrics, in a registry owned by the operator context."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "modelflock_reconciles",
            "Reconciles by kind and result (ok, error, invalid).",
            ["kind", "result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "modelflock_reconcile_duration_seconds",
            "Time to reconcile one object.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.applies = Counter(
            "modelflock_applies",
            "Server-side applies sent to the API server, by kind of object.",
            ["kind"],
            registry=registry,
        )
        self.errors = Counter(
            "modelflock_errors",
            "Errors by kind and where they happened.",
            ["kind", "stage"],
            registry=registry,
        )
        self.experts = Gauge(
            "modelflock_experts",
            "1 when the expert's condition has this status.",
            ["namespace", "expert", "condition", "status"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "modelflock_autoscaler_queue_depth",
            "Requests waiting across the expert's ready replicas (plus router-held demand).",
            ["namespace", "expert"],
            registry=registry,
        )
        self.target_queue_depth = Gauge(
            "modelflock_autoscaler_target_queue_depth",
            "The expert's targetQueueDepth per replica.",
            ["namespace", "expert"],
            registry=registry,
        )
        self.desired_replicas = Gauge(
            "modelflock_autoscaler_desired_replicas",
            "Replicas the autoscaler wants.",
            ["namespace", "expert"],
            registry=registry,
        )
        self.decisions = Counter(
            "modelflock_autoscaler_decisions",
            "Autoscaler decisions by reason and direction (up, down, none).",
            ["namespace", "expert", "reason", "direction"],
            registry=registry,
        )

        self.ingested = Counter(
            "modelflock_knowledgebase_chunks_embedded",
            "Chunks embedded and written by ingest passes.",
            ["namespace", "knowledgebase"],
            registry=registry,
        )
        self.embedding_calls = Counter(
            "modelflock_knowledgebase_embedding_calls",
            "Successful embedding calls (batches) of ingest passes.",
            ["namespace", "knowledgebase"],
            registry=registry,
        )
        self.leader = Gauge(
            "modelflock_leader",
            "1 while this replica holds the leader Lease and runs the controllers, else 0.",
            registry=registry,
        )
        self.leader_terms = Counter(
            "modelflock_leader_terms",
            "Times this replica became the leader.",
            registry=registry,
        )

    def forget_expert(self, namespace: str, expert: str) -> None:
        """Drop the series of a deleted expert so dashboards don't show ghosts."""
        for gauge in (self.queue_depth, self.target_queue_depth, self.desired_replicas):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, expert)
        for labels in list(self.experts._metrics):
            if labels[0] == namespace and labels[1] == expert:
                self.experts.remove(*labels)
