"""The run's vocabulary: task types, statuses, tasks, results and the project state."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .budget import Budget
    from .catalog import Model
    from .integration import Integration
    from .run_config import RunConfig
    from .telemetry import build_default_profiles as build_default_profiles


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
    # The assembled tree's checks and revision rounds (``orchestrator.integration``), or None
    # when integration is off or the tree holds no Python.
    integration: Integration | None = None
    # What the run used (``RunConfig``, every field set), as saved with the project.
    config: RunConfig | None = None
    # A resume found the project finished already: nothing ran, it is reported as saved.
    already_finished: bool = False


# Weight of the newest sample in the moving averages of a profile.
PROFILE_EMA_ALPHA = 0.2
LATENCY_SAMPLES = 50  # the rolling buffer a profile's p95 latency is read from


@dataclass
class ModelProfile:
    """What model selection knows about one model: the catalog's facts (provider, region,
    training terms, prices, context) and what calls and evaluations measured.

    ``quality`` starts at the catalog's prior and follows the model's evaluation scores;
    ``trust`` is a moving average of its calls' outcomes (1 answered, 0 failed); ``latency_ms``
    is ``None`` until a call was measured.
    """

    model: Model
    region: str
    trains_on_output: bool | None
    quality: float
    trust: float = 1.0
    latency_ms: float | None = None
    calls: int = 0
    failures: int = 0
    evaluations: int = 0
    validator_failures: int = 0
    # A moving average of what an answered call cost (cache hits and replays are not calls).
    cost_avg_usd: float | None = None
    # The latest call latencies, for a real 95th percentile rather than a guess from the mean.
    recent_latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def provider(self) -> str:
        return self.model.provider

    @property
    def measured(self) -> bool:
        """Whether any call, evaluation or validator run has told us something about it."""
        return bool(self.calls or self.evaluations or self.validator_failures)

    @property
    def success_rate(self) -> float:
        return 1.0 if not self.calls else (self.calls - self.failures) / self.calls

    @property
    def latency_p95_ms(self) -> float | None:
        """The 95th percentile of the last ``LATENCY_SAMPLES`` call latencies (nearest rank)."""
        if not self.recent_latencies_ms:
            return None
        ordered = sorted(self.recent_latencies_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def cost_per_call(self, input_tokens: int, output_tokens: int) -> float:
        return self.model.price.cost(input_tokens, output_tokens)

    def record_call(self, seconds: float, ok: bool, cost_usd: float | None = None) -> None:
        """A paid call's outcome (answers from the cache or the journal say nothing new); the
        cost of an answered one."""
        self.calls += 1
        self.failures += not ok
        self.trust = _ema(self.trust, 1.0 if ok else 0.0)
        if ok:
            millis = seconds * 1000
            self.latency_ms = millis if self.latency_ms is None else _ema(self.latency_ms, millis)
            self.recent_latencies_ms.append(millis)
            if cost_usd is not None:
                average = self.cost_avg_usd
                self.cost_avg_usd = cost_usd if average is None else _ema(average, cost_usd)

    def to_record(self) -> dict[str, Any]:
        """What was measured, for the state file (the catalog facts are not saved)."""
        return {
            "quality": self.quality, "trust": self.trust, "latency_ms": self.latency_ms,
            "calls": self.calls, "failures": self.failures, "evaluations": self.evaluations,
            "validator_failures": self.validator_failures, "cost_avg_usd": self.cost_avg_usd,
            "recent_latencies_ms": list(self.recent_latencies_ms),
        }  # fmt: skip

    def restore(self, record: Mapping[str, Any]) -> None:
        """Take what an earlier run measured (saved by ``to_record``)."""
        for name in ("quality", "trust", "latency_ms", "cost_avg_usd"):
            if name in record:
                setattr(self, name, record[name])
        for name in ("calls", "failures", "evaluations", "validator_failures"):
            setattr(self, name, int(record.get(name, 0)))
        self.recent_latencies_ms.extend(float(x) for x in record.get("recent_latencies_ms", []))

    def record_quality(self, score: float) -> None:
        """An evaluation score of one of the model's answers."""
        self.evaluations += 1
        self.quality = _ema(self.quality, score)


def _ema(average: float, sample: float) -> float:
    return (1 - PROFILE_EMA_ALPHA) * average + PROFILE_EMA_ALPHA * sample


def __getattr__(name: str) -> Any:
    """``build_default_profiles``, the design's ``orchestrator.models.build_default_profiles``:
    it reads the catalog, so it lives with the telemetry (``orchestrator.telemetry``) and this
    vocabulary stays below the catalog and the budget."""
    if name == "build_default_profiles":
        from .telemetry import build_default_profiles

        return build_default_profiles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
