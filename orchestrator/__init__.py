"""Multi-LLM orchestrator: decompose a project, route tasks across vendors, under a hard budget.

The public names below are imported from their modules on first use (PEP 562): ``import
orchestrator`` loads none of them, so a program that needs a few names, or the command line
printing its help, does not pay for the engine, the stores and their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from orchestrator.errors import (
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
    from orchestrator.jobs.agents import AgentPool, JobSpec
    from orchestrator.llm.cache import DiskCache
    from orchestrator.llm.catalog import Catalog, Model, Price, ProviderSpec
    from orchestrator.llm.client import Completion, UnifiedClient
    from orchestrator.llm.providers.base import Message
    from orchestrator.llm.retry import RetryPolicy
    from orchestrator.money.budget import Budget, BudgetExceeded
    from orchestrator.money.caps import BudgetCapExceeded, BudgetHierarchy
    from orchestrator.money.forecast import CostForecaster, CostPredictor, ForecastReport, RiskLevel
    from orchestrator.observe.audit import AuditCheck, AuditLog, AuditRecord
    from orchestrator.observe.events import Event, EventKind
    from orchestrator.observe.hooks import EventType, HookRegistry
    from orchestrator.observe.metrics import (
        ConsoleExporter,
        JSONExporter,
        MetricsExporter,
        MetricsSnapshot,
        PrometheusExporter,
    )
    from orchestrator.observe.telemetry import TelemetryCollector
    from orchestrator.routing.backends import (
        AdaptiveBackend,
        GreedyBackend,
        OptimizationBackend,
        ParetoBackend,
        RoutingTableBackend,
        WeightedSumBackend,
    )
    from orchestrator.routing.policy import (
        EnforcementMode,
        Policy,
        PolicyEngine,
        PolicyHierarchy,
        PolicySet,
    )
    from orchestrator.routing.policy_file import PolicyAnalyzer, PolicyError, load_policy_file
    from orchestrator.routing.profiles import ModelProfile, build_default_profiles
    from orchestrator.routing.router import Decision, Router
    from orchestrator.routing.screen import ConstraintPlanner
    from orchestrator.run.channel import TaskChannel
    from orchestrator.run.config import RunConfig
    from orchestrator.run.orchestrator import Orchestrator
    from orchestrator.run.tasks import (
        ProjectState,
        ProjectStatus,
        Task,
        TaskResult,
        TaskStatus,
        TaskType,
    )
    from orchestrator.store.state import StateManager, UnknownProjectError

    __version__: str

# The name pip knows it by ("orchestrator" on PyPI is another project).
DISTRIBUTION = "orchestrator-llm"

# Each module and the public names it gives the package (the imports above, once more).
_HOMES: dict[str, tuple[str, ...]] = {
    "jobs.agents": ("AgentPool", "JobSpec"),
    "run.channel": ("TaskChannel",),
    "observe.audit": ("AuditCheck", "AuditLog", "AuditRecord"),
    "money.budget": ("Budget", "BudgetExceeded"),
    "llm.cache": ("DiskCache",),
    "llm.catalog": ("Catalog", "Model", "Price", "ProviderSpec"),
    "llm.client": ("Completion", "UnifiedClient"),
    "money.caps": ("BudgetCapExceeded", "BudgetHierarchy"),
    "money.forecast": ("CostForecaster", "CostPredictor", "ForecastReport", "RiskLevel"),
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
    "observe.events": ("Event", "EventKind"),
    "run.orchestrator": ("Orchestrator",),
    "observe.hooks": ("EventType", "HookRegistry"),
    "observe.metrics": (
        "ConsoleExporter",
        "JSONExporter",
        "MetricsExporter",
        "MetricsSnapshot",
        "PrometheusExporter",
    ),
    "run.tasks": (
        "ProjectState",
        "ProjectStatus",
        "Task",
        "TaskResult",
        "TaskStatus",
        "TaskType",
    ),
    "routing.backends": (
        "AdaptiveBackend",
        "GreedyBackend",
        "OptimizationBackend",
        "ParetoBackend",
        "RoutingTableBackend",
        "WeightedSumBackend",
    ),
    "routing.screen": ("ConstraintPlanner",),
    "routing.policy": (
        "EnforcementMode",
        "Policy",
        "PolicyEngine",
        "PolicyHierarchy",
        "PolicySet",
    ),
    "routing.policy_file": ("PolicyAnalyzer", "PolicyError", "load_policy_file"),
    "llm.providers.base": ("Message",),
    "llm.retry": ("RetryPolicy",),
    "routing.router": ("Decision", "Router"),
    "run.config": ("RunConfig",),
    "store.state": ("StateManager", "UnknownProjectError"),
    "observe.telemetry": ("TelemetryCollector",),
    "routing.profiles": ("ModelProfile", "build_default_profiles"),
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
    "AdaptiveBackend",
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
