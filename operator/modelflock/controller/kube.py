"""The operator's Kubernetes client: server-side apply and reads through the official client's
dynamic client, run in worker threads so the event loop never blocks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

FIELD_MANAGER = "modelflock"
AUTOSCALER_FIELD_MANAGER = "modelflock-autoscaler"
Manifest = dict[str, Any]
DEFAULT_REQUEST_TIMEOUT = 30.0


class NotLeader(Exception):
    """A write was refused locally: this operator does not hold the leader Lease (any more)."""


class Conflict(Exception):
    """The object changed since it was read (HTTP 409): read it again and decide again."""


def _always() -> bool:
    return True


# A UTF-16 surrogate pair as json.dumps escapes a character beyond the BMP, preceded by an even
# number of backslashes (an odd number would make the first backslash a literal one).
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def apply_body(manifest: Manifest) -> bytes:
    """A manifest as the body of a server-side apply, which the API server parses as YAML.

    JSON is YAML, except that YAML cannot read the surrogate-pair escapes JSON uses for
    characters beyond the BMP (an emoji in an intent's keywords made the apply fail with
    "found invalid Unicode character escape code"): they become YAML's \\U escapes."""

    def join(match: re.Match[str]) -> str:
        high, low = int(match.group(2), 16), int(match.group(3), 16)
        code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        return f"{match.group(1)}\\U{code:08X}"

    return _SURROGATE_PAIR.sub(join, json.dumps(manifest)).encode()


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
    """Async facade over the dynamic client; every call runs in a thread and is bounded by
    `timeout` seconds. Writes ask `may_write` first (the leader-election fence): an operator
    that lost its Lease stops writing at once, even while its controllers wind down."""

    dynamic: DynamicClient
    may_write: Callable[[], bool] = field(default=_always)
    timeout: float = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def connect(
        cls, may_write: Callable[[], bool] = _always, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> Kube:
        return cls(dynamic=DynamicClient(load_api_client()), may_write=may_write, timeout=timeout)

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def _check_writable(self, what: str) -> None:
        if not self.may_write():
            raise NotLeader(f"not the leader: {what} refused")

    async def apply(self, manifest: Manifest, field_manager: str = FIELD_MANAGER) -> Manifest:
        """Server-side apply with our field manager, taking ownership of conflicting fields."""

        self._check_writable(f"apply {manifest.get('kind')}")

        def call() -> Manifest:
            resource = self._resource(manifest["apiVersion"], manifest["kind"])
            metadata = manifest["metadata"]
            path = resource.path(name=metadata["name"], namespace=metadata.get("namespace"))
            # The dynamic client's server_side_apply would json.dumps the body itself.
            result = self.dynamic.request(
                "patch",
                path,
                body=apply_body(manifest),
                content_type="application/apply-patch+yaml",
                field_manager=field_manager,
                force_conflicts=True,
                _request_timeout=self.timeout,
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
                    self._resource(api_version, kind)
                    .get(name=name, namespace=namespace, _request_timeout=self.timeout)
                    .to_dict()
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
                namespace=namespace, label_selector=label_selector, _request_timeout=self.timeout
            )
            items: list[Manifest] = result.to_dict().get("items", [])
            return items

        return await asyncio.to_thread(call)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        self._check_writable(f"delete {kind}")

        def call() -> bool:
            try:
                self._resource(api_version, kind).delete(
                    name=name, namespace=namespace, _request_timeout=self.timeout
                )
                return True
            except NotFoundError:
                return False

        return await asyncio.to_thread(call)

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str, status: Manifest
    ) -> None:
        """Merge-patch the status subresource (conditions are replaced as a whole list)."""
        self._check_writable(f"status of {kind}")

        def call() -> None:
            resource = self._resource(api_version, kind).subresources["status"]
            resource.patch(
                body={"status": status},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
                _request_timeout=self.timeout,
            )

        await asyncio.to_thread(call)

    async def scale(
        self, api_version: str, kind: str, name: str, namespace: str, replicas: int
    ) -> None:
        """Write replicas through the scale subresource (the one writer while autoscaling)."""
        self._check_writable(f"scale of {kind}")

        def call() -> None:
            resource = self._resource(api_version, kind).subresources["scale"]
            resource.patch(
                body={"spec": {"replicas": replicas}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=AUTOSCALER_FIELD_MANAGER,
                _request_timeout=self.timeout,
            )

        await asyncio.to_thread(call)

    async def create_or_replace(self, manifest: Manifest, resource_version: str) -> Manifest:
        """Create (empty `resource_version`) or replace with optimistic concurrency; raises
        Conflict when the object exists (create) or changed since it was read (replace).
        Not fenced by `may_write`: leader election itself writes with it."""

        def call() -> Manifest:
            resource = self._resource(manifest["apiVersion"], manifest["kind"])
            namespace = manifest["metadata"].get("namespace")
            try:
                if resource_version:
                    body = {
                        **manifest,
                        "metadata": {**manifest["metadata"], "resourceVersion": resource_version},
                    }
                    result = resource.replace(
                        body=body, namespace=namespace, _request_timeout=self.timeout
                    )
                else:
                    result = resource.create(
                        body=manifest, namespace=namespace, _request_timeout=self.timeout
                    )
            except ConflictError as error:
                raise Conflict(api_error_message(error)) from None
            written: Manifest = result.to_dict()
            return written

        return await asyncio.to_thread(call)

    async def patch_labels(
        self, api_version: str, kind: str, name: str, namespace: str, labels: dict[str, str | None]
    ) -> None:
        """Merge-patch metadata.labels (None removes a label). Not fenced by `may_write`."""

        def call() -> None:
            self._resource(api_version, kind).patch(
                body={"metadata": {"labels": labels}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
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


# Server-side apply's 500 messages for objects that cannot be typed or converted: final.
SCHEMA_REFUSALS_AS_500 = ("failed to create typed patch object", "failed to convert new object")


def refusal_message(error: Exception) -> str | None:
    """The API server's message when it refused a request as invalid (HTTP 400 or 422): the
    object we sent is wrong, so retrying the same request cannot help. None otherwise."""
    status = getattr(error, "status", None)
    if status in (400, 422):
        return api_error_message(error)
    if status == 500:
        # Server-side apply answers 500 when the object does not fit the schema (e.g. an unknown
        # field in an affinity passed through from a ModelExpert, or a malformed quantity): as
        # final as a 422.
        message = api_error_message(error)
        if any(marker in message for marker in SCHEMA_REFUSALS_AS_500):
            return message
    return None
