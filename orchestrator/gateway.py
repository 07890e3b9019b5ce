"""Every paid call of a run goes through here: cache lookup, budget reservation, call, record."""

from __future__ import annotations

from typing import Any

from .budget import Budget
from .cache import DiskCache, cache_key
from .catalog import Model
from .client import Completion, UnifiedClient
from .providers.base import Message


class LLMGateway:
    """Asks models on behalf of the engine.

    ``slot`` names the purpose of a call within the run (task, iteration, role, repeat), so a
    deliberate repeat — a second evaluation, a later revision — is never answered from the cache
    entry of an earlier one, while the same slot in a later run or a resume is.
    """

    def __init__(self, client: UnifiedClient, budget: Budget, cache: DiskCache | None) -> None:
        self.client = client
        self.budget = budget
        self.cache = cache

    async def ask(
        self,
        model: Model,
        messages: list[Message],
        *,
        system: str | None,
        max_tokens: int,
        phase: str,
        slot: str,
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
        if self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                return _from_cache(hit, model)
        answer = await self.client.complete(
            model,
            messages,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            schema=schema,
            spend=self.budget.guard(phase),
        )
        if self.cache is not None:
            await self.cache.put(key, _to_cache(answer))
        return answer


def _to_cache(answer: Completion) -> dict[str, Any]:
    return {
        "text": answer.text,
        "parsed": answer.parsed,
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "cost_usd": answer.cost_usd,
        "reported_model": answer.reported_model,
    }


def _from_cache(entry: dict[str, Any], model: Model) -> Completion:
    # A cached answer costs nothing now; what it cost when it was paid is not spent again.
    return Completion(
        text=entry["text"],
        parsed=entry.get("parsed"),
        model=model,
        provider=model.provider,
        input_tokens=int(entry.get("input_tokens", 0)),
        output_tokens=int(entry.get("output_tokens", 0)),
        cached_tokens=int(entry.get("cached_tokens", 0)),
        cost_usd=0.0,
        latency_seconds=0.0,
        attempts=0,
        paid_calls=0,
        reported_model=entry.get("reported_model"),
        from_cache=True,
    )
