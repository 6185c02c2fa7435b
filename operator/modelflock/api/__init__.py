"""The ModelFlock API (`modelflock.io/v1alpha1`): pydantic models are the source of truth."""

from modelflock.api.common import GROUP, VERSION, Condition
from modelflock.api.knowledgebase import KnowledgeBase, KnowledgeBaseSpec, KnowledgeBaseStatus
from modelflock.api.modelexpert import ModelExpert, ModelExpertSpec, ModelExpertStatus
from modelflock.api.routingpolicy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus

__all__ = [
    "GROUP",
    "VERSION",
    "Condition",
    "KnowledgeBase",
    "KnowledgeBaseSpec",
    "KnowledgeBaseStatus",
    "ModelExpert",
    "ModelExpertSpec",
    "ModelExpertStatus",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
]
