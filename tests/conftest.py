"""Shared fixtures: every test runs in a temporary home with no real keys, against a local fake."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import cli_forks
import pytest
from fake_provider import FakeProvider
from scripted_llm import ScriptedLLM

from orchestrator import Budget, RetryPolicy, UnifiedClient
from orchestrator.code import sandbox
from orchestrator.llm.gateway import Journal, LLMGateway
from orchestrator.money.ledger import Ledger
from orchestrator.money.units import usd_to_nanos
from orchestrator.store.state import StateManager

KEY_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "KIMI_API_KEY",
    "MOONSHOT_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "GOOGLE_GEMINI_BASE_URL",
    "KIMI_BASE_URL",
    "MOONSHOT_BASE_URL",
    "DEEPSEEK_BASE_URL",
    "ORCHESTRATOR_CATALOG",
)

# A keyless OpenAI-compatible endpoint, as a user would add a local Ollama model.
LOCAL_CATALOG = """
    providers:
      local:
        kind: openai
        base_url: http://127.0.0.1:11434/v1
    models:
      - id: "llama3.1:8b"
        provider: local
        alias: llama-local
        price: {input: 0, output: 0}
        context_window: 131072
        max_output_tokens: 4096
"""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TESTS = PROJECT_ROOT / "tests"

# "Billion laughs": 360 bytes of YAML, a flow list whose aliases expand to 9**9 values.
_LEVELS = "abcdefghi"
ALIAS_BOMB = (
    "[&a [x, x, x, x, x, x, x, x, x], "
    + ", ".join(
        f"&{name} [{', '.join([f'*{_LEVELS[n]}'] * 9)}]" for n, name in enumerate(_LEVELS[1:])
    )
    + "]"
)

# A list inside a list 50,000 times: past any parser's recursion.
DEEP_LIST = "[" * 50_000 + "]" * 50_000

# What must never reach a terminal from a model or a test: C0 controls but newline and tab, DEL,
# C1 controls (a one-byte CSI among them) and the bidi embeddings, overrides and isolates.
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class FakeClock:
    """A retry clock that never waits: each sleep is recorded in ``sleeps`` and moves its time
    on (as ``advance`` does, for a circuit breaker's cool-down), the loop given one turn."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.time += seconds


class NoWait:
    """The system's time for circuit breakers, but retries that do not wait."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(
    max_attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=5, clock=NoWait()
)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker more than the cores. A third of the suite's time is spent
    waiting (on subprocesses, the sandbox, the fake's delays, PostgreSQL), which one more
    worker fills; two more made the CPU-bound tests contend (measured on 2 cores: 2 workers
    6 m 26-6 m 50 s, 3 workers 5 m 54-6 m 23 s, 4 workers 7 m 17 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test reads the user's keys, .env file or home directory."""
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


PG_URL_ENV = "ORCHESTRATOR_TEST_PG_URL"  # set by .ci/postgres start


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test (dropped after it), or a skip saying why
    there is none: `.ci/run` starts a throwaway cluster; locally, `source .ci/postgres start`."""
    admin = os.environ.get(PG_URL_ENV)
    if not admin:
        pytest.skip(
            f"no PostgreSQL for the tests: {PG_URL_ENV} is not set (source .ci/postgres start)"
        )
    try:
        import psycopg
    except ImportError:
        pytest.skip("the distributed extra is not installed: pip install -e '.[distributed]'")
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {admin} cannot be reached: {str(exc).splitlines()[0]}")
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def state_location(request, tmp_path):
    """Where a state store lives: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def fake():
    with FakeProvider() as server:
        yield server


def fake_env(base_url: str, providers: tuple[str, ...] | None = None) -> dict[str, str]:
    """Keys and base URLs that send every (or the named) provider to the fake server."""
    per_provider = {
        "openai": {"OPENAI_API_KEY": "test", "OPENAI_BASE_URL": f"{base_url}/v1"},
        "anthropic": {"ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": base_url},
        "google": {"GEMINI_API_KEY": "test", "GOOGLE_GEMINI_BASE_URL": base_url},
        "kimi": {"MOONSHOT_API_KEY": "test", "MOONSHOT_BASE_URL": f"{base_url}/v1"},
        "deepseek": {"DEEPSEEK_API_KEY": "test", "DEEPSEEK_BASE_URL": base_url},
    }
    env: dict[str, str] = {}
    for name, values in per_provider.items():
        if providers is None or name in providers:
            env.update(values)
    return env


@pytest.fixture
def llm(fake):
    """The scripted LLMs behind the fake provider, playing every role of a run."""
    scripted = ScriptedLLM()
    fake.responder = scripted
    return scripted


@pytest.fixture
async def gateway(fake, tmp_path):
    """A gateway over the real SDKs and the fake, journaling project "p" into a state file."""
    store = StateManager(tmp_path / "state.db")
    await store.projects.create(
        "p", description="d", criteria="c", max_usd=5.0, max_time_seconds=60.0, settings={}
    )
    assert await store.holders.claim("p", "tests:1:gateway", 600.0) is None
    ledger = Ledger(store.books, "p", "tests:1:gateway")
    await ledger.open(usd_to_nanos(5.0), None, None)
    budget = Budget(max_usd=5.0, max_time_seconds=60)
    journal = Journal(store.journal, "p", budget, ledger)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=10) as client:
        yield LLMGateway(client, budget, None, journal)
    await store.aclose()


