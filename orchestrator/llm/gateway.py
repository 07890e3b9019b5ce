"""Every paid call of a run goes through here: journal, cache, budget reservation, call, record."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.aio import uninterrupted
from orchestrator.errors import (
    ContextWindowError,
    ModelUnavailableError,
    ProviderError,
    StructuredOutputError,
    TruncatedAnswerError,
)
from orchestrator.llm.cache import CacheError, DiskCache, cache_key
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import Completion, UnifiedClient
from orchestrator.llm.context_window import sent_max_tokens
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import Budget, BudgetExceeded, CallsStopped, Reservation
from orchestrator.money.ledger import CallRow, Hold, Ledger
from orchestrator.money.units import nanos_to_usd
from orchestrator.observe.audit import AuditLog
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.store.journal import CallJournal
from orchestrator.store.lease import Lease

log = logging.getLogger(__name__)

# Failures that are a paid answer's final verdict, journaled so a resume does not pay again.
_VERDICTS = (StructuredOutputError, TruncatedAnswerError)
_VERDICTS_BY_NAME = {error.__name__: error for error in _VERDICTS}


@dataclass
class Journal:
    """The paid calls of one project, written before their answers are used; each row settles
    its call's attempts in the ``ledger`` in the same transaction."""

    store: CallJournal
    project_id: str
    budget: Budget
    ledger: Ledger
    # Keys with a replayable answer, read once per run: a fresh run never queries per call.
    replayable: set[str] = field(default_factory=set)

    async def load(self) -> None:
        self.replayable = await self.store.keys(self.project_id)

    async def get(self, key: str) -> dict[str, Any] | None:
        if key not in self.replayable:
            return None
        return await self.store.get(self.project_id, key)

    async def forget(self, key: str) -> None:
        """Keep the call's spend but not its answer: a resume asks again."""
        await self.store.forget(self.project_id, key)
        self.replayable.discard(key)

    async def put(
        self,
        key: str,
        holds: Sequence[Hold],
        *,
        task_id: str,
        phase: str,
        model: str,
        entry: dict[str, Any] | None,
    ) -> None:
        """Settle ``holds`` and add what they cost to the row under ``key`` of a call to
        ``model`` (its catalog key), with the answer ``entry`` (None: spend with nothing to
        replay). A row of a call that paid nothing and left nothing to replay is not written."""
        elapsed = self.budget.elapsed_seconds
        await self.ledger.settle(
            holds, CallRow(self.project_id, key, task_id, phase, model, entry, elapsed)
        )


