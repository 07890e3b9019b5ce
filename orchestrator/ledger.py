"""Budgets exact across processes: every paid call's worst case is held in the shared ledger.

A run's scopes are the organisation, its team and job (if charged to them) and the project,
always in that order. Before a call is sent its worst case is reserved on each of them in one
transaction of conditional updates (a cap is never passed, however many processes reserve at
once); the call's journal row settles it at its real cost in one transaction; a hold left by a
run that died is charged in full when the sweep finds it, since the vendor may have billed it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from .budget import BudgetExceeded
from .state import ExpiredHold, StateManager

log = logging.getLogger(__name__)

_FIRST_WAIT = 0.02
_LONGEST_WAIT = 0.5


@dataclass
class Hold:
    """One reservation in the ledger; ``actual`` is what it cost once settled (0: released),
    None while its call is in flight."""

    id: str
    amount: float
    actual: float | None = None


def run_scopes(project_id: str, team: str | None, job_id: str | None) -> tuple[str, ...]:
    """A run's ledger scopes, in the one order every process locks them in."""
    return (
        "org",
        *([f"team:{team}"] if team else []),
        *([f"job:{job_id}"] if job_id else []),
        f"project:{project_id}",
    )


def scope_name(scope: str) -> str:
    kind, _, name = scope.partition(":")
    names = {"org": "organisation", "team": f"team {name}", "job": f"job {name}"}
    return names.get(kind, f"project {name}")


@dataclass
class Ledger:
    """The ledger as one run sees it: its scopes, under the lease ``owner`` holds."""

    store: StateManager
    project_id: str
    owner: str
    scopes: tuple[str, ...] = field(default=())

    async def open(self, max_usd: float, team: str | None, job_id: str | None) -> list[ExpiredHold]:
        """The run's rows, ready for its calls. Holds of dead runs are charged first; those
        of this project (an earlier run of it killed mid-call) are returned, for its spend."""
        self.scopes = run_scopes(self.project_id, team, job_id)
        await self.store.ledger_open(self.scopes, self.project_id, max_usd)
        return [h for h in await self._expire() if h.project_id == self.project_id]

    def new_hold(self, amount: float) -> Hold:
        """A hold to reserve: its id exists before the reservation does, so whoever started
        it can settle it whatever interrupts the reservation."""
        return Hold(uuid.uuid4().hex, amount)

    async def reserve(self, hold: Hold, *, task_id: str, phase: str, journal_key: str) -> None:
        """Hold ``hold.amount`` on every scope, waiting while other calls in flight hold what
        it needs; ``BudgetExceeded`` when it cannot fit even once they settle."""
        wait = _FIRST_WAIT
        while True:
            refused = await self.store.ledger_reserve(
                hold.id,
                hold.amount,
                self.scopes,
                project_id=self.project_id,
                owner=self.owner,
                task_id=task_id,
                phase=phase,
                journal_key=journal_key,
            )
            if refused is None:
                return
            row = (await self.store.ledger([refused]))[refused]
            cap = row.cap if row.cap is not None else float("inf")
            if row.spent + hold.amount > cap:
                left = max(cap - row.spent, 0.0)
                raise BudgetExceeded(
                    f"the {scope_name(refused)} budget of ${cap:.2f} has ${left:.4f} left: "
                    f"a call needing up to ${hold.amount:.4f} does not fit"
                )
            if await self._expire():
                continue  # a dead run's holds were in the way: look again at once
            await asyncio.sleep(wait)
            wait = min(wait * 2, _LONGEST_WAIT)

    async def _expire(self) -> list[ExpiredHold]:
        """Charge in full the holds of runs that died holding them."""
        expired = await self.store.ledger_expire()
        for hold in expired:
            log.warning(
                "a call of project %s held $%.4f when its run (%s) ended without settling it: "
                "charged in full, since the provider may have billed it",
                hold.project_id,
                hold.amount,
                hold.owner,
            )
        return expired
