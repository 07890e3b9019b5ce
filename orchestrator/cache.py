"""``DiskCache``: LLM responses on disk, keyed by everything that shapes the answer.

Identical requests across runs and resumes are served from here instead of being paid for
twice. Two rules come before speed: a lookup never returns an answer to a different request
(the key covers every output-affecting input), and a file that is not ours is never touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from .errors import OrchestratorError
from .settings import home_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = "orchestrator-cache-1"
BUSY_TIMEOUT_MS = 5000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS responses "
    "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)",
)


class CacheError(OrchestratorError):
    """The cache file cannot be used (corrupt, foreign, unreachable) or the cache is closed."""


def cache_key(
    *,
    provider: str,
    base_url: str | None,
    model: str,
    params: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    system: str | None = None,
    slot: str = "",
) -> str:
    """SHA-256 hex of a canonical JSON encoding of the whole request.

    ``params`` must hold every output-affecting setting; ``slot`` separates requests that are
    deliberately repeated (e.g. the 2nd self-consistency evaluation) so they do not share an
    answer. Values must be plain JSON: ``TypeError`` rather than a ``str()`` fallback, because
    a repr can embed memory addresses (a key that never hits) or hide differences (a wrong hit).
    """
    request = {
        "provider": provider,
        "base_url": base_url,
        "model": model,
        "params": dict(params),
        "messages": [dict(message) for message in messages],
        "system": system,
        "slot": slot,
    }
    # A structured encoding, not string concatenation: ("ab", "c") and ("a", "bc") must differ.
    encoded = json.dumps(
        request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


class DiskCache:
    """A persistent key → JSON-object store in SQLite (WAL), safe for many coroutines at once.

    The file is opened on first use through a single aiosqlite connection, so every operation
    of this instance runs on one worker thread; other instances and processes may share the
    file (WAL lets readers and a writer overlap, ``busy_timeout`` makes writers queue).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path: Path = Path(path).expanduser() if path is not None else home_dir() / "cache.db"
        self._db: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._hits = 0
        self._misses = 0

    async def __aenter__(self) -> DiskCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def get(self, key: str) -> dict[str, Any] | None:
        """The object stored under ``key``, or None. An unreadable entry counts as a miss."""
        db = await self._connection()
        with self._translated_errors():
            rows = await _run(db, "SELECT value FROM responses WHERE key = ?", (key,))
        if not rows:
            self._misses += 1
            return None
        text = rows[0][0]
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            value, problem = None, str(exc)
        else:
            problem = "" if isinstance(value, dict) else f"a {type(value).__name__}, not an object"
        if problem:
            log.warning("cache file %s: dropping unreadable entry %s (%s)", self.path, key, problem)
            # Matching on the value too, so a good answer another writer just stored survives.
            with self._translated_errors():
                await _run(db, "DELETE FROM responses WHERE key = ? AND value = ?", (key, text))
            self._misses += 1
            return None
        self._hits += 1
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key``, replacing any older one.

        ``value`` must be a dict JSON can represent (``TypeError`` / ``ValueError`` otherwise).
        """
        if not isinstance(value, dict):
            raise TypeError(f"cache values must be dicts, not {type(value).__name__}")
        # Encoded before touching the database so a bad value cannot leave a half-written row.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        db = await self._connection()
        with self._translated_errors():
            # One statement in autocommit mode is its own transaction: coroutines sharing the
            # connection can never interleave inside each other's transactions.
            await _run(
                db,
                "INSERT INTO responses (key, value, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, created_at = excluded.created_at",
                (key, text, time.time()),
            )

    async def stats(self) -> dict[str, int]:
        """Entries in the file, and the hits and misses of this instance."""
        db = await self._connection()
        with self._translated_errors():
            rows = await _run(db, "SELECT COUNT(*) FROM responses")
        return {"entries": int(rows[0][0]), "hits": self._hits, "misses": self._misses}

    async def clear(self) -> None:
        """Delete every stored response (the file and its format marker stay)."""
        db = await self._connection()
        with self._translated_errors():
            await _run(db, "DELETE FROM responses")

    async def aclose(self) -> None:
        """Close the connection and end its thread. Safe to call more than once."""
        self._closed = True
        # Waits out an open in progress, which would otherwise leave a connection behind.
        async with self._open_lock:
            db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            finally:
                await _thread_gone(db)

    async def _connection(self) -> aiosqlite.Connection:
        if self._closed:
            raise CacheError("cache is closed")
        if self._db is not None:
            return self._db
        async with self._open_lock:
            if self._closed:
                raise CacheError("cache is closed")
            if self._db is None:
                self._db = await self._open()
            return self._db

    async def _open(self) -> aiosqlite.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the directory for cache file {self.path}: {exc}"
            ) from exc
        # Autocommit: each statement commits alone, and transactions are only ever explicit.
        db = aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db
        except sqlite3.Error as exc:
            await _thread_gone(db)
            raise CacheError(f"cannot open cache file {self.path}: {exc}") from exc
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
            mode = await self._enable_wal(db)
            if not mode or str(mode[0][0]).lower() != "wal":
                log.warning("cache file %s: WAL unavailable, journal mode is %s", self.path, mode)
            await _run(db, "PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    async def _enable_wal(self, db: aiosqlite.Connection) -> list[tuple[Any, ...]]:
        # Two connections switching a new file to WAL at once both hold a read lock while
        # asking for the write lock; SQLite refuses one at once instead of calling the busy
        # handler (it would deadlock), so that wait has to happen here.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return await _run(db, "PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY")
                if not busy or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.005)

    async def _create_schema(self, db: aiosqlite.Connection) -> None:
        await _run(db, "BEGIN IMMEDIATE")
        try:
            # Another process may have initialised (or claimed) the file since the first look.
            if await self._inspect(db) == "empty":
                for statement in _SCHEMA:
                    await _run(db, statement)
                await _run(
                    db,
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)",
                    (CACHE_FORMAT,),
                )
            await _run(db, "COMMIT")
        except sqlite3.Error:
            # Best effort: on failure _open closes the connection, which rolls back anyway.
            with suppress(sqlite3.Error):
                await _run(db, "ROLLBACK")
            raise

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
        if found == CACHE_FORMAT:
            return "ours"
        what = f"format {found!r}" if found is not None else "no orchestrator format marker"
        raise CacheError(
            f"cache file {self.path} is a SQLite database of another kind ({what}); "
            "move it away or pass another path"
        )

    def _error(self, exc: sqlite3.Error) -> CacheError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return CacheError(
                f"cache file {self.path} is not a valid cache database: {exc}; "
                "move it away or pass another path"
            )
        return CacheError(f"cache file {self.path}: {exc}")

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """One-line ``CacheError`` messages for anything a database operation raises."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        except ValueError as exc:
            # aiosqlite reports use after close as ValueError: aclose() ran while we awaited.
            if self._closed:
                raise CacheError("cache is closed") from exc
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
    return list(await db.execute_fetchall(sql, args))


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
