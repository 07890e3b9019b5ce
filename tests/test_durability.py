"""What a paying user relies on: a run killed or Ctrl-C'd at any point resumes with ``--resume``
where it stopped, finishes, and pays for nothing twice.

Each scenario runs the real CLI in a subprocess against the fake provider, holds chosen requests
unanswered so the signal is certain to land while they are in flight, sends SIGKILL or SIGINT,
resumes the project to completion, and compares every request the provider saw with those of the
same project run uninterrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import clean_environment, fake_env, run_cli, sqlite_rows, start_process
from fake_provider import FakeProvider, RecordedRequest, Reply
from scripted_llm import ScriptedLLM

from orchestrator.llm.catalog import Catalog
from orchestrator.store.state import SavedProject, StateManager

PROJECT = "[project] Build an add library"
CRITERIA = "add works and is tested"
PROJECT_ID = "durable"
TASKS = {"core", "review", "docs", "summary", "extract"}
CONCURRENCY = 3
# Not the CLI's default of $8.00, so "kept the original budget" cannot pass by falling back to it.
BUDGET = "6.5"
DELAY = 0.1  # every reply of an interrupted run, so its other calls are in flight too
HOLD = 60.0  # a held request is never answered before the signal; stopping the fake ends it
DEADLINE = 60.0  # generous: a loaded 2-core machine runs several Python processes per test

# The two self-consistency evaluations of an iteration are identical requests on purpose, so runs
# are compared as multisets of requests, never as "no body twice".
RequestKey = tuple[str, str]


def key(request: RecordedRequest) -> RequestKey:
    return request.model, json.dumps(request.body, sort_keys=True)


class Conductor:
    """Plays every model with a fresh ``ScriptedLLM``, holding the first request of each of the
    ``hold`` (role, task) pairs unanswered; ``fired`` is set once all of them have arrived.

    A fresh ScriptedLLM per process keeps answers a function of the request: its revision numbers
    count the revisions it has seen, so one that saw the interrupted run would answer a re-sent
    revision differently from the uninterrupted run, and every later request would differ.
    """

    def __init__(self, hold: frozenset[tuple[str, str | None]] = frozenset(), delay: float = 0.0):
        self.llm = ScriptedLLM(delay=delay)
        self.pending = set(hold)
        self.held: list[RecordedRequest] = []
        self.fired = threading.Event()
        self.calls = 0
        self.calls_when_fired = 0
        self._lock = threading.Lock()
        if not self.pending:
            self.fired.set()

    def __call__(self, request: RecordedRequest) -> Reply:
        # One request at a time, so the last role ScriptedLLM noted is this request's.
        with self._lock:
            reply = self.llm(request)
            role, task_id, _ = self.llm.roles[-1]
            self.calls += 1
            if not self.fired.is_set() and (role, task_id) in self.pending:
                self.pending.discard((role, task_id))
                self.held.append(request)
                reply = dataclasses.replace(reply, delay=HOLD)
                if not self.pending:
                    self.calls_when_fired = self.calls
                    self.fired.set()
            return reply


@dataclass(frozen=True)
class KillPoint:
    hold: frozenset[tuple[str, str | None]]
    done_before: str  # the tasks column of --list-projects after the signal


KILL_POINTS = {
    # The planner's request is out; no plan has been saved yet.
    "decomposition": KillPoint(frozenset({("plan", None)}), "0/0"),
    # core's draft is journaled, its critique is out, the revision not yet asked for.
    "core-loop": KillPoint(frozenset({("critique", "core")}), "0/5"),
    # core is checkpointed; review, docs and extract have all asked for their first drafts.
    "between-tasks": KillPoint(
        frozenset({("generate", "review"), ("generate", "docs"), ("generate", "extract")}), "1/5"
    ),
}


@dataclass
class Interrupted:
    process: subprocess.CompletedProcess[str]
    requests: list[RecordedRequest]  # every request the provider saw from the interrupted run
    in_flight: list[RecordedRequest]  # those that may have had no journaled answer at the signal
    held: list[RecordedRequest]  # those certainly unanswered at the signal


# The store a scenario keeps its state in: the SQLite file in its home, or a PostgreSQL database,
# where a killed run's project is free once its lease (short here) has run out.
PG_LEASE_SECONDS = 1.0
_database: dict[Path, str] = {}


def cli_env(fake: FakeProvider, home: Path) -> dict[str, str]:
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(home)}
    if home in _database:
        env.update(ORCHESTRATOR_DB_URL=_database[home], ORCHESTRATOR_LEASE_SECONDS="1")
    return env


def new_run_command() -> list[str]:
    return [
        sys.executable, "-m", "orchestrator", "-p", PROJECT, "-c", CRITERIA,
        "--project-id", PROJECT_ID, "--no-cache", "--concurrency", str(CONCURRENCY),
        "--budget", BUDGET,
    ]  # fmt: skip


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run exited ({process.returncode}) before {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def interrupt(
    fake: FakeProvider, tmp_path: Path, home: Path, point: KillPoint, signum: int
) -> Interrupted:
    """Start a new run, send ``signum`` once every request of ``point`` is held, wait for exit."""
    conductor = Conductor(point.hold, delay=DELAY)
    fake.responder = conductor
    process = start_process(
        new_run_command(), env=cli_env(fake, home), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(conductor.fired.is_set, f"the requests {set(point.hold)}", process)
        # The fake lists a request only once its responder returned; wait for the held ones.
        wait_until(lambda: fake.count() >= conductor.calls_when_fired, "the held requests")
        recorded_at_signal = fake.count()
        process.send_signal(signum)
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    requests = list(fake.requests)
    return Interrupted(
        process=subprocess.CompletedProcess(process.args, process.returncode, out, err),
        requests=requests,
        # At most CONCURRENCY calls are in flight, and the newest ones are the only candidates;
        # a request reaching the fake after the signal was sent before it.
        in_flight=requests[max(0, recorded_at_signal - CONCURRENCY) :],
        held=list(conductor.held),
    )


def resume(fake: FakeProvider, tmp_path: Path, home: Path, *flags: str):
    """``--resume durable`` to completion, answered at once by a fresh script."""
    fake.responder = Conductor()
    before = fake.count()
    result = run_cli("--resume", PROJECT_ID, *flags, cwd=tmp_path, env=cli_env(fake, home))
    return result, list(fake.requests[before:])


def listed(home: Path, cwd: Path) -> dict[str, str]:
    """This project's row of ``--list-projects``, by column title."""
    env = {"ORCHESTRATOR_HOME": str(home)}
    if home in _database:
        env["ORCHESTRATOR_DB_URL"] = _database[home]
    result = run_cli("--list-projects", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    header, *rows = (re.split(r"\s{2,}", line) for line in result.stdout.splitlines())
    mine = [dict(zip(header, row, strict=True)) for row in rows if row[0] == PROJECT_ID]
    assert len(mine) == 1, result.stdout
    return mine[0]


def load(home: Path) -> SavedProject:
    async def read() -> SavedProject:
        async with StateManager(_database.get(home, home / "state.db")) as store:
            return await store.projects.load(PROJECT_ID)

    return asyncio.run(read())


_CATALOG = Catalog.load(env={})


def journaled_models(home: Path) -> list[tuple[str, str | None]]:
    """Each journal row's key and the model it names."""
    return sqlite_rows(_database.get(home, home / "state.db"), "SELECT key, model FROM journal")


def worst_case(request: RecordedRequest) -> float:
    """An upper bound on what the run charges for ``request`` (prompt bytes bound its tokens;
    a native schema, sent once in the body, counts three times in the run's own bound)."""
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    limit = limit or body.get("generationConfig", {}).get("maxOutputTokens") or 4096
    input_bound = 3 * len(json.dumps(body).encode()) + 1024
    return _CATALOG.resolve(request.model).price.cost(input_bound, int(limit))


@dataclass(frozen=True)
class Baseline:
    home: Path
    requests: Counter[RequestKey]
    spent_usd: float


def run_baseline(tmp_path: Path) -> Baseline:
    """The project run once without interruption, on its own fake and home."""
    home = tmp_path / "home"
    with FakeProvider() as fake:
        fake.responder = Conductor()
        result = subprocess.run(
            new_run_command(),
            env={**clean_environment(), **cli_env(fake, home)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert result.returncode == 0, result.stderr
        requests = Counter(key(r) for r in fake.requests)
    saved = load(home)
    assert set(saved.final_tasks) == TASKS
    return Baseline(home, requests, saved.spent_usd)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, worker_id) -> Baseline:
    """The uninterrupted run, made once per test session and shared by the xdist workers (it
    is read, never written: a test copies its home)."""
    if worker_id == "master":
        # Without xdist the base directory's parent is shared by every session: nothing to share.
        return run_baseline(tmp_path_factory.mktemp("baseline"))
    shared = tmp_path_factory.getbasetemp().parent / "durability-baseline"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs it; the others wait and read
        saved = shared / "baseline.json"
        if not saved.is_file():
            shared.mkdir(exist_ok=True)
            made = run_baseline(shared)
            requests = [[model, body, n] for (model, body), n in made.requests.items()]
            saved.write_text(json.dumps({"requests": requests, "spent_usd": made.spent_usd}))
        data = json.loads(saved.read_text())
    requests = Counter({(model, body): n for model, body, n in data["requests"]})
    return Baseline(shared / "home", requests, data["spent_usd"])


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize(
    ("signum", "where", "new_budget"),
    [
        pytest.param(signal.SIGKILL, "decomposition", None, id="sigkill-decomposition"),
        pytest.param(signal.SIGKILL, "core-loop", None, id="sigkill-core-loop"),
        pytest.param(signal.SIGKILL, "between-tasks", None, id="sigkill-between-tasks"),
        pytest.param(signal.SIGINT, "core-loop", "9.5", id="sigint-core-loop-new-budget"),
        pytest.param(signal.SIGINT, "between-tasks", None, id="sigint-between-tasks"),
    ],
)
def test_an_interrupted_run_resumes_where_it_stopped_and_pays_for_nothing_twice(
    fake, tmp_path, baseline, signum, where, new_budget, store, request
):
    home = tmp_path / "home"
    point = KILL_POINTS[where]
    if store == "postgres":
        _database[home] = request.getfixturevalue("postgres_url")

    stopped = interrupt(fake, tmp_path, home, point, signum)

    row = listed(home, tmp_path)
    assert row["tasks"] == point.done_before
    assert row["spent / budget"].endswith(f"/ ${float(BUDGET):.2f}")
    if signum == signal.SIGINT:
        assert stopped.process.returncode == 130, stopped.process.stderr
        assert f"--resume {PROJECT_ID}" in stopped.process.stderr
        assert "Traceback" not in stopped.process.stderr
        assert row["status"] == "INTERRUPTED"
    else:
        assert stopped.process.returncode == -signal.SIGKILL
        assert row["status"] == "RUNNING"  # nobody was left to say otherwise

    if store == "postgres" and signum == signal.SIGKILL:
        time.sleep(PG_LEASE_SECONDS + 0.2)  # no process liveness across workers: the lease ends
    flags = ("--budget", new_budget) if new_budget else ()
    result, resumed = resume(fake, tmp_path, home, *flags)

    assert result.returncode == 0, result.stderr
    assert "status SUCCESS" in result.stdout
    row = listed(home, tmp_path)
    assert (row["status"], row["tasks"]) == ("SUCCESS", "5/5")
    # The budget the run was started with, unless the resume gave a new one.
    budget = float(new_budget or BUDGET)
    assert row["spent / budget"].endswith(f"/ ${budget:.2f}")
    saved = load(home)
    assert saved.max_usd == budget
    assert saved.final_tasks == TASKS
    assert {t: r["status"] for t, r in saved.results.items()} == dict.fromkeys(TASKS, "completed")

    paid = Counter(key(r) for r in stopped.requests + resumed)
    missing = baseline.requests - paid
    repeats = paid - baseline.requests
    assert not missing
    # Only calls in flight at the signal may be paid again, and the held ones must be: they were
    # never answered, and the run cannot finish without them.
    assert repeats <= Counter(key(r) for r in stopped.in_flight)
    assert sum(repeats.values()) <= CONCURRENCY
    assert Counter(key(r) for r in stopped.held) <= repeats
    # The journal counts each call whose answer was used once; a call lost in flight may have
    # been billed by the provider but was never answered: it is in the project's spend at its
    # worst case (after Ctrl-C the run settles it so; after kill -9 the resume finds its hold).
    first_copies = {key(r): r for r in reversed(stopped.requests)}
    repeated_cost = sum(worst_case(first_copies[k]) * n for k, n in repeats.items())
    assert baseline.spent_usd - 1e-9 <= saved.spent_usd <= baseline.spent_usd + repeated_cost + 1e-9
    # Every paid call's row names the model it went to, once its task is final too; after kill -9
    # those held unanswered are journaled, as the resume charged their holds, under theirs.
    journaled = journaled_models(home)
    assert all(model is not None for _, model in journaled)
    if signum == signal.SIGKILL:
        unanswered = Counter(model for key, model in journaled if key.endswith("#unanswered"))
        assert Counter(_CATALOG.resolve(r.model).key for r in stopped.held) <= unanswered


def copy_of_baseline(baseline: Baseline, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(baseline.home, home, dirs_exist_ok=True)
    return home


def test_resuming_a_finished_project_says_so_and_calls_no_model(fake, tmp_path, baseline):
    home = copy_of_baseline(baseline, tmp_path)
    fake.responder = Conductor()

    result = run_cli("--resume", PROJECT_ID, cwd=tmp_path, env=cli_env(fake, home))

    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stderr
    assert "status SUCCESS" in result.stdout
    assert fake.count() == 0
    assert load(home).spent_usd == pytest.approx(baseline.spent_usd)


def test_resuming_an_unknown_project_is_a_one_line_error(fake, tmp_path):
    result = run_cli("--resume", "unknown-id", cwd=tmp_path, env=cli_env(fake, tmp_path / "home"))

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "unknown-id" in result.stderr and "--list-projects" in result.stderr
    assert fake.count() == 0


def test_a_new_run_cannot_take_the_id_of_another_project(fake, tmp_path, baseline):
    home = copy_of_baseline(baseline, tmp_path)
    fake.responder = Conductor()

    result = run_cli(
        "-p", "[other] Something else entirely", "-c", CRITERIA, "--project-id", PROJECT_ID,
        cwd=tmp_path, env=cli_env(fake, home),
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert PROJECT_ID in result.stderr
    assert fake.count() == 0
    assert load(home).description == PROJECT  # the saved project is untouched
