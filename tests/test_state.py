"""The state database: what a user relies on to list, resume and account for their projects."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
from conftest import clean_environment, sqlite_rows, write_file

from orchestrator import Budget, Catalog, ConfigError, Orchestrator, Task, TaskType, UnifiedClient
from orchestrator.llm.cache import DiskCache
from orchestrator.llm.providers.base import ChatRequest, Endpoint, Failure, RawCompletion
from orchestrator.money.units import usd_to_nanos
from orchestrator.run.tasks import ProjectStatus, TaskResult, TaskStatus, ValidatorResult
from orchestrator.store.state import STATE_FORMAT, StateError, StateManager, UnknownProjectError

KEYS = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GEMINI_API_KEY": "x"}
PROJECT = {
    "description": "Build an add library",
    "criteria": "add works and is tested",
    "max_usd": 5.0,
    "max_time_seconds": 600.0,
    "settings": {"quality_threshold": 0.85},
}


def code_text(rng: random.Random, size: int = 1500) -> str:
    """Varied code-like text, so that compression does not make storage look free."""
    lines: list[str] = []
    while sum(map(len, lines)) < size:
        a, b, n = rng.randrange(1000), rng.randrange(1000), rng.randrange(100)
        lines.append(f"    value_{a} = compute_{b}(items[{n}]) + offset_{a % 7}\n")
    return "def generated():\n" + "".join(lines)


def graph(count: int) -> dict[str, Task]:
    """Layers of five tasks, each depending on the task five places before it."""
    return {
        f"t{i:02d}": Task(
            f"t{i:02d}", TaskType.CODE_GEN, f"Write part {i}.", [f"t{i - 5:02d}"] if i >= 5 else []
        )
        for i in range(count)
    }


def plan_of(tasks: dict[str, Task]) -> str:
    return json.dumps({"tasks": [{**t.to_dict(), "acceptance": None} for t in tasks.values()]})


class InProcessProvider:
    """Answers every role at once: a plan, a passing verdict, or ~1.5 KB of code.

    Every call first waits for ``gate`` (when given), so a test can look at the state file
    while a run is in flight.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        plan: str = "",
        gate: asyncio.Event | None = None,
        started: asyncio.Event | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.gate = gate
        self.started = started
        self.rng = random.Random(endpoint.provider)

    async def complete(self, model_id: str, request: ChatRequest) -> RawCompletion:
        if self.started is not None:
            self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        properties = (request.json_schema or {}).get("properties", {})
        if "tasks" in properties:
            text = self.plan
        elif "score" in properties:
            text = '{"score": 0.95, "reasoning": "meets the criteria"}'
        else:
            text = code_text(self.rng)
        return RawCompletion(text=text, input_tokens=400, output_tokens=500)

    def classify(self, exc: BaseException) -> Failure | None:
        return None

    async def aclose(self) -> None:
        return None


def in_process_client(**options: Any) -> UnifiedClient:
    def factory(kind: str, endpoint: Endpoint) -> InProcessProvider:
        return InProcessProvider(endpoint, **options)

    return UnifiedClient(env=KEYS, max_concurrency=8, adapter_factory=factory)


async def run_project(
    store: StateManager | None, project_id: str, tasks: dict[str, Task] | None, **options: Any
):
    async with in_process_client(**options) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=50.0, max_time_seconds=120),
            client=client,
            state_manager=store,
            use_cache=False,
            min_tasks=1,
            max_tasks=30,
        )
        return await orchestrator.run_project(
            PROJECT["description"], PROJECT["criteria"], project_id, tasks=tasks
        )


def result_record(task_id: str) -> dict[str, Any]:
    return TaskResult(task_id, output="print(1)", status=TaskStatus.COMPLETED).to_record()


async def put_call(
    store: StateManager, key: str, task_id: str, cost: float, phase: str = "generation"
) -> None:
    await store.journal.put(
        "p",
        key,
        task_id=task_id,
        phase=phase,
        model="openai/gpt-4o",
        cost_nanos=usd_to_nanos(cost),
        entry={"text": f"answer {key}", "parsed": None},
        elapsed=1.0,
    )


