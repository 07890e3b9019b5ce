"""Hooks: callbacks on a run's lifecycle events that can never break or stall it.

``orch.add_hook(EventType.TASK_COMPLETED, callback)``: the callback gets keyword arguments (take
``**_`` for the ones you do not use). Coroutine functions run as tasks of their own; plain
functions run in a thread of their own, so neither holds up the run. Each call is time-boxed
(``HookRegistry.timeout``): a callback that raises (even ``SystemExit``) or overruns is logged
once, and one that overran is called no more. At the end of a run, one that ignores being
cancelled is left behind after a short grace rather than waited for.

``EventType`` is ``observe.events.EventKind``, the one vocabulary of the engine's events: a
hook subscribes to any kind, by member or by its string (``"task_completed"``, the design's name
for ``"task_finished"``, too). The design's five get the keyword arguments it shows:
``TASK_STARTED`` (task_id), ``TASK_COMPLETED`` (task_id, result, status), ``VALIDATION_FAILED``
(task_id, model, validators, iteration), ``BUDGET_WARNING`` (phase, ratio), ``MODEL_SELECTED``
(task_id, model, role, backend, decision); every other kind gets task_id, model, role and the
event's ``data`` fields.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from orchestrator.observe.events import Event, EventKind

log = logging.getLogger(__name__)

HOOK_TIMEOUT_SECONDS = 10.0
# How long a cancelled hook has to stop before the run ends without it.
CANCEL_GRACE_SECONDS = 1.0


# The hooks' name for the engine's one vocabulary of events: the same enum, the same members.
EventType = EventKind

Hook = Callable[..., Any]


def _hook_kwargs(event: Event) -> dict[str, Any]:
    """The keyword arguments of the hooks of ``event``."""
    data = event.data
    kind = event.kind
    if kind == EventKind.TASK_STARTED:
        return {"task_id": event.task_id}
    if kind == EventKind.TASK_FINISHED:
        result = data["result"]
        return {"task_id": event.task_id, "result": result, "status": result.status}
    if kind == EventKind.VALIDATION_FAILED:
        return {
            "task_id": event.task_id, "model": event.model,
            "validators": data["validators"], "iteration": data["iteration"],
        }  # fmt: skip
    if kind == EventKind.BUDGET_WARNING:
        return {"phase": data["phase"], "ratio": data["ratio"]}
    if kind == EventKind.MODEL_SELECTED:
        return {
            "task_id": event.task_id, "model": event.model, "role": event.role,
            "backend": data["backend"], "decision": data["decision"],
        }  # fmt: skip
    return {**data, "task_id": event.task_id, "model": event.model, "role": event.role}


class HookRegistry:
    def __init__(self, timeout: float = HOOK_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._hooks: dict[EventKind, list[Hook]] = {}
        self._failed: set[int] = set()  # ids of callbacks already reported
        self._stopped: set[int] = set()  # ids of callbacks that overran: not called again
        self._pending: dict[asyncio.Task[None], Hook] = {}

    def add(self, event_type: EventKind | str, callback: Hook) -> None:
        """Call ``callback`` on every event of ``event_type`` (a member or its string; an
        unknown one is a ``ValueError``)."""
        self._hooks.setdefault(EventKind(event_type), []).append(callback)

    def dispatch(self, event: Event) -> None:
        """Start the hooks of ``event`` (from the event loop's thread); never raises."""
        callbacks = self._hooks.get(event.kind)
        if not callbacks:
            return
        kwargs = _hook_kwargs(event)
        for callback in callbacks:
            if id(callback) not in self._stopped:
                task = asyncio.get_running_loop().create_task(self._boxed(callback, kwargs))
                self._pending[task] = callback
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    async def drain(self, *, cancel: bool = False) -> None:
        """Let the hooks still running finish within their time box (``cancel``: stop them).

        Bounded even for a hook that catches its cancellation and goes on awaiting: after the
        time box and a short grace it is cancelled once more, logged and left behind."""
        pending = dict(self._pending)
        if not pending:
            return
        if cancel:
            for task in pending:
                task.cancel()
        bound = CANCEL_GRACE_SECONDS + (0.0 if cancel else self.timeout)
        _, stuck = await asyncio.wait(pending, timeout=bound)
        for task in stuck:
            task.cancel()  # its second chance to stop; nobody waits for it any more
            callback = pending[task]
            self._stopped.add(id(callback))
            self._report(callback, "did not stop when cancelled; the run ended without it")

    async def _boxed(self, callback: Hook, kwargs: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                if inspect.iscoroutinefunction(callback):
                    await callback(**kwargs)
                else:
                    await asyncio.wrap_future(_in_own_thread(callback, kwargs))
        except TimeoutError:
            self._stopped.add(id(callback))
            self._report(
                callback, f"did not return within {self.timeout:g} s; it is called no more"
            )
        except _RaisedInThread as raised:
            self._report_raised(callback, raised.error)
        except (Exception, SystemExit) as exc:
            # A hook's sys.exit() ends the hook, not the program. KeyboardInterrupt is let
            # through: on the event loop's thread it may be the user's Ctrl-C.
            self._report_raised(callback, exc)

    def _report_raised(self, callback: Hook, error: BaseException) -> None:
        self._report(callback, f"raised {type(error).__name__}: {error}")

    def _report(self, callback: Hook, what: str) -> None:
        if id(callback) in self._failed:
            return
        self._failed.add(id(callback))
        name = getattr(callback, "__name__", type(callback).__name__)
        log.warning(
            "hook %s %s; the run goes on (further errors from it are not logged)", name, what
        )


def _in_own_thread(callback: Hook, kwargs: dict[str, Any]) -> Future[Any]:
    """Run a plain function in a daemon thread: one that hangs never holds up the run, nor the
    process's exit."""
    future: Future[Any] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(callback(**kwargs))
        except BaseException as exc:
            # Signals are only ever raised in the main thread, so whatever is raised here, even
            # SystemExit or KeyboardInterrupt, is the hook's own failure, to be reported.
            future.set_exception(_RaisedInThread(exc))

    threading.Thread(target=run, name="orchestrator-hook", daemon=True).start()
    return future


class _RaisedInThread(Exception):
    """What a plain hook raised in its thread, carried to the event loop as a plain error."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error
