"""What the engine reports while it runs, for progress displays and hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """``kind`` is one of: run_started, decomposed, task_started, call_started, call_finished
    (``data``: cost_usd, cached, replayed, notes), call_failed (``data``: error),
    validation_failed (``data``: validators, the failed ``ValidatorResult``s; iteration),
    model_selected (``data``: decision, backend),
    task_finished, task_skipped, budget_warning,
    plan_size (``data``: tasks, guidance; a plan outside the range asked for, run as it is),
    sandbox (``data``: isolation, how validators will run model code; sent once, when a task
    needs it), run_finished, already_finished (a resumed project that had nothing left to do).

    For calls, ``role`` is the step (decomposition, generation, critique, revision,
    evaluation) and ``data`` also holds ``phase`` (the budget partition paying for it),
    ``iteration`` and ``repeat`` (which of an evaluation's verdicts)."""

    kind: str
    task_id: str | None = None
    model: str | None = None
    role: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default sink."""


def guarded(sink: EventSink) -> EventSink:
    """``sink``, made harmless to the run: an exception it raises is logged (once) and the run
    goes on, since a display or a user's handler failing says nothing about the work."""
    failed = False

    def deliver(event: Event) -> None:
        nonlocal failed
        try:
            sink(event)
        except Exception as exc:
            if not failed:
                failed = True
                name = getattr(sink, "__qualname__", type(sink).__name__)
                log.warning(
                    "event handler %s raised %s: %s; the run goes on (further errors from it "
                    "are not logged)",
                    name,
                    type(exc).__name__,
                    exc,
                )

    return deliver
