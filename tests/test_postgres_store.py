"""PostgreSQL as the shared store (``--db`` / ``$ORCHESTRATOR_DB_URL``): the same state and cache as
the SQLite files, in schemas of their own, leases on the database's clock, and nothing of it
imported unless it is configured. The storage suite itself runs on both stores (test_state.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_ROOT, clean_environment, fake_env, run_cli

from orchestrator.errors import ConfigError
from orchestrator.llm.cache import DiskCache
from orchestrator.store.state import StateError, StateManager

PROJECT = {"description": "d", "criteria": "c", "max_usd": 1.0, "max_time_seconds": 60.0,
           "settings": {}}  # fmt: skip


async def test_the_state_and_the_cache_share_one_database_in_schemas_of_their_own(postgres_url):
    import psycopg

    async with StateManager(postgres_url) as state, DiskCache(postgres_url) as cache:
        assert await state.projects.create("p", **PROJECT)
        await cache.put("k", {"text": "answer"})
        assert await cache.get("k") == {"text": "answer"}
        assert [p.project_id for p in await state.projects.summaries()] == ["p"]

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema LIKE 'orchestrator_%' AND table_name IN ('projects', 'responses')"
        ).fetchall()
    assert sorted(rows) == [("orchestrator_cache", "responses"), ("orchestrator_state", "projects")]


async def test_a_schema_of_another_kind_is_refused_and_left_unchanged(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA orchestrator_state")
        conn.execute("CREATE TABLE orchestrator_state.theirs (x int)")

    async with StateManager(postgres_url) as store:
        with pytest.raises(StateError, match="holds another kind of data") as refused:
            await store.open()
    assert "\n" not in str(refused.value)
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'orchestrator_state'"
        ).fetchall()
    assert tables == [("theirs",)]


async def test_a_lease_runs_on_the_database_clock_not_on_whether_its_holder_lives(postgres_url):
    # A holder on this machine whose process is gone, as after kill -9: on one machine's SQLite
    # file that frees the project at once; across workers only the lease can tell.
    gone = f"{__import__('socket').gethostname()}:999999:dead"
    async with StateManager(postgres_url) as store:
        assert await store.projects.create("p", **PROJECT)
        assert await store.holders.claim("p", gone, lease_seconds=0.5) is None

        assert await store.holders.claim("p", "worker-2", lease_seconds=30) == gone
        await asyncio.sleep(0.6)
        assert await store.holders.claim("p", "worker-2", lease_seconds=30) is None
        assert not await store.holders.renew("p", gone, lease_seconds=30)


async def test_a_database_that_cannot_be_reached_is_one_line_without_its_password():
    url = "postgresql://orchestrator:s3cret-pass@127.0.0.1:9/nowhere"
    async with StateManager(url) as store:
        started = time.monotonic()
        with pytest.raises(StateError) as failed:
            await store.open()
    message = str(failed.value)
    assert "s3cret-pass" not in message and "orchestrator:***@127.0.0.1:9" in message
    assert "\n" not in message
    assert time.monotonic() - started < 30


def test_without_the_extra_a_postgresql_database_is_a_one_line_error(tmp_path, monkeypatch):
    import orchestrator.store.postgres as postgres_store

    monkeypatch.setattr(postgres_store, "psycopg", None)
    with pytest.raises(ConfigError, match=r"distributed extra: pip install -e '\.\[distributed\]'"):
        StateManager("postgresql://u@127.0.0.1/db")

    # The command line names the extra before anything runs, psycopg hidden from it.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'psycopg':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = clean_environment()
    env["PYTHONPATH"] = f"{hide}:{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--db", "postgresql://u:pw@127.0.0.1/db",
         "--list-projects"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "distributed extra" in result.stderr and "pw" not in result.stderr


def test_the_sqlite_default_imports_nothing_of_the_distributed_mode(tmp_path):
    probe = (
        "import sys\nfrom orchestrator.cli.app import main\n"
        "code = main(['--list-projects'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'psycopg_pool', 'procrastinate', 'orchestrator.store.postgres')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env={**clean_environment(),
        "ORCHESTRATOR_HOME": str(tmp_path)}, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_kept_in_postgresql_is_listed_and_resumed_from_it(fake, llm, tmp_path, postgres_url):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    out = tmp_path / "out"

    result = run_cli(
        "--db", postgres_url, "-p", "[project] Build an add library", "-c", "add works",
        "--project-id", "pg1", "--output-dir", str(out), cwd=tmp_path, env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "home" / "state.db").exists()  # nothing went to the SQLite default
    listed = run_cli("--db", postgres_url, "--list-projects", cwd=tmp_path, env=env)
    assert "pg1" in listed.stdout and "SUCCESS" in listed.stdout
    resumed = run_cli("--resume", "pg1", cwd=tmp_path, env={**env, "ORCHESTRATOR_DB_URL":
                      postgres_url})  # fmt: skip
    assert resumed.returncode == 0 and "already finished with status SUCCESS" in resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "SUCCESS" and summary["integration"]["passed"]


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, which it may restart: (URL, its directory)."""
    if not os.environ.get("ORCHESTRATOR_TEST_PG_URL"):
        pytest.skip("no PostgreSQL for the tests (source .ci/postgres start)")
    script = PROJECT_ROOT / ".ci" / "postgres"
    started = subprocess.run(
        ["bash", "-c", f'source "{script}" start >&2 && echo "$ORCHESTRATOR_TEST_PG_URL '
         '$PG_THROWAWAY_DIR"'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    words = started.stdout.split()
    if started.returncode != 0 or len(words) != 2:
        pytest.skip(f"a PostgreSQL server could not be started: {started.stderr.strip()[-200:]}")
    url, directory = words
    yield url, directory
    subprocess.run(["bash", str(script), "stop", directory], timeout=60)


async def test_a_server_restart_between_two_calls_is_survived_and_nothing_is_counted_twice(
    own_postgres,
):
    url, directory = own_postgres
    async with StateManager(url) as store:
        assert await store.projects.create("p", **PROJECT)
        await store.journal.put(
            "p", "k1", task_id="a", phase="generation", model="openai/gpt-4o",
            cost_nanos=500_000_000, entry={"text": "one"}, elapsed=1.0,
        )  # fmt: skip

        restarted = await asyncio.to_thread(
            subprocess.run, ["bash", str(PROJECT_ROOT / ".ci" / "postgres"), "restart", directory],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert restarted.returncode == 0, restarted.stderr

        await store.journal.put(
            "p", "k2", task_id="a", phase="generation", model="openai/gpt-4o",
            cost_nanos=250_000_000, entry={"text": "two"}, elapsed=2.0,
        )  # fmt: skip
        saved = await store.projects.load("p")
    assert saved.spent_usd == 0.75  # each call once, none lost, none twice
    async with StateManager(url) as other:
        assert await other.journal.keys("p") == {"k1", "k2"}


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--db", "/tmp/state.db"], {}, "--db takes a postgresql:// URL"),
        ([], {"ORCHESTRATOR_DB_URL": "/tmp/state.db"}, "ORCHESTRATOR_DB_URL must be a postgresql"),
    ],
)
def test_a_database_that_is_not_a_postgresql_url_is_a_one_line_error(tmp_path, flags, env, message):
    result = run_cli(*flags, "--list-projects", cwd=tmp_path, env=env)

    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


async def test_of_eight_workers_claiming_one_project_at_once_exactly_one_gets_it(postgres_url):
    async with StateManager(postgres_url) as setup:
        assert await setup.projects.create("p", **PROJECT)
    stores = [StateManager(postgres_url) for _ in range(8)]
    try:
        for store in stores:
            await store.open()
        holders = await asyncio.gather(
            *(
                store.holders.claim("p", f"worker-{n}", lease_seconds=30)
                for n, store in enumerate(stores)
            )
        )
    finally:
        for store in stores:
            await store.aclose()

    winners = [n for n, holder in enumerate(holders) if holder is None]
    assert len(winners) == 1
    assert all(holder == f"worker-{winners[0]}" for holder in holders if holder is not None)


def test_a_lease_length_that_is_not_a_number_is_a_one_line_error(tmp_path):
    result = run_cli(
        "-p", "x", "-c", "y", cwd=tmp_path, env={"ORCHESTRATOR_LEASE_SECONDS": "soon"}
    )  # fmt: skip

    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "ORCHESTRATOR_LEASE_SECONDS='soon'" in result.stderr
