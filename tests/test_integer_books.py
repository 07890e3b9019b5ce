"""The books are kept in integer nano-dollars, in both stores: a budget is filled exactly, the
ledger, the journal, the run and its tasks report one spend to the nano-dollar after any number
of calls, and a state store made when amounts were float USD is converted when it is opened,
its spend, its ledger and its calls in flight carried over, and its project resumed."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from conftest import FAST_RETRY, fake_env, sqlite_rows, task_spend_nanos
from fake_provider import RecordedRequest, Reply
from test_engine import as_tasks, prose_task
from test_money_liveness import ask, books, journaled_gateway

from orchestrator import Budget, BudgetExceeded, Catalog, Orchestrator, UnifiedClient
from orchestrator.money.units import nanos_to_usd
from orchestrator.run.tasks import ProjectStatus
from orchestrator.store.state import StateManager

# A model whose answers cost exactly what they ask for: $0.10 for 1,000 output tokens, the
# prompt free, so a call's worst case is what it costs when the whole answer is billed.
DIME_MODEL = {
    "id": "gpt-4o-mini",
    "provider": "openai",
    "price": {"input": 0, "output": 100, "cached_input": 0, "cache_write": 0},
}


async def test_a_thirty_cent_budget_takes_exactly_three_ten_cent_calls(fake, state_location):
    fake.script("gpt-4o-mini", *[Reply(text="ok", input_tokens=9, output_tokens=1000)] * 4)
    catalog = Catalog.load(env={}).extended("dimes", {"models": [DIME_MODEL]})
    async with (
        StateManager(state_location) as store,
        UnifiedClient(catalog, env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=0.3)
        answers = [await ask(gateway, n) for n in range(3)]
        with pytest.raises(BudgetExceeded, match="does not fit"):
            await ask(gateway, 3)
        spent, held, journal = await books(store)

    assert [a.cost_nanos for a in answers] == [100_000_000] * 3
    assert 0.1 + 0.1 + 0.1 > 0.3  # summed as float USD, the third call would not have fitted
    assert spent == journal == gateway.budget.spent_nanos == 300_000_000 and held == 0
    assert gateway.budget.spent_usd == 0.3 and gateway.budget.remaining_usd == 0.0
    assert fake.count() == 3  # the fourth was refused before anything was sent


def random_usage(seed: int):
    rng = random.Random(seed)

    def respond(request: RecordedRequest) -> Reply:
        return Reply(
            text="answer",
            input_tokens=rng.randint(5, 400),
            output_tokens=rng.randint(1, 900),
            cached_tokens=rng.choice([0, 0, 3]),
        )

    return respond


@pytest.mark.parametrize("seed", range(2))
async def test_after_many_calls_of_random_costs_every_book_holds_the_same_nano_dollars(
    fake, state_location, seed
):
    fake.responder = random_usage(seed)
    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, max_concurrency=4) as client,
    ):
        gateway = await journaled_gateway(store, client, max_usd=5.0)
        answers = await asyncio.gather(*(ask(gateway, n, tasks=3) for n in range(60)))
        spent, held, journal = await books(store)
        tasks = [await task_spend_nanos(store, "p", f"t{n}") for n in range(3)]

    paid = sum(answer.cost_nanos for answer in answers)
    assert spent == journal == paid == gateway.budget.spent_nanos == sum(tasks) and held == 0
    assert gateway.budget.spent_usd == nanos_to_usd(journal)  # not a sum of 60 floats


async def test_each_tasks_cost_is_its_journal_sum_to_the_nano_dollar(fake, llm, tmp_path):
    plan = [prose_task("intro"), prose_task("body", "intro"), prose_task("end", "body")]
    llm.plan = plan
    async with (
        StateManager(tmp_path / "state.db") as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0, max_time_seconds=60), state_manager=store, client=client,
            use_cache=False, min_tasks=1,
        )  # fmt: skip
        state = await orchestrator.run_project("[project] Notes", "c", "p1", tasks=as_tasks(plan))
        journaled = {t: await task_spend_nanos(store, "p1", t) for t in state.results}

    assert state.status is ProjectStatus.SUCCESS, state.reason
    assert {t: r.cost_usd for t, r in state.results.items()} == {
        t: nanos_to_usd(n) for t, n in journaled.items()
    }
    assert all(n > 0 for n in journaled.values())


# --- a store made when amounts were float USD --------------------------------------------------

# The state store's tables as the release before integer amounts made them.
FLOAT_USD_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('format', 'orchestrator-state-1')",
    "CREATE TABLE projects ("
    " id TEXT PRIMARY KEY, description TEXT NOT NULL, criteria TEXT NOT NULL,"
    " max_usd REAL NOT NULL, max_time_seconds REAL NOT NULL, settings TEXT NOT NULL,"
    " plan TEXT, task_count INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,"
    " reason TEXT NOT NULL DEFAULT '', elapsed_seconds REAL NOT NULL DEFAULT 0,"
    " owner TEXT, lease_until REAL NOT NULL DEFAULT 0,"
    " created_at REAL NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE results ("
    " project_id TEXT NOT NULL, task_id TEXT NOT NULL, final INTEGER NOT NULL,"
    " record BLOB NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (project_id, task_id))",
    "CREATE TABLE journal ("
    " project_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " cost_usd REAL NOT NULL, elapsed_seconds REAL NOT NULL, entry BLOB,"
    " created_at REAL NOT NULL, PRIMARY KEY (project_id, key))",
    "CREATE INDEX journal_task ON journal (project_id, task_id)",
    "CREATE TABLE IF NOT EXISTS cost_estimates ("
    " project_id TEXT NOT NULL, model TEXT NOT NULL, task_type TEXT NOT NULL,"
    " average_usd REAL NOT NULL, samples INTEGER NOT NULL,"
    " PRIMARY KEY (project_id, model, task_type))",
    "CREATE TABLE IF NOT EXISTS budget_caps (scope TEXT PRIMARY KEY, max_usd REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS model_telemetry (model TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS integration (project_id TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budget_ledger ("
    " scope TEXT PRIMARY KEY, cap REAL, spent REAL NOT NULL, reserved REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budget_reservations ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount REAL NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL)",
)
PLAN = [prose_task("notes")]
SCOPES = ["org", "team:eng", "project:p1"]


def float_usd_store(location) -> None:
    """Project p1, interrupted with its task unanswered: $0.10 of planning and $0.20 of a call
    cut off, summed in float USD to $0.30000000000000004, and a $0.05 call of a run that died
    still held in the ledger."""
    if str(location).startswith("postgresql://"):
        sqlite_rows(location, "CREATE SCHEMA orchestrator_state")
    for statement in FLOAT_USD_SCHEMA:
        sqlite_rows(location, statement)
    plan = json.dumps({"tasks": PLAN, "order": ["notes"]})
    settings = json.dumps({"team": "eng"})
    sqlite_rows(
        location,
        "INSERT INTO projects (id, description, criteria, max_usd, max_time_seconds, settings,"
        " plan, task_count, status, created_at, updated_at)"
        " VALUES ('p1', '[project] Notes', 'c', 2.0, 600.0, ?, ?, 1, 'INTERRUPTED', 1.0, 1.0)",
        (settings, plan),
    )
    for key, task_id, phase, cost in (
        ("plan", "", "decomposition", 0.1),
        ("cut-off#unanswered", "notes", "generation", 0.2),
    ):
        sqlite_rows(
            location,
            "INSERT INTO journal (project_id, key, task_id, phase, cost_usd, elapsed_seconds,"
            " entry, created_at) VALUES ('p1', ?, ?, ?, ?, 1.0, NULL, 1.0)",
            (key, task_id, phase, cost),
        )
    sqlite_rows(location, "INSERT INTO budget_caps (scope, max_usd) VALUES ('team:eng', 3.0)")
    for scope, cap in (("org", None), ("team:eng", 3.0), ("project:p1", 2.0)):
        sqlite_rows(
            location,
            "INSERT INTO budget_ledger (scope, cap, spent, reserved) VALUES (?, ?, ?, 0.05)",
            (scope, cap, 0.1 + 0.2),
        )
    sqlite_rows(
        location,
        "INSERT INTO budget_reservations (id, project_id, owner, scopes, amount, task_id, phase,"
        " journal_key) VALUES ('h1', 'p1', 'elsewhere:1:gone', ?, 0.05, 'notes', 'generation',"
        " 'held')",
        (json.dumps(SCOPES),),
    )


async def test_a_store_made_with_float_usd_is_converted_when_opened_and_its_project_resumes(
    fake, llm, state_location
):
    float_usd_store(state_location)
    llm.plan = PLAN

    async with StateManager(state_location) as store:
        saved = await store.projects.load("p1")
        ledger = await store.books.ledger()
        holds = await store._store.run("SELECT id, amount_nanos FROM money_holds")
        listed = {p.project_id: p.spent_usd for p in await store.projects.summaries()}

    # Every amount read from it is the one it stood for, to the nano-dollar.
    assert (saved.spent_nanos, saved.spent_usd) == (300_000_000, 0.3)
    assert saved.phase_nanos == {"decomposition": 100_000_000, "generation": 200_000_000}
    assert listed == {"p1": 0.3}
    # The ledger's rows are rebuilt from the journal; the hold of a call in flight is carried.
    assert {s: (r.cap_nanos, r.spent_nanos, r.reserved_nanos) for s, r in ledger.items()} == {
        "org": (None, 300_000_000, 50_000_000),
        "team:eng": (3_000_000_000, 300_000_000, 50_000_000),
        "project:p1": (2_000_000_000, 300_000_000, 50_000_000),
    }
    assert holds == [("h1", 50_000_000)]

    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        orchestrator = Orchestrator(state_manager=store, client=client, use_cache=False)
        resumed = await orchestrator.resume("p1")
        spent, held, journal = await books(store, "p1")
        charged = await store._store.run("SELECT cost_nanos FROM journal WHERE key = ?",
                                         ("held#unanswered",))  # fmt: skip

    assert resumed.status is ProjectStatus.SUCCESS, resumed.reason
    # The dead run's hold was charged in full, as the vendor may have billed it; the resume
    # paid the rest, and every book agrees.
    assert charged == [(50_000_000,)]
    assert spent == journal == resumed.budget.spent_nanos and held == 0
    assert journal > 350_000_000
