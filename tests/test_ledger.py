"""The budget ledger: caps shared by every process on a store are never passed, a call's journal
row and its settlement commit together, and a hold a dead run left behind is charged in full."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_environment, task_spend_nanos

from orchestrator.money.budget import BudgetExceeded
from orchestrator.money.ledger import CallRow, Ledger, run_scopes
from orchestrator.money.units import usd_to_nanos as nanos
from orchestrator.store import sqlite as sqlite_store
from orchestrator.store.lease import LeaseLost
from orchestrator.store.state import StateManager

PROJECT = {
    "description": "d",
    "criteria": "c",
    "max_usd": 5.0,
    "max_time_seconds": 600.0,
    "settings": {"team": "eng", "job": "nightly"},
}
STRESS = Path(__file__).with_name("ledger_stress.py")
MODEL = "openai/gpt-4o"  # the catalog key of the model every call here goes to


async def project(store: StateManager, project_id: str, owner: str = "host:1:run") -> None:
    await store.projects.create(project_id, **PROJECT)
    assert await store.holders.claim(project_id, owner, 60.0) is None


async def opened(store: StateManager, project_id: str, owner: str = "host:1:run") -> Ledger:
    ledger = Ledger(store.books, project_id, owner)
    await ledger.open(nanos(PROJECT["max_usd"]), "eng", "nightly")
    return ledger


async def held(ledger: Ledger, amount_usd: float, key: str = "call"):
    hold = ledger.new_hold(nanos(amount_usd))
    await ledger.reserve(hold, task_id="t", phase="generation", model=MODEL, journal_key=key)
    return hold


def test_a_runs_scopes_are_locked_in_one_order_everywhere():
    assert run_scopes("p", "eng", "j1") == ("org", "team:eng", "job:j1", "project:p")
    assert run_scopes("p", None, None) == ("org", "project:p")


async def test_a_call_holds_its_worst_case_on_every_scope_and_its_journal_row_settles_it(
    state_location,
):
    async with StateManager(state_location) as store:
        await store.books.save_budget_caps({"team:eng": 3.0})
        await project(store, "p")
        ledger = await opened(store, "p")

        hold = await held(ledger, 0.5)
        during = await store.books.ledger()
        charged = await store.books.ledger_settle(
            [(hold.id, nanos(0.2))],
            CallRow("p", "call", "t", "generation", MODEL, {"text": "ok"}, 1.0),
        )
        after = await store.books.ledger()
        journal = await store.journal.get("p", "call")

    assert {s: (r.spent_nanos, r.reserved_nanos) for s, r in during.items()} == dict.fromkeys(
        ledger.scopes, (0, nanos(0.5))
    )
    assert during["team:eng"].cap_nanos == nanos(3.0)
    assert during["project:p"].cap_nanos == nanos(5.0)
    assert during["org"].cap_nanos is None and during["job:nightly"].cap_nanos is None
    assert charged == nanos(0.2)
    assert {s: (r.spent_nanos, r.reserved_nanos) for s, r in after.items()} == dict.fromkeys(
        ledger.scopes, (nanos(0.2), 0)
    )
    assert journal is not None and journal["cost_nanos"] == nanos(0.2)


async def test_a_call_that_could_pass_a_cap_is_refused_naming_it_and_holds_nothing(
    state_location,
):
    async with StateManager(state_location) as store:
        await store.books.save_budget_caps({"job:nightly": 1.0})
        await project(store, "p")
        ledger = await opened(store, "p")
        first = await held(ledger, 0.4)
        await store.books.ledger_settle(
            [(first.id, nanos(0.4))], CallRow("p", "a", "t", "generation", MODEL, None, 0.0)
        )

        with pytest.raises(BudgetExceeded) as refused:
            await held(ledger, 0.7)
        rows = await store.books.ledger()

    assert str(refused.value) == (
        "the job nightly budget of $1.00 has $0.6000 left: "
        "a call needing up to $0.7000 does not fit"
    )
    # The org and team rows it passed first hold nothing of it: one transaction, rolled back.
    assert [rows[s].reserved_nanos for s in ledger.scopes] == [0, 0, 0, 0]


async def test_a_run_whose_project_another_run_took_holds_nothing_more_even_before_it_notices(
    state_location,
):
    async with StateManager(state_location) as store:
        await project(store, "p")
        ledger = await opened(store, "p")
        # Paused past its lease (SIGSTOP, a suspended laptop): another run took the project.
        await store._store.run("UPDATE projects SET owner = 'host:2:next' WHERE id = 'p'")

        with pytest.raises(LeaseLost, match="another run took project 'p'"):
            await held(ledger, 0.1)
        rows = await store.books.ledger()

    assert [rows[s].reserved_nanos for s in ledger.scopes] == [0, 0, 0, 0]


@pytest.mark.parametrize("path", ["one job on the thread", "statement by statement"])
async def test_the_ledgers_transactions_keep_the_books_the_same_on_both_sqlite_paths(
    tmp_path, monkeypatch, path
):
    if path == "statement by statement":  # as on an aiosqlite release without the job hook
        monkeypatch.setattr(sqlite_store, "THREAD_JOB", "_no_such_hook")
    async with StateManager(tmp_path / "state.db") as store:
        await store.books.save_budget_caps({"team:eng": 1.0})
        await project(store, "p")
        ledger = await opened(store, "p")
        first = await held(ledger, 0.6)
        await store.books.ledger_settle(
            [(first.id, nanos(0.6))], CallRow("p", "a", "t", "generation", MODEL, None, 0)
        )
        with pytest.raises(BudgetExceeded):
            await held(ledger, 0.5)  # refused on the team's row after the org's was held
        second = await held(ledger, 0.3, key="b")
        charged = await store.books.ledger_settle(
            [(second.id, nanos(0.25))],
            CallRow("p", "b", "t", "generation", MODEL, {"text": "ok"}, 1.0),
        )
        rows = await store.books.ledger()
        journal = await store._store.run("SELECT key, cost_nanos FROM journal ORDER BY key")

    assert charged == nanos(0.25)
    assert {s: (r.spent_nanos, r.reserved_nanos) for s, r in rows.items()} == dict.fromkeys(
        ledger.scopes, (nanos(0.85), 0)
    )
    assert journal == [("a", nanos(0.6)), ("b", nanos(0.25))]


async def test_a_call_waits_while_calls_in_flight_hold_the_room_it_needs(state_location):
    async with StateManager(state_location) as store:
        await store.books.save_budget_caps({"team:eng": 1.0})
        await project(store, "p")
        ledger = await opened(store, "p")
        first = await held(ledger, 0.8, key="first")

        second = asyncio.create_task(held(ledger, 0.5, key="second"))
        await asyncio.sleep(0.2)
        waited = not second.done()
        # The first call cost less than its worst case: the second fits now.
        await store.books.ledger_settle(
            [(first.id, nanos(0.3))], CallRow("p", "first", "t", "generation", MODEL, None, 0)
        )
        await asyncio.wait_for(second, 5)
        rows = await store.books.ledger(["team:eng"])

    assert waited
    team = rows["team:eng"]
    assert (team.spent_nanos, team.reserved_nanos) == (nanos(0.3), nanos(0.5))


async def test_a_hold_left_by_a_run_that_lost_its_project_is_charged_in_full_and_journaled(
    state_location,
):
    async with StateManager(state_location) as store:
        await project(store, "p", owner="elsewhere:1:gone")
        gone = await opened(store, "p", owner="elsewhere:1:gone")
        hold = await held(gone, 0.6, key="in-flight")
        await store.holders.release("p", "elsewhere:1:gone")  # its lease ended without settling

        assert await store.holders.claim("p", "host:2:next", 60.0) is None
        expired = await Ledger(store.books, "p", "host:2:next").open(nanos(5.0), "eng", "nightly")
        late = await store.books.ledger_settle(
            [(hold.id, nanos(0.1))], CallRow("p", "late", "t", "generation", MODEL, None, 0)
        )
        rows = await store.books.ledger()
        journal = await store.journal.get("p", "in-flight#unanswered")
        unanswered = await task_spend_nanos(store, "p", "t")
        calls, _ = await store.journal.latest("p", 10)

    assert [(h.project_id, h.amount_nanos, h.phase) for h in expired] == [
        ("p", nanos(0.6), "generation")
    ]
    assert {s: (r.spent_nanos, r.reserved_nanos) for s, r in rows.items()} == dict.fromkeys(
        gone.scopes, (nanos(0.6), 0)
    )
    assert journal is None  # nothing to replay: it is asked again, its worst case is charged
    assert unanswered == nanos(0.6)
    assert [(c.cost_nanos, c.model) for c in calls] == [(nanos(0.6), MODEL)]  # its call's model
    assert late == 0  # a settlement that comes after the expiry adds nothing


@pytest.fixture
def dead_owner() -> str:
    """A run owner on this machine whose process has ended."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return f"{socket.gethostname()}:{ended.stdout.strip()}:killed"


