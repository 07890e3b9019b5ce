"""One SQLite file of ours, opened safely: WAL, busy_timeout, and never a foreign file touched.

The cache and the state database both sit on this. Each statement runs to completion in one job
on aiosqlite's thread; explicit transactions take a lock so that no other coroutine's statement
can slip in between their statements on the shared connection.

A store outlives event loops: a script may use it in one ``asyncio.run`` after another, and
never close it. aiosqlite's connection serves any loop (each call makes its future in the loop
that awaits it), and its thread is a daemon, so a store left open does not keep the interpreter
alive; only the locks belong to a loop, and are made anew in the next (``_locks_of_this_loop``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .aio import uninterrupted
from .errors import OrchestratorError
from .settings import DB_URL_ENV

if TYPE_CHECKING:
    import aiosqlite

BUSY_TIMEOUT_MS = 5000
# aiosqlite's private way to run a function on its connection's thread (``Connection._execute``):
# a transaction runs there as one job; a release without it gets the statement-by-statement path.
THREAD_JOB = "_execute"

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


class SQLiteStore:
    """A lazily opened aiosqlite connection to a file marked with ``format_tag``.

    ``kind`` names the file in errors ("cache", "state"); ``error`` is the exception class
    raised, always with a one-line message naming the file.
    """

    # One machine: a lease holder's process can be asked whether it still lives.
    local_liveness = True
    writes_in_with = False  # no INSERT, UPDATE or DELETE inside WITH (a program instead)

    def __init__(
        self,
        path: Path,
        *,
        kind: str,
        format_tag: str,
        schema: Sequence[str],
        error: type[OrchestratorError],
        synchronous: str = "NORMAL",
        additions: Sequence[str] = (),
        migrate: Migration | None = None,
    ) -> None:
        self.path = path
        # FULL fsyncs every commit (a power loss keeps it); NORMAL may lose the last ones.
        self.synchronous = synchronous
        self.kind = kind
        self.format_tag = format_tag
        self.schema = tuple(schema)
        # Idempotent statements (CREATE TABLE IF NOT EXISTS ...) for what later versions added:
        # run at every open, so a file made by an earlier version gains them in place.
        self.additions = tuple(additions)
        self.migrate = migrate
        self.error = error
        self._db: aiosqlite.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the locks below are for
        self._open_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._closed = False

    async def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, committed on its own, rows read."""
        db = await self.connection()
        with self.translated_errors():
            if self._write_lock.locked():
                # A transaction is between its statements: wait rather than slip into it.
                async with self._write_lock:
                    return await _run(db, sql, args)
            # Enqueued on the connection's thread before this coroutine yields, so a
            # transaction that starts later queues its BEGIN after this statement.
            return await _run(db, sql, args)

    async def transaction(self, statements: Sequence[Statement]) -> None:
        """Several statements that commit together or not at all.

        A cancellation does not cut a transaction short: it ends (COMMIT, or ROLLBACK on an
        error) before the cancellation goes on, so the shared connection is never left inside
        an open transaction that later writes would silently join.
        """
        db = await self.connection()
        with self.translated_errors():
            async with self._write_lock:
                await uninterrupted(_atomically(db, statements))

    async def atomic(self, program: Program[T]) -> T:
        """``program`` in one transaction: committed when it returns, rolled back when it
        raises (its exception goes on), ended either way before a cancellation does.

        It runs as one job on the connection's thread (one hop from the event loop, not one
        per statement: this is the path of every paid call; see ``THREAD_JOB``)."""
        db = await self.connection()
        in_thread = getattr(db, THREAD_JOB, None)
        with self.translated_errors():
            async with self._write_lock:
                if in_thread is None:
                    return await uninterrupted(_atomic_program(db, program))
                return await uninterrupted(in_thread(_program_in_thread, db, program))

    async def aclose(self) -> None:
        """Close the connection and end its thread. Safe to call more than once."""
        self._closed = True
        self._locks_of_this_loop()
        # Waits out an open in progress, which would otherwise leave a connection behind.
        async with self._open_lock:
            db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            finally:
                await _thread_gone(db)

    @property
    def closed(self) -> bool:
        return self._closed

    async def clock(self) -> float:
        return time.time()

    def json_field(self, column: str, name: str) -> str:
        return f"json_extract({column}, '$.{name}')"

    async def connection(self) -> aiosqlite.Connection:
        """The connection, opened on first use; every use of the locks comes through here."""
        if self._closed:
            raise self.error(f"{self.kind} is closed")
        self._locks_of_this_loop()
        if self._db is not None:
            return self._db
        async with self._open_lock:
            if self._closed:
                raise self.error(f"{self.kind} is closed")
            if self._db is None:
                self._db = await self._open()
            return self._db

    def _locks_of_this_loop(self) -> None:
        """Make the locks anew when the store is used in another event loop than before.

        An ``asyncio.Lock`` binds to the first loop that waits on it and fails in any other, so
        locks made in an earlier ``asyncio.run`` would fail the next one. Nothing can still hold
        them: that loop no longer runs (one loop at a time uses a store).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._open_lock, self._write_lock = asyncio.Lock(), asyncio.Lock()

    async def _open(self) -> aiosqlite.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.error(
                f"cannot create the directory for {self.kind} file {self.path}: {exc}"
            ) from exc
        import aiosqlite  # with the first store opened, not on import

        # Autocommit: each statement commits alone, and transactions are only ever explicit.
        db = aiosqlite.connect(self.path, isolation_level=None)
        _as_daemon(db)
        try:
            await db
        except sqlite3.Error as exc:
            await _thread_gone(db)
            raise self.error(f"cannot open {self.kind} file {self.path}: {exc}") from exc
        try:
            await self._prepare(db)
        except BaseException:
            # The reason the file was refused matters more than a failure to close it.
            with suppress(Exception):
                await db.close()
            await _thread_gone(db)
            raise
        return db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        """Check the file is ours (or empty) before anything writes to it, then set it up."""
        try:
            await _run(db, f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # Read-only inspection first: switching to WAL rewrites the header of any SQLite
            # file, so it must wait until we know the file is empty or already ours.
            if await self._inspect(db) == "empty":
                await self._create_schema(db)
            if self.additions:
                await uninterrupted(_atomically(db, [(sql, ()) for sql in self.additions]))
            if self.migrate is not None:
                await uninterrupted(_atomically(db, (), partial(self.migrate, partial(_run, db))))
            await self._enable_wal(db)
            await _run(db, f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _enable_wal(self, db: aiosqlite.Connection) -> None:
        # Two connections switching a new file to WAL at once both hold a read lock while
        # asking for the write lock; SQLite refuses one at once instead of calling the busy
        # handler (it would deadlock), so that wait has to happen here.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                await _run(db, "PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY")
                if not busy or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.005)

    async def _create_schema(self, db: aiosqlite.Connection) -> None:
        async def create() -> None:
            # Another process may have initialised (or claimed) the file since the first look.
            if await self._inspect(db) == "empty":
                await _run(db, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for statement in self.schema:
                    await _run(db, statement)
                await _run(
                    db,
                    "INSERT INTO meta (key, value) VALUES ('format', ?)",
                    (self.format_tag,),
                )

        await uninterrupted(_atomically(db, (), body=create))

    async def _inspect(self, db: aiosqlite.Connection) -> str:
        """``"empty"`` or ``"ours"``; anything else raises without writing to the file."""
        names = {row[0] for row in await _run(db, "SELECT name FROM sqlite_master")}
        if not names:
            return "empty"
        found: str | None = None
        if "meta" in names:
            try:
                rows = await _run(db, "SELECT value FROM meta WHERE key = 'format'")
            except sqlite3.OperationalError:
                rows = []  # a table called meta with other columns: someone else's
            found = str(rows[0][0]) if rows else None
        if found == self.format_tag:
            return "ours"
        what = f"format {found!r}" if found is not None else "no orchestrator format marker"
        raise self.error(
            f"{self.kind} file {self.path} is a SQLite database of another kind ({what}); "
            "move it away or pass another path"
        )

    def _translate(self, exc: sqlite3.Error) -> OrchestratorError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return self.error(
                f"{self.kind} file {self.path} is not a valid {self.kind} database: {exc}; "
                "move it away or pass another path"
            )
        return self.error(f"{self.kind} file {self.path}: {exc}")

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """One-line errors for anything a database operation raises."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        except ValueError as exc:
            # aiosqlite reports use after close as ValueError: aclose() ran while we awaited.
            if self._closed:
                raise self.error(f"{self.kind} is closed") from exc
            raise


