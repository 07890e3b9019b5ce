"""Every paid call of a run goes through here: journal, cache, budget reservation, call, record."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .budget import Budget
from .cache import DiskCache, cache_key
from .catalog import Model
from .client import Completion, UnifiedClient
from .errors import ProviderError, StructuredOutputError
from .providers.base import Message
from .state import StateManager


@dataclass
class Journal:
    """The paid calls of one project, written before their answers are used."""

    store: StateManager
    project_id: str
    budget: Budget
    # Keys with a replayable answer, read once per run: a fresh run never queries per call.
    replayable: set[str] = field(default_factory=set)

    async def load(self) -> None:
        self.replayable = await self.store.journal_keys(self.project_id)

    async def get(self, key: str) -> dict[str, Any] | None:
        if key not in self.replayable:
            return None
        return await self.store.journal_get(self.project_id, key)

    async def put(
        self, key: str, *, task_id: str, phase: str, cost_usd: float, entry: dict[str, Any]
    ) -> None:
        await self.store.journal_put(
            self.project_id,
            key,
            task_id=task_id,
            phase=phase,
            cost_usd=cost_usd,
            entry=entry,
            elapsed=self.budget.elapsed_seconds,
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
    ) -> None:
        self.client = client
        self.budget = budget
        self.cache = cache
        self.journal = journal

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
    ) -> Completion:
        key = cache_key(
            provider=model.provider,
            base_url=self.client.base_url(model),
            model=model.value,
            params={
                "max_tokens": max_tokens,
                "temperature": temperature,
                "schema": schema,
                "native_schema": schema is not None and model.json_schema,
            },
            messages=[{"role": m.role, "content": m.content} for m in messages],
            system=system,
            slot=slot,
        )
        if self.journal is not None:
            entry = await self.journal.get(key)
            if entry is not None:
                return _replay(entry, model)
        if self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                return _from_cache(hit, model)
        try:
            answer = await self.client.complete(
                model,
                messages,
                system=system,
                max_tokens=max_tokens,
                temperature=temperature,
                schema=schema,
                spend=self.budget.guard(phase),
            )
        except ProviderError as exc:
            if exc.spent_usd and self.journal is not None:
                # Paid for, but unusable: the spend must survive a crash, and a resume must
                # meet the same verdict instead of paying for it again.
                failure = {"error": type(exc).__name__, "message": str(exc)}
                await self.journal.put(
                    key, task_id=task_id, phase=phase, cost_usd=exc.spent_usd, entry=failure
                )
            raise
        entry = _entry(answer)
        writes = []
        if self.journal is not None:
            writes.append(
                self.journal.put(
                    key, task_id=task_id, phase=phase, cost_usd=answer.cost_usd, entry=entry
                )
            )
        if self.cache is not None:
            writes.append(self.cache.put(key, entry))
        # Two files, two connections: both writes go at once, and both finish before use.
        await asyncio.gather(*writes)
        return answer


def _entry(answer: Completion) -> dict[str, Any]:
    return {
        "text": answer.text,
        "parsed": answer.parsed,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "cost_usd": answer.cost_usd,
        "reported_model": answer.reported_model,
    }


def _replay(entry: dict[str, Any], model: Model) -> Completion:
    if "error" in entry:
        structured = entry["error"] == "StructuredOutputError"
        error = StructuredOutputError if structured else ProviderError
        raise error(
            entry["message"],
            model=model.value,
            provider=model.provider,
            spent_usd=entry["cost_usd"],
        )
    # The journal's cost was already counted in the project's spend; it is reported, not charged.
    return _completion(entry, model, cost=entry["cost_usd"], replayed=True)


def _from_cache(entry: dict[str, Any], model: Model) -> Completion:
    # A cached answer costs nothing now; what it cost when it was paid is not spent again.
    return _completion(entry, model, cost=0.0, from_cache=True)


def _completion(entry: dict[str, Any], model: Model, *, cost: float, **flags: bool) -> Completion:
    return Completion(
        text=entry["text"],
        parsed=entry.get("parsed"),
        model=model,
        provider=model.provider,
        input_tokens=int(entry.get("input_tokens", 0)),
        output_tokens=int(entry.get("output_tokens", 0)),
        cached_tokens=int(entry.get("cached_tokens", 0)),
        cost_usd=cost,
        latency_seconds=0.0,
        attempts=0,
        paid_calls=0,
        reported_model=entry.get("reported_model"),
        **flags,
    )
