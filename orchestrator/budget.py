"""The spend and time ceiling: reserve a call's worst case before it is made, settle after."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import OrchestratorError

log = logging.getLogger(__name__)

PHASE_SHARES: dict[str, float] = {
    "decomposition": 0.05,
    "generation": 0.45,
    "cross_review": 0.25,
    "evaluation": 0.15,
    "reserve": 0.10,
}


class BudgetExceeded(OrchestratorError):
    """A call's worst-case cost does not fit in what is left, so it is not made.

    ``spent_usd`` is what the request had already paid before it was stopped (e.g. an answer
    whose repair request no longer fitted), so that spend is never lost from the books.
    """

    def __init__(self, message: str, spent_usd: float = 0.0) -> None:
        super().__init__(message)
        self.spent_usd = spent_usd


class CallsStopped(BudgetExceeded):
    """No new call may start: the run was asked to stop once its calls in flight finish."""


@dataclass
class Reservation:
    amount: float
    phase: str
    open: bool = True


@dataclass
class Budget:
    """A hard USD ceiling and a wall-clock limit.

    ``spent_usd`` is what was actually paid; ``reserved_usd`` is held for calls in flight. A call
    is made only once its worst-case cost is reserved, so spent + reserved never passes
    ``max_usd``, however many calls run at once.
    """

    max_usd: float = 8.0
    max_time_seconds: float = 5400.0
    spent_usd: float = 0.0
    elapsed_before: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    phase_spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASE_SHARES, 0.0))
    reserved_usd: float = field(default=0.0, init=False)
    on_phase_warning: list[Callable[[str, float], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        limits = (self.max_usd, self.max_time_seconds)
        if not all(math.isfinite(v) for v in limits) or self.max_usd < 0:
            raise ValueError("budget needs a finite max_usd >= 0 and max_time_seconds > 0")
        if self.max_time_seconds <= 0:
            raise ValueError("budget needs a finite max_usd >= 0 and max_time_seconds > 0")
        self._started = self.clock()
        self._warned: set[str] = set()
        self._open = 0  # reservations not yet settled or released
        # Replaced on every settlement, so waiters wake up and look again.
        self._settled = asyncio.Event()

    @property
    def remaining_usd(self) -> float:
        return self.max_usd - self.spent_usd

    @property
    def available_usd(self) -> float:
        """What a new call may still reserve."""
        return self.max_usd - self.spent_usd - self.reserved_usd

    @property
    def elapsed_seconds(self) -> float:
        return self.elapsed_before + (self.clock() - self._started)

    def seconds_left(self) -> float:
        return self.max_time_seconds - self.elapsed_seconds

    def time_remaining(self) -> bool:
        return self.elapsed_seconds < self.max_time_seconds

    def can_afford(self, cost: float) -> bool:
        """Whether a call costing ``cost`` could be reserved now (calls in flight hold theirs)."""
        return self.available_usd >= cost

    def reserve(self, amount: float, phase: str) -> Reservation:
        """Hold ``amount`` now, or raise ``BudgetExceeded``."""
        if amount > self.available_usd:
            raise self._exceeded(amount)
        return self.track(amount, phase)

    async def acquire(self, amount: float, phase: str) -> Reservation:
        """Hold ``amount``, waiting for calls in flight to settle if they hold what it needs.

        Raises ``BudgetExceeded`` only when the call cannot fit even once nothing else is held.
        Only calls in flight hold money (a call holds nothing while it waits or sleeps before a
        retry), so whatever it waits for ends with their attempts.
        """
        while amount > self.available_usd:
            if self.reserved_usd <= 0 or amount > self.remaining_usd:
                raise self._exceeded(amount)
            log.debug("a call needing $%.6f waits for calls in flight to settle", amount)
            await self._settled.wait()
        return self.reserve(amount, phase)

    def track(self, amount: float, phase: str) -> Reservation:
        """Hold ``amount`` without deciding: what ``reserve`` does once it fits, and how a hold
        the shared ledger granted is shown (the ledger decides; a second decision here could
        refuse what it let through, or wait)."""
        self.reserved_usd += amount
        self._open += 1
        log.debug(
            "reserved $%.6f for %s (held $%.6f, spent $%.6f of $%.2f)",
            amount,
            phase,
            self.reserved_usd,
            self.spent_usd,
            self.max_usd,
        )
        return Reservation(amount, phase)

    def _exceeded(self, amount: float) -> BudgetExceeded:
        return BudgetExceeded(
            f"a call needing up to ${amount:.4f} does not fit in the "
            f"${max(self.remaining_usd, 0):.4f} left of ${self.max_usd:.2f}"
        )

    def settle(self, reservation: Reservation, actual: float) -> None:
        self._close(reservation)
        log.debug("settled $%.6f of $%.6f reserved", actual, reservation.amount)
        if actual > reservation.amount:
            log.warning(
                "a call cost $%.6f, more than its reserved worst case $%.6f",
                actual,
                reservation.amount,
            )
        self.charge(actual, reservation.phase)

    def release(self, reservation: Reservation) -> None:
        self._close(reservation)

    def charge(self, amount: float, phase: str) -> None:
        """Record money already spent (settled calls, or spend restored on resume)."""
        self.spent_usd += amount
        self.phase_spent[phase] = self.phase_spent.get(phase, 0.0) + amount
        self._check_phase(phase)

    def guard(self, phase: str) -> PhaseGuard:
        """What ``UnifiedClient.complete(spend=...)`` takes to bill calls to ``phase``."""
        return PhaseGuard(self, phase)

    def _close(self, reservation: Reservation) -> None:
        if reservation.open:
            reservation.open = False
            self._open -= 1
            # Exactly zero once nothing is held: subtracting floats would leave a residue.
            left = self.reserved_usd - reservation.amount
            self.reserved_usd = max(0.0, left) if self._open else 0.0
            settled, self._settled = self._settled, asyncio.Event()
            settled.set()

    def _check_phase(self, phase: str) -> None:
        share = PHASE_SHARES.get(phase)
        if share is None or phase in self._warned or self.max_usd == 0:
            return
        ratio = self.phase_spent[phase] / self.max_usd
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


@dataclass(frozen=True)
class PhaseGuard:
    budget: Budget
    phase: str

    async def reserve(self, worst_case_usd: float) -> Reservation:
        return await self.budget.acquire(worst_case_usd, self.phase)

    async def flush(self) -> None:
        """Nothing to write: an in-process budget settles each attempt at once."""

    def settle(self, ticket: Reservation, actual_usd: float) -> None:
        self.budget.settle(ticket, actual_usd)

    def release(self, ticket: Reservation) -> None:
        self.budget.release(ticket)
