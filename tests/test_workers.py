"""Projects run by workers (``--submit``, ``--worker``) on the shared PostgreSQL store: each runs
once, a killed worker's project is finished by another that pays for nothing twice, and a
worker asked to stop lets its calls in flight finish and hands its projects back."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PROJECT_ROOT,
    fake_env,
    run_cli,
    sqlite_rows,
    start_process,
)
from scripted_llm import ScriptedLLM
from test_durability import (
    BUDGET,
    CONCURRENCY,
    CRITERIA,
    DEADLINE,
    DELAY,
    HOLD,
    KILL_POINTS,
    PROJECT,
    PROJECT_ID,
    Conductor,
    baseline,  # noqa: F401 - the same project run once, uninterrupted, as a fixture
    key,
    wait_until,
)
from test_engine import prose_task
from test_exactness import take_over_at_first_grading
from test_postgres_store import own_postgres  # noqa: F401 - a server this test may restart

from orchestrator import AgentPool, Budget, Orchestrator, Task, TaskType, UnifiedClient
from orchestrator.jobs.agents import JobSpec
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.units import usd_to_nanos
from orchestrator.store.state import StateManager

LEASE = "1"  # seconds: a killed worker's project and job are free again soon after
RUN_FLAGS = ("-p", PROJECT, "-c", CRITERIA, "--project-id", PROJECT_ID, "--no-cache",
             "--concurrency", str(CONCURRENCY), "--budget", BUDGET)  # fmt: skip


@pytest.fixture
def env(fake, postgres_url, tmp_path) -> dict[str, str]:
    return {
        **fake_env(fake.base_url),
        "ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "ORCHESTRATOR_DB_URL": postgres_url,
        "ORCHESTRATOR_LEASE_SECONDS": LEASE,
    }


def start_worker(env: dict[str, str], cwd: Path, *flags: str) -> Any:
    return start_process(
        [sys.executable, "-m", "orchestrator", "--worker", *flags],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(worker: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = worker.communicate(timeout=DEADLINE)
    assert worker.returncode == 0, err
    return out, err


def project_row(env: dict[str, str], cwd: Path, project_id: str = PROJECT_ID) -> dict[str, str]:
    result = run_cli("--list-projects", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    header, *rows = (re.split(r"\s{2,}", line) for line in result.stdout.splitlines())
    mine = [dict(zip(header, row, strict=True)) for row in rows if row[0] == project_id]
    assert len(mine) == 1, result.stdout
    return mine[0]


async def books(url: str) -> tuple[int, int, int]:
    """The organisation's ledger spend, the journal's total, and the project's saved spend, in
    nano-dollars."""
    async with StateManager(url) as store:
        ledger = await store.books.ledger(["org"])
        journal = await store._store.run("SELECT COALESCE(SUM(cost_nanos), 0) FROM journal")
        saved = await store.projects.load(PROJECT_ID)
    return ledger["org"].spent_nanos, int(journal[0][0]), saved.spent_nanos


async def queued_jobs(url: str) -> list[tuple[str, str]]:
    from orchestrator.jobs.workers import QUEUE_SCHEMA

    async with StateManager(url) as store:
        rows = await store._store.run(
            f"SELECT args->>'project_id', status::text FROM {QUEUE_SCHEMA}.procrastinate_jobs"
            " ORDER BY id"
        )
    return [(str(p), str(s)) for p, s in rows]


def test_a_submitted_project_is_queued_unpaid_then_run_by_a_worker(fake, env, tmp_path):
    fake.responder = Conductor()
    out = tmp_path / "out"

    submitted = run_cli("--submit", *RUN_FLAGS, "--output-dir", str(out), cwd=tmp_path, env=env)
    again = run_cli("--submit", *RUN_FLAGS, "--output-dir", str(out), cwd=tmp_path, env=env)

    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout == f"{PROJECT_ID}\n"
    assert fake.count() == 0  # nothing is paid until a worker runs it
    assert again.returncode == 0 and "already waiting for a worker" in again.stderr
    assert project_row(env, tmp_path)["tasks"] == "0/0"

    _, err = finish(start_worker(env, tmp_path, "--exit-when-idle"))

    assert f"project {PROJECT_ID}: SUCCESS" in err
    row = project_row(env, tmp_path)
    assert (row["status"], row["tasks"]) == ("SUCCESS", "5/5")
    assert (out / "summary.json").is_file()  # written where the submission asked
    assert asyncio.run(queued_jobs(env["ORCHESTRATOR_DB_URL"])) == [(PROJECT_ID, "succeeded")]


def test_a_worker_whose_project_was_taken_over_reports_system_failure(fake, llm, env, tmp_path):
    llm.plan = [prose_task("only")]
    url = env["ORCHESTRATOR_DB_URL"]
    fake.responder = take_over_at_first_grading(llm, url, delay=0.0)
    submitted = run_cli("--submit", "-p", PROJECT, "-c", CRITERIA, "--project-id", "p1",
                        cwd=tmp_path, env=env)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr

    _, err = finish(start_worker(env, tmp_path, "--exit-when-idle"))

    assert "project p1: SYSTEM_FAILURE stopped paying: another run took project 'p1'" in err
    assert "Traceback" not in err
    # The project is left to the run that took it: its status is not overwritten.
    assert sqlite_rows(url, "SELECT status FROM projects") == [("RUNNING",)]


def test_two_workers_started_together_run_a_project_once(fake, env, tmp_path, baseline):  # noqa: F811
    fake.responder = Conductor()
    assert run_cli("--submit", *RUN_FLAGS, cwd=tmp_path, env=env).returncode == 0

    workers = [start_worker(env, tmp_path, "--exit-when-idle") for _ in range(2)]
    errors = [finish(worker)[1] for worker in workers]

    assert sum(f"project {PROJECT_ID}: SUCCESS" in err for err in errors) == 1
    assert Counter(key(r) for r in fake.requests) == baseline.requests  # each call asked once
    ledger, journal, saved = asyncio.run(books(env["ORCHESTRATOR_DB_URL"]))
    assert ledger == journal == saved


def test_a_killed_workers_project_is_finished_by_another_paying_only_its_calls_in_flight_again(
    fake,
    env,
    tmp_path,
    baseline,  # noqa: F811
):
    point = KILL_POINTS["core-loop"]
    conductor = Conductor(point.hold, delay=DELAY)
    fake.responder = conductor
    assert run_cli("--submit", *RUN_FLAGS, cwd=tmp_path, env=env).returncode == 0
    first = start_worker(env, tmp_path)
    try:
        wait_until(conductor.fired.is_set, "the held critique", first)
        wait_until(lambda: fake.count() >= conductor.calls_when_fired, "the held requests")
        recorded_at_kill = fake.count()
        first.kill()
        first.communicate(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    killed = list(fake.requests)
    # Its job stays "doing" until its heartbeat is older than a lease; then another worker's
    # sweep sends it back to the queue, and the project's lease has ended too.
    time.sleep(float(LEASE) + 0.5)
    fake.responder = Conductor()

    _, err = finish(start_worker(env, tmp_path, "--exit-when-idle"))

    assert f"project {PROJECT_ID}: SUCCESS" in err, err
    resumed = fake.requests[len(killed) :]
    paid = Counter(key(r) for r in killed + resumed)
    assert not baseline.requests - paid
    repeats = paid - baseline.requests
    assert repeats <= Counter(key(r) for r in killed[max(0, recorded_at_kill - CONCURRENCY) :])
    assert Counter(key(r) for r in conductor.held) <= repeats
    # The held call may have been billed: its hold was charged in full, and the books agree.
    ledger, journal, saved = asyncio.run(books(env["ORCHESTRATOR_DB_URL"]))
    assert ledger == journal == saved
    assert saved > usd_to_nanos(baseline.spent_usd)


def test_a_worker_asked_to_stop_lets_its_calls_finish_and_hands_the_project_back(
    fake,
    env,
    tmp_path,
    baseline,  # noqa: F811
):
    # Answers slower than a lease: calls are still in flight when the queue heartbeat, stopped
    # at the signal, is a lease old (the job must not be taken for a dead worker's then).
    fake.responder = Conductor(delay=2.0)
    assert run_cli("--submit", *RUN_FLAGS, cwd=tmp_path, env=env).returncode == 0
    worker = start_worker(env, tmp_path)
    wait_until(lambda: fake.count() >= 2, "the first answers", worker)

    worker.send_signal(signal.SIGTERM)
    _, err = finish(worker)

    row = project_row(env, tmp_path)
    assert row["status"] == "INTERRUPTED", err
    assert f"project {PROJECT_ID} released" in err
    stopped = list(fake.requests)
    url = env["ORCHESTRATOR_DB_URL"]
    assert asyncio.run(queued_jobs(url)) == [(PROJECT_ID, "succeeded"), (PROJECT_ID, "todo")], err
    unanswered = asyncio.run(unanswered_calls(url))
    assert unanswered == []  # every call in flight finished, was journaled and is replayed

    fake.responder = Conductor()
    _, err = finish(start_worker(env, tmp_path, "--exit-when-idle"))

    assert f"project {PROJECT_ID}: SUCCESS" in err
    # Not one call was paid twice: the stop let every call in flight finish.
    assert Counter(key(r) for r in fake.requests) == baseline.requests
    assert len(fake.requests) > len(stopped)


async def unanswered_calls(url: str) -> list[str]:
    async with StateManager(url) as store:
        rows = await store._store.run("SELECT key FROM journal WHERE key LIKE '%#unanswered'")
    return [row[0] for row in rows]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--submit", "-p", "x", "-c", "y"), "need a PostgreSQL store: --db URL or"),
        (("--worker",), "need a PostgreSQL store: --db URL or"),
        (("--exit-when-idle",), "--exit-when-idle goes with --worker"),
        (("--worker", "--concurrency", "0"), "at least 1"),
    ],
)
def test_worker_flags_used_wrongly_are_one_line_errors(flags, message, tmp_path):
    result = run_cli(*flags, cwd=tmp_path, env={"ORCHESTRATOR_HOME": str(tmp_path)})

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


NOTE_TASK = {"note": Task(id="note", type=TaskType.WRITING, prompt="[note] Write a note.")}
PARALLEL_TASKS = {
    f"n{i}": Task(id=f"n{i}", type=TaskType.WRITING, prompt=f"[n{i}] Write note {i}.")
    for i in range(4)
}


async def create(
    url: str,
    fake_url: str,
    ids: list[str],
    tasks: dict[str, Task],
    *,
    budget: float = 1.0,
    team: str | None = None,
    caps: BudgetHierarchy | None = None,
) -> None:
    """Projects saved for the workers through the library, as a script would."""
    from orchestrator.jobs.workers import enqueue

    async with (
        StateManager(url) as store,
        UnifiedClient(env=fake_env(fake_url)) as client,
    ):
        orchestrator = Orchestrator(
            budget=Budget(max_usd=budget),
            state_manager=store,
            client=client,
            use_cache=False,
            integration=False,
            max_concurrency=4,
            budget_hierarchy=caps,
            extra_settings={"use_cache": False},
        )
        for project_id in ids:
            await orchestrator.create_project(
                f"[project] notes for {project_id}", "notes are written", project_id,
                tasks=tasks, team=team,
            )  # fmt: skip
    assert await enqueue(url, ids) == set()


async def project_books(url: str) -> tuple[dict[str, str], list[tuple[str, str]], int, dict]:
    async with StateManager(url) as store:
        projects = {p.project_id: p.status for p in await store.projects.summaries()}
        journal = await store._store.run("SELECT COALESCE(SUM(cost_nanos), 0) FROM journal")
        ledger = await store.books.ledger()
    return projects, await queued_jobs(url), int(journal[0][0]), ledger


def test_many_projects_on_four_workers_are_each_completed_once(fake, env, tmp_path):
    fake.responder = ScriptedLLM()
    url = env["ORCHESTRATOR_DB_URL"]
    # Three times what the workers run at once (4 workers of 4 projects each): every worker
    # fetches job after job while the others do, which is where a job could be taken twice.
    # (It ran a hundred; 48 is the same race, repeated fewer times, for half the CPU.)
    ids = [f"many{n:03}" for n in range(48)]
    asyncio.run(create(url, fake.base_url, ids, NOTE_TASK))

    workers = [start_worker(env, tmp_path, "--concurrency", "4", "--exit-when-idle")
               for _ in range(4)]  # fmt: skip
    errors = [finish(worker)[1] for worker in workers]

    projects, jobs, journal, ledger = asyncio.run(project_books(url))
    assert projects == dict.fromkeys(ids, "SUCCESS")
    assert sorted(jobs) == [(p, "succeeded") for p in ids]  # one job each, run once
    said = Counter(line for err in errors for line in err.splitlines() if ": SUCCESS" in line)
    assert sum(said.values()) == len(ids), [
        line for line, n in said.items() if n > 1 or "many" not in line
    ]
    # Every project asked for the same calls, once each: its draft, critique, verdicts.
    per_project = Counter(
        re.search(r"notes for (many\d+)", r.prompt_text)[1] for r in fake.requests
    )
    assert set(per_project) == set(ids) and len(set(per_project.values())) == 1
    assert journal > 0 and ledger["org"].spent_nanos == journal
    assert sum(ledger[f"project:{p}"].spent_nanos for p in ids) == journal


async def queue_and_holder(url: str, project_id: str) -> tuple[Counter[str], str | None]:
    """How many jobs are in each status, and who holds the project's lease now."""
    async with StateManager(url) as store:
        rows = await store._store.run("SELECT owner FROM projects WHERE id = ?", (project_id,))
    return Counter(status for _, status in await queued_jobs(url)), rows[0][0] if rows else None


