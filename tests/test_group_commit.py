"""The state store commits the bookkeeping of calls that finish together as one transaction.

Every paid call writes twice (its hold before it is sent, its settlement and journal row after),
and each of those commits is synced to disk. Calls in flight together finish together, so the
writes that arrive while one commits wait for it and then commit as one: one sync to disk for
all of them, each still told only once it is on disk, each rolled back alone if it fails.
A task's checkpoint, which a resume can redo from the journal without paying, is committed
without a sync of its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from orchestrator.money.ledger import CallRow
from orchestrator.run.tasks import TaskResult, TaskStatus
from orchestrator.store.sqlite import Program, SQLiteStore
from orchestrator.store.state import StateError, StateManager


def notes_store(path: Path) -> SQLiteStore:
    return SQLiteStore(
        path,
        kind="notes",
        format_tag="notes-1",
        schema=["CREATE TABLE notes (name TEXT PRIMARY KEY)"],
        error=StateError,
        synchronous="FULL",
    )


def note(name: str, *, pause: float = 0.0, fail: bool = False) -> Program[str]:
    """Insert ``name``; ``pause`` holds the database thread meanwhile (a slow disk's sync)."""
    yield ("INSERT INTO notes (name) VALUES (?)", (name,))
    time.sleep(pause)
    if fail:
        raise ValueError(f"{name} changed its mind")
    rows = yield ("SELECT COUNT(*) FROM notes", ())
    return f"{name} saw {rows[0][0]}"


async def names(store: SQLiteStore) -> set[str]:
    return {row[0] for row in await store.run("SELECT name FROM notes")}


async def test_writes_arriving_while_one_commits_are_committed_together(tmp_path):
    store = notes_store(tmp_path / "notes.db")
    try:
        await store.run("SELECT 1")  # opened: the counts below are the writes' own
        slow = asyncio.create_task(store.atomic(note("slow", pause=0.3)))
        await asyncio.sleep(0.1)  # the slow one is committing
        rest = [asyncio.create_task(store.atomic(note(f"n{i}"))) for i in range(5)]
        results = await asyncio.gather(slow, *rest)
        assert store.transactions == 2  # the slow one, then the five together
        # Each ran after the ones before it, seeing their rows: as if one at a time.
        assert results == ["slow saw 1", *(f"n{i} saw {i + 2}" for i in range(5))]
        assert await names(store) == {"slow", *(f"n{i}" for i in range(5))}
    finally:
        await store.aclose()


async def test_a_write_that_fails_in_a_group_is_rolled_back_alone(tmp_path):
    store = notes_store(tmp_path / "notes.db")
    try:
        await store.run("SELECT 1")
        slow = asyncio.create_task(store.atomic(note("slow", pause=0.3)))
        await asyncio.sleep(0.1)
        kept = asyncio.create_task(store.atomic(note("kept")))
        failed = asyncio.create_task(store.atomic(note("failed", fail=True)))
        after = asyncio.create_task(store.atomic(note("after")))
        await asyncio.wait([slow, kept, failed, after])
        with pytest.raises(ValueError, match="failed changed its mind"):
            failed.result()
        assert (kept.result(), after.result()) == ("kept saw 2", "after saw 3")
        assert await names(store) == {"slow", "kept", "after"}
        assert store.transactions == 2
    finally:
        await store.aclose()


async def test_a_write_alone_commits_at_once_and_a_failed_one_leaves_nothing(tmp_path):
    store = notes_store(tmp_path / "notes.db")
    try:
        assert await store.atomic(note("one")) == "one saw 1"
        with pytest.raises(ValueError):
            await store.atomic(note("two", fail=True))
        assert await names(store) == {"one"}
        assert store.transactions == 1
    finally:
        await store.aclose()


async def sync_levels(state: StateManager, write) -> list[str]:
    """The sync level in force at each commit ``write`` makes, in order (None: the level the
    connection had before, not said again)."""
    db = await state._store.connection()
    statements: list[str] = []
    await db.set_trace_callback(statements.append)
    try:
        await write()
    finally:
        await db.set_trace_callback(None)
    levels, level = [], None
    for statement in statements:
        if statement.startswith("PRAGMA synchronous="):
            level = statement.removeprefix("PRAGMA synchronous=")
        elif statement == "COMMIT":
            levels.append(level)
    return levels


PROJECT = {"description": "d", "criteria": "c", "max_usd": 5.0, "max_time_seconds": 60.0}


def pause(seconds: float) -> Program[None]:
    yield ("SELECT 1", ())
    time.sleep(seconds)


async def test_money_is_synced_to_disk_and_a_checkpoint_is_not(tmp_path):
    async with StateManager(tmp_path / "state.db") as state:
        await state.projects.create("p", **PROJECT, settings={})
        assert await state.holders.claim("p", "me", 60.0) is None
        await state.books.ledger_open(("org", "project:p"), "p", 5_000_000_000)
        result = TaskResult("t", "answer", 0.9, TaskStatus.COMPLETED)

        async def checkpoint() -> None:
            await state.projects.checkpoint_held(
                "p", "t", result.to_dict(), final=False, elapsed=1.0
            )

        async def reserve(hold: str) -> None:
            refused = await state.books.ledger_reserve(
                hold, 1000, ("org", "project:p"), project_id="p", owner="me", task_id="t",
                phase="generation", model="openai/gpt-4o", journal_key=hold,
            )  # fmt: skip
            assert refused is None

        async def settle(hold: str) -> None:
            await state.books.ledger_settle(
                [(hold, 400)], CallRow("p", hold, "t", "generation", "openai/gpt-4o", None, 1.0)
            )

        async def paid_call() -> None:
            await reserve("h1")
            await settle("h1")

        assert await sync_levels(state, checkpoint) == ["NORMAL"]
        assert await sync_levels(state, paid_call) == ["FULL", "FULL"]

        async def together() -> None:
            # While a slow commit holds the database, a checkpoint and a hold queue up.
            slow = asyncio.create_task(state._store.atomic(pause(0.3), durable=False))
            await asyncio.sleep(0.1)
            await asyncio.gather(checkpoint(), reserve("h2"))
            await slow

        # The checkpoint shares the hold's commit, so it is synced with it.
        assert await sync_levels(state, together) == ["NORMAL", "FULL"]
        # The project, its claim and the ledger's rows; then one, two, two.
        assert state.transactions == 3 + 1 + 2 + 2
