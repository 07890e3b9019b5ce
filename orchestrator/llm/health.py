"""Circuit breakers per model and per provider: stop calling what is down, retry after a pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets ONE trial call through after
    ``cooldown``, while every other caller still fails fast.

    A failed trial re-opens it at once (the failure count is still at the threshold); a success
    closes it; a trial that ends with neither (cancelled, refused) lets the next caller try.
    """

    threshold: int = 3
    cooldown: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False

    @property
    def closed(self) -> bool:
        return self.failures < self.threshold

    @property
    def available(self) -> bool:
        """Whether a call would be let through now."""
        if self.closed:
            return True
        return self.clock() >= self.open_until and not self.trial_in_flight

    def admit(self) -> bool:
        """Let one call through, if ``available``: once open, that call is the trial."""
        if not self.available:
            return False
        if not self.closed:
            self.trial_in_flight = True
        return True

    def end_trial(self) -> None:
        self.trial_in_flight = False

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.trial_in_flight = False

    def record_failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
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
        # Read without making breakers (routing asks this of every candidate for every call):
        # a breaker not made yet has seen no failure, so it lets calls through.
        for name in (f"provider:{provider}", f"model:{model_key}"):
            breaker = self._breakers.get(name)
            if breaker is not None and not breaker.available:
                return False
        return True

    def admit(self, provider: str, model_key: str) -> bool:
        """Let one call to the model through, as a trial where a breaker is open; the caller
        ends it with ``end_trial`` whatever happens."""
        if not self.available(provider, model_key):
            return False
        self.provider_breaker(provider).admit()
        self.model_breaker(model_key).admit()
        return True

    def end_trial(self, provider: str, model_key: str) -> None:
        self.provider_breaker(provider).end_trial()
        self.model_breaker(model_key).end_trial()

    def provider_breaker(self, provider: str) -> CircuitBreaker:
        return self.breaker(f"provider:{provider}")

    def model_breaker(self, model_key: str) -> CircuitBreaker:
        return self.breaker(f"model:{model_key}")