class LLMGateway:
    """Asks models on behalf of the engine.

    ``slot`` names the purpose of a call within the run (task, iteration, role, repeat), so a
    deliberate repeat — a second evaluation, a later revision — is never answered from the cache
    entry of an earlier one, while the same slot in a later run or a resume is. A resumed run
    replays what the journal holds and pays only for what it does not.
    """

    def __init__(
        self,
        client: UnifiedClient,
        budget: Budget,
        cache: DiskCache | None,
        journal: Journal | None = None,
        lease: Lease | None = None,
        audit: AuditLog | None = None,
        project_id: str | None = None,
        telemetry: TelemetryCollector | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.client = client
        self.stopping = stopping
        self.budget = budget
        self.cache = cache
        self.journal = journal
        self.lease = lease
        self.audit = audit
        self.project_id = project_id
        # Fed here, where every paid call passes and answers from the cache or the journal
        # (which measure nothing) are told apart from calls.
        self.telemetry = telemetry if telemetry is not None else TelemetryCollector()
        self._pending: set[asyncio.Task[None]] = set()
        # Requests being paid for now, by what is sent: a byte-identical one shares the answer.
        self._in_flight: dict[tuple[Any, ...], _InFlight] = {}

    async def ask(
        self,
        model: Model,
        messages: list[Message],
        *,
        system: str | None,
        max_tokens: int,
        phase: str,
        slot: str,
        task_id: str = "",
        schema: dict[str, Any] | None = None,
        temperature: float | None = None,
        usable: Callable[[Completion], object] | None = None,
    ) -> Completion:
        """The answer to this request: replayed from the journal, from the cache, shared with
        the same request in flight, or paid for. ``usable`` checks it (raising if it cannot be
        used): an answer it refuses is kept as spend but neither cached nor journaled as an
        answer, so a rerun or a resume asks again instead of replaying it."""
        # Keyed on the request as it is sent: a limit the catalog caps, or another API version,
        # is another request, never served an answer cut off under the old one.
        key = cache_key(
            provider=model.provider,
            base_url=self.client.endpoint_identity(model),
            model=model.value,
            params={
                "max_tokens": sent_max_tokens(model, max_tokens),
                "api_version": self.client.api_version(model),
                "temperature": temperature,
                "schema": schema,
                "native_schema": schema is not None and model.json_schema,
            },
            messages=[{"role": m.role, "content": m.content} for m in messages],
            system=system,
            slot=slot,
        )
        answer = await self._answer(
            key, model, messages, system=system, max_tokens=max_tokens, phase=phase,
            slot=slot, task_id=task_id, schema=schema, temperature=temperature,
        )  # fmt: skip
        if usable is not None:
            try:
                usable(answer)
            except Exception:
                await uninterrupted(self._forget(key))
                raise
        return answer

    async def _answer(
        self,
        key: str,
        model: Model,
        messages: list[Message],
        *,
        system: str | None,
        max_tokens: int,
        phase: str,
        slot: str,
        task_id: str,
        schema: dict[str, Any] | None,
        temperature: float | None,
    ) -> Completion:
        if self.journal is not None:
            entry = await self.journal.get(key)
            if entry is not None:
                log.debug("%s on %s: replayed from the journal (paid before)", slot, model.value)
                try:
                    replayed = _replay(entry, model)
                except ProviderError as verdict:
                    self._audit(model, task_id, phase, slot, "journal", error=verdict)
                    raise
                self._audit(model, task_id, phase, slot, "journal", answer=replayed)
                return replayed
        if self.cache is not None:
            hit = await self._cache_lookup(key)
            if hit is not None:
                log.debug("%s on %s: cache hit", slot, model.value)
                cached = _from_cache(hit, model)
                self._audit(model, task_id, phase, slot, "cache", answer=cached)
                return cached
            log.debug("%s on %s: cache miss", slot, model.value)
        if self.lease is not None:
            self.lease.check()  # a run that lost its project pays for nothing more
        if self.stopping is not None and self.stopping.is_set():
            raise CallsStopped("the run is stopping: no new call starts")
        identity = _identity(model, messages, max_tokens, system, schema, temperature)
        while (same := self._in_flight.get(identity)) is not None:
            await same.done.wait()
            if same.answer is not None:
                return await self._share(same.answer, model, key, task_id, phase, slot)
            # It failed or was cancelled: this call asks for itself (perhaps leading others).
        leader = _InFlight()
        self._in_flight[identity] = leader
        try:
            leader.answer = await self._pay(
                model, messages, system=system, max_tokens=max_tokens, phase=phase, slot=slot,
                task_id=task_id, schema=schema, temperature=temperature, key=key,
            )  # fmt: skip
            return leader.answer
        finally:
            del self._in_flight[identity]
            leader.done.set()

    async def _share(
        self, answer: Completion, model: Model, key: str, task_id: str, phase: str, slot: str
    ) -> Completion:
        """The answer of a byte-identical request that was in flight: paid once, by it. It is
        journaled under this call's key too (at no cost), so a resume replays it here."""
        log.debug(
            "%s on %s: the same request was in flight; its answer is shared", slot, model.value
        )
        shared = replace(answer, cost_nanos=0, attempts=0, paid_calls=0, latency_seconds=0.0)
        self._audit(model, task_id, phase, slot, "shared", answer=shared)
        if self.journal is not None:
            put = self.journal.put(
                key, [], task_id=task_id, phase=phase, model=model.key, entry=_entry(shared)
            )
            await uninterrupted(put)
        return shared

    async def _pay(
        self,
        model: Model,
        messages: list[Message],
        *,
        system: str | None,
        max_tokens: int,
        phase: str,
        slot: str,
        task_id: str,
        schema: dict[str, Any] | None,
        temperature: float | None,
        key: str,
    ) -> Completion:
        """Ask the vendor, paying for it under ``key``."""
        # This call owns its attempts' money: whatever ends it (an answer, an error, a timeout,
        # a cancellation), what the budget was charged is journaled under its key, once. The
        # steps between the vendor's answer and that row are synchronous: nothing can cut in.
        meter = _Meter(
            self.budget, self.journal, task_id=task_id, phase=phase, model=model.key, key=key
        )
        try:
            answer = await self.client.complete(
                model,
                messages,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                schema=schema,
                spend=meter,
            )
        except BaseException as exc:
            self._record_failure(exc, model, task_id, phase, slot, meter)
            if self.journal is not None:
                await uninterrupted(meter.finish(_failure_entry(exc, meter)))
            raise
        answer = meter.priced(answer)
        entry = self._record_answer(answer, model, task_id, phase, slot, meter, key)
        if self.journal is not None:
            # The journal is what a resume relies on: written before the answer is used.
            await uninterrupted(meter.finish(entry))
        return answer

    def _record_failure(
        self,
        exc: BaseException,
        model: Model,
        task_id: str,
        phase: str,
        slot: str,
        meter: _Meter,
    ) -> None:
        """Tell the caller, the audit and the telemetry what a paid call that failed cost."""
        if isinstance(exc, ProviderError | BudgetExceeded):
            exc.spent_nanos = meter.charged_nanos
        self._audit(model, task_id, phase, slot, "paid", meter=meter, error=exc)
        # Refused before sending (circuit open, prompt too long): no call to measure.
        not_sent = (ModelUnavailableError, ContextWindowError)
        if isinstance(exc, ProviderError) and not isinstance(exc, not_sent):
            self.telemetry.record_call(model, 0.0, ok=False)

    def _record_answer(
        self,
        answer: Completion,
        model: Model,
        task_id: str,
        phase: str,
        slot: str,
        meter: _Meter,
        key: str,
    ) -> dict[str, Any]:
        """Audit, measure and log a paid answer, start its cache write in the background, and
        return its journal entry."""
        self._audit(model, task_id, phase, slot, "paid", meter=meter, answer=answer)
        self.telemetry.record_call(model, answer.latency_seconds, ok=True, cost_usd=answer.cost_usd)
        log.debug(
            "%s on %s: paid $%.6f (%d tokens in, %d out)",
            slot,
            model.value,
            answer.cost_usd,
            answer.input_tokens,
            answer.output_tokens,
        )
        entry = _entry(answer)
        if self.cache is not None:
            # The cache only saves later runs money: it is written in the background (and
            # flushed at the end of the run), off the path to the next call.
            write = asyncio.create_task(self._cache_put(key, entry))
            self._pending.add(write)
            write.add_done_callback(self._pending.discard)
        return entry

    def _audit(
        self,
        model: Model,
        task_id: str,
        phase: str,
        slot: str,
        source: str,
        *,
        meter: _Meter | None = None,
        answer: Completion | None = None,
        error: BaseException | None = None,
    ) -> None:
        """One audit record per call: where its answer came from and what it cost."""
        if self.audit is None:
            return
        data: dict[str, Any] = {
            "phase": phase, "slot": slot, "model": model.value, "provider": model.provider,
            # paid (a vendor call); cache, journal or shared (the answer of the same request
            # in flight): nothing paid now
            "source": source,
            "reserved_usd": nanos_to_usd(meter.reserved_nanos) if meter else 0.0,
            "settled_usd": nanos_to_usd(meter.charged_nanos) if meter else 0.0,
        }  # fmt: skip
        if answer is not None:
            data.update(
                outcome="answered",
                input_tokens=answer.input_tokens,
                output_tokens=answer.output_tokens,
                cached_tokens=answer.cached_tokens,
                cache_write_tokens=answer.cache_write_tokens,
                attempts=answer.attempts,
                # More than one: a repair request or a continuation was needed.
                paid_calls=answer.paid_calls,
                structured=answer.parsed is not None,
                latency_ms=round(answer.latency_seconds * 1000, 1),
                reported_model=answer.reported_model,
                stop_reason=answer.stop_reason,
                notes=list(answer.notes),
            )
        elif isinstance(error, asyncio.CancelledError):
            data.update(outcome="cancelled")
        elif error is not None:
            refused = isinstance(error, BudgetExceeded)
            data.update(
                outcome="budget_refused" if refused else "failed",
                error=type(error).__name__,
                message=str(error),
                attempts=getattr(error, "attempts", None),
            )
        self.audit.record("call", data, project_id=self.project_id, task_id=task_id or None)

    async def _forget(self, key: str) -> None:
        """Keep no answer under ``key`` (its spend stays in the journal)."""
        await self.flush()  # its cache write may still be on its way
        if self.cache is not None:
            try:
                await self.cache.delete(key)
            except CacheError as exc:
                self._drop_cache(exc)
        if self.journal is not None:
            await self.journal.forget(key)

    async def flush(self) -> None:
        """Wait for the cache writes still in progress."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _cache_lookup(self, key: str) -> dict[str, Any] | None:
        assert self.cache is not None
        try:
            return await self.cache.get(key)
        except CacheError as exc:
            self._drop_cache(exc)
            return None

    async def _cache_put(self, key: str, entry: dict[str, Any]) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.put(key, entry)
        except CacheError as exc:
            self._drop_cache(exc)

    def _drop_cache(self, exc: CacheError) -> None:
        # The cache only saves money; losing it mid-run must not stop paid work.
        log.warning("cache disabled for the rest of the run: %s", exc)
        self.cache = None


class _Meter:
    """The spend guard of one call: holds each attempt's worst case (in the shared ledger when
    the run has one, which then decides; the run's budget shows it) and remembers what it
    charged, for the journal and the task's cost.

    An attempt's settlement is written when the call next waits for anything (``flush``: a
    retry's delay, a slot, the next attempt's reservation) with the call's journal row, and
    the last one with the answer: one transaction for a call answered at once, and a call never
    waits while holding money it is done with.
    """

    def __init__(
        self,
        budget: Budget,
        journal: Journal | None,
        *,
        task_id: str,
        phase: str,
        model: str,
        key: str,
    ) -> None:
        self.budget = budget
        self.journal = journal
        self.key = key
        # What the call's hold and its journal row say of it: ``model`` its catalog key.
        self.call = {"task_id": task_id, "phase": phase, "model": model}
        self.charged_nanos = 0
        self.reserved_nanos = 0  # the worst cases held, for the audit
        self.holds: list[Hold] = []  # every hold of the call
        self._unwritten: list[Hold] = []  # settled here, not yet in the ledger
        self._hold_of: dict[int, Hold] = {}

    async def reserve(self, worst_case_nanos: int) -> Reservation:
        phase = self.call["phase"]
        if self.journal is None:
            ticket = await self.budget.acquire(worst_case_nanos, phase)
        else:
            ledger = self.journal.ledger
            await ledger.follow_cap(self.budget.max_nanos)
            hold = ledger.new_hold(worst_case_nanos)
            self.holds.append(hold)  # before reserving: settled whatever interrupts it
            try:
                await ledger.reserve(hold, journal_key=self.key, **self.call)
            except BaseException:
                hold.actual_nanos = 0
                self._unwritten.append(hold)
                raise
            ticket = self.budget.track(worst_case_nanos, phase)
            self._hold_of[id(ticket)] = hold
        self.reserved_nanos += worst_case_nanos
        return ticket

    def settle(self, ticket: Reservation, actual_nanos: int) -> None:
        self.budget.settle(ticket, actual_nanos)
        self.charged_nanos += actual_nanos
        self._close(ticket, actual_nanos)

    def release(self, ticket: Reservation) -> None:
        self.budget.release(ticket)
        self._close(ticket, 0)

    def priced(self, answer: Completion) -> Completion:
        """``answer`` at what this call charged: every attempt it paid, not only the last."""
        return replace(answer, cost_nanos=self.charged_nanos)

    async def flush(self) -> None:
        if self.journal is not None and self._unwritten:
            done, self._unwritten = self._unwritten, []
            await uninterrupted(self.journal.put(self.key, done, entry=None, **self.call))

    async def finish(self, entry: dict[str, Any] | None) -> None:
        """Settle what the call has not written yet, with its journal row and ``entry`` (the
        answer, a paid verdict, or None); a hold still open was never handed to a request."""
        assert self.journal is not None
        unwritten = [*self._unwritten, *(h for h in self.holds if h.actual_nanos is None)]
        self._unwritten = []
        await self.journal.put(self.key, unwritten, entry=entry, **self.call)

    def _close(self, ticket: Reservation, actual_nanos: int) -> None:
        hold = self._hold_of.pop(id(ticket), None)
        if hold is not None:
            hold.actual_nanos = actual_nanos
            self._unwritten.append(hold)


@dataclass
class _InFlight:
    """A request being paid for; ``answer`` is set if it was answered, before ``done``."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    answer: Completion | None = None


