"""Small asyncio helpers the run's bookkeeping relies on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

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


class AtLoopEnd:
    """Awaits ``callback()`` when the event loop running ``arm()`` ends: when ``asyncio.run``
    (or an ``asyncio.Runner``) shuts down the loop's asynchronous generators, that is after
    every task of the loop has ended, and before the loop is closed.

    For what belongs to one event loop (a connection whose futures and locks are the loop's, a
    pool whose workers are its tasks): it cannot outlive the loop, and must not keep the
    interpreter alive after it. The hook is an asynchronous generator the loop is asked to
    finalise, the one end-of-loop step ``asyncio.run`` documents. A loop ended another way
    (``loop.close()`` alone) runs nothing: what was bound to it has to cope without.
    """

    def __init__(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._callback: Callable[[], Awaitable[None]] | None = callback
        # Held here: the loop keeps its asynchronous generators only weakly.
        self._watch = self._until_the_end()

    async def arm(self) -> None:
        """Register with the running loop (its first iteration does)."""
        await self._watch.asend(None)

    async def disarm(self) -> None:
        """Call it off, leaving nothing registered with the loop."""
        self._callback = None
        with contextlib.suppress(RuntimeError):  # the loop's end is running it
            await self._watch.aclose()

    async def _until_the_end(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            callback, self._callback = self._callback, None
            if callback is not None:
                await callback()
