"""``UnifiedClient``: one async call to any catalog model, with our retries, health and limits."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import ConfigError, ModelUnavailableError, NoProvidersError, ProviderError
from orchestrator.llm import providers
from orchestrator.llm.answers import Answer, parsed_answer
from orchestrator.llm.catalog import Catalog, Model, ProviderSpec
from orchestrator.llm.context_window import fitted, sent_max_tokens, worst_case_nanos
from orchestrator.llm.failures import provider_error, vendor_failure
from orchestrator.llm.health import HealthRegistry
from orchestrator.llm.local import INSTALL_COMMAND
from orchestrator.llm.providers.base import (
    ChatRequest,
    Endpoint,
    Failure,
    Message,
    ProviderAdapter,
    RawCompletion,
)
from orchestrator.llm.retry import RetryPolicy
from orchestrator.money.budget import BudgetExceeded
from orchestrator.money.units import nanos_to_usd
from orchestrator.settings import load_environment
from orchestrator.text.schemas import load_off_loop, schema_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One normalised answer; tokens and cost cover all paid calls behind it (repair included)."""

    text: str
    parsed: Any
    model: Model
    provider: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_nanos: int  # what the answer cost, exactly: what the books add up
    latency_seconds: float
    attempts: int
    paid_calls: int
    usage_estimated: bool = False
    reported_model: str | None = None
    from_cache: bool = False
    replayed: bool = False  # answered from the project's journal: paid before, not again
    stop_reason: str | None = None  # the vendor's word for why the (last part of the) answer ended
    # What it took to get a whole answer, e.g. "cut off at 4096 output tokens; continued once".
    notes: tuple[str, ...] = ()
    cache_write_tokens: int = 0  # prompt tokens written to the vendor's cache (Anthropic)

    @property
    def cost_usd(self) -> float:
        """``cost_nanos`` for a person to read."""
        return nanos_to_usd(self.cost_nanos)


class SpendGuard(Protocol):
    """Holds money for one paid call before it is made; see ``Budget.guard``."""

    async def reserve(self, worst_case_nanos: int) -> Any:
        """Return a ticket, or raise (e.g. ``BudgetExceeded``) so the call is not made."""
        ...

    def settle(self, ticket: Any, actual_nanos: int) -> None: ...

    def release(self, ticket: Any) -> None: ...

    async def flush(self) -> None:
        """Make what earlier attempts settled or released final where others can see it;
        awaited before the call waits for anything (a slot, a retry's delay), so a call never
        holds money while it waits."""
        ...


MessagesLike = str | Sequence[Message | Mapping[str, str]]


