"""The journal of paid calls in the state store: one row per call, its cost forever, its answer
while its task may still be resumed.

A row's cost is in integer nano-dollars and adds up over the call's attempts, so the spend of a
project is always the sum of what it really paid; like its cost, the row keeps for good which
model the call went to (its catalog key). ``journal_row`` is the one statement that
writes a row: the ledger's settlement (``books``) and the sweep of expired holds write it too.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

from orchestrator.money.ledger import CallRow
from orchestrator.money.units import checked_nanos
from orchestrator.store.base import Statement, Store


@dataclass(frozen=True)
class JournaledCall:
    """One paid call as the journal keeps it; ``model`` the catalog key of the model it went
    to (for a call journaled before rows kept it: the model its vendor named in its answer,
    while that is kept; else None)."""

    task_id: str
    phase: str
    cost_nanos: int
    elapsed_seconds: float
    created_at: float
    model: str | None


class CallJournal:
    """The journaled calls of every project in one store, read and written by project id."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def keys(self, project_id: str) -> set[str]:
        """Keys of the journaled calls whose answers are still kept (replayable)."""
        rows = await self._store.run(
            "SELECT key FROM journal WHERE project_id = ? AND entry IS NOT NULL", (project_id,)
        )
        return {row[0] for row in rows}

    async def get(self, project_id: str, key: str) -> dict[str, Any] | None:
        """A journaled answer, with ``cost_nanos``: what its call paid, every attempt of it."""
        rows = await self._store.run(
            "SELECT entry, cost_nanos FROM journal WHERE project_id = ? AND key = ?",
            (project_id, key),
        )
        if not rows or rows[0][0] is None:
            return None
        entry = unpack(rows[0][0])
        entry["cost_nanos"] = int(rows[0][1])
        return entry

    async def latest(self, project_id: str, limit: int) -> tuple[list[JournaledCall], int]:
        """The project's ``limit`` latest journaled calls, newest first, and how many it has."""
        rows = await self._store.run(
            "SELECT task_id, phase, cost_nanos, elapsed_seconds, created_at, model,"
            # The answer only where it is the one place the model may be named: an old row.
            " CASE WHEN model IS NULL THEN entry END FROM journal"
            " WHERE project_id = ? ORDER BY created_at DESC LIMIT ?",
            (project_id, limit),
        )
        counted = await self._store.run(
            "SELECT COUNT(*) FROM journal WHERE project_id = ?", (project_id,)
        )
        calls = [
            JournaledCall(task, phase, int(cost), float(elapsed), float(created),
                          model if entry is None else unpack(entry).get("reported_model"))
            for task, phase, cost, elapsed, created, model, entry in rows
        ]  # fmt: skip
        return calls, int(counted[0][0])

    async def spent_since(self, project_id: str, since: float) -> int:
        """What the project's calls journaled since ``since`` (seconds since the epoch) paid."""
        rows = await self._store.run(
            "SELECT COALESCE(SUM(cost_nanos), 0) FROM journal"
            " WHERE project_id = ? AND created_at >= ?",
            (project_id, since),
        )
        return int(rows[0][0])

    async def forget(self, project_id: str, key: str) -> None:
        """Drop a journaled answer found unusable, keeping what its call paid."""
        await self._store.run(
            "UPDATE journal SET entry = NULL WHERE project_id = ? AND key = ?", (project_id, key)
        )

    async def put(
        self,
        project_id: str,
        key: str,
        *,
        task_id: str,
        phase: str,
        model: str | None,
        cost_nanos: int,
        entry: dict[str, Any] | None,
        elapsed: float,
    ) -> None:
        """Record a paid call to ``model`` (its catalog key); ``entry`` None records spend with
        no answer to replay."""
        call = CallRow(project_id, key, task_id, phase, model, entry, elapsed)
        await self._store.run(*journal_row(call, cost_nanos))


# What a call's row becomes when its key was journaled before (an earlier attempt, a call cut
# off and asked again): the costs add up; the answer, and the model of a row written before
# rows kept it, are filled in.
JOURNAL_UPSERT = (
    " ON CONFLICT (project_id, key) DO UPDATE SET"
    " cost_nanos = journal.cost_nanos + excluded.cost_nanos,"
    " entry = COALESCE(excluded.entry, journal.entry),"
    " model = COALESCE(excluded.model, journal.model),"
    " elapsed_seconds = excluded.elapsed_seconds"
)


_JOURNAL_ROW = (
    "INSERT INTO journal (project_id, key, task_id, phase, model, cost_nanos, elapsed_seconds,"
    " entry, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" + JOURNAL_UPSERT
)


def journal_row(call: CallRow, cost_nanos: int) -> Statement:
    """A paid call's journal row; its cost adds to what the key already recorded."""
    return (
        _JOURNAL_ROW,
        (
            call.project_id,
            call.key,
            call.task_id,
            call.phase,
            call.model,
            checked_nanos(cost_nanos),
            call.elapsed,
            None if call.entry is None else pack(call.entry),
            time.time(),
        ),
    )


def pack(value: dict[str, Any]) -> bytes:
    """A journaled answer or a task's result as stored: compact JSON, compressed."""
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)


def unpack(blob: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(zlib.decompress(blob))  # an object: ``pack`` made it
    return value
