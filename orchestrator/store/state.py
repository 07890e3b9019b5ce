"""``StateManager``: projects, task checkpoints and the journal of paid calls, in SQLite (WAL).

What is stored is what changed: the project row once (then its status and clock), one row per
finished task, and one row per paid call. A journaled call's answer is kept only while its task
may still be resumed; its cost stays forever, so the spend of a project is always the sum of
what it really paid, even after ``kill -9``.

The state manager opens the store and answers for all of it; each part of the work is a module
of its own, holding the same store: ``schema`` (the tables and their migration), ``projects``
(project rows, checkpoints), ``holders`` (who holds a project), ``journal`` (the paid calls),
``books`` (the budget ledger and the caps across runs) and ``measures`` (what runs measured).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.money.ledger import ExpiredHold, LedgerRow
from orchestrator.run.tasks import ProjectStatus, Task
from orchestrator.settings import home_dir
from orchestrator.store.base import Execute, Store, open_store
from orchestrator.store.books import SharedBook
from orchestrator.store.holders import Holders, new_owner
from orchestrator.store.journal import CallJournal
from orchestrator.store.measures import Measures
from orchestrator.store.projects import (
    Projects,
    ProjectSummary,
    SavedProject,
    UnknownProjectError,
)
from orchestrator.store.schema import ADDITIONS, SCHEMA, STATE_FORMAT, StateError, to_nano_dollars

# What ``orchestrator.store.state`` has always given (``orchestrator.state`` gives it too).
__all__ = [
    "STATE_FORMAT",
    "ProjectSummary",
    "SavedProject",
    "StateError",
    "StateManager",
    "UnknownProjectError",
    "new_owner",
]


class StateManager:
    """Durable project state in ``$ORCHESTRATOR_HOME/state.db`` (or ``path``).

    Every write is one statement or one short transaction, so many runs and many tasks can
    share the file; no lock is held while anything else is awaited.

    Open until ``aclose()`` (or the end of ``async with``); an orchestrator it is given leaves
    it open. A script that never closes it still ends after its last line, and may use it in
    one ``asyncio.run`` after another.

    Its parts share its store: ``projects``, ``holders``, ``journal``, ``books`` (a
    ``money.ledger.Book``) and ``measures``. Each method below is one of theirs, documented
    there, and given here as it always was.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._store: Store = open_store(
            path,
            home_dir() / "state.db",
            kind="state",
            format_tag=STATE_FORMAT,
            schema=SCHEMA,
            additions=ADDITIONS,
            error=StateError,
            # Paid calls are journaled here: a commit must survive a power loss or an OS crash.
            synchronous="FULL",
            migrate=self._to_nano_dollars,
        )
        # A file's path, or a database's URL without its password.
        self.path: Path | str = self._store.path
        self.projects = Projects(self._store)
        self.holders = Holders(self._store)
        self.journal = CallJournal(self._store)
        self.books = SharedBook(self._store, self.holders)
        self.measures = Measures(self._store)

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

    async def _to_nano_dollars(self, execute: Execute) -> None:
        """The store's one migration, run as it opens (its JSON fields in its own SQL)."""
        await to_nano_dollars(execute, self._store.json_field)

    # -- projects: ``Projects`` -----------------------------------------------------------------
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
        return await self.projects.create_project(
            project_id, description=description, criteria=criteria, max_usd=max_usd,
            max_time_seconds=max_time_seconds, settings=settings,
        )  # fmt: skip

    async def update_run(
        self,
        project_id: str,
        *,
        max_usd: float,
        max_time_seconds: float,
        settings: dict[str, Any],
        owner: str,
    ) -> None:
        await self.projects.update_run(
            project_id, max_usd=max_usd, max_time_seconds=max_time_seconds, settings=settings,
            owner=owner,
        )  # fmt: skip

    async def delete_project(self, project_id: str) -> None:
        await self.projects.delete_project(project_id)

    async def save_plan(
        self, project_id: str, tasks: dict[str, Task], order: list[str], elapsed: float
    ) -> None:
        await self.projects.save_plan(project_id, tasks, order, elapsed)

    async def checkpoint(
        self, project_id: str, task_id: str, record: dict[str, Any], final: bool, elapsed: float
    ) -> None:
        await self.projects.checkpoint(project_id, task_id, record, final, elapsed)

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
        return await self.projects.checkpoint_held(
            project_id, task_id, record, final=final, elapsed=elapsed, owner=owner,
            lease_seconds=lease_seconds,
        )  # fmt: skip

    async def finish(
        self,
        project_id: str,
        status: ProjectStatus,
        reason: str,
        elapsed: float,
        owner: str | None = None,
    ) -> None:
        await self.projects.finish(project_id, status, reason, elapsed, owner)

    async def run_settings(self, project_id: str) -> tuple[ProjectStatus, dict[str, Any]]:
        return await self.projects.run_settings(project_id)

    async def load(self, project_id: str) -> SavedProject:
        return await self.projects.load(project_id)

    async def save_integration(
        self, project_id: str, record: Mapping[str, Any], elapsed: float
    ) -> None:
        await self.projects.save_integration(project_id, record, elapsed)

    async def list_projects(self) -> list[ProjectSummary]:
        return await self.projects.list_projects()

    # -- who holds a project: ``Holders`` -------------------------------------------------------
    async def claim(self, project_id: str, owner: str, lease_seconds: float) -> str | None:
        return await self.holders.claim(project_id, owner, lease_seconds)

    async def held(self, project_id: str) -> bool:
        return await self.holders.held(project_id)

    async def lease(self, project_id: str) -> tuple[str, float, float] | None:
        return await self.holders.lease(project_id)

    async def renew(self, project_id: str, owner: str, lease_seconds: float) -> bool:
        return await self.holders.renew(project_id, owner, lease_seconds)

    async def release(self, project_id: str, owner: str) -> None:
        await self.holders.release(project_id, owner)

    # -- the journal of paid calls: ``CallJournal`` ---------------------------------------------
    async def journal_keys(self, project_id: str) -> set[str]:
        return await self.journal.keys(project_id)

    async def journal_get(self, project_id: str, key: str) -> dict[str, Any] | None:
        return await self.journal.get(project_id, key)

    async def journal_forget(self, project_id: str, key: str) -> None:
        await self.journal.forget(project_id, key)

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
        await self.journal.put(
            project_id, key, task_id=task_id, phase=phase, cost_nanos=cost_nanos, entry=entry,
            elapsed=elapsed,
        )  # fmt: skip

    # -- what runs measured: ``Measures`` -------------------------------------------------------
    async def cost_estimates(self, project_id: str) -> list[tuple[str, str, float, int]]:
        return await self.measures.cost_estimates(project_id)

    async def save_cost_estimates(
        self, project_id: str, estimates: Iterable[tuple[str, str, float, int]]
    ) -> None:
        await self.measures.save_cost_estimates(project_id, estimates)

    async def measured_cost_estimates(self) -> list[tuple[str, str, float, int]]:
        return await self.measures.measured_cost_estimates()

    async def measured_task_calls(self) -> list[tuple[str, str, str, str, int]]:
        return await self.measures.measured_task_calls()

    async def measured_planning(self) -> list[float]:
        return await self.measures.measured_planning()

    async def model_telemetry(self) -> dict[str, dict[str, Any]]:
        return await self.measures.model_telemetry()

    async def save_model_telemetry(self, records: Mapping[str, dict[str, Any]]) -> None:
        await self.measures.save_model_telemetry(records)

    # -- caps across runs and the budget ledger: ``SharedBook`` ---------------------------------
    async def budget_caps(self) -> dict[str, float]:
        return await self.books.budget_caps()

    async def save_budget_caps(self, caps: Mapping[str, float]) -> None:
        await self.books.save_budget_caps(caps)

    async def scope_spend_nanos(self, team: str | None, job_id: str | None) -> dict[str, int]:
        return await self.books.scope_spend_nanos(team, job_id)

    async def ledger_open(self, scopes: Iterable[str], project_id: str, max_nanos: int) -> None:
        await self.books.ledger_open(scopes, project_id, max_nanos)

    async def ledger_set_cap(self, scope: str, cap_nanos: int) -> None:
        await self.books.ledger_set_cap(scope, cap_nanos)

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
        return await self.books.ledger_reserve(
            hold_id, amount_nanos, scopes, project_id=project_id, owner=owner, task_id=task_id,
            phase=phase, journal_key=journal_key,
        )  # fmt: skip

    async def ledger(self, scopes: Iterable[str] | None = None) -> dict[str, LedgerRow]:
        return await self.books.ledger(scopes)

    async def ledger_settle(
        self,
        settlements: Iterable[tuple[str, int]],
        journal: tuple[str, str, str, str, dict[str, Any] | None, float] | None = None,
    ) -> int:
        return await self.books.ledger_settle(settlements, journal)

    async def ledger_expire(self) -> list[ExpiredHold]:
        return await self.books.ledger_expire()
