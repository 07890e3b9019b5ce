"""The one account of money: every paid call's worst case is held in a ledger before it is made.

A run's scopes are the organisation, its team and job (if charged to them) and the project,
always in that order. Before an attempt is sent its worst case is reserved on each of them in
one transaction of conditional updates (a cap is never passed, however many processes reserve
at once). Each attempt's hold is settled at its real cost once the attempt ends, before its call
waits for anything else, together with the call's journal row (the last one with the answer),
so only attempts in flight ever hold money and a call never waits on a hold of its own; a hold
left by a run that died is charged in full when the sweep finds it, since the vendor may have
billed it.

The ledger's rows live in the state store (SQLite or PostgreSQL), shared by every process; a
``Budget`` used without a store is its own one-row book (``budget.BudgetBook``). Either way the
decisions (does it fit, wait for calls in flight, refuse) are made here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.money.units import checked_nanos, nanos_to_usd

# The longest a call waits for calls in flight to free room. Holds belong only to attempts in
# flight, each bounded by its provider's timeout (300 s by default), so this is never reached
# unless something holding money stalls.
MAX_WAIT_SECONDS = 330.0


class BudgetExceeded(OrchestratorError):
    """A call's worst-case cost does not fit in what is left, so it is not made.

    ``spent_nanos`` is what the request had already paid before it was stopped (e.g. an answer
    whose repair request no longer fitted), so that spend is never lost from the books.
    """

    def __init__(self, message: str, spent_nanos: int = 0) -> None:
        super().__init__(message)
        self.spent_nanos = spent_nanos

    @property
    def spent_usd(self) -> float:
        return nanos_to_usd(self.spent_nanos)


@dataclass(frozen=True)
class LedgerRow:
    """One scope's row, in nano-dollars; ``cap_nanos`` None: the scope has no cap."""

    cap_nanos: int | None
    spent_nanos: int
    reserved_nanos: int


class CallRow(NamedTuple):
    """A paid call's journal row as its settlement writes it: ``model`` the catalog key of the
    model the call was sent to (``Model.key``), ``entry`` its answer (None: spend with nothing
    to replay), ``elapsed`` the run's clock."""

    project_id: str
    key: str
    task_id: str
    phase: str
    model: str | None
    entry: dict[str, Any] | None
    elapsed: float


@dataclass(frozen=True)
class ExpiredHold:
    project_id: str
    owner: str
    amount_nanos: int
    phase: str


class Book(Protocol):
    """Where a ledger's rows are kept: the state store's (a ``StateManager``'s ``books``), or
    this process."""

    async def ledger_open(self, scopes: Iterable[str], project_id: str, max_nanos: int) -> None: ...

    async def ledger_set_cap(self, scope: str, cap_nanos: int) -> None: ...

    async def ledger_reserve(
        self,
        hold_id: str,
        amount_nanos: int,
        scopes: tuple[str, ...],
        *,
        project_id: str,
        owner: str,
        task_id: str,
        phase: str,
        model: str | None,
        journal_key: str,
    ) -> str | None: ...

    async def ledger(self, scopes: Iterable[str] | None = None) -> dict[str, LedgerRow]: ...

    async def ledger_settle(
        self, settlements: Iterable[tuple[str, int]], journal: CallRow | None = None
    ) -> int: ...

    async def ledger_expire(self) -> list[ExpiredHold]: ...


log = logging.getLogger(__name__)

_FIRST_WAIT = 0.02
_LONGEST_WAIT = 0.5


@dataclass
class Hold:
    """One reservation in the ledger, in nano-dollars; ``actual_nanos`` is what it cost once
    settled (0: released), None while its call is in flight."""

    id: str
    amount_nanos: int
    actual_nanos: int | None = None


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
    names = {"org": "organisation", "team": f"team {name}", "job": f"job {name}", "run": "run's"}
    return names.get(kind, f"project {name}")


