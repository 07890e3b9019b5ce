"""Small asyncio helpers the run's bookkeeping relies on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def uninterrupted(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then re-raise that.

    For bookkeeping that must not be cut in half: a transaction between BEGIN and COMMIT, the
    journal row of a call that was paid for.
    """
    job = asyncio.ensure_future(work)
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait({job})  # being cancelled here does not cancel the job
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return job.result()


RECANCEL_SECONDS = 0.25  # how often a background task that is still running is cancelled again


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, a background loop of ours, and wait until it has ended.

    Cancelled again every RECANCEL_SECONDS while it runs: on Python 3.11, ``asyncio.wait_for``
    (psycopg's connection pool waits with it) returns its result instead of raising when the
    cancellation arrives just as its wait ends, and the task then loops on as if never told to
    stop. A caller cancelled meanwhile still sees the task end first, then its own cancellation.
    An exception the task ended with is raised here.
    """
    cancelled = False
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


class LoopThread:
    """An event loop of its own, on a daemon thread: for what must belong to none of the
    caller's loops, which come and go (a script may call ``asyncio.run`` more than once).

    Tasks started there are not the caller loop's: ``asyncio.run`` neither cancels them as it
    ends nor waits for them, and the next ``asyncio.run`` finds them still serving. A daemon
    thread does not keep the interpreter alive after the script's last line.

    ``keep`` (the owner of what lives on the loop) is kept alive as long as the loop runs. Were
    it collected first, unclosed (at the interpreter's exit, say), the tasks it started there
    would be destroyed still pending, each with a complaint on stderr.
    """

    def __init__(self, name: str, *, keep: object = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._keep = keep
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """``work`` as a task of this loop; its outcome as a future of the running loop.

        Cancelling that future cancels the task; left alone (``uninterrupted``), the task runs
        to its end whatever becomes of the loop that awaits it.
        """
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def aclose(self) -> None:
        """Wait for the tasks still running there, then stop the loop (its thread ends)."""
        await self.submit(_others_ended())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.wrap_future(self._stopped)

    def _serve(self) -> None:
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()
            self._keep = None
            self._stopped.set_result(None)


async def _others_ended() -> None:
    """Wait until every other task of the running loop has ended."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*others, return_exceptions=True)
