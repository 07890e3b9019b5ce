"""When to try a failed call again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .providers.base import Failure


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff; a 429's Retry-After is honoured up to ``max_retry_after``."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def should_retry(self, failure: Failure, attempt: int) -> bool:
        return failure.retryable and attempt < self.max_attempts

    def delay(self, failure: Failure, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if failure.retry_after is not None:
            return min(failure.retry_after, self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        # Equal jitter: never less than half the step, so retries still spread out under load.
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