@dataclass
class Ledger:
    """The ledger as one run sees it: its scopes, under the lease ``owner`` holds."""

    store: Book
    project_id: str
    owner: str
    scopes: tuple[str, ...] = field(default=())
    max_wait: float = MAX_WAIT_SECONDS
    project_cap_nanos: int | None = None  # the run's budget, as the project's row was told
    # Replaced on every settlement made here, so a call waiting for room looks again at once
    # when a call of this process frees some (other processes' settlements are polled).
    _settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def open(self, max_nanos: int, team: str | None, job_id: str | None) -> list[ExpiredHold]:
        """The run's rows, ready for its calls. Holds of dead runs are charged first; those
        of this project (an earlier run of it killed mid-call) are returned, for its spend."""
        self.scopes = run_scopes(self.project_id, team, job_id)
        await self.store.ledger_open(self.scopes, self.project_id, max_nanos)
        self.project_cap_nanos = max_nanos
        return [h for h in await self._expire() if h.project_id == self.project_id]

    async def follow_cap(self, max_nanos: int) -> None:
        """Make the project's cap the run's budget again if the budget was changed mid-run
        (a hook lowering it, say): the budget is a view of this account, not a second one."""
        if max_nanos != self.project_cap_nanos:
            await self.store.ledger_set_cap(f"project:{self.project_id}", max_nanos)
            self.project_cap_nanos = max_nanos

    def new_hold(self, amount_nanos: int) -> Hold:
        """A hold to reserve: its id exists before the reservation does, so whoever started
        it can settle it whatever interrupts the reservation."""
        return Hold(secrets.token_hex(16), checked_nanos(amount_nanos))

    async def reserve(
        self, hold: Hold, *, task_id: str, phase: str, model: str | None, journal_key: str
    ) -> None:
        """Hold ``hold.amount_nanos`` on every scope for a call to ``model`` (its catalog key;
        None: not known here), waiting while calls in flight hold what it needs;
        ``BudgetExceeded`` at once when it cannot fit even once they all settle, and when they
        have not freed the room within ``max_wait`` seconds."""
        loop = asyncio.get_running_loop()
        started: float | None = None  # when it began to wait
        wait = _FIRST_WAIT
        while True:
            refused = await self.store.ledger_reserve(
                hold.id,
                hold.amount_nanos,
                self.scopes,
                project_id=self.project_id,
                owner=self.owner,
                task_id=task_id,
                phase=phase,
                model=model,
                journal_key=journal_key,
            )
            waited = 0.0 if started is None else loop.time() - started
            if refused is None:
                if started is not None:
                    log.debug(
                        "the call needing $%.4f went ahead after %.2f s",
                        nanos_to_usd(hold.amount_nanos), waited,
                    )  # fmt: skip
                return
            need = f"${nanos_to_usd(hold.amount_nanos):.4f}"
            row = (await self.store.ledger([refused]))[refused]
            room = None if row.cap_nanos is None else row.cap_nanos - row.spent_nanos
            left = "no cap" if room is None else f"${nanos_to_usd(max(room, 0)):.4f} left"
            if room is not None and hold.amount_nanos > room:
                cap = nanos_to_usd(row.cap_nanos or 0)
                raise BudgetExceeded(
                    f"the {scope_name(refused)} budget of ${cap:.2f} has {left}: "
                    f"a call needing up to {need} does not fit"
                )
            if await self._expire():
                continue  # a dead run's holds were in the way: look again at once
            held = f"${nanos_to_usd(row.reserved_nanos):.4f} held"
            if waited >= self.max_wait:
                raise BudgetExceeded(
                    f"a call needing up to {need} waited {self.max_wait:g} s for calls in "
                    f"flight to free room in the {scope_name(refused)} budget ({held}, {left})"
                )
            if started is None:
                started = loop.time()
                log.debug(
                    "a call needing %s waits for calls in flight: the %s budget has %s, %s",
                    need, scope_name(refused), held, left,
                )  # fmt: skip
            settled = self._settled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), min(wait, self.max_wait - waited))
            wait = min(wait * 2, _LONGEST_WAIT)

    async def settle(self, holds: Sequence[Hold], journal: CallRow | None = None) -> None:
        """Settle ``holds`` at what their attempts cost (released: 0) and write the call's
        journal row in one transaction."""
        if not holds and journal is None:
            return
        # A hold still open here was never handed to a request: nothing was sent under it.
        await self.store.ledger_settle([(h.id, h.actual_nanos or 0) for h in holds], journal)
        self.wake()

    def wake(self) -> None:
        """Tell the calls waiting for room that some may have been freed: they look again."""
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()

    async def _expire(self) -> list[ExpiredHold]:
        """Charge in full the holds of runs that died holding them."""
        expired = await self.store.ledger_expire()
        for hold in expired:
            log.warning(
                "a call of project %s held $%.4f when its run (%s) ended without settling it: "
                "charged in full, since the provider may have billed it",
                hold.project_id,
                nanos_to_usd(hold.amount_nanos),
                hold.owner,
            )
        return expired
