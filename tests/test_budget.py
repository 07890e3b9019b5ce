"""The budget as the public API exposes it: limits, reservations, phases, and the clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from orchestrator import Budget, BudgetExceeded
from orchestrator.money.units import usd_to_nanos as nanos


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_spend_and_time_accounting_as_documented():
    clock = Clock()
    budget = Budget(max_usd=2.0, max_time_seconds=10, clock=clock)

    budget.settle(await budget.acquire(nanos(0.5), "generation"), nanos(0.3))
    clock.now += 4

    assert budget.spent_usd == 0.3
    assert budget.remaining_usd == 1.7
    assert budget.elapsed_seconds == pytest.approx(4)
    assert budget.time_remaining() is True
    assert budget.phase_spent["generation"] == 0.3
    clock.now += 6
    assert budget.time_remaining() is False


async def test_can_afford_counts_what_calls_in_flight_hold():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    held = await budget.acquire(nanos(0.7), "generation")

    assert budget.can_afford(0.3) and not budget.can_afford(0.31)
    budget.release(held)
    assert budget.can_afford(1.0)


async def test_a_reservation_that_does_not_fit_is_refused_saying_what_is_left():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.charge(nanos(0.6), "generation")

    left = r"the run's budget of \$1\.00 has \$0\.4000 left: a call needing up to \$0\.5000"
    with pytest.raises(BudgetExceeded, match=left + " does not fit"):
        await budget.acquire(nanos(0.5), "generation")


async def test_a_call_waits_for_calls_in_flight_to_settle_when_it_would_fit_after():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    in_flight = await budget.acquire(nanos(0.8), "generation")
    waiting = asyncio.create_task(budget.acquire(nanos(0.5), "evaluation"))
    await asyncio.sleep(0.01)
    assert not waiting.done()

    budget.settle(in_flight, nanos(0.2))  # it cost less than its worst case

    reservation = await asyncio.wait_for(waiting, 1)
    assert reservation.amount_nanos == nanos(0.5) and budget.available_nanos == nanos(0.3)


async def test_a_wait_for_calls_in_flight_is_bounded():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.account.max_wait = 0.2
    await budget.acquire(nanos(0.8), "generation")  # a call in flight that never ends

    with pytest.raises(BudgetExceeded, match=r"waited 0\.2 s for calls in flight"):
        await asyncio.wait_for(budget.acquire(nanos(0.5), "evaluation"), 5)


async def test_a_call_that_could_never_fit_is_refused_at_once():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.charge(nanos(0.2), "generation")
    await budget.acquire(nanos(0.1), "generation")

    # 0.9 exceeds the 0.8 left even if the call in flight cost nothing: no point waiting.
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(budget.acquire(nanos(0.9), "generation"), 1)


def test_a_phase_past_its_share_warns_once():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    warnings: list[tuple[str, float]] = []
    budget.on_phase_warning.append(lambda phase, ratio: warnings.append((phase, ratio)))

    budget.charge(nanos(0.04), "decomposition")
    budget.charge(nanos(0.02), "decomposition")
    budget.charge(nanos(0.01), "decomposition")

    assert warnings == [("decomposition", pytest.approx(0.06))]


@pytest.mark.parametrize(
    ("max_usd", "max_time"), [(math.nan, 10), (1.0, math.nan), (math.inf, 10), (-1, 10), (1, 0)]
)
def test_limits_that_are_not_finite_and_positive_are_refused(max_usd, max_time):
    with pytest.raises(ValueError):
        Budget(max_usd=max_usd, max_time_seconds=max_time)


async def test_a_thirty_cent_budget_takes_exactly_three_ten_cent_calls():
    budget = Budget(max_usd=0.3, max_time_seconds=10)
    for _ in range(3):
        budget.settle(await budget.acquire(nanos(0.1), "generation"), nanos(0.1))

    assert (budget.spent_usd, budget.remaining_usd, budget.reserved_usd) == (0.3, 0.0, 0.0)
    assert 0.1 + 0.1 + 0.1 > 0.3  # in float USD the third call would not have fitted
    with pytest.raises(BudgetExceeded):
        await budget.acquire(1, "generation")  # not one nano-dollar more


def test_a_budget_lowered_mid_run_is_kept_exactly():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.charge(nanos(0.1), "generation")
    budget.max_usd = 0.3

    assert budget.max_nanos == nanos(0.3) and budget.remaining_usd == 0.2
    with pytest.raises(ValueError):
        budget.max_usd = math.nan


def test_an_amount_in_usd_is_never_taken_for_nano_dollars():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    with pytest.raises(TypeError, match="integer nano-dollars"):
        budget.charge(0.5, "generation")
