"""Reading and writing the election Lease (coordination.k8s.io/v1) through the operator's client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modelflock.controller.kube import Kube, Manifest
from modelflock.leader.decision import LeaseRecord

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"


def format_micro_time(when: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339, UTC, microseconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def record_from_lease(lease: Manifest) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
    )


def lease_manifest(name: str, namespace: str, record: LeaseRecord) -> Manifest:
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        # The API field is whole seconds; never round a sub-second duration down to zero.
        "leaseDurationSeconds": max(1, round(record.lease_duration_seconds)),
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time is not None:
        spec["acquireTime"] = format_micro_time(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = format_micro_time(record.renew_time)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "modelflock"},
        },
        "spec": spec,
    }


class LeaseStore:
    """One named Lease: read it, write a record with optimistic concurrency."""

    def __init__(self, kube: Kube, name: str, namespace: str) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    async def read(self) -> LeaseRecord | None:
        lease = await self.kube.get(API_VERSION, KIND, self.name, self.namespace)
        return None if lease is None else record_from_lease(lease)

    async def write(self, record: LeaseRecord) -> LeaseRecord:
        """Create when `record.resource_version` is empty, else replace that version; raises
        kube.Conflict when another writer got there first."""
        written = await self.kube.create_or_replace(
            lease_manifest(self.name, self.namespace, record), record.resource_version
        )
        return record_from_lease(written)
