"""Small asyncio helpers the run's bookkeeping relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