EXTRA_COMMAND = "pip install -e '.[distributed]' (in the project's directory)"


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
) -> SQLiteStore | Any:
    """The store at ``location`` (a file path, or a ``postgresql://`` URL), else in the
    PostgreSQL database ``$ORCHESTRATOR_DB_URL`` names, else the SQLite file ``default``.
    PostgreSQL is imported only when a URL names it."""
    if location is None:
        location = os.environ.get(DB_URL_ENV) or None
        if location is not None and not is_postgres_url(location):
            raise error(f"{DB_URL_ENV} must be a postgresql:// URL, not {location!r}")
    if location is not None and is_postgres_url(location):
        from .postgres_store import PostgresStore

        return PostgresStore(
            str(location), kind=kind, format_tag=format_tag, schema=schema, error=error,
            additions=additions, migrate=migrate,
        )  # fmt: skip
    path = Path(location).expanduser() if location is not None else default
    return SQLiteStore(
        path, kind=kind, format_tag=format_tag, schema=schema, error=error,
        synchronous=synchronous, additions=additions, migrate=migrate,
    )  # fmt: skip


async def _run(
    db: aiosqlite.Connection, sql: str, args: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Run one statement to completion, rows read, in a single job on the connection's thread.

    Coroutines share the connection, so a statement left half-read across an await (as with
    ``execute`` then ``fetchone``) would hold a read transaction open while another coroutine
    writes; SQLite fails such a write with "database is locked" at once, ignoring
    busy_timeout, whenever another connection is writing or has written meanwhile.
    """
    return list(await db.execute_fetchall(sql, args))


async def _atomically(
    db: aiosqlite.Connection,
    statements: Sequence[Statement],
    body: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """BEGIN IMMEDIATE, the statements (or ``body``), then COMMIT; ROLLBACK on any error.

    The one place a transaction is opened: every BEGIN here meets its COMMIT or ROLLBACK.
    """
    await _run(db, "BEGIN IMMEDIATE")
    try:
        for sql, args in statements:
            await _run(db, sql, args)
        if body is not None:
            await body()
        await _run(db, "COMMIT")
    except BaseException:
        with suppress(sqlite3.Error, ValueError):
            await _run(db, "ROLLBACK")
        raise


def run_program(program: Program[T], execute: Callable[[str, tuple[Any, ...]], Rows]) -> T:
    """Drive ``program``, each statement run by ``execute``: its result."""
    try:
        statement = next(program)
        while True:
            statement = program.send(execute(*statement))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_program_async(program: Program[T], execute: Execute) -> T:
    """``run_program`` with a statement runner that must be awaited."""
    try:
        statement = next(program)
        while True:
            statement = program.send(await execute(*statement))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _program_in_thread(db: aiosqlite.Connection, program: Program[T]) -> T:
    """On the connection's thread: BEGIN IMMEDIATE, the program, COMMIT; ROLLBACK on any error."""
    conn = db._conn  # the thread's own sqlite3 connection: this runs on that thread

    def execute(sql: str, args: tuple[Any, ...] = ()) -> Rows:
        return conn.execute(sql, args).fetchall()

    conn.execute("BEGIN IMMEDIATE")
    try:
        result = run_program(program, execute)
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


async def _atomic_program(db: aiosqlite.Connection, program: Program[T]) -> T:
    results: list[T] = []

    async def body() -> None:
        results.append(await run_program_async(program, partial(_run, db)))

    await _atomically(db, (), body)
    return results[0]


def _as_daemon(db: aiosqlite.Connection) -> None:
    """Make the worker thread of ``db``, not yet started, a daemon.

    aiosqlite's thread ends only when its connection is closed, and the orchestrator leaves a
    store it was given open: a non-daemon thread would keep a script's interpreter alive after
    its last line. Ending with the interpreter is safe: every statement of ours is awaited
    before the call that made it returns, so at exit the thread is idle; one cut short anyway
    (a loop left with a statement under way) is cut as by a crash, and SQLite's journal makes a
    commit whole or absent. ``_thread`` is private (aiosqlite 0.22), hence the tolerant lookup.
    """
    thread = getattr(db, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.ident is None:
        thread.daemon = True


async def _thread_gone(db: aiosqlite.Connection) -> None:
    """Wait until aiosqlite's worker thread has really exited.

    aiosqlite resolves the close future just before its thread leaves its loop, so right
    after ``close()`` the thread can still be alive for a moment; callers (and tests counting
    threads) must not see it. ``_thread`` is private, hence the tolerant lookup.
    """
    thread = getattr(db, "_thread", None)
    if thread is None or thread.ident is None:
        return
    for _ in range(1000):
        if not thread.is_alive():
            return
        await asyncio.sleep(0.001)
