"""Exceptions raised by the orchestrator. Every message is one line a user can act on."""

from __future__ import annotations

from orchestrator.money.units import nanos_to_usd


class OrchestratorError(Exception):
    """Base class for every error the orchestrator raises on purpose."""


class ConfigError(OrchestratorError):
    """Bad configuration: catalog file, environment, or arguments."""


class CatalogError(ConfigError):
    """A catalog file is missing, malformed, or has an invalid entry."""


class NoProvidersError(ConfigError):
    """No provider has the key it needs."""


class UnknownModelError(ConfigError):
    """A model name matches nothing in the catalog."""


class SandboxError(OrchestratorError):
    """A sandbox path this machine has (its tool, namespaces allowed) fails to start: a fault
    to fix, never a reason to run the code elsewhere without saying so."""


class ProviderError(OrchestratorError):
    """A call to a vendor failed after our retry policy gave up.

    ``spent_nanos`` is what the failed call still cost (e.g. a structured answer that never
    validated was paid for), so budget accounting can never miss it.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        spent_nanos: int = 0,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.attempts = attempts
        self.spent_nanos = spent_nanos

    @property
    def spent_usd(self) -> float:
        return nanos_to_usd(self.spent_nanos)


class ModelUnavailableError(ProviderError):
    """The model's circuit breaker is open: it failed recently and is cooling down."""


class ContextWindowError(ProviderError):
    """The prompt leaves no room for an answer in the model's context window: nothing was sent,
    and the next model of the chain is asked."""


class StructuredOutputError(ProviderError):
    """The answer did not match the requested JSON Schema, even after one repair request."""


class TruncatedAnswerError(ProviderError):
    """The answer kept running into the output limit: continuing it, or asking again with the
    model's largest limit, never produced a whole answer. A cut-off answer is never used."""


class LeaseLost(OrchestratorError):
    """Another run took the project, or the lease could not be renewed in time."""


TAKEN_OVER = "another run took project {!r}: this run's lease had run out"
