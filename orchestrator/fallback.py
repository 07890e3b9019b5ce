"""Asking a role's chain of models in turn: the first usable answer wins, a failure hands over.

The chain is the routing choice and its fallbacks, already bounded by the router
(``--max-fallbacks``). An answer still cut off by the output limit hands over once only: a
second model cut off too says the job asks for more than an answer holds, and every further
model would be paid to say it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .budget import BudgetExceeded
from .catalog import Model
from .errors import ProviderError, StructuredOutputError, TruncatedAnswerError

T = TypeVar("T")

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


async def first_answer(
    chain: Sequence[Model],
    attempt: Callable[[Model], Awaitable[T]],
    *,
    hand_over_on: tuple[type[Exception], ...],
    on_failure: Callable[[Model, Exception], None] | None = None,
) -> tuple[T, Model]:
    """``attempt(model)`` for each model of ``chain`` in turn until one returns; the exceptions
    of ``hand_over_on`` hand over to the next (after ``on_failure``), any other propagates.
    ``ChainFailed`` when the chain ran out or a second cut-off answer ended it."""
    failures = Failures()
    for model in chain:
        try:
            return await attempt(model), model
        except hand_over_on as exc:
            failures.record(exc)
            if on_failure is not None:
                on_failure(model, exc)
            if failures.stopped_by_truncation:
                break
    raise ChainFailed(failures)