def test_workers_leaving_when_idle_first_finish_the_projects_of_a_killed_worker(
    fake, env, tmp_path
):
    # The slow project's answers wait until its worker is killed: that kill lands mid-run.
    killed = threading.Event()
    llm = ScriptedLLM()

    def respond(request):
        slow = "notes for slow" in request.prompt_text and not killed.is_set()
        return dataclasses.replace(llm(request), delay=HOLD if slow else DELAY)

    fake.responder = respond
    url = env["ORCHESTRATOR_DB_URL"]
    ids = ["slow", *(f"quick{n}" for n in range(5))]  # queued first, so fetched first
    asyncio.run(create(url, fake.base_url, ids, NOTE_TASK))
    workers = [start_worker(env, tmp_path, "--exit-when-idle", "-v") for _ in range(3)]

    holders = []

    def mid_run() -> bool:
        # The slow project's call is in flight, nothing is left queued, and another worker is
        # still running its last project: without the kill, they would all leave soon.
        slow_asked = any("notes for slow" in r.prompt_text for r in fake.requests)
        jobs, holder = asyncio.run(queue_and_holder(url, "slow"))
        holders.append(holder)
        return slow_asked and holder is not None and jobs["todo"] == 0 and jobs["doing"] >= 2

    wait_until(mid_run, "the slow project mid-run, the queue empty")
    victim = next(w for w in workers if str(w.pid) == holders[-1].split(":")[1])
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=DEADLINE)
    killed.set()
    survivors = [w for w in workers if w is not victim]
    errors = "".join(finish(worker)[1] for worker in survivors)

    projects, jobs, journal, ledger = asyncio.run(project_books(url))
    assert projects == dict.fromkeys(ids, "SUCCESS"), errors
    assert sorted(jobs) == sorted((p, "succeeded") for p in ids)  # the killed job, run again
    assert "project slow: SUCCESS" in errors
    # At -v, a worker says what it waits for: the killed worker's project, till its lease ends.
    assert re.search(r"waiting for project slow: .*lease ends", errors), errors
    # Every paid call is counted once: the ledger agrees with the journal, scope by scope.
    assert journal > 0 and ledger["org"].spent_nanos == journal
    assert sum(ledger[f"project:{p}"].spent_nanos for p in ids) == journal


