"""Several processes at once, each running a whole project with its own budget, all charged to
one team's and one job's caps with too little room for all of them, against a vendor that
refuses (429, 500) and cuts answers off at random: every run ends on its own (never TIMEOUT when
its clock is far), no project passes its budget nor the processes together a shared cap, and
every row of the shared ledger is what the journal says was paid, with nothing left held.

``MONEY_LEDGER=naive`` or ``MONEY_LEDGER=hoard`` runs the property over a broken ledger (see
tests/money_process.py), to see it fail: naive passes the shared caps in the examples whose
answers cost their worst case, hoard leaves runs waiting on their own holds past EXIT_WITHIN."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sqlite_rows, start_process
from test_money_liveness import FlakyVendor

from orchestrator.money.units import nanos_to_usd, usd_to_nanos
from orchestrator.store.state import StateManager

SCRIPT = Path(__file__).with_name("money_process.py")
TEAM, JOB = "eng", "nightly"
# Every process runs with a 120 s clock: one still running at EXIT_WITHIN is stuck.
EXIT_WITHIN = 60.0
LEDGER = os.environ.get("MONEY_LEDGER", "exact")


@dataclass
class Example:
    budgets: list[float]  # per process: its project's budget
    concurrency: list[int]  # per process: the client's calls at once
    tasks: list[int]  # per process: prose tasks in its project
    caps: dict[str, float]  # the team's and the job's, shared by every process
    rates: tuple[float, float, float]  # of 429s, 500s and cut-off answers
    bill_max_output: bool  # every answer costs its worst case: room is exact


def example(seed: int) -> Example:
    rng = random.Random(seed)
    processes = rng.randint(1, 4)
    budgets = [rng.uniform(0.002, 0.015) for _ in range(processes)]
    # Room for the largest budget (a run that could pass a cap is refused before it starts),
    # and for at most half of what the others may spend besides: the processes compete.
    low = max(budgets)
    high = low + (sum(budgets) - low) / 2
    return Example(
        budgets=budgets,
        concurrency=[rng.randint(1, 16) for _ in range(processes)],
        tasks=[rng.randint(2, 6) for _ in range(processes)],
        caps={f"team:{TEAM}": rng.uniform(low, high), f"job:{JOB}": rng.uniform(low, high)},
        rates=(rng.uniform(0, 0.4), rng.uniform(0, 0.2), rng.uniform(0, 0.3)),
        bill_max_output=rng.random() < 0.7,
    )


@dataclass
class Ended:
    project_id: str
    budget: float
    returncode: int | None  # None: still running at EXIT_WITHIN (then killed)
    took: float
    report: dict  # what the process printed: status, spent, reason
    stderr: str


def run_processes(location: str, base_url: str, case: Example, mode: str) -> list[Ended]:
    """Start one process per budget, let them all start their runs at once, and wait for each
    to exit by itself (killed, and reported so, if it has not within EXIT_WITHIN)."""
    workers = []
    for n, budget in enumerate(case.budgets):
        args = [location, base_url, f"p{n}", repr(budget), str(case.concurrency[n]),
                str(case.tasks[n]), mode]  # fmt: skip
        # The script's own directory (the tests') is first on its path, as for any script.
        workers.append(
            start_process(
                [sys.executable, str(SCRIPT), *args],
                cwd=SCRIPT.parent,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for worker in workers:
        line = worker.stdout.readline()
        assert line == "ready\n", (line, worker.stderr.read() if worker.poll() is not None else "")
    started = time.monotonic()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    ended = []
    for n, worker in enumerate(workers):
        left = max(EXIT_WITHIN - (time.monotonic() - started), 0.1)
        try:
            out, err = worker.communicate(timeout=left)
            returncode = worker.returncode
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
            returncode = None
        took = time.monotonic() - started
        lines = out.strip().splitlines()
        report = json.loads(lines[-1]) if returncode == 0 and lines else {}
        ended.append(Ended(f"p{n}", case.budgets[n], returncode, took, report, err))
    return ended


async def save_caps(location: str, caps: dict[str, float]) -> None:
    async with StateManager(location) as store:
        await store.books.save_budget_caps(caps)


def journal_by_scope(location: str) -> dict[str, int]:
    """What the journal says each ledger scope paid: every project's rows for the organisation,
    those of the projects charged to a team or job for its row, a project's own for its row."""
    charged = {
        project_id: json.loads(settings)
        for project_id, settings in sqlite_rows(location, "SELECT id, settings FROM projects")
    }
    paid: dict[str, int] = {}
    for project_id, cost in sqlite_rows(location, "SELECT project_id, cost_nanos FROM journal"):
        settings = charged[project_id]
        scopes = ["org", f"project:{project_id}"]
        scopes += [f"team:{settings['team']}"] if settings.get("team") else []
        scopes += [f"job:{settings['job']}"] if settings.get("job") else []
        for scope in scopes:
            paid[scope] = paid.get(scope, 0) + int(cost)
    return paid


