"""Nothing is paid twice within a run: a request byte-identical to one in flight shares its
answer (paid once, journaled for both), and a fault-free run sends no request twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from conftest import FAST_RETRY, fake_env
from fake_provider import Reply
from test_money_liveness import journaled_gateway

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.llm.gateway import Journal, LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.ledger import Ledger
from orchestrator.money.units import usd_to_nanos
from orchestrator.run.tasks import ProjectStatus
from orchestrator.store.state import StateManager


async def ask(gateway: LLMGateway, slot: str, question: str = "same question"):
    return await gateway.ask(
        gateway.client.catalog.resolve("gpt-4o-mini"),
        [Message("user", question)],
        system="be brief",
        max_tokens=100,
        phase="generation",
        slot=slot,
        task_id=slot,
    )


async def test_a_request_identical_to_one_in_flight_is_paid_once_and_journaled_for_both(
    fake, tmp_path
):
    fake.responder = lambda request: Reply(
        text="the answer" if "same" in request.prompt_text else "another answer",
        delay=0.5, input_tokens=9, output_tokens=3,
    )  # fmt: skip
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=1.0)
        first, second, _ = await asyncio.gather(
            ask(gateway, "a"), ask(gateway, "b"), ask(gateway, "c", "another question")
        )
        rows = await store._store.run("SELECT task_id, cost_nanos, entry IS NOT NULL FROM journal")

    assert fake.count() == 2  # the shared request once, and the different one
    assert first.text == second.text == "the answer"
    one_call = client.catalog.resolve("gpt-4o-mini").price.cost_nanos(9, 3)
    assert sorted([first.cost_nanos, second.cost_nanos]) == [0, one_call]
    assert gateway.budget.spent_nanos == 2 * one_call  # with the other question's
    # Both calls are journaled with their answer: a resume replays each without paying.
    assert {task: kept for task, _, kept in rows} == {"a": 1, "b": 1, "c": 1}
    assert sum(cost for _, cost, _ in rows) == gateway.budget.spent_nanos


async def test_a_shared_answer_is_replayed_on_resume_without_a_call(fake, tmp_path):
    fake.script("gpt-4o-mini", Reply(text="the answer", delay=0.3))
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=1.0)
        await asyncio.gather(ask(gateway, "a"), ask(gateway, "b"))
        sent = fake.count()

        budget = Budget(max_usd=1.0, max_time_seconds=60)
        ledger = Ledger(store.books, "p", "tests:1:liveness")
        await ledger.open(usd_to_nanos(1.0), None, None)
        journal = Journal(store.journal, "p", budget, ledger)
        await journal.load()
        resumed = LLMGateway(client, budget, None, journal)
        again = await asyncio.gather(ask(resumed, "a"), ask(resumed, "b"))

    assert sent == 1 and fake.count() == 1
    assert [a.text for a in again] == ["the answer", "the answer"]
    assert all(a.replayed for a in again)


async def test_when_the_request_in_flight_fails_an_identical_one_asks_for_itself(fake, tmp_path):
    fake.script("gpt-4o-mini", Reply(status=400, delay=0.3), Reply(text="fine"))
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=1.0)
        failed, answered = await asyncio.gather(
            ask(gateway, "a"), ask(gateway, "b"), return_exceptions=True
        )

    assert isinstance(failed, Exception) and answered.text == "fine"
    assert fake.count() == 2


async def test_a_fault_free_run_never_sends_the_same_request_twice(fake, llm):
    async with (
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, max_concurrency=8) as client,
        StateManager() as store,
    ):
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0, max_time_seconds=120), state_manager=store,
            client=client, use_cache=False,
        )  # fmt: skip
        state = await orchestrator.run_project("[project] Build an add library", "add works")

    assert state.status in (ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS), state.reason
    bodies = Counter(
        (r.path, json.dumps(r.body, sort_keys=True)) for r in fake.requests if r.status == 200
    )
    assert [count for count in bodies.values() if count > 1] == []
