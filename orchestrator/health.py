"""Circuit breakers per model and per provider: stop calling what is down, retry after a pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets a trial call through after ``cooldown``.

    A failed trial re-opens it at once (the failure count is still at the threshold); a success
    closes it.
    """

    threshold: int = 3
    cooldown: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    open_until: float = 0.0

    @property
    def available(self) -> bool:
        return self.failures < self.threshold or self.clock() >= self.open_until

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def record_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown

    def trip(self) -> None:
        """Open at once, e.g. when the vendor rejected our key."""
        self.failures = max(self.failures, self.threshold)
        self.open_until = self.clock() + self.cooldown


class HealthRegistry:
    """Breakers for every model and every provider, created on first use."""

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(self._threshold, self._cooldown, self._clock)
            self._breakers[name] = breaker
        return breaker

    def available(self, provider: str, model_key: str) -> bool:
        return (
            self.breaker(f"provider:{provider}").available
            and self.breaker(f"model:{model_key}").available
        )

    def provider_breaker(self, provider: str) -> CircuitBreaker:
        return self.breaker(f"provider:{provider}")

    def model_breaker(self, model_key: str) -> CircuitBreaker:
        return self.breaker(f"model:{model_key}")