@pytest.fixture
async def store(state_location):
    async with StateManager(state_location) as manager:
        assert await manager.projects.create("p", **PROJECT)
        yield manager


# --- the file and the project row ----------------------------------------------------------


async def test_default_file_is_state_db_in_orchestrator_home_in_wal_mode(isolated_home):
    async with StateManager() as manager:
        assert manager.path == isolated_home / "state.db"
        await manager.projects.create("p", **PROJECT)
        path = isolated_home / "state.db"
        assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
        assert sqlite_rows(path, "SELECT value FROM meta WHERE key = 'format'") == [(STATE_FORMAT,)]


async def test_the_project_row_is_written_when_the_run_starts(isolated_home):
    gate, started = asyncio.Event(), asyncio.Event()
    tasks = graph(3)
    # No state manager given: the run opens the default file itself.
    run = asyncio.create_task(run_project(None, "p-start", tasks, gate=gate, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        # A second instance, as `--list-projects` in another terminal would be.
        async with StateManager() as other:
            saved = await other.projects.load("p-start")
    finally:
        gate.set()
    state = await run

    assert saved.status is ProjectStatus.RUNNING
    assert (saved.description, saved.criteria) == (PROJECT["description"], PROJECT["criteria"])
    assert (saved.max_usd, saved.max_time_seconds) == (50.0, 120)
    assert saved.settings["quality_threshold"] == 0.85
    assert saved.tasks is not None and list(saved.tasks) == list(tasks)
    assert saved.results == {} and saved.spent_usd == 0  # nothing answered, nothing paid yet
    assert state.status is ProjectStatus.SUCCESS
    async with StateManager(isolated_home / "state.db") as other:
        after = await other.projects.load("p-start")
    assert after.status is ProjectStatus.SUCCESS
    assert after.spent_usd == pytest.approx(state.budget.spent_usd)


async def test_create_project_refuses_a_taken_id_and_leaves_the_row_untouched(store):
    before = sqlite_rows(store.path, "SELECT * FROM projects")
    taken = await store.projects.create(
        "p",
        description="another project",
        criteria="other",
        max_usd=99.0,
        max_time_seconds=1.0,
        settings={"quality_threshold": 0.1},
    )
    assert taken is False
    assert sqlite_rows(store.path, "SELECT * FROM projects") == before
    assert (await store.projects.load("p")).description == PROJECT["description"]


async def test_an_unknown_project_id_is_a_config_error_pointing_at_the_list(store):
    with pytest.raises(UnknownProjectError) as caught:
        await store.projects.load("nope")
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert "'nope'" in message and "--list-projects" in message
    assert "\n" not in message


# --- checkpoints ---------------------------------------------------------------------------


async def test_a_checkpoint_writes_the_result_and_the_clock_in_one_transaction(store):
    await put_call(store, "k1", "a", 0.25)
    # The clock update (the checkpoint's second statement) fails, as a full disk would make it.
    postgres = str(store.path).startswith("postgresql://")
    if postgres:
        sqlite_rows(
            store.path,
            "CREATE FUNCTION clock_fails() RETURNS trigger AS $$"
            " BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
        )
        sqlite_rows(
            store.path,
            "CREATE TRIGGER clock_fails BEFORE UPDATE OF elapsed_seconds ON projects"
            " FOR EACH ROW EXECUTE FUNCTION clock_fails()",
        )
    else:
        sqlite_rows(
            store.path,
            "CREATE TRIGGER clock_fails BEFORE UPDATE OF elapsed_seconds ON projects"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
    with pytest.raises(StateError, match="disk full"):
        await store.projects.checkpoint("p", "a", result_record("a"), final=True, elapsed=30.0)
    assert sqlite_rows(store.path, "SELECT COUNT(*) FROM results") == [(0,)]
    assert await store.journal.get("p", "k1") is not None  # its answers were not dropped either

    sqlite_rows(store.path, "DROP TRIGGER clock_fails" + (" ON projects" if postgres else ""))
    await store.projects.checkpoint("p", "a", result_record("a"), final=True, elapsed=30.0)
    saved = await store.projects.load("p")
    assert saved.results["a"]["output"] == "print(1)"
    assert saved.final_tasks == {"a"}
    assert saved.elapsed_seconds == 30.0
    # A task that started earlier and checkpoints later must not turn the clock back.
    await store.projects.checkpoint("p", "b", result_record("b"), final=True, elapsed=12.0)
    assert (await store.projects.load("p")).elapsed_seconds == 30.0


async def test_a_result_round_trips_with_its_models_resolved_by_catalog_key(tmp_path, store):
    # The same model id served by two providers: only the key tells them apart.
    catalog_file = write_file(
        tmp_path / "catalog.yaml",
        """
        providers:
          local:
            kind: openai
            base_url: http://127.0.0.1:11434/v1
        models:
          - id: gpt-4o
            provider: local
            alias: gpt-4o-local
            price: {input: 0, output: 0}
            context_window: 131072
            max_output_tokens: 4096
        """,
    )
    catalog = Catalog.load(catalog_file)
    local, openai = catalog.resolve("local/gpt-4o"), catalog.resolve("openai/gpt-4o")
    result = TaskResult(
        "core",
        output="def add(a, b):\n    return a + b\n",
        score=0.7,
        status=TaskStatus.DEGRADED,
        model_used=local,
        reviewer_model=openai,
        iterations=2,
        cost_usd=0.0123,
        deterministic_check_passed=False,
        degraded_fallback_count=1,
        validator_results=[
            ValidatorResult("python_syntax", True),
            ValidatorResult("pytest", False, detail="1 failed"),
            ValidatorResult("ruff", True, skipped=True),
        ],
        score_history=[0.4, 0.7],
        reason="budget exhausted",
        interrupted=True,
    )
    record = result.to_record()
    assert (record["model_used"], record["reviewer_model"]) == ("local/gpt-4o", "openai/gpt-4o")

    await store.projects.checkpoint("p", "core", record, final=False, elapsed=5.0)
    async with StateManager(store.path) as other:
        saved = await other.projects.load("p")
    restored = TaskResult.from_record(saved.results["core"], catalog.resolve)

    assert restored == result
    assert restored.model_used is not None and restored.model_used.provider == "local"
    assert saved.final_tasks == set()


async def test_checkpointing_the_same_task_again_replaces_its_row(store):
    await store.projects.checkpoint("p", "a", result_record("a"), final=False, elapsed=1.0)
    second = {**result_record("a"), "output": "print(2)"}
    await store.projects.checkpoint("p", "a", second, final=True, elapsed=2.0)

    assert sqlite_rows(store.path, "SELECT COUNT(*), SUM(final) FROM results") == [(1, 1)]
    saved = await store.projects.load("p")
    assert saved.results["a"]["output"] == "print(2)" and saved.final_tasks == {"a"}


# --- the journal of paid calls -------------------------------------------------------------


async def test_journal_round_trip(store):
    entry = {"text": "héllo ✓", "parsed": {"score": 0.9}, "input_tokens": 3, "output_tokens": 5}
    await store.journal.put(
        "p", "k", task_id="a", phase="evaluation", model="openai/gpt-4o",
        cost_nanos=500_000_000, entry=entry, elapsed=1.0,
    )  # fmt: skip
    assert await store.journal.get("p", "k") == {**entry, "cost_nanos": 500_000_000}
    assert await store.journal.get("p", "other") is None
    assert await store.journal.get("other-project", "k") is None
    # Compressed on disk: the answer is not stored as plain text.
    (blob,) = sqlite_rows(store.path, "SELECT entry FROM journal")[0]
    assert isinstance(blob, bytes) and "héllo".encode() not in blob


async def test_a_final_checkpoint_drops_its_answers_but_keeps_their_cost(store):
    await put_call(store, "a1", "a", 0.10, "generation")
    await put_call(store, "a2", "a", 0.20, "cross_review")
    await put_call(store, "a3", "a", 0.40, "evaluation")
    await put_call(store, "b1", "b", 0.80, "generation")

    await store.projects.checkpoint("p", "a", result_record("a"), final=True, elapsed=2.0)

    for key in ("a1", "a2", "a3"):
        assert await store.journal.get("p", key) is None
    assert await store.journal.get("p", "b1") is not None  # another task's answers stay
    saved = await store.projects.load("p")
    assert saved.spent_usd == 1.5
    assert saved.phase_spent == {"generation": 0.9, "cross_review": 0.2, "evaluation": 0.4}


async def test_a_task_costs_what_the_journal_says_even_for_a_call_settled_after_it_finished(store):
    await put_call(store, "a1", "a", 0.10)
    await store.projects.checkpoint("p", "a", result_record("a"), final=True, elapsed=2.0)
    await put_call(store, "a2", "a", 0.25, "evaluation")  # cancelled in flight, settled late

    saved = await store.projects.load("p")
    assert saved.results["a"]["cost_usd"] == saved.spent_usd == 0.35


async def test_an_interrupted_checkpoint_keeps_its_answers_for_the_resume(store):
    await put_call(store, "a1", "a", 0.10)
    record = {**result_record("a"), "interrupted": True}
    await store.projects.checkpoint("p", "a", record, final=False, elapsed=2.0)

    assert (await store.journal.get("p", "a1"))["text"] == "answer a1"
    assert (await store.projects.load("p")).spent_usd == pytest.approx(0.10)


async def test_saving_the_plan_drops_the_decomposition_answer_but_keeps_its_cost(store):
    await put_call(store, "plan", "", 0.30, "decomposition")
    await put_call(store, "a1", "a", 0.10)
    tasks = graph(6)

    await store.projects.save_plan("p", tasks, list(tasks), 3.0)

    assert await store.journal.get("p", "plan") is None
    assert await store.journal.get("p", "a1") is not None
    saved = await store.projects.load("p")
    assert saved.tasks == tasks and saved.execution_order == list(tasks)
    assert saved.spent_usd == pytest.approx(0.40)
    assert saved.phase_spent["decomposition"] == pytest.approx(0.30)


CRASHING_WRITER = """
import asyncio, os, sys
from orchestrator.store.state import StateManager

async def main(path):
    store = StateManager(path)
    await store.projects.create(
        "p", description="d", criteria="c", max_usd=5.0, max_time_seconds=60.0, settings={}
    )
    for i, cost in enumerate([125_000_000, 250_000_000, 500_000_000]):
        await store.journal.put(
            "p", f"k{i}", task_id="a", phase="generation", model="openai/gpt-4o",
            cost_nanos=cost, entry={"text": "paid for"}, elapsed=7.0 + i,
        )
    os._exit(9)  # no checkpoint, no close: as kill -9 would leave it

asyncio.run(main(sys.argv[1]))
"""


async def test_spend_survives_a_crash_before_any_checkpoint(tmp_path):
    path = tmp_path / "state.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WRITER, str(path), env=clean_environment()
    )
    assert await process.wait() == 9

    async with StateManager(path) as store:
        saved = await store.projects.load("p")
        assert saved.spent_usd == 0.875
        assert saved.phase_spent == {"generation": 0.875}
        assert saved.elapsed_seconds == pytest.approx(9.0)  # the clock moved with the calls
        assert saved.results == {}
        assert (await store.journal.get("p", "k2"))["text"] == "paid for"


# --- listing -------------------------------------------------------------------------------


async def test_list_projects_newest_first_with_spend_and_progress(tmp_path):
    async with StateManager(tmp_path / "state.db") as store:
        for project_id, budget in (("old", 1.0), ("mid", 2.0), ("new", 3.0)):
            await store.projects.create(project_id, **{**PROJECT, "max_usd": budget})
            await asyncio.sleep(0.01)  # distinct timestamps on coarse clocks
        assert [p.project_id for p in await store.projects.summaries()] == ["new", "mid", "old"]

        await store.projects.save_plan("mid", graph(4), list(graph(4)), 1.0)
        for key, task_id, cost in (("k1", "t00", 0.5), ("k2", "t01", 0.25), ("k3", "t02", 0.1)):
            await store.journal.put(
                "mid", key, task_id=task_id, phase="generation", model="openai/gpt-4o",
                cost_nanos=usd_to_nanos(cost), entry={}, elapsed=1,
            )  # fmt: skip
        await store.projects.checkpoint("mid", "t00", result_record("t00"), final=True, elapsed=2.0)
        await store.projects.checkpoint("mid", "t01", result_record("t01"), final=True, elapsed=2.0)
        await store.projects.checkpoint(
            "mid", "t02", result_record("t02"), final=False, elapsed=2.0
        )

        projects = await store.projects.summaries()

    # The project worked on last comes first: it is the one a user wants to resume.
    assert [p.project_id for p in projects] == ["mid", "new", "old"]
    mid = projects[0]
    assert mid.status == ProjectStatus.RUNNING
    assert (mid.spent_usd, mid.max_usd) == (0.85, 2.0)  # not 0.5 + 0.25 + 0.1 = 0.8500000000000001
    assert (mid.tasks_done, mid.tasks_total) == (2, 4)  # an interrupted task is not done
    new = projects[1]
    assert (new.spent_usd, new.max_usd, new.tasks_done, new.tasks_total) == (0, 3.0, 0, 0)


# --- files that are not ours ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(random.Random(1).randbytes(8192), id="random-bytes"),
        pytest.param(b"SQLite format 3\x00" + random.Random(2).randbytes(4080), id="bad-sqlite"),
    ],
)
async def test_a_corrupt_file_is_refused_by_path_and_left_unchanged(tmp_path, content):
    path = tmp_path / "state.db"
    path.write_bytes(content)
    async with StateManager(path) as store:
        for attempt in (store.projects.load("p"), store.projects.create("p", **PROJECT)):
            with pytest.raises(StateError) as caught:
                await attempt
            message = str(caught.value)
            assert str(path) in message and "not a valid state database" in message
            assert "\n" not in message
    assert path.read_bytes() == content


