"""What the engine reports while it runs, for progress displays, hooks and metrics.

``EventKind`` is the one vocabulary of what the engine reports: every kind of ``Event`` it
emits, each with the ``data`` fields it carries, and the names hooks subscribe by
(``orchestrator.observe.hooks.EventType`` is the same enum)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    """Every kind of event the engine emits. A member is its string (``EventKind.NOTICE ==
    "notice"``), and ``EventKind("notice")`` gives it back; an unknown string is a
    ``ValueError``.

    Calls (``CALL_STARTED``, ``CALL_FINISHED``, ``CALL_FAILED``) carry the step as the
    event's ``role`` (decomposition, generation, critique, revision, evaluation) and, in
    ``data``, ``phase`` (the budget partition paying for it) and, for a task's calls,
    ``iteration`` and ``repeat`` (which of an evaluation's verdicts).

    ``TASK_COMPLETED`` is the design's hook name for ``TASK_FINISHED``: the same member
    (``EventKind("task_completed")`` gives it too)."""

    #: A run begins. ``data``: project_id, budget (a ``Budget``, spend so far included); for a
    #: resume also resumed (True), tasks (the plan's size, None before a plan) and done (its
    #: finished tasks).
    RUN_STARTED = "run_started"
    #: A resumed project that had nothing left to do. ``data``: status.
    ALREADY_FINISHED = "already_finished"
    #: The plan is known. ``data``: tasks (how many), done (how many already finished).
    DECOMPOSED = "decomposed"
    #: The plan has a size outside the range asked for, and is run as it is. ``data``: tasks,
    #: guidance (the (low, high) range asked for).
    PLAN_SIZE = "plan_size"
    #: How validators will run model-written code; sent once, when a task needs it. ``data``:
    #: isolation.
    SANDBOX = "sandbox"
    #: Something about the run to tell its user once (e.g. that one model plays every role).
    #: ``data``: message.
    NOTICE = "notice"
    #: Routing chose a model for a role (``task_id``, ``model``: the choice or None, ``role``).
    #: ``data``: decision (the ``routing.Decision``), backend.
    MODEL_SELECTED = "model_selected"
    #: A task begins (``task_id``).
    TASK_STARTED = "task_started"
    #: A call to a model begins (``task_id``: None for the planner, ``model``, ``role``).
    #: ``data``: phase, iteration, repeat.
    CALL_STARTED = "call_started"
    #: A call answered. ``data``: phase, iteration, repeat, cost_usd, cached, replayed, notes
    #: (the planner's: no iteration or repeat).
    CALL_FINISHED = "call_finished"
    #: A call failed (an unusable plan too); the next model of its chain is asked. ``data``:
    #: phase, iteration, repeat, error (the planner's: phase, error).
    CALL_FAILED = "call_failed"
    #: Validators failed an answer (``task_id``, ``model``: its author). ``data``: validators
    #: (the failed ``ValidatorResult``s), iteration.
    VALIDATION_FAILED = "validation_failed"
    #: A budget phase crossed its warning share. ``data``: phase, ratio.
    BUDGET_WARNING = "budget_warning"
    #: A task ended, whatever its status (``task_id``). ``data``: result (its ``TaskResult``).
    TASK_FINISHED = "task_finished"
    TASK_COMPLETED = "task_finished"  # the design's hook name: the same member
    #: A task was not run (``task_id``). ``data``: reason.
    TASK_SKIPPED = "task_skipped"
    #: A round of the project tree's integration checks. ``data``: round, passed, checks,
    #: revise (the tasks asked to revise), finished.
    INTEGRATION = "integration"
    #: A run ended. ``data``: status.
    RUN_FINISHED = "run_finished"

    @classmethod
    def _missing_(cls, value: object) -> EventKind:
        if isinstance(value, str) and value in _SYNONYMS:
            return cls(_SYNONYMS[value])
        import difflib

        known = [kind.value for kind in cls]
        close = difflib.get_close_matches(str(value), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown event kind {value!r}{hint} (the kinds: {', '.join(known)})")


# Other names of a kind: the design's hook names that differ from the engine's.
_SYNONYMS = {"task_completed": EventKind.TASK_FINISHED.value}


@dataclass(frozen=True, init=False)
class Event:
    """One thing the engine reports: ``kind`` (an ``EventKind``, whose entry says what
    ``data`` holds) and, where they apply, the task, the model and the role (a call's step).

    ``kind`` may be given as a member or as its string, which is made the member: a kind that
    is none (a misspelling) is a ``ValueError`` here, not an event nobody recognises."""

    kind: EventKind
    task_id: str | None = None
    model: str | None = None
    role: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    # Written out (not the dataclass's) so that the string a kind may be given as is typed.
    def __init__(
        self,
        kind: EventKind | str,
        task_id: str | None = None,
        model: str | None = None,
        role: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "kind", EventKind(kind))
        object.__setattr__(self, "task_id", task_id)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "data", {} if data is None else data)


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
        # A handler's sys.exit() ends only the handler's work: the run is not the handler's to
        # end (a real Ctrl-C, KeyboardInterrupt, still goes on).
        except (Exception, SystemExit) as exc:
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


class EventPump:
    """Delivers events to a user's handler in order, from a thread of its own, so a handler
    that is slow or hangs never stalls the run. One that raises is logged once and goes on
    getting events; one still busy with an event after ``timeout`` seconds is logged once and
    sent nothing more (``timeout``: seconds, or a function giving them). ``drain`` waits (within
    the time box) for what is queued."""

    def __init__(self, sink: EventSink, timeout: float | Callable[[], float] = 10.0) -> None:
        self._timeout = timeout if callable(timeout) else (lambda: timeout)
        self._sink = guarded(sink)
        self._name = getattr(sink, "__qualname__", type(sink).__name__)
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._given_up = False

    def __call__(self, event: Event) -> None:
        if self._given_up or self._hung():
            return
        with self._lock:
            self._pending += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="on-event", daemon=True)
            self._thread.start()
        self._queue.put(event)

    async def drain(self) -> None:
        """Wait until the handler has seen every event sent so far, or has hung."""
        delay = 0.001
        while self._pending and not self._given_up and not self._hung():
            await asyncio.sleep(delay)
            delay = min(0.02, delay * 2)

    def _hung(self) -> bool:
        since = self._busy_since
        limit = self._timeout()
        if since is None or time.monotonic() - since < limit:
            return False
        if not self._given_up:
            self._given_up = True
            log.warning(
                "event handler %s has not returned within %g s; it is sent no more events and "
                "the run goes on",
                self._name,
                limit,
            )
        return True

    def _deliver(self) -> None:
        while True:
            event = self._queue.get()
            if not self._given_up:
                self._busy_since = time.monotonic()
                self._sink(event)
                self._busy_since = None
            with self._lock:
                self._pending -= 1
