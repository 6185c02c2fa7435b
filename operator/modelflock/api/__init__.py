"""The ModelFlock API (`modelflock.io/v1alpha1`): pydantic models are the source of truth."""

from modelflock.api.common import GROUP, VERSION, Condition
from modelflock.api.modelexpert import ModelExpert, ModelExpertSpec, ModelExpertStatus
from modelflock.api.routingpolicy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus

__all__ = [
    "GROUP",
    "VERSION",
    "Condition",
    "ModelExpert",
    "ModelExpertSpec",
    "ModelExpertStatus",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
]