def _identity(
    model: Model,
    messages: Sequence[Message],
    max_tokens: int,
    system: str | None,
    schema: dict[str, Any] | None,
    temperature: float | None,
) -> tuple[Any, ...]:
    """What makes two requests byte-identical: the model, every output-affecting setting and
    the messages (not the slot, which only keeps deliberate repeats apart in the journal)."""
    shape = None if schema is None else json.dumps(schema, sort_keys=True)
    sent = (model.key, sent_max_tokens(model, max_tokens), system, shape, temperature)
    return (*sent, *((m.role, m.content) for m in messages))


def _failure_entry(exc: BaseException, meter: _Meter) -> dict[str, Any] | None:
    """The journal entry of a paid call that failed. Paid for but unusable (a verdict): a resume
    meets the same verdict instead of paying again. Other failures (a timeout, a cancellation, a
    repair that no longer fitted) leave spend with nothing to replay (None): a resume asks again."""
    verdict = {"error": type(exc).__name__, "message": str(exc)}
    return verdict if isinstance(exc, _VERDICTS) and meter.charged_nanos else None


def _entry(answer: Completion) -> dict[str, Any]:
    return {
        "text": answer.text,
        "parsed": answer.parsed,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "cache_write_tokens": answer.cache_write_tokens,
        "cost_nanos": answer.cost_nanos,
        "reported_model": answer.reported_model,
        "stop_reason": answer.stop_reason,
        "notes": list(answer.notes),
    }