async def test_a_hold_of_a_process_that_died_is_charged_once_its_death_is_known(
    state_location, dead_owner
):
    owner = dead_owner
    async with StateManager(state_location) as store:
        await store.projects.create("p", **PROJECT)
        lease = 0.5
        assert await store.holders.claim("p", owner, lease) is None
        hold = await held(await opened(store, "p", owner), 0.25, key="in-flight")
        # On one machine the process is known dead at once; elsewhere its lease must run out.
        if not store._store.local_liveness:
            await asyncio.sleep(lease + 0.2)
        swept = await Ledger(store.books, "other", "host:3:x").open(nanos(1.0), None, None)
        rows = await store.books.ledger(["org"])
        reservations = await store._store.run("SELECT id FROM money_holds")

    assert swept == []  # another project's sweep charges it, but reports only its own
    assert (rows["org"].spent_nanos, rows["org"].reserved_nanos) == (nanos(0.25), 0)
    assert reservations == [] and hold.actual_nanos is None


async def test_a_new_ledger_row_starts_from_what_the_journal_says_the_scope_paid(
    state_location,
):
    async with StateManager(state_location) as store:
        await store.projects.create("old", **PROJECT)
        await store.journal.put(
            "old", "k", task_id="t", phase="generation", model=MODEL, cost_nanos=nanos(0.75),
            entry=None, elapsed=0,
        )  # fmt: skip
        await project(store, "p")
        await opened(store, "p")
        rows = await store.books.ledger()

    spent = {scope: row.spent_nanos for scope, row in rows.items()}
    assert spent == {"org": nanos(0.75), "team:eng": nanos(0.75), "job:nightly": nanos(0.75),
                     "project:p": 0}  # fmt: skip