def test_an_idle_worker_leaves_a_project_whose_lease_a_live_worker_renews_to_that_worker(
    fake, env, tmp_path
):
    fake.responder = ScriptedLLM(delay=HOLD)  # the live worker's call is in flight throughout
    url = env["ORCHESTRATOR_DB_URL"]
    asyncio.run(create(url, fake.base_url, ["busy"], NOTE_TASK))
    live = start_worker(env, tmp_path)
    try:
        wait_until(lambda: fake.count() >= 1, "the live worker's first call", live)

        _, err = finish(start_worker(env, tmp_path, "--exit-when-idle", "-v"))

        assert "project busy: its lease was renewed: left to its live run" in err, err
        assert live.poll() is None
    finally:
        live.kill()
        live.communicate()


def test_a_pool_can_queue_its_agents_jobs_for_the_workers(fake, env, tmp_path):
    fake.responder = ScriptedLLM()
    url = env["ORCHESTRATOR_DB_URL"]

    async def submit() -> dict[str, str | BaseException]:
        async with (
            StateManager(url) as store,
            UnifiedClient(env=fake_env(fake.base_url)) as client,
        ):
            pool = AgentPool()
            for name in ("a", "b"):
                pool.add_agent(name, Orchestrator(state_manager=store, client=client,
                                                  use_cache=False, integration=False))  # fmt: skip
            spec = JobSpec("[project] notes", "notes are written", Budget(max_usd=1.0),
                           tasks=NOTE_TASK)  # fmt: skip
            return await pool.submit_parallel({"a": spec, "b": spec}, queue_url=url)

    submitted = asyncio.run(submit())

    assert all(isinstance(p, str) for p in submitted.values()) and fake.count() == 0
    finish(start_worker(env, tmp_path, "--concurrency", "2", "--exit-when-idle"))
    projects, jobs, _, _ = asyncio.run(project_books(url))
    assert {projects[p] for p in submitted.values()} == {"SUCCESS"}
    assert sorted(p for p, _ in jobs) == sorted(submitted.values())


