"""Money is counted in integer nano-dollars: limits are read as a person wrote them, prices are
never billed below what the catalog says, and a usage's cost is exact to the nano-dollar."""

from __future__ import annotations

import math

import pytest

from orchestrator.llm.catalog import Price
from orchestrator.money.units import NANOS_PER_USD, checked_nanos, nanos_to_usd, usd_to_nanos

MILLION = 1_000_000


def test_a_limit_is_the_amount_a_person_wrote_to_the_nano_dollar():
    assert NANOS_PER_USD == 10**9
    assert usd_to_nanos(0.3) == 300_000_000  # not the float's 0.29999999999999998...
    assert usd_to_nanos(8) == 8_000_000_000
    assert usd_to_nanos(0.0000000014) == 1  # the nearest nano-dollar
    assert usd_to_nanos(0.0000000016) == 2
    assert nanos_to_usd(300_000_000) == 0.3


@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf, "1.0", None, True])
def test_an_amount_that_is_not_a_finite_number_is_refused(amount):
    with pytest.raises(ValueError, match="finite number of USD"):
        usd_to_nanos(amount)


def test_a_float_is_never_taken_for_nano_dollars():
    assert checked_nanos(5) == 5
    with pytest.raises(TypeError, match="integer nano-dollars"):
        checked_nanos(0.5)


def test_three_ten_cent_calls_cost_exactly_thirty_cents():
    ten_cents = Price(input=100_000.0, output=0.0, cached_input=0.0, cache_write=0.0)
    calls = [ten_cents.cost_nanos(1, 0) for _ in range(3)]
    assert calls == [100_000_000] * 3
    assert sum(calls) == usd_to_nanos(0.3)
    assert 0.1 + 0.1 + 0.1 > 0.3  # what summing floats would have said


def test_a_price_given_past_nine_decimals_is_rounded_up_never_down():
    # $0.0000000001 per 1M tokens is less than a nano-dollar: it is billed as one.
    tiny = Price(input=0.0000000001, output=1.0000000001, cached_input=0.0, cache_write=0.0)
    assert tiny.cost_nanos(MILLION, 0) == 1
    assert tiny.cost_nanos(0, MILLION) == 1_000_000_001


def test_a_usage_is_rounded_up_once_over_all_its_parts():
    # Each part costs half a nano-dollar: the call costs one, not one per part.
    half = Price(input=0.0005, output=0.0005, cached_input=0.0005, cache_write=0.0005)
    assert half.cost_nanos(1, 1) == 1
    assert half.cost_nanos(1, 0) == 1  # a part of a nano-dollar is still charged
    assert half.cost_nanos(0, 0) == 0


def test_every_kind_of_token_is_billed_at_its_own_price_exactly():
    price = Price(input=0.15, output=0.60, cached_input=0.075, cache_write=0.1875)
    # 1,000 prompt tokens of which 300 cached and 200 written, 700 output, at 150, 75, 187.5
    # and 600 nano-dollars a token: 500 x 150 + 300 x 75 + 200 x 187.5 + 700 x 600.
    assert price.cost_nanos(1_000, 700, cached_tokens=300, cache_write_tokens=200) == 555_000
    assert price.cost(1_000, 700, cached_tokens=300, cache_write_tokens=200) == 0.000555
