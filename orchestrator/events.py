"""What the engine reports while it runs, for progress displays and hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """``kind`` is one of: run_started, decomposed, task_started, call_started, call_finished,
    task_finished, task_skipped, budget_warning, run_finished."""

    kind: str
    task_id: str | None = None
    model: str | None = None
    role: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default sink."""
