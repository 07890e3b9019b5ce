"""One task's loop: generate, then critique, revise, validate and evaluate until good enough."""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.code.assembly import as_block, named_files
from orchestrator.code.integration import INTEGRATION_PHASE
from orchestrator.code.sandbox import NO_SANDBOX
from orchestrator.code.validators import run_validators
from orchestrator.errors import ProviderError
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import Completion, prompt_room
from orchestrator.llm.fallback import Call, ChainFailed, Failures, ask_chain
from orchestrator.llm.gateway import LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import Budget, BudgetExceeded
from orchestrator.money.units import nanos_to_usd, usd_to_nanos
from orchestrator.observe.events import Event, EventSink
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.router import CRITIQUE_MAX_TOKENS, ROLE_TASK_TYPES, ROUTING_TABLE, Router
from orchestrator.run.prompts import (
    CONTEXT_HEADING,
    CRITIQUE_SYSTEM,
    EVALUATE_SYSTEM,
    EVALUATION_SCHEMA,
    GENERATE_SYSTEM,
    critique_prompt,
    evaluate_prompt,
    integration_prompt,
    revise_prompt,
    task_prompt,
)
from orchestrator.run.tasks import Task, TaskResult, TaskStatus, TaskType, ValidatorResult
from orchestrator.text.tokens import high_tokens
from orchestrator.text.visible import shorten

log = logging.getLogger(__name__)

PLATEAU_DELTA = 0.02
CONSISTENCY_DELTA = 0.05
# With one usable evaluator, a first score this close to the threshold (either side) is read a
# second time before it decides the task; a score further away is decided by one verdict.
CLOSE_TO_THRESHOLD = 0.1
EVALUATION_MAX_TOKENS = ROUTING_TABLE[TaskType.EVALUATE][1]
# Dependency outputs get at least this many tokens of a prompt (about 2,000 characters of code)
# even where the window leaves them less: the output limit is then lowered to what is left, or
# the request refused for the window and the next model of the chain asked.
MIN_CONTEXT_TOKENS = 800
# The task type a phase's calls are priced under, when it is not the task's own.
ONE_VERDICT = (
    "only one of the two evaluations gave a usable verdict, which is not enough to complete the "
    "task (allow it with --allow-single-verdict)"
)
# Who looks at an answer: with fewer usable models than these, one model plays two of them.
REVIEW_ROLES = ("author", "critic", "evaluator")

PHASE_TASK_TYPES = {
    "cross_review": ROLE_TASK_TYPES["critic"],
    "evaluation": ROLE_TASK_TYPES["evaluator"],
}


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's outcome: the score and the reasoning closest to it, how many usable
    verdicts it rests on, and how many the task needs to complete on it."""

    score: float
    reasoning: str
    verdicts: int
    needed: int  # two; one from a lone evaluator whose score was far from the threshold

    def confirmed(self, allow_single_verdict: bool) -> bool:
        """Whether the score rests on the verdicts it needs (or one, when the user allows it)."""
        return self.verdicts >= self.needed or (allow_single_verdict and self.verdicts >= 1)


class ChainExhausted(Exception):
    """Every model in a role's chain failed for this call."""


