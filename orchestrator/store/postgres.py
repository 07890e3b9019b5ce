"""The state and the cache in PostgreSQL (the ``distributed`` extra), for many processes at once.

The same statements as the SQLite store (``sqlite_store``), translated to PostgreSQL's dialect,
over a small ``psycopg`` connection pool. Each kind of store lives in a schema of its own
(``orchestrator_state``, ``orchestrator_cache``), marked with its format the way a SQLite file
is, so a foreign schema is never written to. Imported only when a PostgreSQL URL is configured.

The pool lives on an event loop of the store's own, on a daemon thread (``_there``), the way an
aiosqlite connection has its thread: a script may use the store in one ``asyncio.run`` after
another and never close it, and still end after its last line.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from orchestrator.aio import LoopThread, uninterrupted
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.store.base import (
    EXTRA_COMMAND,
    Migration,
    Program,
    Rows,
    Statement,
    each_statement,
    is_write,
    run_program_async,
    shown,
)

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool
except ImportError:  # pragma: no cover - the extra is checked by ``is_postgres_url`` callers
    psycopg = None  # type: ignore[assignment]
    AsyncConnectionPool = None  # type: ignore[assignment,misc]

CONNECT_SECONDS = 10.0
POOL_SIZE = 8

T = TypeVar("T")

_SCALAR_MAX = re.compile(r"\bMAX\((\w+), ")
_NULL_SAFE_IS = re.compile(r"\bIS \?")
_TYPES = (
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    # SQLite's INTEGER holds 8 bytes; PostgreSQL's 4 would overflow at $2.15 in nano-dollars.
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)


@functools.lru_cache(maxsize=256)
def to_postgres(sql: str) -> str:
    """A statement written for SQLite, in PostgreSQL's dialect: ``%s`` placeholders, the
    two-argument ``MAX`` as ``GREATEST``, ``IS ?`` as ``IS NOT DISTINCT FROM``, 8-byte floats
    and integers and ``BYTEA``."""
    sql = sql.replace("%", "%%")
    sql = _SCALAR_MAX.sub(r"GREATEST(\1, ", sql)
    sql = _NULL_SAFE_IS.sub("IS NOT DISTINCT FROM ?", sql)
    for pattern, replacement in _TYPES:
        sql = pattern.sub(replacement, sql)
    return sql.replace("?", "%s")


class PostgresStore:
    """What ``SQLiteStore`` offers (``run``, ``transaction``, ``connection``, ``aclose``), in a
    PostgreSQL schema of its own; ``path`` is the URL without its password."""

    local_liveness = False  # leases run on the database's clock, never on process liveness
    writes_in_with = True  # INSERT, UPDATE and DELETE inside WITH: a transaction in one statement

    def __init__(
        self,
        url: str,
        *,
        kind: str,
        format_tag: str,
        schema: Sequence[str],
        error: type[OrchestratorError],
        additions: Sequence[str] = (),
        migrate: Migration | None = None,
    ) -> None:
        if psycopg is None:
            raise ConfigError(f"a PostgreSQL database needs the distributed extra: {EXTRA_COMMAND}")
        self.url = url
        self.path = shown(url)
        self.kind = kind
        self.format_tag = format_tag
        self.schema_name = f"orchestrator_{kind}"
        self.schema = tuple(schema)
        self.additions = tuple(additions)
        self.migrate = migrate
        self.error = error
        self._pool: Any = None
        self._home: LoopThread | None = None  # the pool's event loop, started on first use
        self._open_lock = asyncio.Lock()  # taken on that loop only
        self._closed = False
        self.transactions = 0  # commits of writes: what the benchmarks report per paid call

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, sql: str, args: tuple[Any, ...] = ()) -> Rows:
        """One statement, committed on its own, rows read."""

        async def statement() -> Rows:
            pool = await self._opened()
            async with pool.connection() as conn:
                return await _execute(conn, sql, args)

        try:
            rows = await self._there(statement)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        self.transactions += is_write(sql)
        return rows

    async def transaction(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Several statements that commit together or not at all (``atomic``)."""
        await self.atomic(each_statement(statements), durable=durable)

    async def atomic(self, program: Program[T], *, durable: bool = True) -> T:
        """``program`` in one transaction: committed when it returns, rolled back when it
        raises (its exception goes on), ended either way before a cancellation does. Every
        commit is as durable as the server is set to make it (``durable`` is SQLite's concern:
        saying ``synchronous_commit = off`` would cost a round trip on every checkpoint)."""

        async def atomically() -> T:
            pool = await self._opened()
            async with pool.connection() as conn, conn.transaction():
                result = await run_program_async(program, functools.partial(_execute, conn))
            self.transactions += 1
            return result

        try:
            return await uninterrupted(self._there(atomically))
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def clock(self) -> float:
        """The database's time, in seconds since the epoch: one clock for every worker."""
        rows = await self.run("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        return float(rows[0][0])

    def json_field(self, column: str, name: str) -> str:
        return f"({column}::jsonb ->> '{name}')"

    def column_names(self, table: str) -> Statement:
        return (
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ?",
            (self.schema_name, table),
        )

    async def connection(self) -> Any:
        """The pool, opened on first use; it serves the store's own event loop only."""
        return await self._there(self._opened)

    def _there(self, work: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Future[T]:
        """``work()`` run on the store's own event loop (its thread started on first use), as a
        future of the caller's: cancelling it cancels the work.

        The pool's workers and scheduler are tasks of the loop that opens it. Were that the
        caller's, ``asyncio.run`` would cancel them as it ends and wait for each to end, and a
        worker connecting for the pool just then takes the cancellation for a failed attempt,
        logs it and waits for its next job: the wait never ends, and a script that had printed
        its result hung. Nor could a later ``asyncio.run`` grow or close that pool, its workers
        gone with their loop. On a loop of its own, on a daemon thread, the pool serves every
        loop the store is used from, and a store never closed does not keep the interpreter
        alive (its connections end with the process, as they would have).
        """
        if self._closed:
            raise self.error(f"{self.kind} is closed")
        if self._home is None:
            self._home = LoopThread(f"orchestrator-{self.kind}-database", keep=self)
        return self._home.submit(work())

    async def _opened(self) -> Any:
        """The pool, opened on first use: on the store's own loop."""
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._closed:
                raise self.error(f"{self.kind} is closed")
            if self._pool is None:
                self._pool = await self._open()
            return self._pool

    async def _open(self) -> Any:
        try:
            # One connection first: a refused or misnamed database fails at once, not after
            # the pool's wait.
            probe = await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=int(CONNECT_SECONDS), autocommit=True
            )
            await probe.close()
        except psycopg.Error as exc:
            raise self.error(
                f"cannot use the {self.kind} database {self.path}: {_first_line(exc)}"
            ) from exc
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            kwargs={"autocommit": True, "options": f"-c search_path={self.schema_name}"},
            timeout=CONNECT_SECONDS,
            # A connection the server dropped (a restart, an idle timeout) is replaced before it
            # is handed out: statements are never retried blindly, since one whose commit was
            # not acknowledged may have happened.
            check=AsyncConnectionPool.check_connection,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_SECONDS)
            await self._prepare(pool)
        except BaseException as exc:
            await pool.close()
            # The pool's PoolTimeout is a psycopg.Error too.
            if isinstance(exc, psycopg.Error | TimeoutError):
                raise self.error(
                    f"cannot use the {self.kind} database {self.path}: {_first_line(exc)}"
                ) from exc
            raise
        return pool

    async def _prepare(self, pool: Any) -> None:
        """Create the schema, or check it is ours, before anything writes to it."""
        async with pool.connection() as conn, conn.transaction():
            # One creator at a time, across processes.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema_name,))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema_name}")
            cursor = await conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self.schema_name,),
            )
            names = {row[0] for row in await cursor.fetchall()}
            if not names:
                await conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for statement in self.schema:
                    await conn.execute(to_postgres(statement))
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', %s)", (self.format_tag,)
                )
            else:
                found = None
                if "meta" in names:
                    cursor = await conn.execute("SELECT value FROM meta WHERE key = 'format'")
                    row = await cursor.fetchone()
                    found = row[0] if row else None
                if found != self.format_tag:
                    what = f"format {found!r}" if found is not None else "no format marker"
                    raise self.error(
                        f"{self.kind} database {self.path}: schema {self.schema_name} holds "
                        f"another kind of data ({what}); use another database"
                    )
            for statement in self.additions:
                await conn.execute(to_postgres(statement))
            if self.migrate is not None:
                await self.migrate(functools.partial(_execute, conn))

    def _translate(self, exc: Exception) -> OrchestratorError:
        return self.error(f"{self.kind} database {self.path}: {_first_line(exc)}")

    async def aclose(self) -> None:
        """Close the pool and end the store's thread. Safe to call more than once."""
        self._closed = True
        home, self._home = self._home, None
        if home is None:
            return
        await home.submit(self._close_pool())
        await home.aclose()

    async def _close_pool(self) -> None:
        # Waits out an open in progress, which would otherwise leave a pool behind.
        async with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _execute(conn: Any, sql: str, args: tuple[Any, ...] = ()) -> Rows:
    """One statement written for SQLite, on ``conn``, its rows read."""
    cursor = await conn.execute(to_postgres(sql), args)
    return list(await cursor.fetchall()) if cursor.description else []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
