"""What the engine reports while it runs, for progress displays and hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """``kind`` is one of: run_started, decomposed, task_started, call_started, call_finished
    (``data``: cost_usd, cached, replayed, notes), call_failed (``data``: error),
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
