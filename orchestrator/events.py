"""What the engine reports while it runs, for progress displays and hooks."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """``kind`` is one of: run_started (``data``: project_id, budget; for a resume also
    resumed, tasks, the plan's size or None before a plan, and done, its finished tasks),
    decomposed, task_started, call_started, call_finished
    (``data``: cost_usd, cached, replayed, notes), call_failed (``data``: error),
    validation_failed (``data``: validators, the failed ``ValidatorResult``s; iteration),
    model_selected (``data``: decision, backend),
    task_finished, task_skipped, budget_warning,
    plan_size (``data``: tasks, guidance; a plan outside the range asked for, run as it is),
    sandbox (``data``: isolation, how validators will run model code; sent once, when a task
    needs it), notice (``data``: message, something about the run to tell its user once, e.g.
    that one model plays every role), run_finished, already_finished (a resumed project that
    had nothing left to do).

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
