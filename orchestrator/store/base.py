"""The store seam: what the state and the cache ask of a database, and the one factory that
opens one (a SQLite file by default, PostgreSQL when a URL names it).

``Store`` is the protocol both backends satisfy (``sqlite_store.SQLiteStore`` and
``postgres_store.PostgresStore``); ``StateManager`` and ``DiskCache`` hold one and know nothing
else of it. A transaction is written once, as a ``Program``, and runs on either backend.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import OrchestratorError
from orchestrator.settings import DB_URL_ENV

# A statement and its parameters; a statement's rows. Their values are SQL's, whatever a column
# holds, so each caller reads its own columns.
Statement = tuple[str, tuple[Any, ...]]
Rows = list[tuple[Any, ...]]
# Runs one statement inside a transaction and returns its rows.
Execute = Callable[..., Awaitable[Rows]]
# Brings a store made by an earlier version up to date, inside the transaction that opens it;
# run at every open, so it must see for itself whether there is anything left to do.
Migration = Callable[[Execute], Awaitable[None]]
T = TypeVar("T")
# A transaction's statements as a generator: it yields each statement, is sent its rows, and
# returns its result. The same program runs as one job on SQLite's thread and statement by
# statement on PostgreSQL; raising rolls it back.
Program = Generator[Statement, Rows, T]

EXTRA_COMMAND = "pip install -e '.[distributed]' (in the project's directory)"


class Store(Protocol):
    """A database of ours, opened lazily: a SQLite file or a PostgreSQL schema.

    Errors are raised as the ``error`` class the store was opened with, in one line naming it.
    """

    @property
    def path(self) -> Path | str:
        """A file's path, or a database's URL without its password."""
        ...

    @property
    def local_liveness(self) -> bool:
        """Whether a lease holder's process can be asked if it still lives (one machine)."""
        ...

    @property
    def writes_in_with(self) -> bool:
        """Whether INSERT, UPDATE and DELETE may sit inside WITH (else a program instead)."""
        ...

    @property
    def transactions(self) -> int:
        """Commits of writes since the store was opened (a group commit counts once)."""
        ...

    @property
    def closed(self) -> bool: ...

    async def run(self, sql: str, args: tuple[Any, ...] = ()) -> Rows:
        """One statement, committed on its own, rows read."""
        ...

    async def transaction(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Several statements that commit together or not at all."""
        ...

    async def atomic(self, program: Program[T], *, durable: bool = True) -> T:
        """``program`` in one transaction: committed when it returns, rolled back when it
        raises; ``durable=False`` allows a commit a power loss may undo."""
        ...

    async def clock(self) -> float:
        """The time leases are measured by, in seconds since the epoch."""
        ...

    def json_field(self, column: str, name: str) -> str:
        """SQL for the field ``name`` of the JSON text in ``column``."""
        ...

    def column_names(self, table: str) -> Statement:
        """A query whose rows are the names of ``table``'s columns."""
        ...

    async def connection(self) -> object:
        """Open (and check) the database now rather than on first use; what it returns is the
        backend's own connection or pool."""
        ...

    async def aclose(self) -> None:
        """Close the store. Safe to call more than once."""
        ...


def is_postgres_url(location: str | os.PathLike[str]) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def shown(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{parts.hostname or ''}{port}"))


def open_store(
    location: str | os.PathLike[str] | None,
    default: Path,
    *,
    kind: str,
    format_tag: str,
    schema: Sequence[str],
    error: type[OrchestratorError],
    synchronous: str = "NORMAL",
    additions: Sequence[str] = (),
    migrate: Migration | None = None,
) -> Store:
    """The store at ``location`` (a file path, or a ``postgresql://`` URL), else in the
    PostgreSQL database ``$ORCHESTRATOR_DB_URL`` names, else the SQLite file ``default``.
    PostgreSQL is imported only when a URL names it."""
    if location is None:
        location = os.environ.get(DB_URL_ENV) or None
        if location is not None and not is_postgres_url(location):
            raise error(f"{DB_URL_ENV} must be a postgresql:// URL, not {location!r}")
    if location is not None and is_postgres_url(location):
        from orchestrator.store.postgres import PostgresStore

        return PostgresStore(
            str(location), kind=kind, format_tag=format_tag, schema=schema, error=error,
            additions=additions, migrate=migrate,
        )  # fmt: skip
    # Here, not at the top: sqlite_store speaks this module's vocabulary.
    from orchestrator.store.sqlite import SQLiteStore

    path = Path(location).expanduser() if location is not None else default
    return SQLiteStore(
        path, kind=kind, format_tag=format_tag, schema=schema, error=error,
        synchronous=synchronous, additions=additions, migrate=migrate,
    )  # fmt: skip


async def run_program_async(program: Program[T], execute: Execute) -> T:
    """Drive ``program``, each statement run by ``execute`` (awaited): its result."""
    try:
        statement = next(program)
        while True:
            statement = program.send(await execute(*statement))
    except StopIteration as done:
        # typeshed types StopIteration.value as Any: the generator's return type is lost.
        return done.value  # type: ignore[no-any-return]


def is_write(sql: str) -> bool:
    """Whether a statement run on its own commits a write (ours read with SELECT or PRAGMA
    only; a WITH writes, in PostgreSQL's one-statement hold and settlement)."""
    return not sql.lstrip()[:6].upper().startswith(("SELECT", "PRAGMA"))


def each_statement(statements: Sequence[Statement]) -> Program[None]:
    """A program of fixed statements, their rows unread."""
    # Not ``yield from``: each statement is sent its rows, which a list's iterator cannot take.
    for statement in statements:  # noqa: UP028
        yield statement