class ProvidersUnavailable(Exception):
    """Every model in a role's chain failed for provider reasons (down, refusing, timing out):
    an outage, never a verdict on the task. ``errors`` maps each provider to its last error."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(describe_outage(errors))
        self.errors = errors


def describe_outage(errors: Mapping[str, str]) -> str:
    """One line naming the providers that failed and their last errors."""
    parts = [f"{provider} ({shorten(error, 120)})" for provider, error in errors.items()]
    return "providers unavailable: " + "; ".join(parts)


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
        # What this run of the task paid, exactly (``result.cost_usd`` shows it, over what
        # earlier runs paid); the checkpoint then reads the task's cost from the journal.
        self._paid_nanos = usd_to_nanos(result.cost_usd)
        # Whether the kept answer's score rests on enough verdicts for the task to complete.
        self._confirmed = False
        self._critic: Model | None = None  # the model whose critique the answer last got

    async def run(self) -> TaskOutcome:
        task, result = self.task, self.result
        result.status = TaskStatus.RUNNING
        chain = self.ctx.router.generation_chain(task.type, task.id)
        if not chain:
            return TaskOutcome(self._finish("no usable model for this task type"))
        task_text = task_prompt(task, self.ctx.description, self.ctx.criteria, self._context(chain))
        max_tokens = self.ctx.router.max_tokens(task.type)
        try:
            draft, author = await self._ask_chain(
                chain,
                [Message("user", task_text)],
                system=GENERATE_SYSTEM[task.type],
                max_tokens=max_tokens,
                phase="generation",
                slot=f"{task.id}/generate",
                step="generation",
                schema=self._answer_schema(),
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
        task, result, ctx = self.task, self.result, self.ctx
        feedback: list[str] = []
        best_notes: list[str] = []
        passes: list[bool] = []
        for iteration in range(1, task.type.max_iterations + 1):
            result.iterations = iteration
            critique = await self._critique(task_text, current, author, iteration)
            if critique:
                feedback.insert(0, f"Reviewer's critique:\n{critique}")
            if feedback:
                revised, author = await self._revise(
                    task_text, current, feedback, author, max_tokens, iteration
                )
                current = revised
            validators = await self._validate(current)
            passed = all(v.passed for v in validators)
            # A validator that could not run (no sandbox) is no failure of the answer: no
            # revision can fix it, so it neither zeroes the score nor asks for one. It still
            # keeps the task from counting as passed.
            failed = [v for v in validators if not v.passed and not v.not_run]
            if failed:
                ctx.telemetry.record_validator_failures(author, len(failed))
                data = {"validators": failed, "iteration": iteration}
                ctx.emit(Event("validation_failed", task.id, author.value, data=data))
            confirmed = False
            if not failed:
                evaluation = await self._evaluate(task_text, current, author, iteration)
                score, reasoning = evaluation.score, evaluation.reasoning
                confirmed = evaluation.confirmed(ctx.allow_single_verdict)
                if evaluation.verdicts and score >= ctx.threshold and not confirmed:
                    self._note(f"iteration {iteration}: {ONE_VERDICT}")
            else:
                score, reasoning = 0.0, ""
            result.score_history.append(score)
            passes.append(not failed)
            notes = [f"Validator {v.name} failed: {v.detail}" for v in failed]
            if reasoning:
                notes.append(f"Evaluator's assessment (score {score:.2f}):\n{reasoning}")
            if score >= result.score:
                self._keep(current, score, passed, validators, author)
                self._confirmed = confirmed
                best_notes = notes
            if not failed and score >= ctx.threshold and confirmed:
                not_run = [v.name for v in validators if v.not_run]
                result.reason = f"{', '.join(not_run)}: {NO_SANDBOX}" if not_run else ""
                return
            # A score forced to 0 by a validator says nothing about a plateau: the next
            # revision gets the validator's message to fix.
            if passes[-2:] == [True, True] and (
                abs(result.score_history[-1] - result.score_history[-2]) < PLATEAU_DELTA
            ):
                result.reason = f"score plateaued at {result.score:.2f}"
                return
            # Revise from the best answer so far, not from a regression, with its own feedback.
            current, feedback = result.output, list(best_notes)
        result.reason = f"best score {result.score:.2f} after {task.type.max_iterations} iterations"
        # What held the kept answer back, where a validator did: a user sees it on the task's line.
        failed = [v for v in result.validator_results if not v.passed and not v.not_run]
        if failed:
            said = "; ".join(f"{v.name} failed: {v.detail}" for v in failed)
            result.reason = f"{result.reason} ({said})"

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
            revised, model = await self._ask_chain(
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
                schema=self._answer_schema(),
            )
        except ChainExhausted as exc:
            self._note(f"{label}: no revision ({exc}); the earlier version was kept")
            return
        text, kept = _with_unchanged_files(task.type, result.output, revised.text)
        if text is None:
            self._note(f"{label}: the revision named none of its files; kept the earlier")
            return
        validators = await self._validate(text)
        failed = [v for v in validators if not v.passed and not v.not_run]
        if failed:
            shown = "; ".join(f"{v.name}: {v.detail}" for v in failed)
            self._note(f"{label}: the revision failed its validators ({shown}); kept the earlier")
            return
        result.output, result.validator_results, result.model_used = text, validators, model
        unchanged = f" ({kept} file(s) it left out kept as they were)" if kept else ""
        self._note(f"{label}: revised by {model.value} to fix the project's checks{unchanged}")

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

    async def _critique(
        self, task_text: str, answer: str, author: Model, iteration: int
    ) -> str | None:
        critics = self.ctx.router.reviewer_chain(self.task.type, author, self.task.id)
        chain = [m for m in critics if m != author]
        if not chain:
            # Nobody else to ask; the evaluator's feedback drives revisions instead.
            self._note("no critique: no model other than its author was available")
            return None
        try:
            review, critic = await self._ask_chain(
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
    ) -> tuple[str, Model]:
        chain = self.ctx.router.generation_chain(self.task.type, self.task.id)
        chain = self.ctx.router.led_by(author, chain)
        revised, model = await self._ask_chain(
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
            schema=self._answer_schema(),
            counts_fallbacks=True,
        )
        return revised.text, model

    async def _evaluate(
        self, task_text: str, answer: str, author: Model, iteration: int
    ) -> Evaluation:
        """The answer's score, the reasoning closest to it, and the verdicts it rests on.

        With two evaluators other than the author, two verdicts from two models (another
        provider's when there is one), asked at once. With one, a single verdict unless its score
        is within CLOSE_TO_THRESHOLD of the threshold, where a second reading of that model checks
        it. Each verdict's request reads differently (``evaluate_prompt``), so none is sent twice.
        """
        router = self.ctx.router
        chain = router.evaluator_chain(author, self.task.id, self.task.type)
        independent = [m for m in chain if m != author]
        verdicts: list[Completion] = []
        graders: list[Model] = []
        refused = False
        outage: ProvidersUnavailable | None = None

        async def one(repeat: int, models: list[Model]) -> None:
            nonlocal refused, outage
            try:
                verdict, evaluator = await self._ask_chain(
                    models,
                    [Message("user", evaluate_prompt(task_text, answer, reading=repeat))],
                    system=EVALUATE_SYSTEM,
                    max_tokens=EVALUATION_MAX_TOKENS,
                    phase="evaluation",
                    slot=f"{self.task.id}/{iteration}/evaluate/{repeat}",
                    step="evaluation",
                    iteration=iteration,
                    repeat=repeat,
                    schema=EVALUATION_SCHEMA,
                )
            except ChainExhausted:
                return
            except ProvidersUnavailable as exc:
                outage = exc  # one verdict from a provider still up still counts
                return
            except BudgetExceeded:
                refused = True  # one verdict that fits the budget still counts
                return
            verdicts.append(verdict)
            graders.append(evaluator)
            self._note_grader(evaluator, author)

        def scores() -> list[float]:
            return [float(v.parsed["score"]) for v in verdicts]

        needed = 2
        if len(independent) >= 2:
            # Independent verdicts, asked at once: that halves the evaluation latency, and the
            # task group never leaves one running behind the other.
            second = _another_grader(independent[0], independent[1:])
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(one(1, chain))
                    group.create_task(one(2, router.led_by(second, chain)))
            except ExceptionGroup as failed:
                # What stopped the verdicts (a lost lease, a full disk), said as itself.
                raise failed.exceptions[0] from None
        else:
            await one(1, chain)
            if verdicts and abs(scores()[0] - self.ctx.threshold) > CLOSE_TO_THRESHOLD:
                needed = 1  # far from the threshold: a second reading of it is not worth paying
            elif verdicts:
                await one(2, router.led_by(graders[0], chain))
        if not verdicts and refused:
            raise BudgetExceeded("no evaluation fits in the budget left")
        if not verdicts and outage is not None:
            raise outage  # a score that could not be obtained is not a score of 0
        if len(verdicts) == 2 and abs(scores()[0] - scores()[1]) > CONSISTENCY_DELTA:
            unused = [m for m in independent if m not in graders]
            await one(3, router.led_by(unused[0], chain) if unused else chain)
        if not verdicts:
            return Evaluation(0.0, "", 0, needed)
        self.result.self_graded = all(grader == author for grader in graders)
        # Two verdicts that disagree take the lower; a third breaks the tie by the median.
        found = scores()
        score = statistics.median(found) if len(found) == 3 else min(found)
        # What quality-aware routing learns the model is worth.
        self.ctx.telemetry.record_quality(author, score)
        closest = min(verdicts, key=lambda v: abs(float(v.parsed["score"]) - score))
        return Evaluation(score, str(closest.parsed.get("reasoning", "")), len(found), needed)

    def _note_grader(self, evaluator: Model, author: Model) -> None:
        """Say when a verdict is not independent of the answer's author or its critic."""
        if self.result.reviewer_model is None:
            self.result.reviewer_model = evaluator
        if evaluator == author:
            self._note("evaluated by its own author: no other model was available")
        elif evaluator == self._critic and self._too_few_models():
            self._note(
                f"critiqued and evaluated by the same model ({evaluator.value}): no third "
                "model was available, so its grade is not independent of its critique"
            )

    async def _ask_chain(
        self,
        chain: list[Model],
        messages: list[Message],
        *,
        system: str | None,
        max_tokens: int,
        phase: str,
        slot: str,
        step: str,
        iteration: int = 0,
        repeat: int = 0,
        schema: dict[str, Any] | None = None,
        counts_fallbacks: bool = False,
    ) -> tuple[Completion, Model]:
        """Ask the first model of ``chain`` that answers; each failure hands over to the next.

        ``phase`` is the budget partition the call is paid from; ``step`` (generation,
        critique, revision, evaluation), ``iteration`` and ``repeat`` (which of an
        evaluation's verdicts) say what it is for, in the events.

        A model whose worst case no longer fits the budget hands over too: a cheaper one may.
        ``BudgetExceeded`` is raised only when no model could be afforded.
        """
        call = Call(
            messages,
            system=system,
            max_tokens=max_tokens,
            phase=phase,
            slot=slot,
            step=step,
            about={"phase": phase, "iteration": iteration, "repeat": repeat},
            task_id=self.task.id,
            schema=schema,
        )

        def failed(model: Model, exc: Exception) -> None:
            assert isinstance(exc, ProviderError | BudgetExceeded)
            self._paid(exc.spent_nanos)
            log.debug("%s %s: %s failed, next model: %s", self.task.id, phase, model.value, exc)
            if counts_fallbacks:
                self.result.degraded_fallback_count += 1

        def answered(model: Model, answer: Completion) -> None:
            self._paid(answer.cost_nanos)
            predictor = self.ctx.router.cost_model
            if predictor is not None and not (answer.from_cache or answer.replayed):
                task_type = PHASE_TASK_TYPES.get(phase, self.task.type)
                predictor.record(model, task_type, answer.cost_usd)
            for note in answer.notes:
                self._note(f"{phase} ({model.value}): {note}")

        try:
            return await ask_chain(
                self.ctx.gateway,
                chain,
                call,
                self.ctx.emit,
                hand_over_on=(ProviderError, BudgetExceeded),
                on_failure=failed,
                on_answer=answered,
            )
        except ChainFailed as exc:
            raise self._chain_error(exc.failures, phase) from None

    def _paid(self, nanos: int) -> None:
        self._paid_nanos += nanos
        self.result.cost_usd = nanos_to_usd(self._paid_nanos)

    def _chain_error(self, failures: Failures, phase: str) -> Exception:
        """What ends a call no model answered: the budget, an outage, or the chain's end (a
        second cut-off answer among them, noted on the task: no revision makes it shorter)."""
        if failures.stopped_by_truncation:
            reason = f"{phase}: {failures.truncation_reason()}"
            self._note(reason)
            return ChainExhausted(reason)
        if failures.refused is not None:
            return BudgetExceeded(str(failures.refused))
        if failures.only_outages:
            return ProvidersUnavailable(failures.outages)
        return ChainExhausted(f"every model failed for {phase}; last: {failures.last}")

    def _context(self, chain: list[Model]) -> str:
        """Dependency outputs, each trimmed to an equal share of what the prompt has room for:
        its request leaves every model of the chain its whole output limit, as the client's
        window check counts tokens (``prompt_room``)."""
        if not self.dependencies:
            return ""
        task, ctx = self.task, self.ctx
        prompt = task_prompt(task, ctx.description, ctx.criteria, "")
        system, limit = GENERATE_SYSTEM[task.type], ctx.router.max_tokens(task.type)
        schema = self._answer_schema()
        room = min(
            prompt_room(m, prompt, system=system, max_tokens=limit, schema=schema) for m in chain
        )
        headings = [f"\n\n### {task_id}\n" for task_id in self.dependencies]
        # Each text's own count, and a token more where two of them meet (a word they join).
        framing = sum(map(high_tokens, [CONTEXT_HEADING, *headings])) + len(headings) + 1
        share = max(MIN_CONTEXT_TOKENS, room - framing) // len(self.dependencies)
        parts = []
        for task_id, dep in self.dependencies.items():
            parts.append(f"### {task_id}\n{_trim(dep.output, share)}")
        return "\n\n".join(parts)

    def _answer_schema(self) -> dict[str, Any] | None:
        """The schema a task's answer must match, sent with its generation and revisions so a
        server's structured output (a local server's constrained decoding) holds it to it."""
        task = self.task
        if task.output_schema and "json_schema" in task.hard_validators:
            return task.output_schema
        return None

    def _too_few_models(self) -> bool:
        return len(self.ctx.router.usable) < len(REVIEW_ROLES)

    def _note(self, note: str) -> None:
        if note not in self.result.notes:
            self.result.notes.append(note)

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


def _trim(text: str, limit: int) -> str:
    """``text`` whole when it is at most ``limit`` tokens (``high_tokens``), else its start and
    its end (two thirds and one third of what is kept) around a note of what was left out."""
    tokens = high_tokens(text)
    if tokens <= limit:
        return text
    keep = len(text) * limit // tokens  # the characters that many tokens take in this text
    while True:
        head = keep * 2 // 3
        omitted = len(text) - keep
        trimmed = f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[head + omitted :]}"
        if keep == 0 or high_tokens(trimmed) <= limit:
            return trimmed
        keep = keep * 15 // 16  # the note took some of the room: a little less of the text


def _another_grader(first: Model, others: list[Model]) -> Model:
    """The second evaluator beside ``first``: another provider's model when there is one."""
    return next((m for m in others if m.provider != first.provider), others[0])
