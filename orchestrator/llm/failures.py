"""What went wrong with a vendor call: classified for the retry policy and the circuit breakers,
said without the API key it may quote, and raised as a ``ProviderError``."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.errors import OrchestratorError, ProviderError
from orchestrator.llm.catalog import Model
from orchestrator.llm.providers.base import TIMED_OUT, Failure, ProviderAdapter


def vendor_failure(adapter: ProviderAdapter, exc: BaseException) -> Failure | None:
    """What went wrong with a vendor call, or None for what is not the vendor's (our own
    errors, a refused reservation, cancellation), which propagates as it is."""
    if not isinstance(exc, Exception) or isinstance(exc, OrchestratorError):
        return None
    # Our own deadline (asyncio.timeout) fires as a bare TimeoutError whatever the transport.
    if type(exc) is TimeoutError:
        return TIMED_OUT
    classified = adapter.classify(exc)
    if classified is not None and classified.kind == "connection":
        # Where, and how: "connection refused" is a server that is not running.
        how = "connection refused" if _refused(exc) else "cannot connect"
        return replace(classified, detail=f"{how} at {adapter.endpoint.base_url or 'the vendor'}")
    if classified is not None:
        return replace(classified, detail=_without_key(classified.detail, adapter))
    # Anything else the SDK raised (an HTML page where JSON was due, a body it cannot parse)
    # is a failure of this vendor call, not a bug: the next model is tried. The request did
    # reach the vendor, so it may be billed.
    return Failure(
        kind="permanent",
        detail=_without_key(f"unexpected {type(exc).__name__}: {str(exc)[:200]}", adapter),
        maybe_billed=True,
    )


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused, anywhere in ``exc``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _without_key(detail: str, adapter: ProviderAdapter) -> str:
    """A vendor's error text, which may quote the key it was sent (a 401 often does), without it."""
    key = adapter.endpoint.api_key
    return detail.replace(key, "[redacted]") if key and len(key) >= 8 else detail


def provider_error(model: Model, failure: Failure, attempts: int) -> ProviderError:
    what = f"HTTP {failure.status}" if failure.status else failure.detail
    detail = f": {failure.detail}" if failure.status and failure.detail else ""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return ProviderError(
        f"{model.provider} {model.value} failed{tries} ({what}){detail}",
        model=model.value,
        provider=model.provider,
        status=failure.status,
        retryable=failure.retryable,
        attempts=attempts,
    )
