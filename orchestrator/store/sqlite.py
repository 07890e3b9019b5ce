"""One SQLite file of ours, opened safely: WAL, busy_timeout, and never a foreign file touched.

The cache and the state database both sit on this. Each statement runs to completion in one job
on aiosqlite's thread; a transaction runs there as one job too, under a lock so that no other
coroutine's statement can slip into it on the shared connection. Transactions that arrive while
one is committing are committed together as one (group commit, see ``SQLiteStore.atomic``).

A store outlives event loops: a script may use it in one ``asyncio.run`` after another, and
never close it. aiosqlite's connection serves any loop (each call makes its future in the loop
that awaits it), and its thread is a daemon, so a store left open does not keep the interpreter
alive; only the locks belong to a loop, and are made anew in the next (``_locks_of_this_loop``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from orchestrator.aio import uninterrupted
from orchestrator.errors import OrchestratorError

# What both stores speak, from the seam; ``open_store`` kept importable from here.
from orchestrator.store.base import (
    Migration,
    Program,
    Rows,
    Statement,
    each_statement,
    is_write,
    run_program_async,
)

if TYPE_CHECKING:
    import aiosqlite

BUSY_TIMEOUT_MS = 5000
# aiosqlite's private way to run a function on its connection's thread (``Connection._execute``):
# a transaction runs there as one job; a release without it gets the statement-by-statement path.
THREAD_JOB = "_execute"

T = TypeVar("T")


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
        # Group commit: the transactions waiting for the one being committed, and its end.
        self._queued: list[_Queued[Any]] = []
        self._committing: asyncio.Event | None = None
        # The connection's sync level now; read and set only by the jobs on its thread.
        self._synchronous_now = synchronous
        # Commits of writes (a group counts once): what the benchmarks report per paid call.
        self.transactions = 0

    async def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, committed on its own, rows read."""
        db = await self.connection()
        with self.translated_errors():
            if self._write_lock.locked():
                # A transaction is between its statements: wait rather than slip into it.
                async with self._write_lock:
                    rows = await _run(db, sql, args)
            else:
                # Enqueued on the connection's thread before this coroutine yields, so a
                # transaction that starts later queues its BEGIN after this statement.
                rows = await _run(db, sql, args)
        self.transactions += is_write(sql)
        return rows

    async def transaction(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Several statements that commit together or not at all (``atomic``)."""
        await self.atomic(each_statement(statements), durable=durable)

    async def atomic(self, program: Program[T], *, durable: bool = True) -> T:
        """``program`` in one transaction: committed when it returns, rolled back when it
        raises (its exception goes on), ended either way before a cancellation does.

        It runs as one job on the connection's thread (one hop from the event loop, not one
        per statement: this is the path of every paid call; see ``THREAD_JOB``). Programs that
        arrive while a transaction is committing wait for it, then commit together as one
        transaction: one sync to disk and one hop for all of them, each in a savepoint of its
        own, so one that raises is rolled back alone, and each told it has committed only once
        the whole has. A program that need not be ``durable`` (what a resume redoes without
        paying: a task's checkpoint) commits without syncing the disk, unless it shares its
        commit with one that must; the next durable commit syncs it too, since SQLite replays
        its write-ahead log in order and a power loss keeps a prefix of the commits."""
        db = await self.connection()
        in_thread = getattr(db, THREAD_JOB, None)
        with self.translated_errors():
            if in_thread is None:
                async with self._write_lock:
                    return await uninterrupted(_atomic_program(db, program))
            return await uninterrupted(self._grouped(db, in_thread, _Queued(program, durable)))

    async def _grouped(
        self, db: aiosqlite.Connection, in_thread: Callable[..., Awaitable[None]], mine: _Queued[T]
    ) -> T:
        """Commit ``mine`` with whatever else is waiting once no commit is under way."""
        self._queued.append(mine)
        while not mine.ended:
            if self._committing is not None:
                try:
                    await self._committing.wait()
                except BaseException:
                    # Its loop is ending (``uninterrupted`` shields it from anything less):
                    # a program not yet taken is dropped, not committed by a later loop.
                    if mine in self._queued:
                        self._queued.remove(mine)
                    raise
                continue
            group, self._queued = self._queued, []
            self._committing = committed = asyncio.Event()
            try:
                async with self._write_lock:
                    await in_thread(self._commit_in_thread, db, group)
                self.transactions += 1
            except BaseException as exc:
                for queued in group:
                    queued.end(False, exc)
            finally:
                self._committing = None
                committed.set()
        return mine.result()

    def _commit_in_thread(self, db: aiosqlite.Connection, group: list[_Queued[Any]]) -> None:
        """On the connection's thread: BEGIN IMMEDIATE, each program, COMMIT; ROLLBACK if the
        transaction as a whole fails (each program's outcome is told only after the COMMIT)."""
        conn = db._conn  # the thread's own sqlite3 connection: this runs on that thread

        def execute(sql: str, args: tuple[Any, ...] = ()) -> Rows:
            return conn.execute(sql, args).fetchall()

        level = self.synchronous
        if not any(queued.durable for queued in group):
            level = _RELAXED.get(level, level)
        if level != self._synchronous_now:
            conn.execute(f"PRAGMA synchronous={level}")
            self._synchronous_now = level
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(group) == 1:  # alone: its exception rolls the transaction back
                outcomes = [(True, run_program(group[0].program, execute))]
            else:
                outcomes = [_in_savepoint(conn, execute, queued.program) for queued in group]
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        for queued, (ok, outcome) in zip(group, outcomes, strict=True):
            queued.end(ok, outcome)

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

    def column_names(self, table: str) -> Statement:
        return "SELECT name FROM pragma_table_info(?)", (table,)

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
            self._queued, self._committing = [], None

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


async def _run(
    db: aiosqlite.Connection, sql: str, args: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Run one statement to completion, rows read, in a single job on the connection's thread.

    Coroutines share the connection, so a statement left half-read across an await (as with
    ``execute`` then ``fetchone``) would hold a read transaction open while another coroutine
    writes; SQLite fails such a write with "database is locked" at once, ignoring
    busy_timeout, whenever another connection is writing or has written meanwhile.
    """
    rows = await db.execute_fetchall(sql, args)
    # aiosqlite types them as sqlite3.Row; with no row_factory set, sqlite3 gives plain tuples.
    return cast(Rows, list(rows))


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
        # typeshed types StopIteration.value as Any: the generator's return type is lost.
        return done.value  # type: ignore[no-any-return]


# The sync level of a commit that need not survive a power loss, by the store's own level.
_RELAXED = {"FULL": "NORMAL", "EXTRA": "NORMAL"}


class _Queued(Generic[T]):
    """A program waiting to be committed with others, then its outcome."""

    def __init__(self, program: Program[T], durable: bool) -> None:
        self.program = program
        self.durable = durable
        self.ended = False
        self._ok = False
        self._outcome: Any = None

    def end(self, ok: bool, outcome: Any) -> None:
        self.ended, self._ok, self._outcome = True, ok, outcome

    def result(self) -> T:
        if not self._ok:
            raise self._outcome
        return self._outcome  # type: ignore[no-any-return]


def _in_savepoint(
    conn: sqlite3.Connection, execute: Callable[..., Rows], program: Program[Any]
) -> tuple[bool, Any]:
    """``program`` inside the group's transaction: (True, its result), or (False, what it
    raised) with its writes rolled back and the others' kept."""
    conn.execute("SAVEPOINT program")
    try:
        result = run_program(program, execute)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite ended the whole transaction (an I/O error, say): every program fails
        conn.execute("ROLLBACK TO program")
        conn.execute("RELEASE program")
        return False, exc
    conn.execute("RELEASE program")
    return True, result


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