@pytest.fixture
async def client(fake):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=5) as c:
        yield c


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    retry_waits: bool = True,
    fresh_interpreter: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGS`` with no key of the developer's, plus ``env``; without
    ``retry_waits``, its retries do not wait (``cli_without_waits.py``). It runs as a fork of a
    server that has imported the vendor SDKs already (``cli_forks.py``), unless the test needs
    a ``fresh_interpreter``: one that imports and starts everything itself."""
    command = ["-m", "orchestrator"] if retry_waits else [str(TESTS / "cli_without_waits.py")]
    full = [sys.executable, *command, *args]
    environment = {**clean_environment(), **(env or {})}
    if not fresh_interpreter:
        done = cli_forks.forked(
            full, args, cwd=cwd, env=environment, server_env=clean_environment(),
            timeout=timeout, retry_waits=retry_waits,
        )  # fmt: skip
        if done is not None:
            return done
    return subprocess.run(
        full, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def start_process(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, stdin=None, stdout=None,
    stderr=None, text: bool = False,
):  # fmt: skip
    """``subprocess.Popen(ARGS)`` for ``python -m orchestrator ...`` or ``python SCRIPT.py
    ...`` (no key of the developer's, plus ``env``), forked like ``run_cli``'s commands: a
    process the test signals, kills, feeds and waits for as it would a ``Popen``."""
    return cli_forks.popen(
        args, cwd=cwd, env={**clean_environment(), **(env or {})},
        server_env=clean_environment(), stdin=stdin, stdout=stdout, stderr=stderr, text=text,
    )  # fmt: skip


def run_process(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(ARGS, capture_output=True, text=True, timeout=TIMEOUT)`` for a command
    ``start_process`` forks: its output and exit status, or ``TimeoutExpired`` (it killed)."""
    process = start_process(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return cli_forks.completed(process, timeout)


def pytest_sessionfinish(session) -> None:
    cli_forks.stop()


def write_file(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (dedented) or raw bytes to ``path``, as a user's hand-made file."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def clean_environment() -> dict[str, str]:
    """The process environment without any key or setting of the developer's."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in KEY_VARIABLES
        and name not in ("COLUMNS", "LINES")  # a table's width is the test's to set
        and not name.endswith("_API_KEY")
        and not name.startswith("ORCHESTRATOR_")
    }
    # The test's own home (set by the autouse fixture), never the developer's.
    if "ORCHESTRATOR_HOME" in os.environ:
        clean["ORCHESTRATOR_HOME"] = os.environ["ORCHESTRATOR_HOME"]
    # Run the working tree's package whatever is installed in the environment.
    clean["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), clean.get("PYTHONPATH")) if p
    )
    return clean


def sqlite_rows(path: Path | str, sql: str, args: tuple = ()) -> list[tuple]:
    """Look at the file (or the PostgreSQL database) the way another program would, closing
    the connection afterwards."""
    if str(path).startswith("postgresql://"):
        import psycopg

        from orchestrator.store.postgres import to_postgres

        options = "-c search_path=orchestrator_state,orchestrator_cache"
        with psycopg.connect(str(path), autocommit=True, options=options) as pg:
            cursor = pg.execute(to_postgres(sql), args)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def task_spend_nanos(store: StateManager, project_id: str, task_id: str) -> int:
    """What the task's journaled calls cost, answered or not, over every run of it."""
    rows = await store._store.run(
        "SELECT COALESCE(SUM(cost_nanos), 0) FROM journal WHERE project_id = ? AND task_id = ?",
        (project_id, task_id),
    )
    return int(rows[0][0])


async def eventually(condition) -> None:
    """Wait (up to 30 s) for ``condition()``, which the fake's server thread makes true."""
    async with asyncio.timeout(30):
        # Polling, not an Event: the condition changes in another thread.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# --- sandbox paths --------------------------------------------------------------------------------

SANDBOX_PATHS = ("bubblewrap", "unshare")
_sandbox_outcomes: dict[str, dict[str, str]] = {}  # path -> outcome -> a reason (skips)


@pytest.fixture(params=SANDBOX_PATHS)
def isolation(request) -> str:
    """Each sandbox path. Skipped only where this machine lacks it (its tool, or namespaces
    for a minimal command of that tool, found without our own command line): a path the
    machine has that fails to start fails the test. The summary says which paths ran."""
    request.node.user_properties.append(("sandbox_path", request.param))
    lacking = sandbox.machine_lacks(request.param)
    if lacking:
        pytest.skip(f"this machine lacks the {request.param} sandbox: {lacking}")
    return request.param


def pytest_runtest_logreport(report) -> None:
    paths = [value for name, value in report.user_properties if name == "sandbox_path"]
    if paths and (report.when == "call" or report.skipped):
        reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
        _sandbox_outcomes.setdefault(paths[0], {})[report.outcome] = reason


def pytest_terminal_summary(terminalreporter) -> None:
    said = []
    for path in SANDBOX_PATHS:
        outcomes = _sandbox_outcomes.get(path, {})
        if "passed" in outcomes or "failed" in outcomes:
            said.append(f"{path} ran")
        elif "skipped" in outcomes:
            said.append(f"{path} skipped ({outcomes['skipped'].removeprefix('Skipped: ')})")
    if said:
        terminalreporter.write_line(f"sandbox paths: {', '.join(said)}")
