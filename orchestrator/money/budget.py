"""The spend and time ceiling, as a run sees it: what was spent, what calls in flight hold.

A ``Budget`` shows the account; the ledger (``ledger.Ledger``) decides what a call may hold. A
run with a state store holds its calls in the store's shared ledger and the budget shows them
(``track``); a budget on its own is the one-row book its own ledger decides on (``acquire``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.money.ledger import (
    MAX_WAIT_SECONDS,
    BudgetExceeded,
    ExpiredHold,
    Ledger,
    LedgerRow,
)
from orchestrator.money.units import checked_nanos, nanos_to_usd, usd_to_nanos

__all__ = ["MAX_WAIT_SECONDS", "PHASE_SHARES", "Budget", "BudgetExceeded", "CallsStopped"]

log = logging.getLogger(__name__)

PHASE_SHARES: dict[str, float] = {
    "decomposition": 0.05,
    "generation": 0.45,
    "cross_review": 0.25,
    "evaluation": 0.15,
    "reserve": 0.10,
}


class CallsStopped(BudgetExceeded):
    """No new call may start: the run was asked to stop once its calls in flight finish."""


@dataclass
class Reservation:
    amount_nanos: int
    phase: str
    open: bool = True


class Budget:
    """A hard USD ceiling and a wall-clock limit.

    Amounts are kept in integer nano-dollars (``money``), so sums are exact: ``spent_nanos``
    is what was actually paid, ``reserved_nanos`` what calls in flight hold. A call is made only
    once its worst-case cost is reserved, so spent + reserved never passes ``max_nanos``,
    however many calls run at once. The ``*_usd`` properties show them to people.
    """

    def __init__(
        self,
        max_usd: float = 8.0,
        max_time_seconds: float = 5400.0,
        spent_usd: float = 0.0,
        elapsed_before: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        phase_spent: Mapping[str, float] | None = None,
        on_phase_warning: list[Callable[[str, float], None]] | None = None,
    ) -> None:
        if not math.isfinite(max_time_seconds) or max_time_seconds <= 0:
            raise ValueError("budget needs a finite max_usd >= 0 and max_time_seconds > 0")
        self.max_usd = max_usd
        self.max_time_seconds = max_time_seconds
        self.elapsed_before = elapsed_before
        self.clock = clock
        self.spent_nanos = usd_to_nanos(spent_usd)
        self.phase_nanos = dict.fromkeys(PHASE_SHARES, 0)
        self.phase_nanos.update({p: usd_to_nanos(v) for p, v in (phase_spent or {}).items()})
        self.reserved_nanos = 0
        self.on_phase_warning = on_phase_warning if on_phase_warning is not None else []
        self._started = self.clock()
        self._warned: set[str] = set()
        # Decides what ``acquire`` may hold, this budget its book.
        self._book = BudgetBook(self)
        self.account = Ledger(self._book, "", "this process", ("run",))

    def __repr__(self) -> str:
        return (
            f"Budget(max_usd={self.max_usd!r}, max_time_seconds={self.max_time_seconds!r}, "
            f"spent_usd={self.spent_usd!r}, reserved_usd={self.reserved_usd!r})"
        )

    @property
    def max_usd(self) -> float:
        return nanos_to_usd(self.max_nanos)

    @max_usd.setter
    def max_usd(self, usd: float) -> None:
        """Hooks may lower the ceiling mid-run; the shared ledger follows it."""
        if not (isinstance(usd, int | float) and math.isfinite(usd) and usd >= 0):
            raise ValueError("budget needs a finite max_usd >= 0 and max_time_seconds > 0")
        self.max_nanos = usd_to_nanos(usd)

    @property
    def spent_usd(self) -> float:
        return nanos_to_usd(self.spent_nanos)

    @property
    def reserved_usd(self) -> float:
        return nanos_to_usd(self.reserved_nanos)

    @property
    def phase_spent(self) -> dict[str, float]:
        return {phase: nanos_to_usd(n) for phase, n in self.phase_nanos.items()}

    @property
    def remaining_nanos(self) -> int:
        return self.max_nanos - self.spent_nanos

    @property
    def available_nanos(self) -> int:
        """What a new call may still reserve."""
        return self.max_nanos - self.spent_nanos - self.reserved_nanos

    @property
    def remaining_usd(self) -> float:
        return nanos_to_usd(self.remaining_nanos)

    @property
    def elapsed_seconds(self) -> float:
        return self.elapsed_before + (self.clock() - self._started)

    def seconds_left(self) -> float:
        return self.max_time_seconds - self.elapsed_seconds

    def time_remaining(self) -> bool:
        return self.elapsed_seconds < self.max_time_seconds

    def can_afford(self, cost: float) -> bool:
        """Whether a call costing ``cost`` USD could be reserved now (calls in flight hold
        theirs)."""
        return self.available_nanos >= usd_to_nanos(cost)

    async def acquire(self, amount_nanos: int, phase: str) -> Reservation:
        """Hold ``amount_nanos``, waiting for calls in flight to settle if they hold what it
        needs (its ledger decides, as the shared one does for a run with a store).

        Raises ``BudgetExceeded`` at once when the call cannot fit even once nothing else is
        held. Only calls in flight hold money (a call holds nothing while it waits or sleeps
        before a retry), so whatever it waits for ends with their attempts.
        """
        hold = self.account.new_hold(amount_nanos)
        await self.account.reserve(hold, task_id="", phase=phase, model=None, journal_key="")
        return self._book.granted.pop(hold.id)

    def track(self, amount_nanos: int, phase: str) -> Reservation:
        """Show a hold a ledger granted (it decides; a second decision here could refuse what it
        let through, or wait)."""
        self.reserved_nanos += checked_nanos(amount_nanos)
        # On every paid attempt: the arguments stay numbers, formatted only when -v shows them.
        log.debug(
            "reserved $%.6f for %s (held $%.6f, spent $%.6f of $%.6f)",
            nanos_to_usd(amount_nanos),
            phase,
            self.reserved_usd,
            self.spent_usd,
            self.max_usd,
        )
        return Reservation(amount_nanos, phase)

    def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        self._close(reservation)
        log.debug(
            "settled $%.6f of $%.6f reserved",
            nanos_to_usd(actual_nanos),
            nanos_to_usd(reservation.amount_nanos),
        )
        if actual_nanos > reservation.amount_nanos:
            log.warning(
                "a call cost %s, more than its reserved worst case %s",
                _usd(actual_nanos),
                _usd(reservation.amount_nanos),
            )
        self.charge(actual_nanos, reservation.phase)

    def release(self, reservation: Reservation) -> None:
        self._close(reservation)

    def charge(self, amount_nanos: int, phase: str) -> None:
        """Record money already spent (settled calls, or spend restored on resume)."""
        self.spent_nanos += checked_nanos(amount_nanos)
        self.phase_nanos[phase] = self.phase_nanos.get(phase, 0) + amount_nanos
        self._check_phase(phase)

    def guard(self, phase: str) -> PhaseGuard:
        """What ``UnifiedClient.complete(spend=...)`` takes to bill calls to ``phase``."""
        return PhaseGuard(self, phase)

    def _close(self, reservation: Reservation) -> None:
        if reservation.open:
            reservation.open = False
            self.reserved_nanos -= reservation.amount_nanos
            self.account.wake()  # calls waiting in ``acquire`` look again

    def _check_phase(self, phase: str) -> None:
        share = PHASE_SHARES.get(phase)
        if share is None or phase in self._warned or self.max_nanos == 0:
            return
        ratio = self.phase_nanos[phase] / self.max_nanos
        if ratio > share:
            self._warned.add(phase)
            log.warning(
                "%s has spent %.0f%% of the budget, past its %.0f%% share",
                phase,
                ratio * 100,
                share * 100,
            )
            for callback in self.on_phase_warning:
                callback(phase, ratio)


def _usd(nanos: int) -> str:
    return f"${nanos_to_usd(nanos):.6f}"


class BudgetBook:
    """A budget as a ledger's book of one row, ``run``: its limit, spend and holds. A hold is
    granted by showing it on the budget; it is settled by the budget (``settle``)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.granted: dict[str, Reservation] = {}  # for ``acquire`` to take

    async def ledger_reserve(
        self,
        hold_id: str,
        amount_nanos: int,
        scopes: tuple[str, ...],
        *,
        phase: str,
        **_: str | None,
    ) -> str | None:
        if amount_nanos > self.budget.available_nanos:
            return "run"
        self.granted[hold_id] = self.budget.track(amount_nanos, phase)
        return None

    async def ledger(self, scopes: Iterable[str] | None = None) -> dict[str, LedgerRow]:
        budget = self.budget
        return {"run": LedgerRow(budget.max_nanos, budget.spent_nanos, budget.reserved_nanos)}

    async def ledger_open(self, scopes: Iterable[str], project_id: str, max_nanos: int) -> None:
        """Nothing to open: the budget is the row."""

    async def ledger_set_cap(self, scope: str, cap_nanos: int) -> None:
        self.budget.max_nanos = cap_nanos

    async def ledger_settle(
        self, settlements: Iterable[tuple[str, int]], journal: Any = None
    ) -> int:
        raise TypeError("a budget's holds are settled by the budget (Budget.settle)")

    async def ledger_expire(self) -> list[ExpiredHold]:
        return []  # every hold here is of this process, alive


@dataclass(frozen=True)
class PhaseGuard:
    budget: Budget
    phase: str

    async def reserve(self, worst_case_nanos: int) -> Reservation:
        return await self.budget.acquire(worst_case_nanos, self.phase)

    async def flush(self) -> None:
        """Nothing to write: an in-process budget settles each attempt at once."""

    def settle(self, ticket: Reservation, actual_nanos: int) -> None:
        self.budget.settle(ticket, actual_nanos)

    def release(self, ticket: Reservation) -> None:
        self.budget.release(ticket)
