"""``StateManager``: projects, task checkpoints and the journal of paid calls, in SQLite (WAL).

What is stored is what changed: the project row once (then its status and clock), one row per
finished task, and one row per paid call. A journaled call's answer is kept only while its task
may still be resumed; its cost stays forever, so the spend of a project is always the sum of
what it really paid, even after ``kill -9``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import TAKEN_OVER, ConfigError, LeaseLost, OrchestratorError
from orchestrator.money.ledger import ExpiredHold, LedgerRow
from orchestrator.money.units import checked_nanos, nanos_to_usd, usd_to_nanos
from orchestrator.run.tasks import ProjectStatus, Task, TaskType
from orchestrator.settings import home_dir
from orchestrator.store.base import Execute, Program, Statement, Store, open_store

STATE_FORMAT = "orchestrator-state-1"

# What each paid call cost, in integer nano-dollars (``money``): sums are exact.
_JOURNAL = (
    "CREATE TABLE journal ("
    " project_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " cost_nanos INTEGER NOT NULL, elapsed_seconds REAL NOT NULL, entry BLOB,"
    " created_at REAL NOT NULL, PRIMARY KEY (project_id, key))"
)
_JOURNAL_INDEX = "CREATE INDEX journal_task ON journal (project_id, task_id)"
# Marks a store whose amounts are integers; one made before is converted when opened.
_MONEY_MARK = "INSERT INTO meta (key, value) VALUES ('money', 'integer nano-dollars')"
_SCHEMA = (
    "CREATE TABLE projects ("
    " id TEXT PRIMARY KEY, description TEXT NOT NULL, criteria TEXT NOT NULL,"
    " max_usd REAL NOT NULL, max_time_seconds REAL NOT NULL, settings TEXT NOT NULL,"
    " plan TEXT, task_count INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,"
    " reason TEXT NOT NULL DEFAULT '', elapsed_seconds REAL NOT NULL DEFAULT 0,"
    " owner TEXT, lease_until REAL NOT NULL DEFAULT 0,"
    " created_at REAL NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE results ("
    " project_id TEXT NOT NULL, task_id TEXT NOT NULL, final INTEGER NOT NULL,"
    " record BLOB NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (project_id, task_id))",
    _JOURNAL,
    _JOURNAL_INDEX,
    _MONEY_MARK,
)
# Tables added since the format was first released; a file made before them gains them.
_ADDITIONS = (
    "CREATE TABLE IF NOT EXISTS cost_estimates ("
    " project_id TEXT NOT NULL, model TEXT NOT NULL, task_type TEXT NOT NULL,"
    " average_usd REAL NOT NULL, samples INTEGER NOT NULL,"
    " PRIMARY KEY (project_id, model, task_type))",
    "CREATE TABLE IF NOT EXISTS budget_caps (scope TEXT PRIMARY KEY, max_usd REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS model_telemetry (model TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS integration (project_id TEXT PRIMARY KEY, record TEXT NOT NULL)",
    # The budget ledger: per scope (org, team:NAME, job:ID, project:ID) what was paid and what
    # calls in flight hold, with the scope's cap (NULL: none), shared by every process here;
    # in integer nano-dollars, so a cap is reached exactly and never passed by a residue.
    "CREATE TABLE IF NOT EXISTS money_ledger (scope TEXT PRIMARY KEY, cap_nanos INTEGER,"
    " spent_nanos INTEGER NOT NULL, reserved_nanos INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS money_holds ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount_nanos INTEGER NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL)",
)
# The ledger as files made before amounts were integers kept it, in float USD: read once, when
# such a file is opened, and then dropped (``_to_nano_dollars``).
_USD_LEDGER = (
    "CREATE TABLE IF NOT EXISTS budget_ledger ("
    " scope TEXT PRIMARY KEY, cap REAL, spent REAL NOT NULL, reserved REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budget_reservations ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount REAL NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL)",
)
# What each kind of scope was charged, from the journal: a ledger row starts from it.
_SCOPE_JOURNAL = {
    "org": "FROM journal j WHERE CAST(? AS TEXT) IS NOT NULL",
    "project": "FROM journal j WHERE j.project_id = ?",
    "team": "FROM journal j JOIN projects p ON p.id = j.project_id WHERE {team} = ?",
    "job": "FROM journal j JOIN projects p ON p.id = j.project_id WHERE {job} = ?",
}


# A hold and a settlement as one statement each where the store runs writes inside WITH
# (PostgreSQL): one round trip instead of one a statement. Both lock the ledger's rows in the
# one order every writer uses (the scopes' names, byte by byte), so two never deadlock.
_RESERVE_AT_ONCE = (
    "WITH wanted AS (SELECT w.scope, w.n FROM unnest(CAST(? AS TEXT[])) WITH ORDINALITY"
    "  AS w(scope, n)),"
    " locked AS (SELECT m.scope, m.cap_nanos, m.spent_nanos, m.reserved_nanos"
    "  FROM money_ledger m WHERE m.scope IN (SELECT scope FROM wanted)"
    '  ORDER BY m.scope COLLATE "C" FOR UPDATE),'
    " holder AS (SELECT owner FROM projects WHERE id = ?),"
    " refused AS (SELECT w.scope FROM wanted w LEFT JOIN locked l ON l.scope = w.scope"
    "  WHERE l.scope IS NULL OR (l.cap_nanos IS NOT NULL"
    "  AND l.spent_nanos + l.reserved_nanos + ? > l.cap_nanos) ORDER BY w.n LIMIT 1),"
    # Only while the run holds its project: one paused past its lease, whose project another
    # run took, is refused here even before it notices.
    " granted AS (SELECT 1 AS ok WHERE NOT EXISTS (SELECT 1 FROM refused)"
    "  AND EXISTS (SELECT 1 FROM holder WHERE owner = ?)),"
    " held AS (UPDATE money_ledger m SET reserved_nanos = m.reserved_nanos + ? FROM granted"
    "  WHERE m.scope IN (SELECT scope FROM wanted) RETURNING m.scope),"
    " hold AS (INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id,"
    "  phase, journal_key) SELECT ?, ?, ?, ?, ?, ?, ?, ? FROM granted)"
    " SELECT (SELECT owner FROM holder), (SELECT scope FROM refused)"
)
_SETTLE_AT_ONCE = (
    "WITH settled AS (SELECT s.id, s.actual FROM unnest(CAST(? AS TEXT[]), CAST(? AS INTEGER[]))"
    "  AS s(id, actual)),"
    " gone AS (DELETE FROM money_holds h USING settled s WHERE h.id = s.id"
    "  RETURNING h.scopes, h.amount_nanos, s.actual),"
    " per_scope AS (SELECT e.scope, CAST(SUM(g.amount_nanos) AS INTEGER) AS held,"
    "  CAST(SUM(g.actual) AS INTEGER) AS spent FROM gone g"
    "  CROSS JOIN LATERAL jsonb_array_elements_text(CAST(g.scopes AS JSONB)) AS e(scope)"
    "  GROUP BY e.scope),"
    " locked AS (SELECT m.scope FROM money_ledger m WHERE m.scope IN (SELECT scope FROM per_scope)"
    '  ORDER BY m.scope COLLATE "C" FOR UPDATE),'
    " moved AS (UPDATE money_ledger m SET spent_nanos = m.spent_nanos + p.spent,"
    "  reserved_nanos = m.reserved_nanos - p.held FROM per_scope p"
    "  WHERE m.scope = p.scope AND (SELECT count(*) FROM locked) > 0),"
    " charged AS (SELECT CAST(COALESCE(SUM(actual), 0) AS INTEGER) AS nanos FROM gone),"
    " written AS (INSERT INTO journal (project_id, key, task_id, phase, cost_nanos,"
    "  elapsed_seconds, entry, created_at) SELECT CAST(? AS TEXT), CAST(? AS TEXT),"
    "  CAST(? AS TEXT), CAST(? AS TEXT), c.nanos, CAST(? AS REAL), CAST(? AS BLOB),"
    "  CAST(? AS REAL) FROM charged c WHERE CAST(? AS BOOLEAN)"
    "  AND (c.nanos > 0 OR CAST(? AS BLOB) IS NOT NULL)"
    "  ON CONFLICT (project_id, key) DO UPDATE SET"
    "  cost_nanos = journal.cost_nanos + excluded.cost_nanos,"
    "  entry = COALESCE(excluded.entry, journal.entry),"
    "  elapsed_seconds = excluded.elapsed_seconds)"
    " SELECT nanos FROM charged"
)


class StateError(OrchestratorError):
    """The state file cannot be used (corrupt, foreign, unreachable) or is closed."""


class UnknownProjectError(ConfigError):
    def __init__(self, project_id: str) -> None:
        super().__init__(
            f"unknown project id {project_id!r}: run 'python -m orchestrator --list-projects' "
            "to see the known ones"
        )


@dataclass
class SavedProject:
    project_id: str
    description: str
    criteria: str
    max_usd: float
    max_time_seconds: float
    settings: dict[str, Any]
    status: ProjectStatus
    reason: str
    tasks: dict[str, Task] | None
    execution_order: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    final_tasks: set[str] = field(default_factory=set)
    spent_nanos: int = 0  # what the journal says the project paid
    phase_nanos: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    integration: dict[str, Any] | None = None  # ``Integration.to_dict()``

    @property
    def spent_usd(self) -> float:
        return nanos_to_usd(self.spent_nanos)

    @property
    def phase_spent(self) -> dict[str, float]:
        return {phase: nanos_to_usd(n) for phase, n in self.phase_nanos.items()}


@dataclass(frozen=True)
class ProjectSummary:
    project_id: str
    status: str
    spent_usd: float
    max_usd: float
    tasks_done: int
    tasks_total: int
    updated_at: float


class StateManager:
    """Durable project state in ``$ORCHESTRATOR_HOME/state.db`` (or ``path``).

    Every write is one statement or one short transaction, so many runs and many tasks can
    share the file; no lock is held while anything else is awaited.

    Open until ``aclose()`` (or the end of ``async with``); an orchestrator it is given leaves
    it open. A script that never closes it still ends after its last line, and may use it in
    one ``asyncio.run`` after another.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._store: Store = open_store(
            path,
            home_dir() / "state.db",
            kind="state",
            format_tag=STATE_FORMAT,
            schema=_SCHEMA,
            additions=_ADDITIONS,
            error=StateError,
            # Paid calls are journaled here: a commit must survive a power loss or an OS crash.
            synchronous="FULL",
            migrate=self._to_nano_dollars,
        )
        # A file's path, or a database's URL without its password.
        self.path: Path | str = self._store.path

    @property
    def transactions(self) -> int:
        """Commits of writes since the store was opened, transactions and single statements
        (transactions committed together count once): a figure the benchmarks report."""
        return int(self._store.transactions)

    async def __aenter__(self) -> StateManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open (and check) the file now rather than on first use."""
        await self._store.connection()

    async def aclose(self) -> None:
        await self._store.aclose()

    # -- projects -------------------------------------------------------------------------------
    async def create_project(
        self,
        project_id: str,
        *,
        description: str,
        criteria: str,
        max_usd: float,
        max_time_seconds: float,
        settings: dict[str, Any],
    ) -> bool:
        """Record a new project as RUNNING; False when the id is already taken."""
        now = time.time()
        rows = await self._store.run(
            "INSERT INTO projects (id, description, criteria, max_usd, max_time_seconds,"
            " settings, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            (
                project_id,
                description,
                criteria,
                max_usd,
                max_time_seconds,
                json.dumps(settings),
                ProjectStatus.RUNNING.value,
                now,
                now,
            ),
        )
        return bool(rows)

    async def claim(self, project_id: str, owner: str, lease_seconds: float) -> str | None:
        """Take the project for one run: None when it is ours now, else who holds it.

        A holder on this machine keeps the project while its process lives, whatever its lease
        says (a clock jump must not hand a live run's project to another), and loses it once
        gone (``kill -9``); a holder elsewhere keeps it until its lease runs out.
        """
        rows = await self._store.run(
            "SELECT owner, lease_until FROM projects WHERE id = ?", (project_id,)
        )
        if not rows:
            return "nobody: the project is unknown"
        holder: str | None
        lease_until: float  # set whenever holder is
        holder, lease_until = rows[0]
        now = await self._store.clock()
        if holder is None or holder == owner or not self._holder_alive(holder, lease_until, now):
            # Compare-and-set on the holder seen, so two claimants cannot both win.
            taken = await self._store.run(
                "UPDATE projects SET owner = ?, lease_until = ? WHERE id = ?"
                " AND owner IS ? RETURNING id",
                (owner, now + lease_seconds, project_id, holder),
            )
            if taken:
                return None
            return await self._holder(project_id)
        return holder

    async def held(self, project_id: str) -> bool:
        """Whether a live run holds the project now (its lease, renewed as it runs)."""
        return await self.lease(project_id) is not None

    async def lease(self, project_id: str) -> tuple[str, float, float] | None:
        """While a live run holds the project: its holder, when its lease ends and the store's
        clock now (seconds since the epoch); None when no run holds it. A renewal moves the
        end, another run's claim changes the holder."""
        rows = await self._store.run(
            "SELECT owner, lease_until FROM projects WHERE id = ?", (project_id,)
        )
        if not rows or rows[0][0] is None:
            return None
        holder, lease_until = rows[0]
        now = await self._store.clock()
        if not self._holder_alive(holder, float(lease_until), now):
            return None
        return str(holder), float(lease_until), now

    async def _holder(self, project_id: str) -> str:
        rows = await self._store.run("SELECT owner FROM projects WHERE id = ?", (project_id,))
        return (rows[0][0] if rows else None) or "another run"

    async def renew(self, project_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend our lease; False when the project is no longer ours."""
        rows = await self._store.run(
            "UPDATE projects SET lease_until = ? WHERE id = ? AND owner = ? RETURNING id",
            (await self._store.clock() + lease_seconds, project_id, owner),
        )
        return bool(rows)

    async def release(self, project_id: str, owner: str) -> None:
        await self._store.run(
            "UPDATE projects SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
            (project_id, owner),
        )

    async def update_run(
        self,
        project_id: str,
        *,
        max_usd: float,
        max_time_seconds: float,
        settings: dict[str, Any],
        owner: str,
    ) -> None:
        """A resumed run's limits and settings, and its status back to RUNNING; only by the
        run that holds the project's lease."""
        await self._store.run(
            "UPDATE projects SET max_usd = ?, max_time_seconds = ?, settings = ?, status = ?,"
            " reason = '', updated_at = ? WHERE id = ? AND owner = ?",
            (
                max_usd,
                max_time_seconds,
                json.dumps(settings),
                ProjectStatus.RUNNING.value,
                time.time(),
                project_id,
                owner,
            ),
        )

    async def delete_project(self, project_id: str) -> None:
        """Forget a project entirely: its row, its results and its journal."""
        await self._store.transaction(
            [
                ("DELETE FROM journal WHERE project_id = ?", (project_id,)),
                ("DELETE FROM cost_estimates WHERE project_id = ?", (project_id,)),
                ("DELETE FROM results WHERE project_id = ?", (project_id,)),
                ("DELETE FROM integration WHERE project_id = ?", (project_id,)),
                ("DELETE FROM money_ledger WHERE scope = ?", (f"project:{project_id}",)),
                ("DELETE FROM projects WHERE id = ?", (project_id,)),
            ]
        )

    async def save_plan(
        self, project_id: str, tasks: dict[str, Task], order: list[str], elapsed: float
    ) -> None:
        plan = json.dumps({"tasks": [t.to_dict() for t in tasks.values()], "order": order})
        await self._store.transaction(
            [
                (
                    "UPDATE projects SET plan = ?, task_count = ?, elapsed_seconds = ?,"
                    " updated_at = ? WHERE id = ?",
                    (plan, len(tasks), elapsed, time.time(), project_id),
                ),
                # The plan is stored: the decomposition answer is no longer needed to resume.
                (
                    "UPDATE journal SET entry = NULL WHERE project_id = ? AND task_id = ''",
                    (project_id,),
                ),
            ]
        )

    async def checkpoint(
        self, project_id: str, task_id: str, record: dict[str, Any], final: bool, elapsed: float
    ) -> None:
        """A task's result and the run's clock, in one transaction."""
        await self._store.transaction(
            list(_result_rows(project_id, task_id, record, final, elapsed, time.time())),
            durable=False,
        )

    async def checkpoint_held(
        self,
        project_id: str,
        task_id: str,
        record: dict[str, Any],
        *,
        final: bool,
        elapsed: float,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> int | None:
        """A task's result and the run's clock in one transaction, the result's ``cost_usd``
        what the journal says the task paid (the one record of it: charges the task never saw,
        a call cancelled in flight, and earlier runs count); returns that, in nano-dollars.

        With ``owner``, only while the project is still theirs, their lease renewed for
        ``lease_seconds`` in the same transaction: None, and nothing written, once another run
        took it (a run paused past its lease may not have noticed yet)."""
        now = time.time()
        until = await self._store.clock() + lease_seconds

        def write() -> Program[int | None]:
            if owner is not None:
                held = yield (
                    "UPDATE projects SET lease_until = ? WHERE id = ? AND owner = ? RETURNING id",
                    (until, project_id, owner),
                )
                if not held:
                    return None
            rows = yield (
                "SELECT COALESCE(SUM(cost_nanos), 0) FROM journal"
                " WHERE project_id = ? AND task_id = ?",
                (project_id, task_id),
            )
            spent = int(rows[0][0])
            result = {**record, "cost_usd": nanos_to_usd(spent)}
            yield from _result_rows(project_id, task_id, result, final, elapsed, now)
            return spent

        # Not synced to disk on its own: what a power loss could take, a resume redoes from the
        # journal (durable) without paying; the next paid call's commit syncs it anyway.
        return await self._store.atomic(write(), durable=False)

    async def finish(
        self,
        project_id: str,
        status: ProjectStatus,
        reason: str,
        elapsed: float,
        owner: str | None = None,
    ) -> None:
        """The run's final status; with ``owner``, only while that run still holds the lease
        (a run that lost its project must not overwrite the status of the one that took it)."""
        await self._store.run(
            "UPDATE projects SET status = ?, reason = ?, elapsed_seconds = MAX(elapsed_seconds, ?),"
            " updated_at = ? WHERE id = ? AND (CAST(? AS TEXT) IS NULL OR owner = ?)",
            (status.value, reason, elapsed, time.time(), project_id, owner, owner),
        )

    async def run_settings(self, project_id: str) -> tuple[ProjectStatus, dict[str, Any]]:
        """A saved project's status and settings, without reading its results."""
        rows = await self._store.run(
            "SELECT status, settings FROM projects WHERE id = ?", (project_id,)
        )
        if not rows:
            raise UnknownProjectError(project_id)
        try:
            return ProjectStatus(rows[0][0]), json.loads(rows[0][1])
        except ValueError as exc:
            raise self._unreadable(project_id, exc) from exc

    async def load(self, project_id: str) -> SavedProject:
        try:
            return await self._load(project_id)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            # Hand-edited or damaged rows: name the file rather than show a traceback.
            raise self._unreadable(project_id, exc) from exc

    def _unreadable(self, project_id: str, exc: Exception) -> StateError:
        return StateError(f"state file {self.path}: project {project_id!r} cannot be read ({exc})")

    async def _load(self, project_id: str) -> SavedProject:
        rows = await self._store.run(
            "SELECT description, criteria, max_usd, max_time_seconds, settings, status, reason,"
            " plan, elapsed_seconds FROM projects WHERE id = ?",
            (project_id,),
        )
        if not rows:
            raise UnknownProjectError(project_id)
        (description, criteria, max_usd, max_time, settings, status, reason, plan, elapsed) = rows[
            0
        ]
        tasks, order = _plan(plan)
        project = SavedProject(
            project_id=project_id,
            description=description,
            criteria=criteria,
            max_usd=max_usd,
            max_time_seconds=max_time,
            settings=json.loads(settings),
            status=ProjectStatus(status),
            reason=reason,
            tasks=tasks,
            execution_order=order,
            elapsed_seconds=elapsed,
        )
        for task_id, final, record in await self._store.run(
            "SELECT task_id, final, record FROM results WHERE project_id = ?", (project_id,)
        ):
            project.results[task_id] = _unpack(record)
            if final:
                project.final_tasks.add(task_id)
        for phase, cost, latest in await self._store.run(
            "SELECT phase, SUM(cost_nanos), MAX(elapsed_seconds) FROM journal"
            " WHERE project_id = ? GROUP BY phase",
            (project_id,),
        ):
            project.phase_nanos[phase] = int(cost)
            project.spent_nanos += int(cost)
            # The clock is checkpointed per task; paid calls since then still moved it on.
            project.elapsed_seconds = max(project.elapsed_seconds, latest)
        for (record,) in await self._store.run(
            "SELECT record FROM integration WHERE project_id = ?", (project_id,)
        ):
            project.integration = json.loads(record)
        return project

    async def save_integration(
        self, project_id: str, record: Mapping[str, Any], elapsed: float
    ) -> None:
        """The project's integration rounds so far (``Integration.to_dict()``) and its clock."""
        now = time.time()
        await self._store.transaction(
            [
                (
                    "INSERT INTO integration (project_id, record) VALUES (?, ?)"
                    " ON CONFLICT (project_id) DO UPDATE SET record = excluded.record",
                    (project_id, json.dumps(record)),
                ),
                (
                    "UPDATE projects SET elapsed_seconds = MAX(elapsed_seconds, ?), updated_at = ?"
                    " WHERE id = ?",
                    (elapsed, now, project_id),
                ),
            ],
            durable=False,  # derived: redone, not paid for
        )

    async def list_projects(self) -> list[ProjectSummary]:
        """Every project, newest first."""
        rows = await self._store.run(
            "SELECT p.id, p.status, p.max_usd, p.task_count, p.updated_at,"
            " (SELECT COALESCE(SUM(cost_nanos), 0) FROM journal j WHERE j.project_id = p.id),"
            " (SELECT COUNT(*) FROM results r WHERE r.project_id = p.id AND r.final = 1)"
            " FROM projects p ORDER BY p.updated_at DESC, p.created_at DESC"
        )
        return [
            ProjectSummary(
                project_id=pid,
                status=status,
                spent_usd=nanos_to_usd(int(spent)),
                max_usd=max_usd,
                tasks_done=done,
                tasks_total=total,
                updated_at=updated,
            )
            for pid, status, max_usd, total, updated, spent, done in rows
        ]

    # -- the journal of paid calls ------------------------------------------------------------
    async def journal_keys(self, project_id: str) -> set[str]:
        """Keys of the journaled calls whose answers are still kept (replayable)."""
        rows = await self._store.run(
            "SELECT key FROM journal WHERE project_id = ? AND entry IS NOT NULL", (project_id,)
        )
        return {row[0] for row in rows}

    async def journal_get(self, project_id: str, key: str) -> dict[str, Any] | None:
        """A journaled answer, with ``cost_nanos``: what its call paid, every attempt of it."""
        rows = await self._store.run(
            "SELECT entry, cost_nanos FROM journal WHERE project_id = ? AND key = ?",
            (project_id, key),
        )
        if not rows or rows[0][0] is None:
            return None
        entry = _unpack(rows[0][0])
        entry["cost_nanos"] = int(rows[0][1])
        return entry

    async def journal_forget(self, project_id: str, key: str) -> None:
        """Drop a journaled answer found unusable, keeping what its call paid."""
        await self._store.run(
            "UPDATE journal SET entry = NULL WHERE project_id = ? AND key = ?", (project_id, key)
        )

    async def journal_put(
        self,
        project_id: str,
        key: str,
        *,
        task_id: str,
        phase: str,
        cost_nanos: int,
        entry: dict[str, Any] | None,
        elapsed: float,
    ) -> None:
        """Record a paid call; ``entry`` None records spend with no answer to replay."""
        await self._store.run(
            *_journal_row(project_id, key, task_id, phase, cost_nanos, entry, elapsed)
        )

    # -- what calls cost, learnt per model and task type -----------------------------------------
    async def cost_estimates(self, project_id: str) -> list[tuple[str, str, float, int]]:
        """(model key, task type, moving average USD per call, samples) the project learnt."""
        rows = await self._store.run(
            "SELECT model, task_type, average_usd, samples FROM cost_estimates"
            " WHERE project_id = ?",
            (project_id,),
        )
        return [(str(m), str(t), float(a), int(n)) for m, t, a, n in rows]

    async def save_cost_estimates(
        self, project_id: str, estimates: Iterable[tuple[str, str, float, int]]
    ) -> None:
        await self._store.transaction(
            [
                (
                    "INSERT INTO cost_estimates (project_id, model, task_type, average_usd,"
                    " samples) VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, model, task_type)"
                    " DO UPDATE SET average_usd = excluded.average_usd,"
                    " samples = excluded.samples",
                    (project_id, model, task_type, average, samples),
                )
                for model, task_type, average, samples in estimates
            ],
            durable=False,  # derived: redone, not paid for
        )

    async def measured_cost_estimates(self) -> list[tuple[str, str, float, int]]:
        """(model key, task type, average USD per call, samples) over every project: each
        project's moving average weighted by its samples."""
        rows = await self._store.run(
            "SELECT model, task_type, SUM(average_usd * samples), SUM(samples)"
            " FROM cost_estimates WHERE samples > 0 GROUP BY model, task_type"
        )
        return [(str(m), str(t), float(total) / int(n), int(n)) for m, t, total, n in rows]

    async def measured_task_calls(self) -> list[tuple[str, str, str, str, int]]:
        """(project id, task id, task type, phase, paid calls) for every finished task of every
        planned project and each phase it paid in: what earlier runs took per task."""
        plans = await self._store.run("SELECT id, plan FROM projects WHERE plan IS NOT NULL")
        types = {
            (str(project_id), task.id): task.type.value
            for project_id, plan in plans
            for task in (_plan(plan)[0] or {}).values()
        }
        rows = await self._store.run(
            "SELECT j.project_id, j.task_id, j.phase, COUNT(*) FROM journal j"
            " JOIN results r ON r.project_id = j.project_id AND r.task_id = j.task_id"
            " WHERE r.final = 1 GROUP BY j.project_id, j.task_id, j.phase"
        )
        return [
            (str(p), str(t), types[(str(p), str(t))], str(phase), int(n))
            for p, t, phase, n in rows
            if (str(p), str(t)) in types
        ]

    async def measured_planning(self) -> list[float]:
        """What planning each planned project cost (its decomposition calls, from the journal)."""
        rows = await self._store.run(
            "SELECT SUM(j.cost_nanos) FROM journal j JOIN projects p ON p.id = j.project_id"
            " WHERE j.phase = 'decomposition' AND p.plan IS NOT NULL GROUP BY j.project_id"
        )
        return [nanos_to_usd(int(nanos)) for (nanos,) in rows]

    # -- what runs measured about each model, across runs -------------------------------------
    async def model_telemetry(self) -> dict[str, dict[str, Any]]:
        rows = await self._store.run("SELECT model, record FROM model_telemetry")
        found: dict[str, dict[str, Any]] = {}
        for model, record in rows:
            try:
                found[str(model)] = json.loads(record)
            except ValueError:
                continue  # a damaged row only costs what it measured
        return found

    async def save_model_telemetry(self, records: Mapping[str, dict[str, Any]]) -> None:
        await self._store.transaction(
            [
                (
                    "INSERT INTO model_telemetry (model, record) VALUES (?, ?)"
                    " ON CONFLICT (model) DO UPDATE SET record = excluded.record",
                    (model, json.dumps(record)),
                )
                for model, record in records.items()
            ],
            durable=False,  # derived: redone, not paid for
        )

    # -- caps across runs: the organisation (every project here), a team, a job -----------------
    async def budget_caps(self) -> dict[str, float]:
        """Saved caps by scope: ``org``, ``team:NAME``, ``job:ID``."""
        rows = await self._store.run("SELECT scope, max_usd FROM budget_caps")
        return {str(scope): float(cap) for scope, cap in rows}

    async def save_budget_caps(self, caps: Mapping[str, float]) -> None:
        statements: list[Statement] = []
        for scope, cap in caps.items():
            statements.append(
                (
                    "INSERT INTO budget_caps (scope, max_usd) VALUES (?, ?)"
                    " ON CONFLICT (scope) DO UPDATE SET max_usd = excluded.max_usd",
                    (scope, cap),
                )
            )
            statements.append(_set_cap(scope, usd_to_nanos(cap)))
        await self._store.transaction(statements)

    async def scope_spend_nanos(self, team: str | None, job_id: str | None) -> dict[str, int]:
        """What every project here spent (``org``), and those charged to ``team`` / ``job_id``
        (their ``team`` / ``job`` setting): from the journal, so nothing paid is missed."""

        def charged_to(field: str) -> str:
            value = self._store.json_field("p.settings", field)
            return f"COALESCE(SUM(CASE WHEN {value} = ? THEN j.cost_nanos END), 0)"

        rows = await self._store.run(
            f"SELECT COALESCE(SUM(j.cost_nanos), 0), {charged_to('team')}, {charged_to('job')}"
            " FROM journal j JOIN projects p ON p.id = j.project_id",
            (team, job_id),
        )
        org, team_spent, job_spent = rows[0]
        spent = {"org": int(org)}
        if team is not None:
            spent[f"team:{team}"] = int(team_spent)
        if job_id is not None:
            spent[f"job:{job_id}"] = int(job_spent)
        return spent

    # -- the budget ledger: reservations of calls in flight, shared by every process ------------
    async def ledger_open(self, scopes: Iterable[str], project_id: str, max_nanos: int) -> None:
        """Make sure every scope of a run has its ledger row (a new one starts from what the
        journal says the scope paid, under its saved cap) and the project's cap is
        ``max_nanos``."""

        def open_rows() -> Program[None]:
            caps = yield from _saved_caps()
            for scope in scopes:
                yield self._ledger_row(scope, caps.get(scope))
            yield _set_cap(f"project:{project_id}", max_nanos)

        await self._store.atomic(open_rows())

    def _ledger_row(self, scope: str, cap_nanos: int | None, reserved_nanos: int = 0) -> Statement:
        """A scope's new ledger row: what the journal says it paid, unless it has one."""
        kind, _, name = scope.partition(":")
        source = _SCOPE_JOURNAL[kind].format(
            team=self._store.json_field("p.settings", "team"),
            job=self._store.json_field("p.settings", "job"),
        )
        return (
            "INSERT INTO money_ledger (scope, cap_nanos, spent_nanos, reserved_nanos)"
            " SELECT CAST(? AS TEXT), CAST(? AS INTEGER),"
            f" CAST(COALESCE(SUM(j.cost_nanos), 0) AS INTEGER), CAST(? AS INTEGER) {source}"
            " ON CONFLICT (scope) DO NOTHING",
            (scope, cap_nanos, reserved_nanos, name or scope),
        )

    async def ledger_set_cap(self, scope: str, cap_nanos: int) -> None:
        await self._store.run(*_set_cap(scope, cap_nanos))

    async def ledger_reserve(
        self,
        hold_id: str,
        amount_nanos: int,
        scopes: tuple[str, ...],
        *,
        project_id: str,
        owner: str,
        task_id: str,
        phase: str,
        journal_key: str,
    ) -> str | None:
        """Hold ``amount_nanos`` on every scope, in their order, in one transaction: None when
        held, else the first scope whose cap it could pass (then nothing is held anywhere)."""
        if self._store.writes_in_with:  # one statement, one round trip
            row = _hold_row(hold_id, project_id, owner, scopes, amount_nanos, task_id, phase,
                            journal_key)[1]  # fmt: skip
            holder, refused = (
                await self._store.run(
                    _RESERVE_AT_ONCE,
                    (list(scopes), project_id, amount_nanos, owner, amount_nanos, *row),
                )
            )[0]
            if holder != owner:
                raise LeaseLost(TAKEN_OVER.format(project_id))
            return None if refused is None else str(refused)

        def reserve() -> Program[str | None]:
            for scope in scopes:
                held = yield (
                    "UPDATE money_ledger SET reserved_nanos = reserved_nanos + ? WHERE scope = ?"
                    " AND (cap_nanos IS NULL OR spent_nanos + reserved_nanos + ? <= cap_nanos)"
                    # Only while the run holds its project: one paused past its lease, whose
                    # project another run took, is refused here even before it notices.
                    " AND EXISTS (SELECT 1 FROM projects WHERE id = ? AND owner = ?)"
                    " RETURNING scope",
                    (amount_nanos, scope, amount_nanos, project_id, owner),
                )
                if not held:
                    holder = yield ("SELECT owner FROM projects WHERE id = ?", (project_id,))
                    if not holder or holder[0][0] != owner:
                        raise LeaseLost(TAKEN_OVER.format(project_id))
                    raise _Refused(scope)
            yield _hold_row(hold_id, project_id, owner, scopes, amount_nanos, task_id, phase,
                            journal_key)  # fmt: skip
            return None

        try:
            return await self._store.atomic(reserve())
        except _Refused as refused:
            return refused.scope

    async def ledger(self, scopes: Iterable[str] | None = None) -> dict[str, LedgerRow]:
        """The ledger's rows (all of them, or those of ``scopes``)."""
        rows = await self._store.run(
            "SELECT scope, cap_nanos, spent_nanos, reserved_nanos FROM money_ledger"
        )
        wanted = None if scopes is None else set(scopes)
        return {
            scope: LedgerRow(None if cap is None else int(cap), int(spent), int(reserved))
            for scope, cap, spent, reserved in rows
            if wanted is None or scope in wanted
        }

    async def ledger_settle(
        self,
        settlements: Iterable[tuple[str, int]],
        journal: tuple[str, str, str, str, dict[str, Any] | None, float] | None = None,
    ) -> int:
        """Settle holds at what they cost in nano-dollars (0: released) and, in the same
        transaction, add what they cost to the call's journal row ``(project_id, key, task_id,
        phase, entry, elapsed)`` (not written when they cost nothing and there is no entry). A
        hold no longer there expired meanwhile (charged in full then): it adds nothing. Returns
        what was charged."""
        settlements = [(hold_id, checked_nanos(actual)) for hold_id, actual in settlements]
        if self._store.writes_in_with:  # one statement, one round trip
            row: tuple[Any, ...] = (None,) * 8
            if journal is not None:
                project_id, key, task_id, phase, entry, elapsed = journal
                row = _journal_row(project_id, key, task_id, phase, 0, entry, elapsed)[1]
            project_id, key, task_id, phase, _, elapsed, blob, created = row
            rows = await self._store.run(
                _SETTLE_AT_ONCE,
                (
                    [hold_id for hold_id, _ in settlements],
                    [actual for _, actual in settlements],
                    *(project_id, key, task_id, phase, elapsed, blob, created),
                    journal is not None,
                    blob,
                ),
            )
            return int(rows[0][0])

        def settle() -> Program[int]:
            charged = 0  # what the settled holds cost
            for hold_id, actual_nanos in settlements:
                gone = yield (
                    "DELETE FROM money_holds WHERE id = ? RETURNING scopes, amount_nanos",
                    (hold_id,),
                )
                if not gone:
                    continue
                scopes, amount = json.loads(gone[0][0]), int(gone[0][1])
                yield from _move_to_spent(scopes, amount, actual_nanos)
                charged += actual_nanos
            if journal is not None and (charged or journal[4] is not None):
                project_id, key, task_id, phase, entry, elapsed = journal
                yield _journal_row(project_id, key, task_id, phase, charged, entry, elapsed)
            return charged

        return await self._store.atomic(settle())

    async def ledger_expire(self) -> list[ExpiredHold]:
        """Charge in full, and journal, the holds of runs that ended without settling them
        (their process died, or lost its project): the vendor may have billed those calls."""
        rows = await self._store.run(
            "SELECT r.id, r.owner, p.owner, p.lease_until FROM money_holds r"
            " LEFT JOIN projects p ON p.id = r.project_id"
        )
        if not rows:
            return []
        now = await self._store.clock()
        expired = []
        for hold_id, owner, holder, lease_until in rows:
            if owner == holder and self._holder_alive(holder, float(lease_until), now):
                continue
            found = await self._store.atomic(_expire(hold_id))
            if found is not None:
                expired.append(found)
        return expired

    async def _to_nano_dollars(self, execute: Execute) -> None:
        """Bring a file made when amounts were float USD to integer nano-dollars, once, in the
        transaction that opens it: each journaled cost to the nearest nano-dollar, the holds
        of calls in flight carried over, and the ledger's rows rebuilt from the journal."""
        if await execute("SELECT 1 FROM meta WHERE key = 'money'"):
            return
        for statement in _USD_LEDGER:  # a file older than the ledger has none: an empty one
            await execute(statement)
        await execute("DROP INDEX IF EXISTS journal_task")
        await execute("ALTER TABLE journal RENAME TO journal_usd")
        await execute(_JOURNAL)
        await execute(_JOURNAL_INDEX)
        for project_id, key, task_id, phase, cost_usd, elapsed, entry, created_at in await execute(
            "SELECT project_id, key, task_id, phase, cost_usd, elapsed_seconds, entry, created_at"
            " FROM journal_usd"
        ):
            await execute(
                "INSERT INTO journal (project_id, key, task_id, phase, cost_nanos,"
                " elapsed_seconds, entry, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (project_id, key, task_id, phase, usd_to_nanos(float(cost_usd)), elapsed, entry,
                 created_at),
            )  # fmt: skip
        held: dict[str, int] = {}
        for hold_id, project_id, owner, scopes, amount, task_id, phase, key in await execute(
            "SELECT id, project_id, owner, scopes, amount, task_id, phase, journal_key"
            " FROM budget_reservations"
        ):
            amount_nanos = usd_to_nanos(float(amount))
            await execute(*_hold_row(hold_id, project_id, owner, tuple(json.loads(scopes)),
                                     amount_nanos, task_id, phase, key))  # fmt: skip
            for scope in json.loads(scopes):
                held[scope] = held.get(scope, 0) + amount_nanos
        for scope, cap in await execute("SELECT scope, cap FROM budget_ledger"):
            cap_nanos = None if cap is None else usd_to_nanos(float(cap))
            await execute(*self._ledger_row(scope, cap_nanos, held.get(scope, 0)))
        for table in ("journal_usd", "budget_reservations", "budget_ledger"):
            await execute(f"DROP TABLE {table}")
        await execute(_MONEY_MARK)

    def _holder_alive(self, holder: str, lease_until: float, now: float) -> bool:
        if self._store.local_liveness and _on_this_host(holder):
            return _owner_alive(holder)
        return lease_until >= now


class _Refused(Exception):
    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def _result_rows(
    project_id: str, task_id: str, record: dict[str, Any], final: bool, elapsed: float, now: float
) -> Program[None]:
    """A task's result and the run's clock, as statements of one transaction."""
    yield (
        "INSERT INTO results (project_id, task_id, final, record, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, task_id) DO UPDATE SET"
        " final = excluded.final, record = excluded.record, updated_at = excluded.updated_at",
        (project_id, task_id, int(final), _pack(record), now),
    )
    yield (
        "UPDATE projects SET elapsed_seconds = MAX(elapsed_seconds, ?), updated_at = ?"
        " WHERE id = ?",
        (elapsed, now, project_id),
    )
    if final:
        # A finished task is never re-run, so its answers need not be kept for replay.
        yield (
            "UPDATE journal SET entry = NULL WHERE project_id = ? AND task_id = ?",
            (project_id, task_id),
        )


def _move_to_spent(scopes: list[str], held: int, spent: int) -> Program[None]:
    for scope in sorted(scopes):  # the one order rows are locked in: no deadlock
        yield (
            "UPDATE money_ledger SET spent_nanos = spent_nanos + ?,"
            " reserved_nanos = reserved_nanos - ? WHERE scope = ?",
            (spent, held, scope),
        )


def _set_cap(scope: str, cap_nanos: int) -> Statement:
    return (
        "UPDATE money_ledger SET cap_nanos = ? WHERE scope = ?",
        (checked_nanos(cap_nanos), scope),
    )


def _saved_caps() -> Program[dict[str, int]]:
    """The caps saved for the organisation, teams and jobs (in USD, as they were given)."""
    rows = yield ("SELECT scope, max_usd FROM budget_caps", ())
    return {str(scope): usd_to_nanos(float(cap)) for scope, cap in rows}


def _hold_row(
    hold_id: str,
    project_id: str,
    owner: str,
    scopes: tuple[str, ...],
    amount_nanos: int,
    task_id: str,
    phase: str,
    journal_key: str,
) -> Statement:
    return (
        "INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id, phase,"
        " journal_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (hold_id, project_id, owner, json.dumps(scopes), amount_nanos, task_id, phase,
         journal_key),
    )  # fmt: skip


def _expire(hold_id: str) -> Program[ExpiredHold | None]:
    gone = yield (
        "DELETE FROM money_holds WHERE id = ?"
        " RETURNING project_id, owner, scopes, amount_nanos, task_id, phase, journal_key",
        (hold_id,),
    )
    if not gone:
        return None  # settled or expired by another process meanwhile
    project_id, owner, scopes, amount, task_id, phase, key = gone[0]
    amount = int(amount)
    yield from _move_to_spent(json.loads(scopes), amount, amount)
    # Kept like a call cut off in flight: spend with nothing to replay, asked again on resume.
    sql, args = _journal_row(project_id, f"{key}#unanswered", task_id, phase, amount, None, 0.0)
    exists = yield ("SELECT 1 FROM projects WHERE id = ?", (project_id,))
    if exists:
        yield sql, args
    return ExpiredHold(project_id, owner, amount, phase)


def _journal_row(
    project_id: str,
    key: str,
    task_id: str,
    phase: str,
    cost_nanos: int,
    entry: dict[str, Any] | None,
    elapsed: float,
) -> Statement:
    """A paid call's journal row; its cost adds to what the key already recorded."""
    return (
        "INSERT INTO journal (project_id, key, task_id, phase, cost_nanos, elapsed_seconds,"
        " entry, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (project_id, key) DO UPDATE SET"
        " cost_nanos = journal.cost_nanos + excluded.cost_nanos,"
        " entry = COALESCE(excluded.entry, journal.entry),"
        " elapsed_seconds = excluded.elapsed_seconds",
        (
            project_id,
            key,
            task_id,
            phase,
            checked_nanos(cost_nanos),
            elapsed,
            None if entry is None else _pack(entry),
            time.time(),
        ),
    )


def new_owner() -> str:
    """Who runs a project: this machine, this process, and this run within it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _on_this_host(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    return host == socket.gethostname() and rest.partition(":")[0].isdigit()


def _owner_alive(owner: str) -> bool:
    """Whether the process of ``owner``, on this machine, still runs."""
    pid_text = owner.partition(":")[2].partition(":")[0]
    if not _on_this_host(owner):
        return True  # another machine: only its lease can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pack(value: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)


def _unpack(blob: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(zlib.decompress(blob))  # an object: ``_pack`` made it
    return value


def _plan(text: str | None) -> tuple[dict[str, Task] | None, list[str]]:
    if text is None:
        return None, []
    plan = json.loads(text)
    tasks = {
        t["id"]: Task(
            id=t["id"],
            type=TaskType(t["type"]),
            prompt=t["prompt"],
            dependencies=list(t.get("dependencies", [])),
            hard_validators=list(t.get("hard_validators", [])),
            acceptance=t.get("acceptance"),
            output_schema=t.get("output_schema"),
        )
        for t in plan["tasks"]
    }
    return tasks, list(plan["order"])
