"""Everything the handlers share, created at operator start-up and kept in kopf's memo."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from prometheus_client import CollectorRegistry

from modelflock.api.knowledgebase import KnowledgeBaseStatus
from modelflock.api.modelexpert import ModelExpertStatus
from modelflock.api.routingpolicy import RoutingPolicyStatus
from modelflock.autoscale.algorithm import PodLoad, ScalerMemory
from modelflock.autoscale.sources import DemandStore, MetricSource, PodTarget, SourceMetrics
from modelflock.controller.evaluation import EvaluationStore
from modelflock.controller.kube import Kube, Manifest
from modelflock.controller.metrics import OperatorMetrics
from modelflock.controller.outage import ApiOutage
from modelflock.controller.readiness import Listener
from modelflock.operator_config import OperatorConfig
from modelflock.render.classifier_health import ClassifierReport
from modelflock.render.injection import SidecarPlan
from modelflock.render.policy import StoreReport

ObjectKey = tuple[str, str]  # (namespace, name)


def child_marker(kind: str, body: Mapping[str, Any]) -> str | None:
    """What identifies a child's version as far as its spec goes: a Deployment's generation
    (its controller's status updates leave it alone), a Service's resourceVersion (it has no
    generation, and nothing but us and the API server writes it in practice)."""
    metadata = body.get("metadata") or {}
    value = metadata.get("generation") if kind == "Deployment" else metadata.get("resourceVersion")
    return None if value is None else str(value)


def child_needs_apply(
    kind: str, deleted: bool, marker: str | None, applied_marker: str | None
) -> bool:
    """Whether a watch event on an expert's child means its children must be applied again:
    not for pods, not for the echo of our own apply or a Deployment's status update."""
    if kind not in ("Deployment", "Service"):
        return False  # pods: only the status needs refreshing
    return deleted or marker is None or marker != applied_marker


@dataclass
class ExpertState:
    """Per-expert memory of the operator (lost on restart by design: all of it is re-learnt)."""

    trigger: asyncio.Event = field(default_factory=asyncio.Event)
    scaler: ScalerMemory = field(default_factory=ScalerMemory)
    # Replicas the autoscaler last wrote; a different spec.replicas means someone scaled by hand.
    written_replicas: int | None = None
    last_autoscale: float = 0.0
    loads: tuple[tuple[PodTarget, PodLoad | None], ...] = ()
    ready_targets: tuple[PodTarget, ...] = ()
    served_pods: set[str] = field(default_factory=set)
    ready_replicas: int = 0
    desired_replicas: int = 0
    cold_start_seconds: float = 60.0
    # External experts have no pods: routers call their API directly, never wait for them.
    external: bool = False
    # Digest of the Deployment+Service last applied, and when: an unchanged render is not
    # applied again until a child changes or the resync period passes (saves API-server work).
    applied_digest: str = ""
    applied_at: float = 0.0
    # child_marker() of the Deployment and Service as our last apply left them: a watch event
    # with the same marker is our own write or a status update, not a change to re-apply.
    applied_markers: dict[str, str | None] = field(default_factory=dict)
    # The status this operator last wrote: the watched body may lag behind our own writes.
    last_status: ModelExpertStatus | None = None
    # Whether the last reconcile saw autoscaling on: only then does the worker wake every
    # autoscaler interval; otherwise the resync interval is enough (saves API calls at scale).
    autoscaling: bool = True


@dataclass(frozen=True)
class PolicyAccess:
    """What a router holding this policy's token may see and wake."""

    token: str
    experts: frozenset[str]
    knowledge_bases: frozenset[str] = frozenset()


@dataclass
class OperatorContext:
    config: OperatorConfig
    kube: Kube
    registry: CollectorRegistry
    metrics: OperatorMetrics
    source_metrics: SourceMetrics
    demand: DemandStore = field(default_factory=DemandStore)
    experts: dict[ObjectKey, ExpertState] = field(default_factory=dict)
    policy_triggers: dict[ObjectKey, asyncio.Event] = field(default_factory=dict)
    # Filled by the RoutingPolicy workers: each policy's router token and the experts it names.
    policy_access: dict[ObjectKey, PolicyAccess] = field(default_factory=dict)
    # Shadow-evaluation reports of the routers, summed per policy (flock API → status).
    evaluations: EvaluationStore = field(default_factory=EvaluationStore)
    # Classifier health reports from routers (flock API): policy -> router id -> (when, report).
    classifier_reports: dict[ObjectKey, dict[str, tuple[float, ClassifierReport]]] = field(
        default_factory=dict
    )
    # Filled by the RoutingPolicy workers, read by the sidecar injection webhook.
    sidecar_plans: dict[ObjectKey, SidecarPlan] = field(default_factory=dict)
    # The status each RoutingPolicy worker last wrote: the watched body may lag behind it, and
    # a transition computed against a stale status would be posted as an event twice.
    policy_status: dict[ObjectKey, RoutingPolicyStatus] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    # KnowledgeBase workers: their triggers and the status each last wrote.
    kb_triggers: dict[ObjectKey, asyncio.Event] = field(default_factory=dict)
    kb_status: dict[ObjectKey, KnowledgeBaseStatus] = field(default_factory=dict)
    # What routers report about their knowledge bases' stores, per policy (flock API).
    retrieval_reports: dict[ObjectKey, dict[str, StoreReport]] = field(default_factory=dict)
    # One long-lived source per kind, so "logged once per failure streak" holds across ticks.
    sources: dict[str, MetricSource] = field(default_factory=dict)
    # Listeners besides the flock API that must accept connections before /readyz says ready
    # (the sidecar webhook, when served).
    readiness_listeners: tuple[Listener, ...] = ()
    # Shared with the elector: an API outage is logged once, and ends with a reconcile of all.
    outage: ApiOutage = field(default_factory=ApiOutage)

    def event(self, body: kopf.Body, *, type: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about `body`, unless this replica is not the leader (then
        another operator posts it: events are never doubled)."""
        if self.kube.may_write():
            kopf.event(body, type=type, reason=reason, message=message[:1024])

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply, counted (`modelflock_applies_total{kind}`)."""
        self.metrics.applies.labels(str(manifest.get("kind", ""))).inc()
        return await self.kube.apply(manifest)

    def expert_state(self, key: ObjectKey) -> ExpertState:
        state = self.experts.get(key)
        if state is None:
            state = self.experts[key] = ExpertState()
        return state

    def child_event(self, key: ObjectKey, deleted: bool, body: Mapping[str, Any]) -> None:
        """A watched child of an expert changed: refresh the expert's status, and apply its
        children again when someone else changed them."""
        state = self.experts.get(key)
        if state is None:
            return
        kind = str(body.get("kind", ""))
        marker = child_marker(kind, body)
        if child_needs_apply(kind, deleted, marker, state.applied_markers.get(kind)):
            state.applied_digest = ""
        state.trigger.set()

    def trigger_expert(self, key: ObjectKey) -> None:
        state = self.experts.get(key)
        if state is not None:
            state.trigger.set()

    def trigger_policy(self, key: ObjectKey) -> None:
        event = self.policy_triggers.get(key)
        if event is not None:
            event.set()

    def trigger_policies_in(self, namespace: str) -> None:
        for (ns, _), event in self.policy_triggers.items():
            if ns == namespace:
                event.set()

    def trigger_all(self) -> None:
        """Reconcile every object now (after an API outage: resume at once, not at the next
        resync). Forces a fresh apply too, since children may have changed meanwhile."""
        for state in self.experts.values():
            state.applied_digest = ""
            state.trigger.set()
        for event in self.policy_triggers.values():
            event.set()


@dataclass(frozen=True)
class SharedMetrics:
    """The process's metrics: they outlive a leadership term, so counters never restart."""

    registry: CollectorRegistry
    operator: OperatorMetrics
    sources: SourceMetrics

    @classmethod
    def create(cls) -> SharedMetrics:
        registry = CollectorRegistry()
        return cls(registry, OperatorMetrics(registry), SourceMetrics(registry))


def new_context(
    config: OperatorConfig,
    kube: Kube,
    metrics: SharedMetrics | None = None,
    outage: ApiOutage | None = None,
) -> OperatorContext:
    shared = metrics if metrics is not None else SharedMetrics.create()
    return OperatorContext(
        config=config,
        kube=kube,
        registry=shared.registry,
        metrics=shared.operator,
        source_metrics=shared.sources,
        outage=outage if outage is not None else ApiOutage(),
    )
