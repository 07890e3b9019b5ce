"""Multi-LLM orchestrator: decompose a project, route tasks across vendors, under a hard budget.

The public names below are imported from their modules on first use (PEP 562): ``import
orchestrator`` loads none of them, so a program that needs a few names, or the command line
printing its help, does not pay for the engine, the stores and their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from .agents import AgentPool, TaskChannel
    from .audit import AuditCheck, AuditLog, AuditRecord
    from .budget import Budget, BudgetExceeded
    from .cache import DiskCache
    from .catalog import Catalog, Model, Price, ProviderSpec
    from .client import Completion, UnifiedClient
    from .cost import (
        BudgetCapExceeded,
        BudgetHierarchy,
        CostForecaster,
        CostPredictor,
        ForecastReport,
        RiskLevel,
    )
    from .errors import (
        CatalogError,
        ConfigError,
        ContextWindowError,
        ModelUnavailableError,
        NoProvidersError,
        OrchestratorError,
        ProviderError,
        StructuredOutputError,
        TruncatedAnswerError,
        UnknownModelError,
    )
    from .events import Event, EventKind
    from .facade import Orchestrator
    from .hooks import EventType, HookRegistry
    from .metrics import (
        ConsoleExporter,
        JSONExporter,
        MetricsExporter,
        MetricsSnapshot,
        PrometheusExporter,
    )
    from .models import (
        ModelProfile,
        ProjectState,
        ProjectStatus,
        Task,
        TaskResult,
        TaskStatus,
        TaskType,
    )
    from .optimization import (
        GreedyBackend,
        OptimizationBackend,
        ParetoBackend,
        RoutingTableBackend,
        WeightedSumBackend,
    )
    from .planner import ConstraintPlanner
    from .policy import (
        EnforcementMode,
        JobSpec,
        Policy,
        PolicyEngine,
        PolicyHierarchy,
        PolicySet,
    )
    from .policy_dsl import PolicyAnalyzer, PolicyError, load_policy_file
    from .providers.base import Message
    from .retry import RetryPolicy
    from .routing import Decision, Router
    from .run_config import RunConfig
    from .state import StateManager, UnknownProjectError
    from .telemetry import TelemetryCollector, build_default_profiles

    __version__: str

# The name pip knows it by ("orchestrator" on PyPI is another project).
DISTRIBUTION = "orchestrator-llm"

# Each module and the public names it gives the package (the imports above, once more).
_HOMES: dict[str, tuple[str, ...]] = {
    "agents": ("AgentPool", "TaskChannel"),
    "audit": ("AuditCheck", "AuditLog", "AuditRecord"),
    "budget": ("Budget", "BudgetExceeded"),
    "cache": ("DiskCache",),
    "catalog": ("Catalog", "Model", "Price", "ProviderSpec"),
    "client": ("Completion", "UnifiedClient"),
    "cost": (
        "BudgetCapExceeded",
        "BudgetHierarchy",
        "CostForecaster",
        "CostPredictor",
        "ForecastReport",
        "RiskLevel",
    ),
    "errors": (
        "CatalogError",
        "ConfigError",
        "ContextWindowError",
        "ModelUnavailableError",
        "NoProvidersError",
        "OrchestratorError",
        "ProviderError",
        "StructuredOutputError",
        "TruncatedAnswerError",
        "UnknownModelError",
    ),
    "events": ("Event", "EventKind"),
    "facade": ("Orchestrator",),
    "hooks": ("EventType", "HookRegistry"),
    "metrics": (
        "ConsoleExporter",
        "JSONExporter",
        "MetricsExporter",
        "MetricsSnapshot",
        "PrometheusExporter",
    ),
    "models": (
        "ModelProfile",
        "ProjectState",
        "ProjectStatus",
        "Task",
        "TaskResult",
        "TaskStatus",
        "TaskType",
    ),
    "optimization": (
        "GreedyBackend",
        "OptimizationBackend",
        "ParetoBackend",
        "RoutingTableBackend",
        "WeightedSumBackend",
    ),
    "planner": ("ConstraintPlanner",),
    "policy": (
        "EnforcementMode",
        "JobSpec",
        "Policy",
        "PolicyEngine",
        "PolicyHierarchy",
        "PolicySet",
    ),
    "policy_dsl": ("PolicyAnalyzer", "PolicyError", "load_policy_file"),
    "providers.base": ("Message",),
    "retry": ("RetryPolicy",),
    "routing": ("Decision", "Router"),
    "run_config": ("RunConfig",),
    "state": ("StateManager", "UnknownProjectError"),
    "telemetry": ("TelemetryCollector", "build_default_profiles"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name, ``__version__`` or a submodule, imported the first time it is asked for."""
    if name == "__version__":
        value: Any = _version()
    elif name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif not name.startswith("_"):
        # ``orchestrator.cost`` after a bare ``import orchestrator``, as when this module
        # imported them all.
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})


def _version() -> str:
    """The installed distribution's version (``importlib.metadata`` is slow to import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__all__ = [
    "AgentPool",
    "AuditCheck",
    "AuditLog",
    "AuditRecord",
    "Budget",
    "BudgetCapExceeded",
    "BudgetExceeded",
    "BudgetHierarchy",
    "Catalog",
    "CatalogError",
    "Completion",
    "ConfigError",
    "ConsoleExporter",
    "ConstraintPlanner",
    "ContextWindowError",
    "CostForecaster",
    "CostPredictor",
    "Decision",
    "DiskCache",
    "EnforcementMode",
    "Event",
    "EventKind",
    "EventType",
    "ForecastReport",
    "GreedyBackend",
    "HookRegistry",
    "JSONExporter",
    "JobSpec",
    "Message",
    "MetricsExporter",
    "MetricsSnapshot",
    "Model",
    "ModelProfile",
    "ModelUnavailableError",
    "NoProvidersError",
    "OptimizationBackend",
    "Orchestrator",
    "OrchestratorError",
    "ParetoBackend",
    "Policy",
    "PolicyAnalyzer",
    "PolicyEngine",
    "PolicyError",
    "PolicyHierarchy",
    "PolicySet",
    "Price",
    "ProjectState",
    "ProjectStatus",
    "PrometheusExporter",
    "ProviderError",
    "ProviderSpec",
    "RetryPolicy",
    "RiskLevel",
    "Router",
    "RoutingTableBackend",
    "RunConfig",
    "StateManager",
    "StructuredOutputError",
    "Task",
    "TaskChannel",
    "TaskResult",
    "TaskStatus",
    "TaskType",
    "TelemetryCollector",
    "TruncatedAnswerError",
    "UnifiedClient",
    "UnknownModelError",
    "UnknownProjectError",
    "WeightedSumBackend",
    "build_default_profiles",
    "load_policy_file",
]
