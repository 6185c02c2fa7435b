"""ModelExpert status from Deployment and Pods: the conditions tell the truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelflock.api.modelexpert import ModelExpertSpec, ModelExpertStatus
from modelflock.render.checks import Problem
from modelflock.render.expert_status import Observed, compute_status, pod_failure

NOW = datetime(2026, 1, 1, tzinfo=UTC)
VLLM = ModelExpertSpec.model_validate({"engine": "vllm", "model": {"name": "m"}, "nodePool": "l4"})
EXTERNAL = ModelExpertSpec.model_validate(
    {"engine": "external", "external": {"baseURL": "https://x.example/v1", "model": "big"}}
)


def _deployment(
    replicas: int, ready: int, updated: int | None = None, generation: int = 1, observed: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


UNSCHEDULABLE_POD = {
    "metadata": {"name": "p1"},
    "status": {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/10 nodes are available: 8 Insufficient nvidia.com/gpu.",
            }
        ]
    },
}
CRASHING_POD = {
    "metadata": {"name": "p2"},
    "status": {
        "containerStatuses": [
            {
                "name": "engine",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}},
            }
        ]
    },
}


def _conds(status: ModelExpertStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (
            Observed(1, VLLM, deployment=_deployment(2, 2), desired_replicas=2),
            {
                "Ready": ("True", "AllReplicasReady"),
                "Progressing": ("False", "Complete"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            Observed(1, VLLM, deployment=_deployment(2, 1), desired_replicas=2),
            {
                "Ready": ("True", "Serving"),
                "Progressing": ("True", "WaitingForReplicas"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            Observed(1, VLLM, deployment=None, desired_replicas=1),
            {
                "Ready": ("False", "ReplicasNotReady"),
                "Progressing": ("True", "Creating"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            Observed(
                2, VLLM, deployment=_deployment(2, 2, generation=2, observed=1), desired_replicas=2
            ),
            {"Ready": ("True", "Serving"), "Progressing": ("True", "Scaling")},
        ),
        (  # scaling down: more ready than desired is not "not ready"
            Observed(1, VLLM, deployment=_deployment(3, 3), desired_replicas=1),
            {"Ready": ("True", "Serving"), "Progressing": ("True", "Scaling")},
        ),
        (  # woken from zero: nothing serves yet
            Observed(1, VLLM, deployment=_deployment(1, 0), desired_replicas=1),
            {"Ready": ("False", "ReplicasNotReady"), "Progressing": ("True", "WaitingForReplicas")},
        ),
        (  # one replica serves while a new one cannot be scheduled
            Observed(
                1, VLLM, deployment=_deployment(2, 1), pods=[UNSCHEDULABLE_POD], desired_replicas=2
            ),
            {"Ready": ("True", "Serving"), "Degraded": ("True", "Unschedulable")},
        ),
        (  # scaled to zero while the last pod terminates
            Observed(1, VLLM, deployment=_deployment(1, 0), desired_replicas=0),
            {"Ready": ("True", "ScaledToZero")},
        ),
        (
            Observed(1, VLLM, deployment=_deployment(3, 2, updated=1), desired_replicas=2),
            {"Progressing": ("True", "RollingOut")},
        ),
        (
            Observed(
                1, VLLM, deployment=_deployment(1, 0), pods=[UNSCHEDULABLE_POD], desired_replicas=1
            ),
            {"Ready": ("False", "Unschedulable"), "Degraded": ("True", "Unschedulable")},
        ),
        (
            Observed(
                1, VLLM, deployment=_deployment(1, 0), pods=[CRASHING_POD], desired_replicas=1
            ),
            {"Ready": ("False", "CrashLoopBackOff"), "Degraded": ("True", "CrashLoopBackOff")},
        ),
        (
            Observed(1, VLLM, deployment=_deployment(0, 0), desired_replicas=0),
            {"Ready": ("True", "ScaledToZero"), "Progressing": ("False", "Complete")},
        ),
        (
            Observed(1, VLLM, problems=[Problem("InsufficientGPUMemory", "needs 156 GiB", True)]),
            {
                "Ready": ("False", "InsufficientGPUMemory"),
                "Degraded": ("True", "InsufficientGPUMemory"),
                "Progressing": ("False", "InsufficientGPUMemory"),
            },
        ),
        (
            Observed(1, VLLM, problems=[Problem("UnknownNodePool", "nodePool 'tpu'", True)]),
            {"Ready": ("False", "UnknownNodePool")},
        ),
        (
            Observed(1, EXTERNAL, endpoint="https://x.example/v1"),
            {"Ready": ("True", "ExternalConfigured"), "Degraded": ("False", "AsExpected")},
        ),
        (
            Observed(1, EXTERNAL, secret_problem="Secret k not found in namespace a"),
            {"Ready": ("False", "SecretNotFound"), "Degraded": ("True", "SecretNotFound")},
        ),
        (
            Observed(
                1,
                EXTERNAL,
                secret_problem="Secret k key api-key is a placeholder",
                secret_reason="SecretPlaceholder",
            ),
            {"Ready": ("False", "SecretPlaceholder"), "Degraded": ("True", "SecretPlaceholder")},
        ),
    ],
)
def test_conditions(observed: Observed, expected: dict[str, tuple[str, str]]) -> None:
    conds = _conds(compute_status(observed, None, NOW).status)
    for kind, value in expected.items():
        assert conds[kind] == value, kind


def test_unschedulable_message_comes_from_the_scheduler() -> None:
    result = compute_status(
        Observed(
            1,
            VLLM,
            deployment=_deployment(1, 0),
            pods=[UNSCHEDULABLE_POD],
            desired_replicas=1,
            problems=[Problem("GPUsExceedNode", "asks 4 GPUs, nodes have 1", False)],
        ),
        None,
        NOW,
    )
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert "Insufficient nvidia.com/gpu" in degraded.message
    assert "asks 4 GPUs" in degraded.message
    assert any(t.type == "Degraded" and t.warning for t in result.transitions)


def test_counts_summary_and_generation() -> None:
    status = compute_status(
        Observed(
            7,
            VLLM,
            deployment=_deployment(3, 2),
            desired_replicas=3,
            endpoint="http://e",
            selector="a=b",
        ),
        None,
        NOW,
    ).status
    assert (status.replicas, status.ready_replicas, status.desired_replicas) == (3, 2, 3)
    assert status.replica_summary == "2/3"
    assert status.observed_generation == 7
    assert all(c.observed_generation == 7 for c in status.conditions)
    assert status.endpoint == "http://e" and status.selector == "a=b"


def test_unchanged_status_keeps_transition_times_and_posts_no_event() -> None:
    observed = Observed(1, VLLM, deployment=_deployment(1, 1), desired_replicas=1)
    first = compute_status(observed, None, NOW)
    assert first.transitions == []  # first sight of a healthy expert is not news
    second = compute_status(observed, first.status, NOW + timedelta(minutes=5))
    assert second.transitions == []
    assert second.status == first.status


def test_flips_post_events() -> None:
    healthy = compute_status(
        Observed(1, VLLM, deployment=_deployment(1, 1), desired_replicas=1), None, NOW
    )
    broken = compute_status(
        Observed(1, VLLM, deployment=_deployment(1, 0), pods=[CRASHING_POD], desired_replicas=1),
        healthy.status,
        NOW,
    )
    assert {(t.type, t.status, t.warning) for t in broken.transitions} == {
        ("Ready", "False", True),
        ("Degraded", "True", True),
    }
    healed = compute_status(
        Observed(1, VLLM, deployment=_deployment(1, 1), desired_replicas=1), broken.status, NOW
    )
    assert {(t.type, t.status, t.warning) for t in healed.transitions} == {
        ("Ready", "True", False),
        ("Degraded", "False", False),
    }


def test_autoscaler_fields_survive() -> None:
    previous = ModelExpertStatus(queue_depth=9, last_scale_reason="QueueAboveTarget")
    status = compute_status(
        Observed(1, VLLM, deployment=_deployment(1, 1), desired_replicas=1), previous, NOW
    ).status
    assert status.queue_depth == 9 and status.last_scale_reason == "QueueAboveTarget"


def test_terminating_pods_are_ignored() -> None:
    pod = {**CRASHING_POD, "metadata": {"name": "old", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert pod_failure([pod]) is None
