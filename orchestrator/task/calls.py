"""A task's calls to models: each asks a chain for one step of the task (generation, critique,
revision, evaluation), pays into the task's cost, notes on the task what the answers said, and
says what ended a call no model of the chain answered."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import ProviderError
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import Completion
from orchestrator.llm.fallback import Call, ChainFailed, Failures, ask_chain
from orchestrator.llm.gateway import LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import BudgetExceeded
from orchestrator.money.units import nanos_to_usd, usd_to_nanos
from orchestrator.observe.events import EventSink
from orchestrator.routing.router import ROLE_TASK_TYPES, Router
from orchestrator.run.tasks import Task, TaskResult
from orchestrator.text.visible import shorten

log = logging.getLogger(__name__)

# The task type a phase's calls are priced under, when it is not the task's own.
PHASE_TASK_TYPES = {
    "cross_review": ROLE_TASK_TYPES["critic"],
    "evaluation": ROLE_TASK_TYPES["evaluator"],
}


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


class TaskCalls:
    """The calls of one task's run, and what they leave on its ``result``: what they paid, the
    fallbacks its answers took, and notes (each once)."""

    def __init__(
        self,
        task: Task,
        result: TaskResult,
        gateway: LLMGateway,
        router: Router,
        emit: EventSink,
    ) -> None:
        self.task = task
        self.result = result
        self.gateway = gateway
        self.router = router
        self.emit = emit
        # What this run of the task paid, exactly (``result.cost_usd`` shows it, over what
        # earlier runs paid); the checkpoint then reads the task's cost from the journal.
        self._paid_nanos = usd_to_nanos(result.cost_usd)

    async def ask(
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
        evaluation's verdicts) say what it is for, in the events. ``counts_fallbacks``: each
        failure counts as one of the task's fallbacks.

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
            self._failed(model, exc, phase, counts_fallbacks)

        def answered(model: Model, answer: Completion) -> None:
            self._answered(model, answer, phase)

        try:
            return await ask_chain(
                self.gateway,
                chain,
                call,
                self.emit,
                hand_over_on=(ProviderError, BudgetExceeded),
                on_failure=failed,
                on_answer=answered,
            )
        except ChainFailed as exc:
            raise self._chain_error(exc.failures, phase) from None

    def note(self, note: str) -> None:
        """Note ``note`` on the task, unless it is there already."""
        if note not in self.result.notes:
            self.result.notes.append(note)

    def _failed(self, model: Model, exc: Exception, phase: str, counts_fallbacks: bool) -> None:
        assert isinstance(exc, ProviderError | BudgetExceeded)
        self._paid(exc.spent_nanos)
        log.debug("%s %s: %s failed, next model: %s", self.task.id, phase, model.value, exc)
        if counts_fallbacks:
            self.result.degraded_fallback_count += 1

    def _answered(self, model: Model, answer: Completion, phase: str) -> None:
        self._paid(answer.cost_nanos)
        predictor = self.router.cost_model
        if predictor is not None and not (answer.from_cache or answer.replayed):
            task_type = PHASE_TASK_TYPES.get(phase, self.task.type)
            predictor.record(model, task_type, answer.cost_usd)
        for note in answer.notes:
            self.note(f"{phase} ({model.value}): {note}")

    def _paid(self, nanos: int) -> None:
        self._paid_nanos += nanos
        self.result.cost_usd = nanos_to_usd(self._paid_nanos)

    def _chain_error(self, failures: Failures, phase: str) -> Exception:
        """What ends a call no model answered: the budget, an outage, or the chain's end (a
        second cut-off answer among them, noted on the task: no revision makes it shorter)."""
        if failures.stopped_by_truncation:
            reason = f"{phase}: {failures.truncation_reason()}"
            self.note(reason)
            return ChainExhausted(reason)
        if failures.refused is not None:
            return BudgetExceeded(str(failures.refused))
        if failures.only_outages:
            return ProvidersUnavailable(failures.outages)
        return ChainExhausted(f"every model failed for {phase}; last: {failures.last}")
