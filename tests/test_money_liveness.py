"""No run ever waits on money its own calls hold: each attempt's hold is settled when the attempt
ends (in the shared ledger too), a call that can never fit is refused at once, and any wait for
room is for calls in flight, bounded, and said at -v."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time

import pytest
from conftest import FAST_RETRY, fake_env
from fake_provider import RecordedRequest, Reply
from scripted_llm import ScriptedLLM
from test_engine import as_tasks, prose_task

from orchestrator import Budget, BudgetExceeded, Orchestrator, ProviderError, UnifiedClient
from orchestrator.llm.gateway import Journal, LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.ledger import Ledger
from orchestrator.money.units import usd_to_nanos
from orchestrator.run.tasks import ProjectState, ProjectStatus
from orchestrator.store.state import StateManager

OWNER = "tests:1:liveness"


async def journaled_gateway(store: StateManager, client: UnifiedClient, max_usd: float):
    """A gateway journaling project "p" (budget ``max_usd``) into ``store``, with its ledger."""
    await store.projects.create(
        "p", description="d", criteria="c", max_usd=max_usd, max_time_seconds=600.0, settings={}
    )
    assert await store.holders.claim("p", OWNER, 600.0) is None
    ledger = Ledger(store.books, "p", OWNER)
    await ledger.open(usd_to_nanos(max_usd), None, None)
    budget = Budget(max_usd=max_usd, max_time_seconds=600)
    return LLMGateway(client, budget, None, Journal(store.journal, "p", budget, ledger))


async def ask(gateway: LLMGateway, n: int, max_tokens: int = 1000, tasks: int | None = None):
    """Call ``n``: its own question, charged to task ``t{n}`` (or ``t{n % tasks}``)."""
    return await gateway.ask(
        gateway.client.catalog.resolve("gpt-4o-mini"),
        [Message("user", f"question {n}")],
        system=None,
        max_tokens=max_tokens,
        phase="generation",
        slot=f"call-{n}",
        task_id=f"t{n if tasks is None else n % tasks}",
    )


async def books(store: StateManager, project_id: str = "p") -> tuple[int, int, int]:
    """(the project's ledger spend, what it still holds, its journal's sum), in nano-dollars."""
    row = (await store.books.ledger([f"project:{project_id}"]))[f"project:{project_id}"]
    journal = await store._store.run(
        "SELECT COALESCE(SUM(cost_nanos), 0) FROM journal WHERE project_id = ?", (project_id,)
    )
    return row.spent_nanos, row.reserved_nanos, int(journal[0][0])


def first_ask_rate_limited(rec: RecordedRequest) -> Reply:
    """Every call's first request is refused with a 429 (retry at once); its retry answers."""
    seen = getattr(first_ask_rate_limited, "seen", set())
    first_ask_rate_limited.seen = seen
    prompt = rec.prompt_text
    if prompt not in seen:
        seen.add(prompt)
        return Reply(status=429, headers={"retry-after": "0"})
    return Reply(text="answer", input_tokens=20, output_tokens=50)


async def test_calls_retrying_after_a_429_near_the_budget_never_wait_on_their_own_holds(
    fake, state_location
):
    first_ask_rate_limited.seen = set()
    fake.responder = first_ask_rate_limited
    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, max_concurrency=8) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=0.0025)  # ~3 worst cases
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(ask(gateway, n) for n in range(8)), return_exceptions=True), 20
        )
        spent, held, journal = await books(store)

    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert len(answered) + len(refused) == 8, outcomes
    assert answered, "calls that fit once the others settled must be made"
    assert held == 0
    assert spent == journal == gateway.budget.spent_nanos and spent <= 2_500_000


async def test_a_call_that_cannot_fit_even_when_nothing_is_in_flight_is_refused_at_once(
    fake, state_location
):
    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=0.0001)
        with pytest.raises(BudgetExceeded, match="does not fit"):
            await asyncio.wait_for(ask(gateway, 1), 5)
    assert fake.count() == 0


async def test_a_wait_for_room_is_bounded_and_said_at_verbose(fake, tmp_path, caplog):
    # One call holds nearly all the room for longer than the second call may wait.
    fake.script("gpt-4o-mini", Reply(text="slow", delay=3, input_tokens=5, output_tokens=5))
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=10) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=0.001)
        gateway.journal.ledger.max_wait = 0.5
        first = asyncio.create_task(ask(gateway, 1))
        await asyncio.sleep(0.3)
        with caplog.at_level(logging.DEBUG, logger="orchestrator.money.ledger"):
            with pytest.raises(BudgetExceeded, match=r"waited 0\.5 s for calls in flight"):
                await asyncio.wait_for(ask(gateway, 2), 5)
        await first
        _, held, _ = await books(store)

    assert held == 0
    assert any("waits for calls in flight" in r.getMessage() for r in caplog.records)


