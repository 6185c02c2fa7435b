"""ModelExpert status from what the cluster shows: pure, table-tested.

Inputs are plain dicts as the API server returns them (Deployment, Pods) plus the checks the
operator made; output is the new status and the condition transitions worth an Event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelflock.api.common import Condition, ConditionStatus
from modelflock.api.conditions import find_condition, set_condition
from modelflock.api.modelexpert import ModelExpertSpec, ModelExpertStatus
from modelflock.render.checks import Problem

# Container waiting reasons that mean the pod will not become ready by itself.
# Condition reasons of an external expert whose API-key Secret is missing or a placeholder.
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_PLACEHOLDER = "SecretPlaceholder"
FAILING_WAITING_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
)


@dataclass(frozen=True)
class Observed:
    """What the operator saw for one expert."""

    generation: int
    spec: ModelExpertSpec
    problems: Sequence[Problem] = ()
    deployment: dict[str, Any] | None = None
    pods: Sequence[dict[str, Any]] = ()
    desired_replicas: int = 0
    endpoint: str | None = None
    selector: str | None = None
    secret_problem: str | None = None  # external engine: what is wrong, never the value
    secret_reason: str = SECRET_NOT_FOUND  # the condition reason for secret_problem


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: becomes a Kubernetes Event."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    warning: bool


@dataclass(frozen=True)
class StatusResult:
    status: ModelExpertStatus
    transitions: list[Transition] = field(default_factory=list)


@dataclass(frozen=True)
class _Cond:
    status: ConditionStatus
    reason: str
    message: str


def pod_failure(pods: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the first pod that cannot become ready, if any."""
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        status = pod.get("status", {})
        for condition in status.get("conditions", []) or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                name = pod.get("metadata", {}).get("name", "?")
                return "Unschedulable", f"pod {name}: {condition.get('message', '')}".strip()
        for container in status.get("containerStatuses", []) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILING_WAITING_REASONS:
                name = pod.get("metadata", {}).get("name", "?")
                detail = waiting.get("message") or ""
                return waiting["reason"], f"pod {name} container {container.get('name')}: {detail}"
    return None


def _engine_conditions(observed: Observed) -> tuple[_Cond, _Cond, _Cond, int, int]:
    """Ready, Progressing, Degraded, replicas, readyReplicas for vllm/tgi."""
    blocking = [p for p in observed.problems if p.blocking]
    warnings = "; ".join(p.message for p in observed.problems if not p.blocking)
    if blocking:
        first = blocking[0]
        message = "; ".join(p.message for p in blocking)
        return (
            _Cond("False", first.reason, message),
            _Cond("False", first.reason, "nothing is scheduled until the spec is fixed"),
            _Cond("True", first.reason, message),
            0,
            0,
        )
    deployment = observed.deployment or {}
    dstatus = deployment.get("status", {}) or {}
    desired = observed.desired_replicas
    replicas = int(dstatus.get("replicas", 0) or 0)
    ready = int(dstatus.get("readyReplicas", 0) or 0)
    updated = int(dstatus.get("updatedReplicas", 0) or 0)
    rolled_out = (
        bool(deployment)
        and int(dstatus.get("observedGeneration", 0) or 0)
        >= int(deployment.get("metadata", {}).get("generation", 0) or 0)
        and updated >= desired
        and replicas == desired
    )

    failure = pod_failure(observed.pods)
    if failure is not None:
        reason, message = failure
        if warnings:
            message = f"{message} ({warnings})"
        degraded = _Cond("True", reason, message)
    else:
        degraded = _Cond("False", "AsExpected", warnings)

    if not deployment:
        progressing = _Cond("True", "Creating", "creating the engine Deployment")
    elif not rolled_out:
        reason = "Scaling" if updated >= min(replicas, desired) else "RollingOut"
        progressing = _Cond(
            "True", reason, f"{updated} updated, {replicas} existing, {desired} desired replicas"
        )
    elif ready < desired:
        progressing = _Cond("True", "WaitingForReplicas", f"{ready}/{desired} replicas ready")
    else:
        progressing = _Cond("False", "Complete", f"{ready}/{desired} replicas ready")

    if desired == 0 and ready == 0:
        ready_cond = _Cond("True", "ScaledToZero", "no replicas; routers wake the expert on demand")
    elif ready >= desired and rolled_out:
        ready_cond = _Cond("True", "AllReplicasReady", f"{ready}/{desired} replicas ready")
    elif ready > 0:
        # Serving while it scales or rolls out (or while a new pod fails: Degraded says so).
        # Ready means "can answer now": routers send traffic to ready replicas, so a policy
        # must not report its routes unserved during every scale-up.
        ready_cond = _Cond(
            "True", "Serving", f"{ready}/{desired} replicas ready; {progressing.message}"
        )
    else:
        why = degraded.reason if degraded.status == "True" else "ReplicasNotReady"
        ready_cond = _Cond("False", why, f"{ready}/{desired} replicas ready")
    return ready_cond, progressing, degraded, replicas, ready


def _external_conditions(observed: Observed) -> tuple[_Cond, _Cond, _Cond]:
    if observed.secret_problem:
        reason = observed.secret_reason
        return (
            _Cond("False", reason, observed.secret_problem),
            _Cond("False", reason, ""),
            _Cond("True", reason, observed.secret_problem),
        )
    return (
        _Cond("True", "ExternalConfigured", f"requests go to {observed.endpoint}"),
        _Cond("False", "Complete", ""),
        _Cond("False", "AsExpected", ""),
    )


def _worth_an_event(kind: str, before: Condition | None, after: _Cond) -> bool:
    """Ready flips and Degraded reasons are news; first sightings of good news are not."""
    if kind == "Progressing":
        return False
    if before is None:
        return kind == "Degraded" and after.status == "True"
    return before.status != after.status or (
        after.status == "True" and before.reason != after.reason
    )


def compute_status(
    observed: Observed, previous: ModelExpertStatus | None, now: datetime
) -> StatusResult:
    """The new status, keeping autoscaler fields and transition times from `previous`."""
    previous = previous or ModelExpertStatus()
    if observed.spec.engine == "external":
        ready, progressing, degraded = _external_conditions(observed)
        replicas = ready_replicas = 0
    else:
        ready, progressing, degraded, replicas, ready_replicas = _engine_conditions(observed)

    conditions = list(previous.conditions)
    transitions: list[Transition] = []
    for kind, cond in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded)):
        before = find_condition(conditions, kind)
        conditions = set_condition(
            conditions,
            type=kind,
            status=cond.status,
            reason=cond.reason,
            message=cond.message,
            observed_generation=observed.generation,
            now=now,
        )
        if _worth_an_event(kind, before, cond):
            warning = cond.status == ("True" if kind == "Degraded" else "False")
            transitions.append(Transition(kind, cond.status, cond.reason, cond.message, warning))

    desired = 0 if observed.spec.engine == "external" else observed.desired_replicas
    status = previous.model_copy(
        update={
            "observed_generation": observed.generation,
            "conditions": conditions,
            "replicas": replicas,
            "ready_replicas": ready_replicas,
            "desired_replicas": desired,
            "replica_summary": None
            if observed.spec.engine == "external"
            else f"{ready_replicas}/{desired}",
            "endpoint": observed.endpoint,
            "selector": observed.selector,
        }
    )
    return StatusResult(status=status, transitions=transitions)
