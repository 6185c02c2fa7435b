"""Pieces shared by both kinds: the base model, names, conditions, secret references."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelflock.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A decimal amount as a string: Kubernetes specs carry no floats.
DECIMAL_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$"


def _quoted_decimal(value: object) -> object:
    """YAML reads 0.5 as a float and the API server refuses it for a string field: say how
    to write it instead of pydantic's bare type error."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f'write decimals as quoted strings, e.g. "{value}": Kubernetes specs carry no'
            f" floats (got the number {value})"
        )
    return value


# A decimal amount as a quoted string (pattern DECIMAL_PATTERN on the field).
DecimalString = Annotated[str, BeforeValidator(_quoted_decimal)]


class ApiModel(BaseModel):
    """Base of every API model: camelCase in YAML, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def object_document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a watched object the API models read: identity, spec, status."""
    metadata = body.get("metadata") or {}
    return {
        "metadata": {
            k: v for k, v in metadata.items() if k in {"name", "namespace", "uid", "generation"}
        },
        "spec": body.get("spec") or {},
        "status": body.get("status") or None,
    }


class SecretKeyRef(ApiModel):
    """A key inside a Secret in the same namespace as the object that names it."""

    name: str = Field(
        description="Name of the Secret (same namespace).",
        min_length=1,
        max_length=253,
    )
    key: str = Field(
        description="Key inside the Secret whose value is used.",
        min_length=1,
        max_length=253,
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the object's observed state, following the Kubernetes API conventions."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. Ready, Progressing, Degraded.",
        max_length=316,
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One-word CamelCase reason for the condition's last transition.",
        max_length=1024,
    )
    message: str = Field(
        default="",
        description="Human-readable details about the transition.",
        max_length=32768,
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed status (not when it was last checked).",
    )
    observed_generation: int = Field(
        default=0,
        ge=0,
        description="The metadata.generation the condition was computed from.",
    )


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