def test_four_workers_with_four_calls_in_flight_each_never_pass_a_shared_team_cap(
    fake, env, tmp_path
):
    # Every answer bills its whole output limit: the caps are reached for real.
    fake.responder = ScriptedLLM(bill_max_output=True)
    url = env["ORCHESTRATOR_DB_URL"]
    ids = [f"capped{n}" for n in range(8)]
    cap = 0.25
    asyncio.run(create(url, fake.base_url, ids, PARALLEL_TASKS, budget=0.2, team="eng",
                       caps=BudgetHierarchy(team_budgets={"eng": cap})))  # fmt: skip

    workers = [start_worker(env, tmp_path, "--exit-when-idle") for _ in range(4)]
    for worker in workers:
        finish(worker)

    projects, _, journal, ledger = asyncio.run(project_books(url))
    team = ledger["team:eng"]
    assert team.spent_nanos <= usd_to_nanos(cap) and team.reserved_nanos == 0
    assert team.spent_nanos == journal == ledger["org"].spent_nanos
    assert "BUDGET_EXHAUSTED" in projects.values()  # the cap, not the runs, ended the work
    assert team.spent_nanos > usd_to_nanos(cap) // 2


def test_a_database_restart_mid_run_is_ridden_out_or_resumed_and_charges_nothing_twice(
    fake,
    own_postgres,  # noqa: F811
    tmp_path,
    baseline,  # noqa: F811
):
    url, directory = own_postgres
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home"),
           "ORCHESTRATOR_DB_URL": url, "ORCHESTRATOR_LEASE_SECONDS": LEASE}  # fmt: skip
    fake.responder = Conductor(delay=0.3)
    run = start_process(
        [sys.executable, "-m", "orchestrator", *RUN_FLAGS],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: fake.count() >= 4, "the first answers", run)
        script = str(PROJECT_ROOT / ".ci" / "postgres")
        restart = subprocess.run(["bash", script, "restart", directory],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert restart.returncode == 0, restart.stderr
        _, err = run.communicate(timeout=DEADLINE)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert "Traceback" not in err
    # Statements wait for the server to come back (the pool replaces dropped connections), so
    # the run usually rides the restart out; one that stopped on it is resumed.
    assert run.returncode in (0, 2, 6), err  # finished, or a one-line storage error
    time.sleep(float(LEASE) + 0.2)  # a run cut off from the database held its lease till now
    fake.responder = Conductor()

    resumed = run_cli("--resume", PROJECT_ID, cwd=tmp_path, env=env)

    assert resumed.returncode == 0, resumed.stderr
    assert "SUCCESS" in resumed.stdout
    paid = Counter(key(r) for r in fake.requests)
    assert not baseline.requests - paid
    assert sum((paid - baseline.requests).values()) <= CONCURRENCY  # only calls in flight
    ledger, journal, saved = asyncio.run(books(url))
    assert ledger == journal == saved


@pytest.mark.parametrize("flags", [("--worker",), ("--submit", "-p", "x", "-c", "y")])
def test_a_queue_that_cannot_be_reached_is_one_line_without_its_password(flags, tmp_path):
    env = {"ORCHESTRATOR_HOME": str(tmp_path), "OPENAI_API_KEY": "test",
           "ORCHESTRATOR_DB_URL": "postgresql://u:s3cret@127.0.0.1:9/queue"}  # fmt: skip

    result = run_cli(*flags, cwd=tmp_path, env=env)

    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "connection refused" in result.stderr.lower() and "s3cret" not in result.stderr
