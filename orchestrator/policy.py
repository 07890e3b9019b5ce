"""``orchestrator.policy``, the design document's path to :mod:`orchestrator.routing.policy`."""

from orchestrator.routing.policy import (
    COMPLIANCE_RULES,
    EnforcementMode,
    JobSpec,
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
