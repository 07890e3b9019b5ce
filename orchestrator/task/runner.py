"""One task's loop: generate, then critique, revise, validate and evaluate until good enough.

Each step's calls go through ``TaskCalls`` (``calls``), which pays them into the task and
says what ended a call no model answered; the evaluation's verdicts and score are
``evaluation``'s; what the prompt carries of the task's dependencies is ``dependency_context``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.code.assembly import as_block, named_files
from orchestrator.code.integration import INTEGRATION_PHASE
from orchestrator.code.sandbox import NO_SANDBOX
from orchestrator.code.validators import run_validators
from orchestrator.llm.catalog import Model
from orchestrator.llm.gateway import LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import Budget, BudgetExceeded
from orchestrator.observe.events import Event, EventSink
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.router import CRITIQUE_MAX_TOKENS, Router
from orchestrator.run.prompts import (
    CRITIQUE_SYSTEM,
    GENERATE_SYSTEM,
    answer_schema,
    critique_prompt,
    integration_prompt,
    revise_prompt,
    task_prompt,
)
from orchestrator.run.tasks import Task, TaskResult, TaskStatus, TaskType, ValidatorResult
from orchestrator.task.calls import (
    ChainExhausted,
    ProvidersUnavailable,
    TaskCalls,
)
from orchestrator.task.dependency_context import dependency_context
from orchestrator.task.evaluation import ONE_VERDICT, Evaluator

# The run's engine names these from here.
PLATEAU_DELTA = 0.02


@dataclass
class TaskContext:
    gateway: LLMGateway
    router: Router
    budget: Budget
    criteria: str
    description: str
    threshold: float
    emit: EventSink
    telemetry: TelemetryCollector = field(default_factory=TelemetryCollector)
    validator_timeout: float = 60.0
    unsafe_validators: bool = False
    # A task may complete on one usable verdict when the other evaluation failed.
    allow_single_verdict: bool = False


@dataclass(frozen=True)
class TaskOutcome:
    """What one task's run tells its project's run, besides its result: whether the budget
    stopped it, and the providers whose outage did, with their last errors."""

    result: TaskResult
    budget_exhausted: bool = False
    outages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Judgement:
    """How one version of the answer fared: its validators' results, then the score the
    evaluation gave it (0 when a validator failed), and whether that score rests on the verdicts
    the task needs to complete on it."""

    validators: list[ValidatorResult]
    score: float = 0.0
    reasoning: str = ""
    confirmed: bool = False

    @property
    def failed(self) -> list[ValidatorResult]:
        return _failed(self.validators)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.validators)

    def notes(self) -> list[str]:
        """What the next revision is told to fix, when this version is the best so far."""
        notes = [f"Validator {v.name} failed: {v.detail}" for v in self.failed]
        if self.reasoning:
            notes.append(f"Evaluator's assessment (score {self.score:.2f}):\n{self.reasoning}")
        return notes


class TaskRunner:
    """Runs one task; ``result`` is kept current so an interruption leaves a truthful record."""

    def __init__(
        self,
        task: Task,
        ctx: TaskContext,
        dependencies: Mapping[str, TaskResult],
        result: TaskResult,
    ) -> None:
        self.task = task
        self.ctx = ctx
        self.dependencies = dependencies
        self.result = result
        self.calls = TaskCalls(task, result, ctx.gateway, ctx.router, ctx.emit)
        self.evaluator = Evaluator(
            task, result, self.calls, ctx.router, ctx.telemetry, ctx.threshold
        )
        # Whether the kept answer's score rests on enough verdicts for the task to complete.
        self._confirmed = False
        self._critic: Model | None = None  # the model whose critique the answer last got

    async def run(self) -> TaskOutcome:
        task, result = self.task, self.result
        result.status = TaskStatus.RUNNING
        chain = self.ctx.router.generation_chain(task.type, task.id)
        if not chain:
            return TaskOutcome(self._finish("no usable model for this task type"))
        max_tokens = self.ctx.router.max_tokens(task.type)
        context = dependency_context(
            task,
            self.dependencies,
            chain,
            description=self.ctx.description,
            criteria=self.ctx.criteria,
            max_tokens=max_tokens,
        )
        task_text = task_prompt(task, self.ctx.description, self.ctx.criteria, context)
        try:
            draft, author = await self.calls.ask(
                chain,
                [Message("user", task_text)],
                system=GENERATE_SYSTEM[task.type],
                max_tokens=max_tokens,
                phase="generation",
                slot=f"{task.id}/generate",
                step="generation",
                schema=answer_schema(task),
                counts_fallbacks=True,
            )
            # The draft is kept until a judged version replaces it, so an interruption keeps it.
            self._keep(draft.text, 0.0, False, [], author)
            await self._improve(task_text, draft.text, author, max_tokens)
        except BudgetExceeded:
            result.interrupted = True
            return TaskOutcome(self._finish("budget exhausted"), budget_exhausted=True)
        except ChainExhausted as exc:
            return TaskOutcome(self._finish(str(exc)))
        except ProvidersUnavailable as exc:
            # Not the task's fault: it keeps what it has and runs again on resume.
            result.interrupted = True
            return TaskOutcome(self._finish(str(exc)), outages=exc.errors)
        except asyncio.CancelledError:
            result.interrupted = True
            self._finish("interrupted")
            raise
        except Exception as exc:
            # Not the task's fault (a full disk, a locked file, a bug): resumable, not final.
            result.interrupted = True
            self._finish(f"stopped by an error: {exc}")
            raise
        return TaskOutcome(self._finish(result.reason or ""))

    async def _improve(self, task_text: str, current: str, author: Model, max_tokens: int) -> None:
        """Each iteration: a critique by another model, a revision on it and on what held the
        best version so far back, then the validators and the evaluation. It stops when a
        version is good enough, the score plateaus or the iterations run out."""
        task, result = self.task, self.result
        feedback: list[str] = []
        best_notes: list[str] = []
        passes: list[bool] = []
        for iteration in range(1, task.type.max_iterations + 1):
            result.iterations = iteration
            critique = await self._critique(task_text, current, author, iteration)
            if critique:
                feedback.insert(0, f"Reviewer's critique:\n{critique}")
            if feedback:
                last_failed = bool(passes) and not passes[-1]
                current, author = await self._revise(
                    task_text, current, feedback, author, max_tokens, iteration, last_failed
                )
            judged = await self._judge(task_text, current, author, iteration)
            result.score_history.append(judged.score)
            passes.append(not judged.failed)
            if judged.score >= result.score:
                self._keep(current, judged.score, judged.passed, judged.validators, author)
                self._confirmed = judged.confirmed
                best_notes = judged.notes()
            stop = self._stop_reason(judged, passes)
            if stop is not None:
                result.reason = stop
                return
            # Revise from the best answer so far, not from a regression, with its own feedback.
            current, feedback = result.output, list(best_notes)
        result.reason = f"best score {result.score:.2f} after {task.type.max_iterations} iterations"
        # What held the kept answer back, where a validator did: a user sees it on the task's line.
        failed = _failed(result.validator_results)
        if failed:
            said = "; ".join(f"{v.name} failed: {v.detail}" for v in failed)
            result.reason = f"{result.reason} ({said})"

    async def _critique(
        self, task_text: str, answer: str, author: Model, iteration: int
    ) -> str | None:
        """Another model's critique of the answer, or None when there is none to be had."""
        critics = self.ctx.router.reviewer_chain(self.task.type, author, self.task.id)
        chain = [m for m in critics if m != author]
        if not chain:
            # Nobody else to ask; the evaluator's feedback drives revisions instead.
            self.calls.note("no critique: no model other than its author was available")
            return None
        try:
            review, critic = await self.calls.ask(
                chain,
                [Message("user", critique_prompt(task_text, answer))],
                system=CRITIQUE_SYSTEM,
                max_tokens=CRITIQUE_MAX_TOKENS,
                phase="cross_review",
                slot=f"{self.task.id}/{iteration}/critique",
                step="critique",
                iteration=iteration,
            )
        except ChainExhausted:
            return None
        self.result.reviewer_model = self._critic = critic
        return review.text

    async def _revise(
        self,
        task_text: str,
        answer: str,
        feedback: list[str],
        author: Model,
        max_tokens: int,
        iteration: int,
        failed: bool,
    ) -> tuple[str, Model]:
        """The answer revised on ``feedback``, by its author first (another model when it
        ``failed`` its checks and routing learns), and who revised it."""
        chain = self.ctx.router.reviser_chain(self.task.type, author, self.task.id, failed=failed)
        revised, model = await self.calls.ask(
            chain,
            [
                Message("user", task_text),
                Message("assistant", answer),
                Message("user", revise_prompt(feedback)),
            ],
            system=GENERATE_SYSTEM[self.task.type],
            max_tokens=max_tokens,
            phase="generation",
            slot=f"{self.task.id}/{iteration}/revise",
            step="revision",
            iteration=iteration,
            schema=answer_schema(self.task),
            counts_fallbacks=True,
        )
        return revised.text, model

    async def _judge(
        self, task_text: str, answer: str, author: Model, iteration: int
    ) -> _Judgement:
        """The answer's hard validators, then, when it failed none, its evaluation."""
        judged = _Judgement(await self._validate(answer))
        telemetry, kind = self.ctx.telemetry, self.task.type.value
        if judged.failed:
            telemetry.record_validator_failures(author, len(judged.failed))
            telemetry.record_judged(author, kind, False, by_checks=True)
            data = {"validators": judged.failed, "iteration": iteration}
            self.ctx.emit(Event("validation_failed", self.task.id, author.value, data=data))
            return judged
        evaluation = await self.evaluator.evaluate(
            task_text, answer, author, iteration, self._critic
        )
        if evaluation.verdicts:  # graded: evaluators unavailable say nothing of the answer
            passed = evaluation.score >= self.ctx.threshold
            telemetry.record_judged(author, kind, passed, by_checks=False)
        confirmed = evaluation.confirmed(self.ctx.allow_single_verdict)
        if evaluation.verdicts and evaluation.score >= self.ctx.threshold and not confirmed:
            self.calls.note(f"iteration {iteration}: {ONE_VERDICT}")
        return _Judgement(judged.validators, evaluation.score, evaluation.reasoning, confirmed)

    def _stop_reason(self, judged: _Judgement, passes: list[bool]) -> str | None:
        """Why the loop stops at this version (its result's reason), or None to go on."""
        if not judged.failed and judged.score >= self.ctx.threshold and judged.confirmed:
            not_run = [v.name for v in judged.validators if v.not_run]
            return f"{', '.join(not_run)}: {NO_SANDBOX}" if not_run else ""
        # A score forced to 0 by a validator says nothing about a plateau: the next revision
        # gets the validator's message to fix.
        history = self.result.score_history
        if passes[-2:] == [True, True] and abs(history[-1] - history[-2]) < PLATEAU_DELTA:
            return f"score plateaued at {self.result.score:.2f}"
        return None

    async def revise_for_integration(self, request: str, round_number: int) -> None:
        """Answer an integration round's request: the revision replaces the task's output when
        it still passes the task's own validators, and the outcome is noted either way. It is
        not evaluated again: the project's checks judge it. ``BudgetExceeded`` and
        ``ProvidersUnavailable`` propagate: the run stops and a resume asks again."""
        task, result, ctx = self.task, self.result, self.ctx
        label = f"integration round {round_number}"
        chain = ctx.router.generation_chain(task.type, task.id)
        if result.model_used is not None:
            chain = ctx.router.led_by(result.model_used, chain)
        # Without the dependencies' outputs, which other revisions of the round may be
        # changing: the request carries what the round saw, so a resume sends the same one.
        task_text = task_prompt(task, ctx.description, ctx.criteria, "")
        try:
            revised, model = await self.calls.ask(
                chain,
                [
                    Message("user", task_text),
                    Message("assistant", result.output),
                    Message("user", integration_prompt(request)),
                ],
                system=GENERATE_SYSTEM[task.type],
                max_tokens=ctx.router.max_tokens(task.type),
                phase=INTEGRATION_PHASE,
                slot=f"{task.id}/integration/{round_number}",
                step="integration",
                iteration=round_number,
                schema=answer_schema(task),
            )
        except ChainExhausted as exc:
            self.calls.note(f"{label}: no revision ({exc}); the earlier version was kept")
            return
        text, kept = _with_unchanged_files(task.type, result.output, revised.text)
        if text is None:
            self.calls.note(f"{label}: the revision named none of its files; kept the earlier")
            return
        validators = await self._validate(text)
        failed = _failed(validators)
        if failed:
            shown = "; ".join(f"{v.name}: {v.detail}" for v in failed)
            self.calls.note(
                f"{label}: the revision failed its validators ({shown}); kept the earlier"
            )
            return
        result.output, result.validator_results, result.model_used = text, validators, model
        unchanged = f" ({kept} file(s) it left out kept as they were)" if kept else ""
        self.calls.note(f"{label}: revised by {model.value} to fix the project's checks{unchanged}")

    async def _validate(self, output: str) -> list[ValidatorResult]:
        """The task's hard validators on ``output``, with its dependencies' code beside it."""
        return await run_validators(
            self.task.hard_validators,
            output,
            output_schema=self.task.output_schema,
            dependency_outputs={k: v.output for k, v in self.dependencies.items()},
            timeout=self.ctx.validator_timeout,
            unsafe_validators=self.ctx.unsafe_validators,
        )

    def _keep(
        self,
        output: str,
        score: float,
        passed: bool,
        validators: list[ValidatorResult],
        author: Model,
    ) -> None:
        result = self.result
        result.output = output
        result.score = score
        result.deterministic_check_passed = passed
        result.validator_results = validators
        result.model_used = author

    def _finish(self, reason: str) -> TaskResult:
        result = self.result
        if reason:
            result.reason = reason
        if (
            result.output
            and result.deterministic_check_passed
            and result.score >= self.ctx.threshold
            and self._confirmed
        ):
            result.status = TaskStatus.COMPLETED
        elif (
            result.output
            and result.deterministic_check_passed
            and result.score >= (self.ctx.threshold)
        ):
            result.status, result.reason = TaskStatus.DEGRADED, ONE_VERDICT
        elif result.output:
            result.status = TaskStatus.DEGRADED
        else:
            result.status = TaskStatus.FAILED
        return result


def _failed(validators: list[ValidatorResult]) -> list[ValidatorResult]:
    """The validators an answer failed. One that could not run (no sandbox) is no failure of the
    answer: no revision can fix it, so it neither zeroes the score nor asks for one. It still
    keeps the task from counting as passed."""
    return [v for v in validators if not v.passed and not v.not_run]


def _with_unchanged_files(task_type: TaskType, before: str, after: str) -> tuple[str | None, int]:
    """A revision's answer with the files of ``before`` it left out appended as they were (a
    model often replies with the changed files only), and how many; None when the earlier
    answer named files and the revision names none."""
    earlier, revised = named_files(task_type, before).files, named_files(task_type, after).files
    if earlier and not revised:
        return None, 0
    named = {file.path for file in revised}
    left_out = [file for file in earlier if file.path not in named]
    if not left_out or task_type is not TaskType.CODE_GEN:
        return after, 0
    return after.rstrip("\n") + "\n\n" + "\n\n".join(map(as_block, left_out)) + "\n", len(left_out)
