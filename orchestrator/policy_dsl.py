"""``orchestrator.policy_dsl``:
the design document's path to :mod:`orchestrator.routing.policy_file`."""

from orchestrator.routing.policy_file import (
    AnalysisReport,
    PolicyAnalyzer,
    PolicyError,
    load_policy_file,
)

__all__ = [
    "AnalysisReport",
    "PolicyAnalyzer",
    "PolicyError",
    "load_policy_file",
]
