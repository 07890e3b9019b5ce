"""``orchestrator.models``, the design document's path to the run's vocabulary
(:mod:`orchestrator.run.tasks`) and the model profiles (:mod:`orchestrator.routing.profiles`)."""

from orchestrator.routing.profiles import (
    LATENCY_SAMPLES,
    PROFILE_EMA_ALPHA,
    ModelProfile,
    build_default_profiles,
)
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
    ValidatorResult,
)

__all__ = [
    "LATENCY_SAMPLES",
    "PROFILE_EMA_ALPHA",
    "ModelProfile",
    "ProjectState",
    "ProjectStatus",
    "Task",
    "TaskResult",
    "TaskStatus",
    "TaskType",
    "ValidatorResult",
    "build_default_profiles",
]
