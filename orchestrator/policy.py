"""``orchestrator.policy``, the design document's path to the policies
(:mod:`orchestrator.routing.policy`) and to ``JobSpec`` (:mod:`orchestrator.jobs.agents`)."""

from orchestrator.jobs.agents import JobSpec
from orchestrator.routing.policy import (
    COMPLIANCE_RULES,
    EnforcementMode,
    Policy,
    PolicyEngine,
    PolicyHierarchy,
    PolicySet,
    Violation,
    model_names,
)

__all__ = [
    "COMPLIANCE_RULES",
    "EnforcementMode",
    "JobSpec",
    "Policy",
    "PolicyEngine",
    "PolicyHierarchy",
    "PolicySet",
    "Violation",
    "model_names",
]
