"""The operator's Kubernetes client: server-side apply and reads through the official client's
dynamic client, run in worker threads so the event loop never blocks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

FIELD_MANAGER = "modelflock"
AUTOSCALER_FIELD_MANAGER = "modelflock-autoscaler"
Manifest = dict[str, Any]


def load_api_client() -> k8s_client.ApiClient:
    """In-cluster credentials when running in a pod, the kubeconfig otherwise."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    configuration = k8s_client.Configuration.get_default_copy()
    # Many experts reconcile at once on start-up; don't queue on a tiny connection pool.
    configuration.connection_pool_maxsize = 32
    return k8s_client.ApiClient(configuration)


@dataclass
class Kube:
    """Async facade over the dynamic client; every call runs in a thread."""

    dynamic: DynamicClient

    @classmethod
    def connect(cls) -> Kube:
        return cls(dynamic=DynamicClient(load_api_client()))

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    async def apply(self, manifest: Manifest, field_manager: str = FIELD_MANAGER) -> Manifest:
        """Server-side apply with our field manager, taking ownership of conflicting fields."""

        def call() -> Manifest:
            resource = self._resource(manifest["apiVersion"], manifest["kind"])
            result = self.dynamic.server_side_apply(
                resource,
                body=manifest,
                namespace=manifest["metadata"].get("namespace"),
                field_manager=field_manager,
                force_conflicts=True,
            )
            applied: Manifest = result.to_dict()
            return applied

        return await asyncio.to_thread(call)

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Manifest | None:
        def call() -> Manifest | None:
            try:
                found: Manifest = (
                    self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
                )
                return found
            except NotFoundError:
                return None

        return await asyncio.to_thread(call)

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Manifest]:
        def call() -> list[Manifest]:
            result = self._resource(api_version, kind).get(
                namespace=namespace, label_selector=label_selector
            )
            items: list[Manifest] = result.to_dict().get("items", [])
            return items

        return await asyncio.to_thread(call)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        def call() -> bool:
            try:
                self._resource(api_version, kind).delete(name=name, namespace=namespace)
                return True
            except NotFoundError:
                return False

        return await asyncio.to_thread(call)

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str, status: Manifest
    ) -> None:
        """Merge-patch the status subresource (conditions are replaced as a whole list)."""

        def call() -> None:
            resource = self._resource(api_version, kind).subresources["status"]
            resource.patch(
                body={"status": status},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
            )

        await asyncio.to_thread(call)

    async def scale(
        self, api_version: str, kind: str, name: str, namespace: str, replicas: int
    ) -> None:
        """Write replicas through the scale subresource (the one writer while autoscaling)."""

        def call() -> None:
            resource = self._resource(api_version, kind).subresources["scale"]
            resource.patch(
                body={"spec": {"replicas": replicas}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=AUTOSCALER_FIELD_MANAGER,
            )

        await asyncio.to_thread(call)


def api_error_message(error: Exception) -> str:
    """The API server's message from an ApiException/DynamicApiError, else str(error)."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes | str):
        try:
            parsed = json.loads(body)
            return str(parsed.get("message", body))
        except ValueError:
            return str(body)
    return str(error)