def _replay(entry: dict[str, Any], model: Model) -> Completion:
    if "error" in entry:
        error = _VERDICTS_BY_NAME.get(entry["error"], ProviderError)
        raise error(
            entry["message"],
            model=model.value,
            provider=model.provider,
            spent_nanos=entry["cost_nanos"],
        )
    # The journal's cost was already counted in the project's spend; it is reported, not charged.
    return _completion(entry, model, cost_nanos=entry["cost_nanos"], replayed=True)


def _from_cache(entry: dict[str, Any], model: Model) -> Completion:
    # A cached answer costs nothing now; what it cost when it was paid is not spent again.
    return _completion(entry, model, cost_nanos=0, from_cache=True)


def _completion(
    entry: dict[str, Any], model: Model, *, cost_nanos: int, **flags: bool
) -> Completion:
    return Completion(
        text=entry["text"],
        parsed=entry.get("parsed"),
        model=model,
        provider=model.provider,
        input_tokens=int(entry.get("input_tokens", 0)),
        output_tokens=int(entry.get("output_tokens", 0)),
        cached_tokens=int(entry.get("cached_tokens", 0)),
        cache_write_tokens=int(entry.get("cache_write_tokens", 0)),
        cost_nanos=cost_nanos,
        latency_seconds=0.0,
        attempts=0,
        paid_calls=0,
        reported_model=entry.get("reported_model"),
        stop_reason=entry.get("stop_reason"),
        notes=tuple(entry.get("notes", ())),
        **flags,
    )
