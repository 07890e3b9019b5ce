"""The budget as the public API exposes it: limits, reservations, phases, and the clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from orchestrator import Budget, BudgetExceeded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_spend_and_time_accounting_as_documented():
    clock = Clock()
    budget = Budget(max_usd=2.0, max_time_seconds=10, clock=clock)

    budget.settle(budget.reserve(0.5, "generation"), 0.3)
    clock.now += 4

    assert budget.spent_usd == pytest.approx(0.3)
    assert budget.remaining_usd == pytest.approx(1.7)
    assert budget.elapsed_seconds == pytest.approx(4)
    assert budget.time_remaining() is True
    assert budget.phase_spent["generation"] == pytest.approx(0.3)
    clock.now += 6
    assert budget.time_remaining() is False


def test_can_afford_counts_what_calls_in_flight_hold():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    held = budget.reserve(0.7, "generation")

    assert budget.can_afford(0.3) and not budget.can_afford(0.31)
    budget.release(held)
    assert budget.can_afford(1.0)


def test_a_reservation_that_does_not_fit_is_refused():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.reserve(0.6, "generation")

    with pytest.raises(BudgetExceeded, match="does not fit"):
        budget.reserve(0.5, "generation")


async def test_a_call_waits_for_calls_in_flight_to_settle_when_it_would_fit_after():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    in_flight = budget.reserve(0.8, "generation")
    waiting = asyncio.create_task(budget.acquire(0.5, "evaluation"))
    await asyncio.sleep(0.01)
    assert not waiting.done()

    budget.settle(in_flight, 0.2)  # it cost less than its worst case

    reservation = await asyncio.wait_for(waiting, 1)
    assert reservation.amount == 0.5 and budget.available_usd == pytest.approx(0.3)


async def test_a_call_that_could_never_fit_is_refused_at_once():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    budget.charge(0.2, "generation")
    budget.reserve(0.1, "generation")

    # 0.9 exceeds the 0.8 left even if the call in flight cost nothing: no point waiting.
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(budget.acquire(0.9, "generation"), 1)


def test_a_phase_past_its_share_warns_once():
    budget = Budget(max_usd=1.0, max_time_seconds=10)
    warnings: list[tuple[str, float]] = []
    budget.on_phase_warning.append(lambda phase, ratio: warnings.append((phase, ratio)))

    budget.charge(0.04, "decomposition")
    budget.charge(0.02, "decomposition")
    budget.charge(0.01, "decomposition")

    assert warnings == [("decomposition", pytest.approx(0.06))]


@pytest.mark.parametrize(
    ("max_usd", "max_time"), [(math.nan, 10), (1.0, math.nan), (math.inf, 10), (-1, 10), (1, 0)]
)
def test_limits_that_are_not_finite_and_positive_are_refused(max_usd, max_time):
    with pytest.raises(ValueError):
        Budget(max_usd=max_usd, max_time_seconds=max_time)