async def test_a_failed_call_settles_each_attempt_and_journals_nothing_it_did_not_pay(
    fake, tmp_path
):
    fake.script("gpt-4o-mini", *[Reply(status=500)] * 3)
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=1.0)
        with pytest.raises(ProviderError):
            await ask(gateway, 1)
        spent, held, journal = await books(store)

    assert (spent, held, journal) == (0, 0, 0)


# --- whole runs near their budget, against a vendor that refuses and cuts off at random -------


class FlakyVendor:
    """The scripted LLMs behind a vendor that answers some requests with a 429 (retry at
    once) or a 500, and cuts some answers off at their output limit."""

    def __init__(self, llm: ScriptedLLM, rng: random.Random, rates: tuple[float, float, float]):
        self.llm, self.rng = llm, rng
        self.rate_limited, self.failing, self.cut_off = rates
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        reply = self.llm(request)
        with self._lock:
            roll = self.rng.random()
        if roll < self.rate_limited:
            return Reply(status=429, headers={"retry-after": "0"})
        if roll < self.rate_limited + self.failing:
            return Reply(status=500, text="the vendor is down")
        if roll < self.rate_limited + self.failing + self.cut_off:
            return dataclasses.replace(reply, truncated=True)
        return reply


async def run_near_the_budget(fake, llm, seed: int, location) -> tuple[ProjectState, float]:
    rng = random.Random(seed)
    plan = [prose_task(f"t{n}") for n in range(rng.randint(4, 12))]
    llm.plan = plan
    llm.bill_max_output = rng.random() < 0.5
    fake.responder = FlakyVendor(
        llm, rng, (rng.uniform(0, 0.4), rng.uniform(0, 0.2), rng.uniform(0, 0.3))
    )
    budget = Budget(max_usd=rng.uniform(0.002, 0.03), max_time_seconds=120)
    concurrency = rng.randint(1, 16)
    async with (
        UnifiedClient(
            env=fake_env(fake.base_url), retry=FAST_RETRY, max_concurrency=concurrency
        ) as client,
        StateManager(location) as store,
    ):
        orchestrator = Orchestrator(
            budget=budget, state_manager=store, client=client, use_cache=False, min_tasks=1
        )
        started = time.monotonic()
        state = await orchestrator.run_project(
            "[project] Notes", "they read well", f"p{seed}", tasks=as_tasks(plan)
        )
        took = time.monotonic() - started
        row = (await store.books.ledger([f"project:p{seed}"]))[f"project:p{seed}"]
        journal = await store._store.run(
            "SELECT COALESCE(SUM(cost_nanos), 0) FROM journal WHERE project_id = ?",
            (f"p{seed}",),
        )
    assert row.reserved_nanos == 0
    assert row.spent_nanos == int(journal[0][0]) == state.budget.spent_nanos
    assert row.spent_nanos <= budget.max_nanos
    return state, took


@pytest.mark.parametrize("seed", range(6))
async def test_a_run_near_its_budget_ends_on_its_own_with_its_books_exact(
    fake, llm, seed, state_location
):
    state, took = await asyncio.wait_for(
        run_near_the_budget(fake, llm, seed, state_location), timeout=100
    )
    # The clock (120 s) is far: the run ended because it finished or ran out of money.
    assert state.status is not ProjectStatus.TIMEOUT, state.reason
    assert took < 60


async def test_an_answer_found_unusable_keeps_its_spend_but_is_asked_again_on_resume(
    fake, tmp_path
):
    fake.responder = lambda rec: Reply(text="not a plan", input_tokens=20, output_tokens=50)

    def unusable(answer):
        raise ValueError(f"cannot use {answer.text!r}")

    async with StateManager(tmp_path / "state.db") as store:
        async with UnifiedClient(
            env=fake_env(fake.base_url, ["openai"]), retry=FAST_RETRY
        ) as client:
            gateway = await journaled_gateway(store, client, 1.0)
            model = client.catalog.resolve("gpt-4o-mini")
            question = dict(system=None, max_tokens=100, phase="decomposition", slot="decompose")
            with pytest.raises(ValueError, match="cannot use"):
                await gateway.ask(model, [Message("user", "plan")], usable=unusable, **question)
            spent, held, journaled = await books(store)
            resumed = LLMGateway(client, gateway.budget, None, gateway.journal)
            await resumed.journal.load()
            await resumed.ask(model, [Message("user", "plan")], **question)

    assert spent == journaled > 0 and held == 0  # what it cost is kept
    assert fake.count() == 2  # and the answer was not replayed: asked again
