"""Small asyncio helpers the run's bookkeeping relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
