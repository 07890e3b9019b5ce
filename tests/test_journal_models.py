"""Which model each paid call went to is kept for good: every journal row and every hold of a
call in flight names the model's catalog key, as a run writes them and once its tasks are final
(their answers dropped); a store made before rows kept it gains the column when opened."""

from __future__ import annotations

import asyncio
import threading

from conftest import FAST_RETRY, fake_env, sqlite_rows
from fake_provider import RecordedRequest, Reply
from scripted_llm import ScriptedLLM
from test_engine import as_tasks, prose_task
from test_integer_books import FLOAT_USD_SCHEMA

from orchestrator import Budget, Catalog, Orchestrator, UnifiedClient
from orchestrator.run.tasks import ProjectStatus
from orchestrator.store.journal import pack
from orchestrator.store.state import StateManager
from orchestrator.web.views import project_page

CATALOG = Catalog.load(env={})


def catalog_key(request: RecordedRequest) -> str:
    """The catalog key of the model a request the fake received went to."""
    return CATALOG.resolve(request.model).key


def orchestrator(store: StateManager, client: UnifiedClient) -> Orchestrator:
    return Orchestrator(
        budget=Budget(max_usd=5.0, max_time_seconds=120), state_manager=store, client=client,
        use_cache=False, min_tasks=1,
    )  # fmt: skip


async def test_every_journal_row_names_the_model_its_call_went_to_after_its_task_is_final(
    fake, llm, state_location
):
    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        state = await orchestrator(store, client).run_project("[project] Add", "c", "p1")
        calls, total = await store.journal.latest("p1", 1000)
        replayable = await store.journal.keys("p1")

    assert state.status is ProjectStatus.SUCCESS, state.reason
    assert set(state.results) == {task["id"] for task in llm.plan}
    assert replayable == set()  # every task is final: no answer is kept, only what calls paid
    assert len(calls) == total and total >= 2 * len(state.results)
    # Each task's calls (the plan's: task "") went to the models its requests went to, by key.
    sent = {(task or "", CATALOG.resolve(model).key) for _, task, model in llm.roles}
    assert {(call.task_id, call.model) for call in calls} == sent
    assert {call.model for call in calls} == {catalog_key(r) for r in fake.requests}


class HeldTask:
    """Holds the first request about one task until released; ``asked`` is set once it came."""

    def __init__(self, llm: ScriptedLLM, task_id: str) -> None:
        self.llm = llm
        self.marker = f"[{task_id}]"
        self.asked = threading.Event()
        self.released = threading.Event()
        self.request: RecordedRequest | None = None

    def __call__(self, request: RecordedRequest) -> Reply:
        if self.marker in request.prompt_text and not self.asked.is_set():
            self.request = request
            self.asked.set()
            self.released.wait(timeout=60)
        return self.llm(request)


async def test_a_call_in_flight_shows_on_the_page_with_its_phase_and_model(fake, state_location):
    plan = [prose_task("intro"), prose_task("notes", "intro")]
    held = HeldTask(ScriptedLLM(plan=plan), "notes")
    fake.responder = held
    async with (
        StateManager(state_location) as store,
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client,
    ):
        run = asyncio.create_task(
            orchestrator(store, client).run_project(
                "[project] Notes", "c", "p1", tasks=as_tasks(plan)
            )
        )
        try:
            await asyncio.wait_for(asyncio.to_thread(held.asked.wait, 30), 40)
            async with StateManager(state_location) as page_store:  # as the page's server reads
                in_flight = await page_store.books.in_flight("p1")
                page = await project_page(page_store, "p1")
        finally:
            held.released.set()
        state = await run

    assert state.status is ProjectStatus.SUCCESS, state.reason
    assert held.request is not None
    model = catalog_key(held.request)
    [(task_id, phase, held_model, amount)] = in_flight
    assert (task_id, phase, held_model) == ("notes", "generation", model) and amount > 0
    notes = next(task for task in page.tasks if task.task_id == "notes")
    assert (notes.state, notes.in_flight) == ("in flight", [f"generation on {model}"])


# --- a store made before journal rows and holds kept their model -------------------------------

# The state store's tables as the release before the model columns made them: the meta, projects
# and results as the release before it made them too; the journal and the holds of calls in flight
# without the column (the tables this test leaves empty are made when the store is opened).
_AS_BEFORE = (
    "CREATE TABLE meta",
    "INSERT INTO meta",
    "CREATE TABLE projects",
    "CREATE TABLE results",
)
MODELLESS_SCHEMA = (
    *(statement for statement in FLOAT_USD_SCHEMA if statement.startswith(_AS_BEFORE)),
    "INSERT INTO meta (key, value) VALUES ('money', 'integer nano-dollars')",
    "CREATE TABLE journal ("
    " project_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " cost_nanos INTEGER NOT NULL, elapsed_seconds REAL NOT NULL, entry BLOB,"
    " created_at REAL NOT NULL, PRIMARY KEY (project_id, key))",
    "CREATE INDEX journal_task ON journal (project_id, task_id)",
    "CREATE TABLE money_holds ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount_nanos INTEGER NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL)",
)


def modelless_store(location) -> None:
    """Project p1's journal: an answered call (its entry kept, naming the model as its vendor
    did), a call whose task is final (no entry), and a hold of a call in flight."""
    if str(location).startswith("postgresql://"):
        sqlite_rows(location, "CREATE SCHEMA orchestrator_state")
    for statement in MODELLESS_SCHEMA:
        sqlite_rows(location, statement)
    for key, created, cost, entry in (
        ("answered", 1.0, 300, pack({"text": "ok", "reported_model": "gpt-4o-2024-08-06"})),
        ("final", 2.0, 200, None),
    ):
        sqlite_rows(
            location,
            "INSERT INTO journal (project_id, key, task_id, phase, cost_nanos, elapsed_seconds,"
            " entry, created_at) VALUES ('p1', ?, 't', 'generation', ?, 1.0, ?, ?)",
            (key, cost, entry, created),
        )
    sqlite_rows(
        location,
        "INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id, phase,"
        " journal_key) VALUES ('h1', 'p1', 'host:1:run', '[\"org\"]', 500, 't', 'evaluation',"
        " 'held')",
    )


async def test_a_store_made_before_calls_kept_their_model_gains_it_and_keeps_its_rows(
    state_location,
):
    modelless_store(state_location)

    async with StateManager(state_location) as store:
        before = await store.journal.latest("p1", 10)
        in_flight = await store.books.in_flight("p1")
        await store.journal.put(
            "p1", "new", task_id="t", phase="generation", model="openai/gpt-4o", cost_nanos=100,
            entry=None, elapsed=2.0,
        )  # fmt: skip
    async with StateManager(state_location) as store:  # opened again: nothing left to add
        calls, total = await store.journal.latest("p1", 10)

    # The old rows are all there, at their cost; an old row names its model only through the
    # answer it still keeps (as its vendor named it).
    assert [(c.task_id, c.cost_nanos, c.model) for c in before[0]] == [
        ("t", 200, None),
        ("t", 300, "gpt-4o-2024-08-06"),
    ]
    assert in_flight == [("t", "evaluation", None, 500)]
    assert total == 3
    assert {c.cost_nanos: c.model for c in calls} == {
        100: "openai/gpt-4o",
        200: None,
        300: "gpt-4o-2024-08-06",
    }