class UnifiedClient:
    """Calls any model in the catalog through its vendor's official SDK.

    Keys come from ``env`` (default: the process environment) and a ``.env`` file that never
    overrides what is already set. Providers without a key are skipped. ``max_concurrency`` bounds
    the calls in flight across every provider.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        catalog_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        dotenv_path: str | os.PathLike[str] | None = None,
        max_concurrency: int = 3,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        failure_threshold: int = 3,
        cooldown: float = 60.0,
        adapter_factory: Callable[[str, Endpoint], ProviderAdapter] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        self.env = load_environment(env, dotenv_path)
        self.catalog = catalog if catalog is not None else Catalog.load(catalog_path, env=self.env)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.health = HealthRegistry(failure_threshold, cooldown, self.retry.clock.now)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._last_failure: dict[str, str] = {}  # model key or provider -> last failure
        self._mismatches: set[tuple[str, str]] = set()  # (server, reported) warned already
        self._adapters: dict[str, ProviderAdapter] = {}
        # A seam for in-process providers (benchmarks, engine tests); default: the vendor SDKs.
        self._adapter_factory = adapter_factory
        self._adapter_locks: dict[str, asyncio.Lock] = {}

    # -- what can be called -------------------------------------------------------------------
    def usable_providers(self) -> list[str]:
        return self.catalog.usable_providers(self.env)

    def secrets(self) -> set[str]:
        """The API keys this client was given: what logs, audits and metrics must never show."""
        keys = (spec.api_key(self.env) for spec in self.catalog.providers.values())
        return {key for key in keys if key}

    def available_models(self) -> list[Model]:
        """Models whose provider has a key, in catalog order (healthy or not)."""
        usable = set(self.usable_providers())
        return [m for m in self.catalog.models if m.provider in usable]

    def require_providers(self) -> None:
        """Raise ``NoProvidersError`` naming the variables to set when no provider has a key."""
        if not self.usable_providers():
            names = ", ".join(self.catalog.key_variables())
            raise NoProvidersError(
                f"no LLM provider is configured: set at least one of {names} (see .env.example), "
                "or add a keyless OpenAI-compatible endpoint such as a local Ollama to your "
                f"catalog file (--catalog), or run offline on the embedded model: {INSTALL_COMMAND}"
            )

    def is_healthy(self, model: Model | str) -> bool:
        m = self.catalog.resolve(model)
        return self.health.available(m.provider, m.key)

    def api_health(self) -> dict[str, bool]:
        """Availability of every usable model now, keyed by model id (``provider/id`` when two
        providers serve the same id)."""
        models = self.available_models()
        ids = [m.value for m in models]
        return {(m.value if ids.count(m.value) == 1 else m.key): self.is_healthy(m) for m in models}

    # -- calling ------------------------------------------------------------------------------
    async def complete(
        self,
        model: Model | str,
        messages: MessagesLike,
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        schema: dict[str, Any] | None = None,
        spend: SpendGuard | None = None,
    ) -> Completion:
        """Ask ``model``; with ``schema``, the answer is validated and repaired once if needed.

        With ``spend``, every paid call first reserves its worst-case cost there and is not made
        when the reservation is refused; the reservation is settled to the actual cost after.
        """
        m = self.catalog.resolve(model)
        if schema is not None:
            await load_off_loop()
            problem = schema_problem(schema)
            if problem is not None:
                raise ConfigError(f"the requested JSON Schema is invalid: {problem}")
        request = ChatRequest(
            messages=_messages(messages),
            max_tokens=sent_max_tokens(m, max_tokens),
            system=system,
            temperature=temperature,
            json_schema=schema,
            native_schema=schema is not None and m.json_schema,
        )
        request = fitted(m, request)
        started = time.monotonic()
        paid: list[RawCompletion] = []

        async def call(sent: ChatRequest) -> tuple[RawCompletion, int]:
            return await self._call(m, sent, spend)

        try:
            answer = await parsed_answer(m, request, call, paid)
        except (ProviderError, BudgetExceeded) as exc:
            exc.spent_nanos += self._cost(m, paid)  # what was answered before it failed is paid
            raise
        return self._completion(m, answer, paid, time.monotonic() - started)

    def _completion(
        self, model: Model, answer: Answer, paid: list[RawCompletion], latency: float
    ) -> Completion:
        """``answer`` as the caller gets it, its tokens and cost summed over ``paid``."""
        return Completion(
            text=answer.text,
            parsed=answer.parsed,
            model=model,
            provider=model.provider,
            input_tokens=sum(r.input_tokens for r in paid),
            output_tokens=sum(r.output_tokens for r in paid),
            cached_tokens=sum(r.cached_tokens for r in paid),
            cache_write_tokens=sum(r.cache_write_tokens for r in paid),
            cost_nanos=self._cost(model, paid),
            latency_seconds=latency,
            attempts=answer.attempts,
            paid_calls=len(paid),
            usage_estimated=any(r.usage_estimated for r in paid),
            reported_model=paid[-1].reported_model,
            stop_reason=paid[-1].stop_reason,
            notes=(*answer.notes, *self._another_model(model, paid[-1].reported_model)),
        )

    def _another_model(self, model: Model, reported: str | None) -> list[str]:
        """A note when the server says another model answered than the one asked for (a base
        URL pointed at a server that serves something else), on every such answer; costs stay at
        the requested model's prices, which may overstate them.

        Warned once per server and model that answered: one local server behind OPENAI_BASE_URL
        answers for every model id of the vendor, and one warning says all there is to say."""
        if reported is None or same_model(model.id, reported):
            return []
        url = self.base_url(model)
        server = url or f"{model.provider}'s default endpoint"
        note = (
            f"answered by {reported!r}, not {model.id!r}: the server at {server} serves another "
            "model (costs are counted at the requested model's prices)"
        )
        said = (url or model.provider, reported)
        if said not in self._mismatches:
            self._mismatches.add(said)
            log.warning(
                "the server at %s answers with %r, not the model asked for (%r): it serves "
                "another model; costs are counted at the requested models' prices, and each "
                "such answer is noted",
                server, reported, model.id,
            )  # fmt: skip
        return [note]

    async def _call(
        self, model: Model, request: ChatRequest, spend: SpendGuard | None
    ) -> tuple[RawCompletion, int]:
        """One answer, retrying what our policy retries. Returns the answer and attempts made."""
        adapter = await self._adapter(model)
        worst_case = worst_case_nanos(model, request)
        attempt, wait = 0, 0.0
        while True:
            attempt += 1
            if spend is not None:
                await spend.flush()  # before any wait below: never hold money while waiting
            if wait:
                await self.retry.clock.sleep(wait)
            if not self.health.admit(model.provider, model.key):
                last = self._last_failure.get(model.key) or self._last_failure.get(model.provider)
                cause = f" (last: {last})" if last else ""
                raise ModelUnavailableError(
                    f"{model.value} is cooling down after repeated failures{cause}",
                    model=model.value,
                    provider=model.provider,
                    retryable=True,
                    attempts=attempt - 1,
                )
            ticket = None
            try:
                async with self._slots:
                    # Reserved once a slot is ours, so queued calls hold no money meanwhile.
                    if spend is not None:
                        ticket = await spend.reserve(worst_case)
                    raw = await self._attempt(adapter, model, request)
            except BaseException as exc:
                failure = vendor_failure(adapter, exc)
                if spend is not None and ticket is not None:
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    if cancelled or (failure is not None and failure.maybe_billed):
                        # Never under-count: a request we stopped waiting for (timed out, or
                        # cancelled by Ctrl-C or the deadline) may still be billed.
                        spend.settle(ticket, worst_case)
                    else:
                        spend.release(ticket)  # errors and refused requests are not billed
                if failure is None:
                    raise
                self._record_failure(model, failure)
                if not self.retry.should_retry(failure, attempt):
                    raise provider_error(model, failure, attempt) from exc
                wait = self.retry.delay(failure, attempt)
                what = f"HTTP {failure.status}" if failure.status else failure.detail
                log.debug("%s: %s; retry %d in %.2fs", model.value, what, attempt, wait)
                continue
            finally:
                # A trial let through an open breaker ends with this attempt, however it ends.
                self.health.end_trial(model.provider, model.key)
            if spend is not None:
                spend.settle(ticket, self._cost(model, [raw]))
            self.health.model_breaker(model.key).record_success()
            self.health.provider_breaker(model.provider).record_success()
            return raw, attempt

    async def _attempt(
        self, adapter: ProviderAdapter, model: Model, request: ChatRequest
    ) -> RawCompletion:
        """One request, within the provider's time limit: from the start for a whole answer,
        from the latest piece for a streamed one (a slow model is cut off only when it stalls,
        not for taking its time, and never asked again from scratch for it)."""
        limit = self.attempt_timeout(model)
        async with asyncio.timeout(limit) as deadline:
            if not getattr(getattr(adapter, "endpoint", None), "stream", False):
                return await adapter.complete(model.value, request)
            loop = asyncio.get_running_loop()

            def alive() -> None:
                deadline.reschedule(loop.time() + limit)

            return await adapter.complete(model.value, request, alive)

    def _record_failure(self, model: Model, failure: Failure) -> None:
        # Kept so that a call refused by an open breaker can say what the real failure was.
        what = f"HTTP {failure.status}" if failure.status else failure.detail
        self._last_failure[model.key] = self._last_failure[model.provider] = what
        if failure.kind == "auth":
            self.health.provider_breaker(model.provider).trip()
        elif failure.kind == "connection":
            self.health.provider_breaker(model.provider).record_failure()
        elif failure.kind == "transient":
            self.health.model_breaker(model.key).record_failure()
        # 429 means "slow down", not "down"; 400/404/422 are our request's fault.

    @staticmethod
    def _cost(model: Model, paid: list[RawCompletion]) -> int:
        """In nano-dollars: each paid request is billed on its own."""
        return sum(
            model.price.cost_nanos(
                r.input_tokens, r.output_tokens, r.cached_tokens, r.cache_write_tokens
            )
            for r in paid
        )

    def base_url(self, model: Model | str) -> str | None:
        """The endpoint ``model`` is called at, as configured now."""
        m = self.catalog.resolve(model)
        return self.catalog.provider_of(m).base_url(self.env)

    def attempt_timeout(self, of: Model | ProviderSpec) -> float:
        """Seconds one attempt at ``of``'s provider may take: the catalog's ``timeout`` for the
        provider, else the client's."""
        spec = of if isinstance(of, ProviderSpec) else self.catalog.provider_of(of)
        return spec.timeout if spec.timeout is not None else self.timeout

    def endpoint_identity(self, model: Model | str) -> str | None:
        """What answers ``model``'s calls, for cache and journal keys: the base URL, or the
        provider's stable identity where its URL changes from run to run."""
        m = self.catalog.resolve(model)
        return self.catalog.provider_of(m).identity or self.base_url(m)

    def api_version(self, model: Model | str) -> str | None:
        """The API version ``model``'s requests ask for (Gemini), part of every cache key."""
        return self.catalog.provider_of(self.catalog.resolve(model)).api_version

    def preload(self, models: Iterable[Model | str] | None = None) -> None:
        """Start importing, off the event loop, the vendor SDKs that ``models`` are called
        through (default: every usable model), so that calls do not wait for them on the loop.
        A model listed more than once weighs more: its SDK is wanted sooner."""
        if self._adapter_factory is not None:
            return
        chosen = self.available_models() if models is None else map(self.catalog.resolve, models)
        providers.preload(Counter(self.catalog.provider_of(m).kind for m in chosen))

    async def _adapter(self, model: Model) -> ProviderAdapter:
        adapter = self._adapters.get(model.provider)
        if adapter is not None:
            return adapter
        spec = self.catalog.provider_of(model)
        endpoint = self._endpoint(spec)
        # One lock per provider: a call to a provider whose SDK is already imported never
        # waits behind another provider's import.
        async with self._adapter_locks.setdefault(model.provider, asyncio.Lock()):
            adapter = self._adapters.get(model.provider)  # made while this call waited
            if adapter is None:
                if self._adapter_factory is not None:
                    adapter = self._adapter_factory(spec.kind, endpoint)
                else:
                    adapter = await providers.load_adapter(spec.kind, endpoint)
                self._adapters[model.provider] = adapter
        return adapter

    def _endpoint(self, spec: ProviderSpec) -> Endpoint:
        key = spec.api_key(self.env)
        if key is None:
            names = " or ".join(spec.key_env)
            raise NoProvidersError(f"provider '{spec.name}' has no API key: set {names}")
        return Endpoint(
            provider=spec.name,
            base_url=spec.base_url(self.env),
            api_key=key,
            timeout=self.attempt_timeout(spec),
            api_version=spec.api_version,
            stream=spec.stream,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    async def aclose(self) -> None:
        adapters, self._adapters = list(self._adapters.values()), {}
        # Shielded so that a Ctrl-C arriving during shutdown still closes every connection pool.
        await asyncio.shield(
            asyncio.gather(*(a.aclose() for a in adapters), return_exceptions=True)
        )

    async def __aenter__(self) -> UnifiedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _messages(messages: MessagesLike) -> tuple[Message, ...]:
    if isinstance(messages, str):
        return (Message("user", messages),)
    result = []
    for item in messages:
        if isinstance(item, Message):
            result.append(item)
        else:
            role = item.get("role", "user")
            if role not in ("user", "assistant"):
                raise ConfigError(f"message role must be 'user' or 'assistant', not {role!r}")
            result.append(Message(role, item["content"]))  # type: ignore[arg-type]
    if not result:
        raise ConfigError("a request needs at least one message")
    return tuple(result)


def same_model(requested: str, reported: str) -> bool:
    """Whether ``reported`` names the requested model: vendors answer under a dated or
    versioned name (``gpt-4o`` as ``gpt-4o-2024-08-06``, Gemini as ``models/...``)."""
    asked = requested.lower().removeprefix("models/")
    said = reported.lower().removeprefix("models/")
    return said == asked or said.startswith(asked) or asked.startswith(said)
