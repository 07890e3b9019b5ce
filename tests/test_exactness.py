"""Money and state stay exact whatever ends a paid call or a write: cancellation, lost leases,
garbled vendor answers, reused objects and power loss. One specification per way it could break."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from conftest import FAST_RETRY, eventually, fake_env, sqlite_rows
from fake_provider import Reply

from orchestrator import Budget, BudgetExceeded, ProviderError, UnifiedClient
from orchestrator.client import worst_case_cost
from orchestrator.gateway import Journal, LLMGateway
from orchestrator.models import ProjectStatus, TaskResult, TaskStatus
from orchestrator.providers.base import ChatRequest, Message
from orchestrator.state import StateManager

PROJECT = {
    "description": "d",
    "criteria": "c",
    "max_usd": 5.0,
    "max_time_seconds": 60.0,
    "settings": {},
}


@pytest.fixture
async def store(tmp_path):
    async with StateManager(tmp_path / "state.db") as manager:
        assert await manager.create_project("p", **PROJECT)
        yield manager


# --- the state database --------------------------------------------------------------------------


async def test_a_transaction_cancelled_while_waiting_for_the_write_lock_leaves_no_open_transaction(
    store, tmp_path
):
    # Another process holds the write lock, so our checkpoint waits on BEGIN IMMEDIATE.
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    record = TaskResult("a", output="x", status=TaskStatus.COMPLETED).to_record()
    checkpoint = asyncio.create_task(store.checkpoint("p", "a", record, final=True, elapsed=1.0))
    await asyncio.sleep(0.3)
    checkpoint.cancel()  # Ctrl-C, SIGTERM or the deadline lands here
    await asyncio.sleep(0.1)
    other.execute("COMMIT")
    other.close()
    with pytest.raises(asyncio.CancelledError):
        await checkpoint

    # Later autocommit writes of the run are really committed, not joined to an open
    # transaction and rolled back at close.
    await store.journal_put(
        "p", "k", task_id="a", phase="generation", cost_usd=0.42, entry=None, elapsed=2.0
    )
    await store.finish("p", ProjectStatus.INTERRUPTED, "interrupted", 2.0)
    another = sqlite3.connect(tmp_path / "state.db", timeout=0.5)
    another.execute("BEGIN IMMEDIATE")  # nobody holds the file's write lock
    another.rollback()
    another.close()
    await store.aclose()
    assert sqlite_rows(tmp_path / "state.db", "SELECT cost_usd FROM journal") == [(0.42,)]
    assert sqlite_rows(tmp_path / "state.db", "SELECT status FROM projects") == [("INTERRUPTED",)]
    # The transaction itself ran to its end: the checkpoint is complete.
    assert sqlite_rows(tmp_path / "state.db", "SELECT task_id, final FROM results") == [("a", 1)]


async def test_the_state_database_syncs_every_commit_to_disk(store):
    db = await store._store.connection()
    [(level,)] = await db.execute_fetchall("PRAGMA synchronous")
    assert level == 2  # FULL: a commit survives a power loss or an OS crash


async def test_the_cache_keeps_the_faster_normal_sync(tmp_path):
    from orchestrator.cache import DiskCache

    async with DiskCache(tmp_path / "cache.db") as cache:
        db = await cache._store.connection()
        [(level,)] = await db.execute_fetchall("PRAGMA synchronous")
    assert level == 1  # NORMAL: losing the last cached answers only costs a repeat call


# --- every paid attempt is settled and journaled, whatever ends it --------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number"}},
    "required": ["score"],
    "additionalProperties": False,
}
HTML_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture
async def gateway(fake, tmp_path):
    """A gateway over the real SDKs and the fake, journaling into a state file."""
    store = StateManager(tmp_path / "state.db")
    await store.create_project("p", **PROJECT)
    budget = Budget(max_usd=5.0, max_time_seconds=60)
    journal = Journal(store, "p", budget)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=10) as client:
        yield LLMGateway(client, budget, None, journal)
    await store.aclose()


def worst_case(gateway: LLMGateway, model: str, prompt: str, max_tokens: int) -> float:
    m = gateway.client.catalog.resolve(model)
    request = ChatRequest(messages=(Message("user", prompt),), max_tokens=max_tokens)
    return worst_case_cost(m, request)


async def ask(gateway: LLMGateway, model: str, prompt: str = "hello", **options):
    m = gateway.client.catalog.resolve(model)
    options = {"system": None, "max_tokens": 100, "phase": "generation", "slot": "s", **options}
    return await gateway.ask(m, [Message("user", prompt)], task_id="t", **options)


async def journal_rows(gateway: LLMGateway) -> list[tuple[str, float, bool]]:
    rows = await gateway.journal.store._store.run(
        "SELECT key, cost_usd, entry IS NOT NULL FROM journal ORDER BY created_at"
    )
    return [
        (key.rpartition("#")[2] if "#" in key else "answer", cost, kept) for key, cost, kept in rows
    ]


async def test_a_garbled_vendor_answer_is_a_provider_failure_charged_at_its_worst_case(
    gateway, fake
):
    fake.script("gpt-4o-mini", Reply(raw_body=HTML_PAGE))

    with pytest.raises(ProviderError) as caught:
        await ask(gateway, "gpt-4o-mini")

    assert "unexpected" in str(caught.value)
    assert caught.value.__cause__ is not None  # the SDK's own exception is kept as the cause
    # The vendor got the request and may bill it: charged its worst case, and journaled.
    charged = worst_case(gateway, "gpt-4o-mini", "hello", 100)
    assert caught.value.spent_usd == pytest.approx(charged)
    assert gateway.budget.spent_usd == pytest.approx(charged)
    assert await journal_rows(gateway) == [("unanswered", pytest.approx(charged), False)]


async def test_a_call_cancelled_in_flight_is_charged_its_worst_case_and_journaled(gateway, fake):
    fake.script("gpt-4o-mini", Reply(text="late", delay=5))
    call = asyncio.create_task(ask(gateway, "gpt-4o-mini"))
    await eventually(lambda: fake.count() == 1)  # the vendor has the request

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    charged = worst_case(gateway, "gpt-4o-mini", "hello", 100)
    assert gateway.budget.spent_usd == pytest.approx(charged)
    assert gateway.budget.reserved_usd == 0
    assert await journal_rows(gateway) == [("unanswered", pytest.approx(charged), False)]


async def test_a_structured_answer_paid_before_a_cancelled_repair_stays_in_the_journal(
    gateway, fake
):
    fake.script("gpt-4o-mini", "not JSON at all", Reply(text='{"score": 1}', delay=5))
    call = asyncio.create_task(ask(gateway, "gpt-4o-mini", schema=SCHEMA))
    await eventually(lambda: fake.count() == 2)  # the repair request is out

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    [(kind, cost, kept)] = await journal_rows(gateway)
    assert kind == "unanswered" and not kept
    # The first (paid, invalid) answer and the repair's worst case are both on the books.
    assert cost == pytest.approx(gateway.budget.spent_usd)
    assert cost > worst_case(gateway, "gpt-4o-mini", "hello", 100)


async def test_a_repair_refused_by_the_budget_reports_what_the_first_answer_cost(fake):
    fake.script("gpt-4o-mini", "x" * 20_000)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=10) as client:
        m = client.catalog.resolve("gpt-4o-mini")
        first = worst_case_cost(m, ChatRequest(messages=(Message("user", "hi"),), max_tokens=50))
        budget = Budget(max_usd=first * 3, max_time_seconds=60)

        with pytest.raises(BudgetExceeded) as caught:
            await client.complete(
                "gpt-4o-mini", "hi", max_tokens=50, schema=SCHEMA, spend=budget.guard("generation")
            )

    assert caught.value.spent_usd > 0
    assert caught.value.spent_usd == pytest.approx(budget.spent_usd)
