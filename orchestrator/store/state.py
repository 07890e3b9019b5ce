"""``StateManager``: projects, task checkpoints and the journal of paid calls, in SQLite (WAL).

What is stored is what changed: the project row once (then its status and clock), one row per
finished task, and one row per paid call. A journaled call's answer is kept only while its task
may still be resumed; its cost stays forever, so the spend of a project is always the sum of
what it really paid, even after ``kill -9``.

The state manager opens the store (its tables and their migration: ``schema``) and closes it;
the work is done by its parts, each a module of its own holding the same store and reached as an
attribute of the state manager: ``state.projects`` (``projects.Projects``: project rows, plans,
checkpoints), ``state.holders`` (``holders.Holders``: who holds a project), ``state.journal``
(``journal.CallJournal``: the paid calls), ``state.books`` (``books.SharedBook``: the budget
ledger and the caps across runs) and ``state.measures`` (``measures.Measures``: what runs
measured). So ``await state.projects.load(project_id)``, ``await state.journal.keys(project_id)``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
from orchestrator.store.schema import (
    ADDITIONS,
    SCHEMA,
    STATE_FORMAT,
    StateError,
    add_columns,
    to_nano_dollars,
)

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

    What it keeps is read and written through its parts, which share its store; a caller uses
    the part itself (``await state.projects.summaries()`` lists the saved projects):
    ``projects`` (project rows, plans, checkpoints), ``holders`` (who holds a project: what a
    ``Lease`` is given), ``journal`` (the paid calls), ``books`` (the ``money.ledger.Book`` a
    run's ``Ledger`` keeps its rows in, and the caps across runs) and ``measures`` (what runs
    measured).
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
            migrate=self._migrate,
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

    async def _migrate(self, execute: Execute) -> None:
        """What brings a store made by an earlier version up to date, run as it opens, in its
        own SQL: the columns added since, then amounts in integer nano-dollars."""
        await add_columns(execute, self._store.column_names)
        await to_nano_dollars(execute, self._store.json_field)
