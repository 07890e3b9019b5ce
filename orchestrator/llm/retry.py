"""When to try a failed call again, how long to wait first, and the clock the wait is kept on."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.llm.providers.base import Failure


class Clock(Protocol):
    """What a retry waits on and a circuit breaker's cool-down is timed by: the system's
    (``SYSTEM_CLOCK``), or one that never waits (a test's)."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The event loop's sleep and the monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff; a 429's Retry-After is honoured up to ``max_retry_after``.

    ``clock`` keeps the waits between attempts and the circuit breakers' cool-downs."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False, repr=False)

    def should_retry(self, failure: Failure, attempt: int) -> bool:
        return failure.retryable and attempt < self.max_attempts

    def delay(self, failure: Failure, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if failure.retry_after is not None:
            return min(failure.retry_after, self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        # Equal jitter: never less than half the step, so retries still spread out under load.
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
