"""The projects in the state store: each project's row (description, limits, settings, plan,
status, clock), one checkpoint row per finished task, and its integration rounds.

What is stored is what changed: the project row once (then its status and clock), one row per
finished task. What a project paid is kept in no row of these: it is the sum of its journal
(``journal``), read with them.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.money.units import nanos_to_usd
from orchestrator.run.tasks import ProjectStatus, Task, TaskType
from orchestrator.store.base import Program, Store
from orchestrator.store.journal import pack, unpack
from orchestrator.store.schema import StateError


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


class Projects:
    """The project rows, task checkpoints and integration rounds of one store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
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

    async def delete(self, project_id: str) -> None:
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
        return StateError(
            f"state file {self._store.path}: project {project_id!r} cannot be read ({exc})"
        )

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
        tasks, order = parse_plan(plan)
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
            project.results[task_id] = unpack(record)
            if final:
                project.final_tasks.add(task_id)
        task_nanos: dict[str, int] = {}
        for task_id, phase, cost, latest in await self._store.run(
            "SELECT task_id, phase, SUM(cost_nanos), MAX(elapsed_seconds) FROM journal"
            " WHERE project_id = ? GROUP BY task_id, phase",
            (project_id,),
        ):
            project.phase_nanos[phase] = project.phase_nanos.get(phase, 0) + int(cost)
            project.spent_nanos += int(cost)
            task_nanos[task_id] = task_nanos.get(task_id, 0) + int(cost)
            # The clock is checkpointed per task; paid calls since then still moved it on.
            project.elapsed_seconds = max(project.elapsed_seconds, latest)
        # A task cost what the journal says it paid, the one record of it: a call settled after
        # the task's last checkpoint (cancelled in flight as the run stopped) counts too.
        for task_id, nanos in task_nanos.items():
            if task_id in project.results:
                project.results[task_id]["cost_usd"] = nanos_to_usd(nanos)
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

    async def progress_mark(self, project_id: str | None = None) -> tuple[Any, ...]:
        """What changes whenever a project (or, for None, any project) moves: its row, its
        journal and its calls in flight. A viewer compares marks to know when to look again."""
        of_project = "" if project_id is None else " WHERE project_id = ?"
        of_row = "" if project_id is None else " WHERE id = ?"
        rows = await self._store.run(
            f"SELECT (SELECT MAX(updated_at) FROM projects{of_row}),"
            f" (SELECT COUNT(*) FROM projects{of_row}),"
            f" (SELECT COUNT(*) FROM journal{of_project}),"
            f" (SELECT COALESCE(SUM(cost_nanos), 0) FROM journal{of_project}),"
            f" (SELECT COUNT(*) FROM money_holds{of_project})",
            () if project_id is None else (project_id,) * 5,
        )
        return tuple(rows[0])

    async def summaries(self) -> list[ProjectSummary]:
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


def _result_rows(
    project_id: str, task_id: str, record: dict[str, Any], final: bool, elapsed: float, now: float
) -> Program[None]:
    """A task's result and the run's clock, as statements of one transaction."""
    yield (
        "INSERT INTO results (project_id, task_id, final, record, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, task_id) DO UPDATE SET"
        " final = excluded.final, record = excluded.record, updated_at = excluded.updated_at",
        (project_id, task_id, int(final), pack(record), now),
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


def parse_plan(text: str | None) -> tuple[dict[str, Task] | None, list[str]]:
    """A project row's stored plan: its tasks by id and their order (None, []: not planned)."""
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
