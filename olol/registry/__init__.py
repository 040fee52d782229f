"""Cluster-wide model management (roadmap 3.2): ``ModelRegistry`` and its pieces."""

from olol.registry.core import (
    LastCopyError,
    ModelNotFoundError,
    ModelRegistry,
    PinnedModelError,
    RegistryBusyError,
)
from olol.registry.plan import PlanModel, PlanNode, PlanPolicy, make_plan
from olol.registry.pulls import PullOperation

__all__ = [
    "LastCopyError", "ModelNotFoundError", "ModelRegistry", "PinnedModelError",
    "PlanModel", "PlanNode", "PlanPolicy", "PullOperation", "RegistryBusyError", "make_plan",
]