async def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE projects (id TEXT PRIMARY KEY, budget REAL)")
        conn.execute("INSERT INTO projects VALUES ('mine', 1.0)")
    conn.close()
    content = path.read_bytes()
    async with StateManager(path) as store:
        with pytest.raises(StateError, match="another kind") as caught:
            await store.projects.summaries()
        assert str(path) in str(caught.value)
    assert path.read_bytes() == content
    assert sqlite_rows(path, "PRAGMA journal_mode") == [("delete",)]


async def test_a_cache_file_is_not_taken_for_a_state_file(tmp_path):
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        await cache.put("k", {"v": 1})
    content = path.read_bytes()
    async with StateManager(path) as store:
        with pytest.raises(StateError, match="another kind") as caught:
            await store.projects.create("p", **PROJECT)
        assert "orchestrator-cache-1" in str(caught.value)
    assert path.read_bytes() == content
    async with DiskCache(path) as cache:
        assert await cache.get("k") == {"v": 1}


# --- many runs on one file -----------------------------------------------------------------


async def test_sixteen_projects_run_at_once_on_one_state_file(tmp_path):
    path = tmp_path / "state.db"
    stores = [StateManager(path) for _ in range(16)]
    try:
        states = await asyncio.gather(
            *(run_project(store, f"p{i:02d}", graph(5)) for i, store in enumerate(stores))
        )
    finally:
        for store in stores:
            await store.aclose()

    assert [s.status for s in states] == [ProjectStatus.SUCCESS] * 16
    async with StateManager(path) as store:
        listed = {p.project_id: p for p in await store.projects.summaries()}
    assert len(listed) == 16
    for i, state in enumerate(states):
        summary = listed[f"p{i:02d}"]
        assert summary.status == ProjectStatus.SUCCESS
        assert (summary.tasks_done, summary.tasks_total) == (5, 5)
        assert summary.spent_usd == pytest.approx(state.budget.spent_usd)


