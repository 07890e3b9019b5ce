"""The spend and time ceiling: reserve a call's worst case before it is made, settle after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import OrchestratorError
from .money import checked_nanos, nanos_to_usd, usd_to_nanos

log = logging.getLogger(__name__)

# The longest a call waits for calls in flight to free room, here or in the shared ledger. Holds
# belong only to attempts in flight, each bounded by its provider's timeout (300 s by default),
# so this is never reached unless something holding money stalls.
MAX_WAIT_SECONDS = 330.0

PHASE_SHARES: dict[str, float] = {
    "decomposition": 0.05,
    "generation": 0.45,
    "cross_review": 0.25,
    "evaluation": 0.15,
    "reserve": 0.10,
}


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
        # Replaced on every settlement, so waiters wake up and look again.
        self._settled = asyncio.Event()

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

    def reserve(self, amount_nanos: int, phase: str) -> Reservation:
        """Hold ``amount_nanos`` now, or raise ``BudgetExceeded``."""
        if amount_nanos > self.available_nanos:
            raise self._exceeded(amount_nanos)
        return self.track(amount_nanos, phase)

    async def acquire(self, amount_nanos: int, phase: str) -> Reservation:
        """Hold ``amount_nanos``, waiting for calls in flight to settle if they hold what it
        needs.

        Raises ``BudgetExceeded`` only when the call cannot fit even once nothing else is held.
        Only calls in flight hold money (a call holds nothing while it waits or sleeps before a
        retry), so whatever it waits for ends with their attempts.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while amount_nanos > self.available_nanos:
            if self.reserved_nanos <= 0 or amount_nanos > self.remaining_nanos:
                raise self._exceeded(amount_nanos)
            if deadline is None:
                deadline = loop.time() + MAX_WAIT_SECONDS
                log.debug(
                    "a call needing %s waits for calls in flight to settle", _usd(amount_nanos)
                )
            left = deadline - loop.time()
            if left <= 0:
                raise BudgetExceeded(
                    f"a call needing up to {_usd(amount_nanos)} waited {MAX_WAIT_SECONDS:g} s for "
                    f"calls in flight to free room ({_usd(self.reserved_nanos)} held)"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), left)
        return self.reserve(amount_nanos, phase)

    def track(self, amount_nanos: int, phase: str) -> Reservation:
        """Hold ``amount_nanos`` without deciding: what ``reserve`` does once it fits, and how a
        hold the shared ledger granted is shown (the ledger decides; a second decision here
        could refuse what it let through, or wait)."""
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

    def _exceeded(self, amount_nanos: int) -> BudgetExceeded:
        return BudgetExceeded(
            f"a call needing up to ${nanos_to_usd(amount_nanos):.4f} does not fit in the "
            f"${nanos_to_usd(max(self.remaining_nanos, 0)):.4f} left of ${self.max_usd:.2f}"
        )

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
            settled, self._settled = self._settled, asyncio.Event()
            settled.set()

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