def stress(location: str, mode: str, processes: int = 4, calls: int = 4) -> list[int]:
    """``processes`` processes, ``calls`` calls in flight each, on one store until refused."""
    env = clean_environment()
    # The working tree's package (``clean_environment``'s path) and this script's directory.
    env["PYTHONPATH"] = os.pathsep.join((str(Path(__file__).parent), env["PYTHONPATH"]))
    workers = [
        subprocess.Popen(
            [sys.executable, str(STRESS), location, f"p{n}", str(calls), "0.07", mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    paid = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        paid.append(int(out.strip()))
    return paid


async def prepare(location: str, caps: dict[str, float]) -> None:
    async with StateManager(location) as store:
        await store.books.save_budget_caps(caps)
        for n in range(4):
            await store.projects.create(f"p{n}", **PROJECT)


async def totals(location: str) -> tuple[dict[str, int], int]:
    async with StateManager(location) as store:
        rows = await store.books.ledger()
        journal = await store._store.run("SELECT SUM(cost_nanos) FROM journal")
    return {scope: row.spent_nanos for scope, row in rows.items()}, int(journal[0][0])


CAPS = {"org": 10.0, "team:eng": 6.0, "job:nightly": 4.0}


def test_four_processes_with_four_calls_in_flight_never_pass_shared_caps(state_location):
    location = str(state_location)
    asyncio.run(prepare(location, CAPS))

    paid = stress(location, "exact")

    spent, journal = asyncio.run(totals(location))
    # $0.07 calls: the $4 job cap holds 57 of them ($3.99), and every one of them was made.
    assert sum(paid) == 57, paid
    assert spent["job:nightly"] == nanos(3.99)
    assert spent["org"] == spent["team:eng"] == journal
    assert sum(spent[f"project:p{n}"] for n in range(4)) == journal


def test_the_control_reading_then_writing_passes_the_caps_so_the_test_above_can_fail(
    tmp_path,
):
    location = str(tmp_path / "state.db")
    asyncio.run(prepare(location, CAPS))

    stress(location, "naive")

    spent, _ = asyncio.run(totals(location))
    assert spent["job:nightly"] > nanos(4.0)