ONE_RUN_AFTER_ANOTHER = """
import asyncio, sys
from orchestrator.store.state import StateError, StateManager

store = StateManager(sys.argv[1])


async def caps(run):
    # Transactions at once: they wait for one another on the store's lock (or its pool).
    await asyncio.gather(
        *(store.books.save_budget_caps({f"team:{run}-{i}": float(i + 1)}) for i in range(8))
    )
    caps = await store.books.budget_caps()
    return len(caps), caps[f"team:{run}-7"]


print(*asyncio.run(caps(1)))
print(*asyncio.run(caps(2)))
asyncio.run(store.aclose())
try:
    asyncio.run(store.books.budget_caps())
except StateError as exc:
    print(exc)
"""


def test_a_store_serves_one_asyncio_run_after_another_and_closes_in_a_later_one(state_location):
    """A script's store outlives each ``asyncio.run`` it is used in; what belongs to an event
    loop (the locks, a PostgreSQL pool) is made anew in the next one."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", ONE_RUN_AFTER_ANOTHER, str(state_location)],
            env={**clean_environment(), "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script did not end within 60 s; it printed {exc.stdout!r}")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["8 8.0", "16 8.0", "state is closed"]
    assert result.stderr == ""


PROCESS_RUN = """
import asyncio, sys
from pathlib import Path
from orchestrator import Budget, Orchestrator, Task, TaskType, UnifiedClient
from orchestrator.llm.providers.base import RawCompletion
from orchestrator.store.state import StateManager

