"""Asking a role's chain of models in turn: the first usable answer wins, a failure hands over.

The chain is the routing choice and its fallbacks, already bounded by the router
(``--max-fallbacks``). An answer still cut off by the output limit hands over once only: a
second model cut off too says the job asks for more than an answer holds, and every further
model would be paid to say it again.

``ask_chain`` is the one loop every call of a run goes through (the planner's and each task's):
each model asked through the gateway, each call reported as started, answered or failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ProviderError, StructuredOutputError, TruncatedAnswerError
from orchestrator.llm.catalog import Model
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import BudgetExceeded
from orchestrator.observe.events import Event, EventSink

if TYPE_CHECKING:
    from orchestrator.llm.client import Completion
    from orchestrator.llm.gateway import LLMGateway

# Cut-off answers a call takes before it stops asking: the first hands over, the second ends it.
MAX_TRUNCATED_ANSWERS = 2


def is_outage(exc: ProviderError) -> bool:
    """Whether a failed call says the provider is unavailable (down, overloaded, unreachable,
    timing out, rate limiting after our retries, refusing our key) rather than anything about
    the request or the answer (400, 404, 422, an answer that never validated)."""
    if isinstance(exc, StructuredOutputError):
        return False
    return exc.retryable or exc.status in (401, 403)


@dataclass
class Failures:
    """Why the models asked for one call failed, in order, for the caller to say what stopped it."""

    messages: list[str] = field(default_factory=list)
    outages: dict[str, str] = field(default_factory=dict)  # provider -> its last error
    other: bool = False  # a bad request or a bad answer, not an outage
    refused: BudgetExceeded | None = None  # a model no longer fitting the budget
    cut_off: list[str] = field(default_factory=list)  # models whose answers were cut off

    def record(self, exc: Exception) -> None:
        self.messages.append(str(exc))
        if isinstance(exc, BudgetExceeded):
            self.refused = exc
        elif isinstance(exc, ProviderError) and is_outage(exc):
            self.outages[exc.provider] = str(exc)
        else:
            self.other = True
        if isinstance(exc, TruncatedAnswerError):
            self.cut_off.append(exc.model)

    @property
    def only_outages(self) -> bool:
        return bool(self.outages) and not self.other

    @property
    def stopped_by_truncation(self) -> bool:
        return len(self.cut_off) >= MAX_TRUNCATED_ANSWERS

    def truncation_reason(self) -> str:
        return (
            f"answers cut off by the output limit by {' and '.join(self.cut_off)}: no further "
            "model asked (a cut-off answer hands over to one other model only)"
        )

    @property
    def last(self) -> str:
        return self.messages[-1] if self.messages else "no model to ask"


class ChainFailed(Exception):
    """No model of the chain gave a usable answer; ``failures`` says why."""

    def __init__(self, failures: Failures) -> None:
        super().__init__(failures.last)
        self.failures = failures


@dataclass(frozen=True)
class Call:
    """One request, asked of a chain's models in turn, and what its events say it is for.

    ``phase`` is the budget partition it is paid from; ``step`` (decomposition, generation,
    critique, revision, evaluation) is its events' role, and ``about`` (phase, and a task's
    iteration and repeat) is in each of its events' data. ``task_id`` None: the planner's."""

    messages: list[Message]
    system: str | None
    max_tokens: int
    phase: str
    slot: str
    step: str
    about: Mapping[str, Any]
    task_id: str | None = None
    schema: dict[str, Any] | None = None


async def ask_chain(
    gateway: LLMGateway,
    chain: Sequence[Model],
    call: Call,
    emit: EventSink,
    *,
    hand_over_on: tuple[type[Exception], ...],
    usable: Callable[[Completion], object] | None = None,
    on_failure: Callable[[Model, Exception], None] | None = None,
    on_answer: Callable[[Model, Completion], None] | None = None,
) -> tuple[Completion, Model]:
    """The first answer of ``chain``'s models to ``call`` that ``usable`` accepts (see
    ``LLMGateway.ask``), and its model; ``on_answer`` sees it before it is reported. A failure
    of ``hand_over_on`` is reported (``on_failure`` first) and hands over to the next model; any
    other propagates. ``ChainFailed`` when the chain ran out or a second cut-off answer ended it.
    """
    about = dict(call.about)
    failures = Failures()
    for model in chain:
        emit(Event("call_started", call.task_id, model.value, call.step, about))
        try:
            answer = await gateway.ask(
                model,
                call.messages,
                system=call.system,
                max_tokens=call.max_tokens,
                phase=call.phase,
                slot=call.slot,
                task_id=call.task_id or "",
                schema=call.schema,
                usable=usable,
            )
        except hand_over_on as exc:
            failures.record(exc)
            if on_failure is not None:
                on_failure(model, exc)
            error = {**about, "error": str(exc)}
            emit(Event("call_failed", call.task_id, model.value, call.step, error))
            if failures.stopped_by_truncation:
                break
            continue
        if on_answer is not None:
            on_answer(model, answer)
        finished = {
            **about,
            "cost_usd": answer.cost_usd,
            "cached": answer.from_cache,
            "replayed": answer.replayed,
            "notes": list(answer.notes),
        }
        emit(Event("call_finished", call.task_id, model.value, call.step, finished))
        return answer, model
    raise ChainFailed(failures)
