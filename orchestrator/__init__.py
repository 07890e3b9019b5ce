"""Multi-LLM orchestrator: decompose a project, route tasks across vendors, under a hard budget."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

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
    build_default_profiles,
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
from .telemetry import TelemetryCollector

# The name pip knows it by ("orchestrator" on PyPI is another project).
DISTRIBUTION = "orchestrator-llm"

try:
    __version__ = _version(DISTRIBUTION)
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

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
