"""Money as integer nano-dollars (1e-9 USD): the one place that knows how amounts are kept.

Every amount on the money path (prices, worst cases, holds, spend, caps, the journal and the
ledger) is an ``int`` of nano-dollars, so sums are exact: three calls of $0.10 fill a $0.30
budget to the nano-dollar. Floats of USD appear only where a person reads an amount, and in the
public API that takes or reports them (``Budget(max_usd=...)``, ``spent_usd``); ``format_usd``
writes one for a person.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

NANOS_PER_USD = 10**9
TOKENS_PER_PRICE = 1_000_000  # catalog prices are per million tokens


def usd_to_nanos(usd: float) -> int:
    """A user-given amount (a limit, a cap) in nano-dollars, to the nearest one.

    The shortest decimal that reads back as ``usd`` is converted, so the 0.3 a person typed is
    exactly 300,000,000, not the binary float's 299,999,999.99999998.
    """
    return _nanos(usd, ROUND_HALF_EVEN)


def nanos_to_usd(nanos: int) -> float:
    """An amount as a person reads it (the nearest float: exact to the nano-dollar far past any
    budget)."""
    return nanos / NANOS_PER_USD


def price_to_nanos(usd_per_million: float) -> int:
    """A catalog price (USD per 1M tokens) in nano-dollars per 1M tokens, rounded up: a price
    given to more than 9 decimals is never billed below what it says."""
    return _nanos(usd_per_million, ROUND_CEILING)


def usage_nanos(tokens_at_prices: list[tuple[int, int]]) -> int:
    """What a usage costs: each ``(tokens, nano-dollars per 1M tokens)`` part multiplied out
    exactly, the total rounded up once to a whole nano-dollar (never undercounted)."""
    exact = sum(tokens * price for tokens, price in tokens_at_prices)
    return -(-exact // TOKENS_PER_PRICE)


def format_usd(value: float) -> str:
    """Dollars with enough digits to be true: ``$8.00``, ``$0.28``, ``$0.004``, ``$0.00004``."""
    if not math.isfinite(value):
        return f"${value}"
    if value == 0:
        return "$0.00"
    magnitude = abs(value)
    # About three significant digits below a dollar, cents above.
    decimals = 2 if magnitude >= 1 else min(8, 2 - math.floor(math.log10(magnitude)))
    text = f"{value:,.{decimals}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"${whole}.{fraction}"


def checked_nanos(amount: int) -> int:
    """``amount`` if it is an integer of nano-dollars; a float (USD, most likely) is refused
    rather than taken for a millionth of a cent."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amounts are integer nano-dollars, not {amount!r}")
    return amount


def _nanos(usd: float, rounding: str) -> int:
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd):
        raise ValueError(f"an amount of money must be a finite number of USD, not {usd!r}")
    nanos = Decimal(repr(usd)) * NANOS_PER_USD
    return int(nanos.to_integral_value(rounding=rounding))
