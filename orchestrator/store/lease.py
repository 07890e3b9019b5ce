"""The project lease: one run at a time pays for a project, and a run that loses it stops."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from contextlib import suppress

from orchestrator.aio import stop, uninterrupted
from orchestrator.errors import TAKEN_OVER, ConfigError, LeaseLost, OrchestratorError
from orchestrator.store.holders import Holders, new_owner

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # how long a run holds its project without renewing
LEASE_ENV = "ORCHESTRATOR_LEASE_SECONDS"  # another length, e.g. for a fast hand-over on PostgreSQL
RETRY_SECONDS = 1.0  # how soon a failed renewal is tried again


def lease_seconds() -> float:
    """``$ORCHESTRATOR_LEASE_SECONDS``, else LEASE_SECONDS."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0.5):
        raise ConfigError(f"{LEASE_ENV}={text!r}: a number of seconds of at least 0.5 is needed")
    return seconds


class ProjectBusy(ConfigError):
    """Another run holds the project (its lease has not ended)."""


class Lease:
    """Held by one run for one project; renewed in the background while the run goes on.

    ``check()`` raises ``LeaseLost`` once the lease is gone, and the run's every paid call
    checks it first: a run that no longer holds its project stops spending at once.
    """

    def __init__(self, holders: Holders, project_id: str, seconds: float | None = None):
        self.holders = holders
        self.project_id = project_id
        self.seconds = lease_seconds() if seconds is None else seconds
        self.owner = new_owner()
        self.lost: str | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lease:
        claim = asyncio.ensure_future(self.holders.claim(self.project_id, self.owner, self.seconds))
        try:
            holder = await uninterrupted(claim)
        except asyncio.CancelledError:
            # Cancelled once the claim was made: no ``async with`` body will release it.
            if not claim.cancelled() and claim.exception() is None and claim.result() is None:
                await uninterrupted(self.holders.release(self.project_id, self.owner))
            raise
        if holder is not None:
            raise ProjectBusy(
                f"project {self.project_id!r} is being run by {holder}; wait for that run to "
                "end or stop it, then resume"
            )
        self._renewer = asyncio.create_task(self._keep())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._renewer is not None:
                await stop(self._renewer)
        finally:
            # Released even when the run is cancelled again while its renewer stops (a second
            # Ctrl-C, its deadline): else this process would hold the project until it exits.
            if self.lost is None:
                with suppress(OrchestratorError):
                    await uninterrupted(self.holders.release(self.project_id, self.owner))

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLost(self.lost)

    async def confirm(self) -> None:
        """Ask the store now whether the project is still ours, and note it lost if not.

        The renewer asks only every third of a lease: a run paused past its lease (SIGSTOP, a
        suspended machine) may finish its work before the renewer sees the project taken. A
        store that cannot answer proves nothing either way: the lease is then kept.
        """
        if self.lost is not None:
            return
        with suppress(OrchestratorError):
            if not await self.holders.renew(self.project_id, self.owner, self.seconds):
                self.taken()

    def taken(self) -> None:
        """Note what the store said: another run took the project."""
        if self.lost is None:
            self._lose(TAKEN_OVER.format(self.project_id))

    async def _keep(self) -> None:
        # Our own monotonic clock says when the lease runs out: a wall-clock jump cannot make
        # this run believe it still holds a lease that others already see as expired.
        held_until = time.monotonic() + self.seconds
        pause = self.seconds / 3
        while True:
            await asyncio.sleep(pause)
            try:
                held = await self.holders.renew(self.project_id, self.owner, self.seconds)
            except OrchestratorError as exc:
                if time.monotonic() + RETRY_SECONDS >= held_until:
                    self._lose(f"the project lease could not be renewed: {exc}")
                    return
                pause = RETRY_SECONDS
                continue
            if not held:
                self.taken()
                return
            held_until = time.monotonic() + self.seconds
            pause = self.seconds / 3

    def _lose(self, reason: str) -> None:
        # One line: it becomes the run's reason, printed as the status line.
        self.lost = " ".join(f"stopped paying: {reason}".split())
        log.warning("%s", self.lost)
