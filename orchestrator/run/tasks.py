"""The run's vocabulary: task types, statuses, tasks, results and the project state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.code.integration import Integration
    from orchestrator.llm.catalog import Model
    from orchestrator.money.budget import Budget
    from orchestrator.run.config import RunConfig


class TaskType(StrEnum):
    CODE_GEN = "code_generation"
    CODE_REVIEW = "code_review"
    REASONING = "complex_reasoning"
    WRITING = "creative_writing"
    DATA_EXTRACT = "data_extraction"
    SUMMARIZE = "summarization"
    EVALUATE = "evaluation"

    @property
    def max_iterations(self) -> int:
        return 3 if self in (TaskType.CODE_GEN, TaskType.REASONING) else 2


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # reached the threshold and passed its validators
    DEGRADED = "degraded"  # usable output, but below the threshold or failing a validator
    FAILED = "failed"  # no usable output
    SKIPPED = "skipped"  # a dependency failed, or the run stopped before it started


class ProjectStatus(StrEnum):
    RUNNING = "RUNNING"
    INTERRUPTED = "INTERRUPTED"  # stopped by Ctrl-C; resumable
    SUCCESS = "SUCCESS"
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    TIMEOUT = "TIMEOUT"
    SYSTEM_FAILURE = "SYSTEM_FAILURE"


@dataclass
class Task:
    """One node of the task graph, as decomposition or a project file gives it."""

    id: str
    type: TaskType
    prompt: str
    dependencies: list[str] = field(default_factory=list)
    hard_validators: list[str] = field(default_factory=list)
    acceptance: str | None = None
    output_schema: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type.value,
            "prompt": self.prompt,
            "dependencies": list(self.dependencies),
            "hard_validators": list(self.hard_validators),
        }
        if self.acceptance:
            data["acceptance"] = self.acceptance
        if self.output_schema is not None:
            data["output_schema"] = self.output_schema
        return data


@dataclass(frozen=True)
class ValidatorResult:
    """One hard validator's verdict. A skipped validator (tool absent) counts as passed; one
    that was ``not_run`` (it would execute model code and no sandbox is available) does not."""

    name: str
    passed: bool
    skipped: bool = False
    detail: str = ""
    not_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "not_run": self.not_run,
            "detail": self.detail,
        }


@dataclass
class TaskResult:
    task_id: str
    output: str = ""
    score: float = 0.0
    status: TaskStatus = TaskStatus.PENDING
    model_used: Model | None = None
    reviewer_model: Model | None = None
    iterations: int = 0
    cost_usd: float = 0.0
    deterministic_check_passed: bool = False
    degraded_fallback_count: int = 0
    validator_results: list[ValidatorResult] = field(default_factory=list)
    score_history: list[float] = field(default_factory=list)
    reason: str = ""  # why it stopped, failed or was skipped, in one line
    # Stopped by the run (budget, time, Ctrl-C) rather than finished: a resume runs it again.
    interrupted: bool = False
    # What it took to get answers, e.g. "generation (gpt-5): cut off at 4096 output tokens;
    # continued once".
    notes: list[str] = field(default_factory=list)
    # The last integration round whose revision request this task answered (0: none).
    integration_round: int = 0
    # Every verdict of its last evaluation came from the model that wrote the answer: its
    # score is not evidence independent of the author.
    self_graded: bool = False

    def to_record(self) -> dict[str, Any]:
        """Everything needed to restore this result, models by their catalog key."""
        record = self.to_dict()
        record["model_used"] = self.model_used.key if self.model_used else None
        record["reviewer_model"] = self.reviewer_model.key if self.reviewer_model else None
        record["interrupted"] = self.interrupted
        return record

    @classmethod
    def from_record(
        cls, record: dict[str, Any], resolve: Callable[[str], Model | None]
    ) -> TaskResult:
        return cls(
            task_id=record["task_id"],
            output=record["output"],
            score=record["score"],
            status=TaskStatus(record["status"]),
            model_used=resolve(record["model_used"]) if record["model_used"] else None,
            reviewer_model=resolve(record["reviewer_model"]) if record["reviewer_model"] else None,
            iterations=record["iterations"],
            cost_usd=record["cost_usd"],
            deterministic_check_passed=record["deterministic_check_passed"],
            degraded_fallback_count=record["degraded_fallback_count"],
            validator_results=[ValidatorResult(**v) for v in record["validator_results"]],
            score_history=list(record["score_history"]),
            reason=record["reason"],
            interrupted=record.get("interrupted", False),
            notes=list(record.get("notes", [])),
            integration_round=int(record.get("integration_round", 0)),
            self_graded=bool(record.get("self_graded", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "score": self.score,
            "model_used": self.model_used.value if self.model_used else None,
            "reviewer_model": self.reviewer_model.value if self.reviewer_model else None,
            "iterations": self.iterations,
            "cost_usd": self.cost_usd,
            "deterministic_check_passed": self.deterministic_check_passed,
            "degraded_fallback_count": self.degraded_fallback_count,
            "validator_results": [v.to_dict() for v in self.validator_results],
            "score_history": list(self.score_history),
            "reason": self.reason,
            "notes": list(self.notes),
            "integration_round": self.integration_round,
            "self_graded": self.self_graded,
            "output": self.output,
        }


@dataclass
class ProjectState:
    project_id: str
    project_description: str
    success_criteria: str
    budget: Budget
    status: ProjectStatus = ProjectStatus.RUNNING
    tasks: dict[str, Task] = field(default_factory=dict)
    execution_order: list[str] = field(default_factory=list)
    results: dict[str, TaskResult] = field(default_factory=dict)
    api_health: dict[str, bool] = field(default_factory=dict)
    quality_threshold: float = 0.85
    reason: str = ""  # for SYSTEM_FAILURE and early stops: what happened, in one line
    # How model-written code was run by the validators: "bubblewrap", "unshare",
    # "none (unsafe)", "unavailable" (so it was not run), or "" when no task needed it.
    sandbox: str = ""
    # The assembled tree's checks and revision rounds (``orchestrator.code.integration``), or None
    # when integration is off or the tree holds no Python.
    integration: Integration | None = None
    # What the run used (``RunConfig``, every field set), as saved with the project.
    config: RunConfig | None = None
    # A resume found the project finished already: nothing ran, it is reported as saved.
    already_finished: bool = False