class Provider:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    async def complete(self, model_id, request):
        if "score" in (request.json_schema or {}).get("properties", {}):
            text = '{"score": 0.95, "reasoning": "ok"}'
        else:
            text = "def f(x):\\n    return x + 1\\n" * 40
        return RawCompletion(text=text, input_tokens=400, output_tokens=500)

    def classify(self, exc):
        return None

    async def aclose(self):
        return None

async def main(path, project_id, go):
    tasks = {
        f"t{i}": Task(f"t{i}", TaskType.CODE_GEN, f"Part {i}.", [f"t{i - 3}"] if i >= 3 else [])
        for i in range(8)
    }
    print("ready", flush=True)
    while not Path(go).exists():
        await asyncio.sleep(0.002)
    keys = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GEMINI_API_KEY": "x"}
    factory = lambda kind, endpoint: Provider(endpoint)
    async with (
        UnifiedClient(env=keys, max_concurrency=8, adapter_factory=factory) as client,
        StateManager(path) as store,
    ):
        state = await Orchestrator(
            budget=Budget(max_usd=50.0, max_time_seconds=120),
            client=client, state_manager=store, use_cache=False,
        ).run_project("d", "c", project_id, tasks=tasks)
    print(state.status.value, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_four_processes_write_to_one_new_state_file_at_once(tmp_path):
    path, go = tmp_path / "state.db", tmp_path / "go"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROCESS_RUN,
            str(path),
            f"proc{i}",
            str(go),
            env=clean_environment(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(4)
    ]
    for process in processes:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
    # All four open the file that does not exist yet, and write, at the same moment.
    go.touch()
    outcomes = await asyncio.gather(*(p.communicate() for p in processes))

    for process, (out, err) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, err.decode()
        assert out.decode().split() == ["SUCCESS"]
        assert b"locked" not in err
    async with StateManager(path) as store:
        projects = await store.projects.summaries()
    assert sorted(p.project_id for p in projects) == [f"proc{i}" for i in range(4)]
    assert all((p.tasks_done, p.tasks_total) == (8, 8) for p in projects)


# --- storage stays bounded -----------------------------------------------------------------


async def test_a_finished_run_leaves_no_answers_in_the_journal_and_a_small_file(tmp_path):
    path = tmp_path / "state.db"
    tasks = graph(30)
    async with StateManager(path) as store:
        state = await run_project(store, "big", None, plan=plan_of(tasks))
    assert state.status is ProjectStatus.SUCCESS and len(state.results) == 30

    journal = sqlite_rows(path, "SELECT COUNT(*), COUNT(entry), SUM(cost_nanos) FROM journal")
    calls, answers, cost = journal[0]
    assert calls > 30 and answers == 0  # the decomposition and every task's calls were dropped
    assert cost == state.budget.spent_nanos
    # About 140 KB: 30 compressed outputs and ~150 cost rows. SQLite keeps the pages the dropped
    # answers used (no VACUUM) and reuses them, so the bound is on the peak, not a log of
    # every answer ever received.
    size = path.stat().st_size + sum(
        p.stat().st_size for p in tmp_path.glob("state.db-*") if p.is_file()
    )
    assert size < 300_000, size
