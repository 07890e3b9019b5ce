"""What every vendor adapter takes and returns, and how its failures are described."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from orchestrator.text.tokens import typical_tokens

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """One vendor-neutral request.

    ``json_schema`` asks for an answer matching that schema (native mode where ``native_schema``);
    ``json_mode`` alone asks for any JSON object.
    """

    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    json_schema: dict[str, Any] | None = None
    native_schema: bool = False


@dataclass(frozen=True)
class RawCompletion:
    """What a vendor answered, in its own token accounting normalised to ours.

    ``input_tokens`` counts every prompt token, cached and cache-written ones included;
    ``output_tokens`` includes reasoning / thinking tokens, since vendors bill them as output.
    ``stop_reason`` is the vendor's own word for why generation ended; ``truncated`` says it
    was the output limit, so the text is not the whole answer.
    """

    text: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reported_model: str | None = None
    usage_estimated: bool = False
    stop_reason: str | None = None
    truncated: bool = False


@dataclass(frozen=True)
class Failure:
    """A classified exception: what kind of failure it is, never guessed from message text."""

    kind: Literal["rate_limited", "transient", "connection", "auth", "permanent"]
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""
    # The vendor may have generated (and will bill) the answer we stopped waiting for.
    maybe_billed: bool = False

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limited", "transient", "connection")


@dataclass
class Endpoint:
    """Where an adapter sends requests."""

    provider: str
    base_url: str | None
    api_key: str
    timeout: float
    api_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Ask for the answer as it is generated (where the adapter can): the attempt's time limit
    # then runs from the latest piece, not from the start.
    stream: bool = False


# Called by an adapter whenever a streamed answer makes progress.
Progress = Callable[[], None]


class ProviderAdapter(Protocol):
    """One vendor SDK behind one call. Adapters never retry; the client owns retries."""

    endpoint: Endpoint

    async def complete(
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion: ...

    def classify(self, exc: BaseException) -> Failure | None:
        """How the client should treat ``exc``; ``None`` means it is not a provider failure."""
        ...

    async def aclose(self) -> None: ...


TIMED_OUT = Failure("transient", detail="timed out", maybe_billed=True)
CONNECTION_FAILED = Failure("connection", detail="connection failed")


def with_estimated_usage(
    text: str, prompt: str, reported: str | None, stop: str | None, truncated: bool
) -> RawCompletion:
    """An answer whose server reported no usage: its tokens estimated from the texts, as many
    as expected (``typical_tokens``): the call's worst case was reserved before it was made."""
    return RawCompletion(
        text=text,
        input_tokens=typical_tokens(prompt),
        output_tokens=typical_tokens(text),
        reported_model=reported,
        usage_estimated=True,
        stop_reason=stop,
        truncated=truncated,
    )


JSON_INSTRUCTIONS = (
    "Answer with a single JSON value only: no prose, no code fences. "
    "It must validate against this JSON Schema:\n{schema}"
)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (delta seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # an HTTP date: rare, and slow to import

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_failure(status: int, headers: Any = None, detail: str = "") -> Failure:
    """The classification of an HTTP error status, shared by every adapter."""
    if status == 429:
        return Failure("rate_limited", status, retry_after_seconds(headers), detail)
    if status in (408, 409) or status >= 500:
        return Failure("transient", status, retry_after_seconds(headers), detail)
    if status in (401, 403):
        return Failure("auth", status, None, detail)
    return Failure("permanent", status, None, detail)


def system_prompt(request: ChatRequest) -> str:
    """The system text, plus JSON instructions when the vendor has no native schema mode."""
    system = request.system or ""
    if request.json_schema is not None and not request.native_schema:
        instructions = JSON_INSTRUCTIONS.format(schema=json.dumps(request.json_schema))
        system = f"{system}\n\n{instructions}" if system else instructions
    return system