def check_the_property(location: str, case: Example, ended: list[Ended]) -> None:
    for run in ended:
        said = f"{run.project_id}: {run.report} after {run.took:.1f} s\n{run.stderr}"
        assert run.returncode is not None, f"still running after {EXIT_WITHIN:g} s: {said}"
        assert run.returncode == 0 and "Traceback" not in run.stderr, said
        assert run.report["status"] != "TIMEOUT", said

    paid = journal_by_scope(location)
    for run in ended:
        spent = paid.get(f"project:{run.project_id}", 0)
        assert spent <= usd_to_nanos(run.budget), (run.project_id, spent, run.budget)
        assert run.report["spent"] == nanos_to_usd(spent), run.project_id
    ledger = {
        scope: (int(spent), int(reserved))
        for scope, spent, reserved in sqlite_rows(
            location, "SELECT scope, spent_nanos, reserved_nanos FROM money_ledger"
        )
    }
    for scope, cap in case.caps.items():
        assert paid.get(scope, 0) <= usd_to_nanos(cap), (scope, paid.get(scope), cap)
    for scope, (spent, reserved) in ledger.items():
        assert spent == paid.get(scope, 0), (scope, ledger, paid)  # to the nano-dollar
        assert reserved == 0, (scope, ledger)
    assert sqlite_rows(location, "SELECT id, project_id FROM money_holds") == []


@pytest.mark.parametrize("seed", range(5))
def test_processes_competing_for_a_team_and_job_budget_end_on_their_own_with_exact_books(
    fake, llm, state_location, seed
):
    case = example(seed)
    llm.plan = []  # the projects come with their tasks: nothing is planned
    llm.bill_max_output = case.bill_max_output
    fake.responder = FlakyVendor(llm, random.Random(seed), case.rates)
    location = str(state_location)
    asyncio.run(save_caps(location, case.caps))

    ended = run_processes(location, fake.base_url, case, LEDGER)

    check_the_property(location, case, ended)
    assert not fake.responder_errors


def test_the_control_reading_then_writing_passes_a_shared_cap_so_the_property_can_fail(
    fake, llm, tmp_path
):
    # Four processes of 16 calls at once, every answer costing its worst case, and room in the
    # team's and job's caps for about four calls: a ledger that reads and then writes lets
    # several processes take the same room.
    case = Example(
        budgets=[0.01] * 4,
        concurrency=[16] * 4,
        tasks=[4] * 4,
        caps={f"team:{TEAM}": 0.012, f"job:{JOB}": 0.012},
        rates=(0.0, 0.0, 0.0),
        bill_max_output=True,
    )
    llm.plan = []
    llm.bill_max_output = True
    location = str(tmp_path / "state.db")
    asyncio.run(save_caps(location, case.caps))

    ended = run_processes(location, fake.base_url, case, "naive")

    # The runs end; their books do not hold: more was paid than a cap (or a budget) allows.
    assert [run.returncode for run in ended] == [0] * 4, [run.stderr for run in ended]
    with pytest.raises(AssertionError, match=r"\(('team|'job|'p\d)"):
        check_the_property(location, case, ended)
