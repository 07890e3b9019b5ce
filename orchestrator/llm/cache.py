"""``DiskCache``: LLM responses on disk, keyed by everything that shapes the answer.

Identical requests across runs and resumes are served from here instead of being paid for
twice. Two rules come before speed: a lookup never returns an answer to a different request
(the key covers every output-affecting input), and a file that is not ours is never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.settings import home_dir
from orchestrator.store.base import Store, open_store

log = logging.getLogger(__name__)

CACHE_FORMAT = "orchestrator-cache-1"

_SCHEMA = (
    "CREATE TABLE responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)",
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

    The file is opened on first use through a single aiosqlite connection; other instances and
    processes may share the file (WAL lets readers and a writer overlap, ``busy_timeout`` makes
    writers queue). A corrupt or foreign file is refused with ``CacheError``, never rewritten.

    Open until ``aclose()`` (or the end of ``async with``); an orchestrator it is given leaves
    it open. A script that never closes it still ends after its last line, and may use it in
    one ``asyncio.run`` after another.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._store: Store = open_store(
            path,
            home_dir() / "cache.db",
            kind="cache",
            format_tag=CACHE_FORMAT,
            schema=_SCHEMA,
            error=CacheError,
        )
        # A file's path, or a database's URL without its password.
        self.path: Path | str = self._store.path
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
        rows = await self._store.run("SELECT value FROM responses WHERE key = ?", (key,))
        if not rows:
            self._misses += 1
            return None
        text = rows[0][0]
        value: object
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            value, problem = None, str(exc)
        else:
            problem = "" if isinstance(value, dict) else f"a {type(value).__name__}, not an object"
        if not isinstance(value, dict):  # ``problem`` says why
            log.warning("cache file %s: dropping unreadable entry %s (%s)", self.path, key, problem)
            # Matching on the value too, so a good answer another writer just stored survives.
            await self._store.run("DELETE FROM responses WHERE key = ? AND value = ?", (key, text))
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
        await self._store.run(
            "INSERT INTO responses (key, value, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, created_at = excluded.created_at",
            (key, text, time.time()),
        )

    async def delete(self, key: str) -> None:
        """Forget the object stored under ``key``, if any."""
        await self._store.run("DELETE FROM responses WHERE key = ?", (key,))

    async def stats(self) -> dict[str, int]:
        """Entries in the file, and the hits and misses of this instance."""
        rows = await self._store.run("SELECT COUNT(*) FROM responses")
        return {"entries": int(rows[0][0]), "hits": self._hits, "misses": self._misses}

    async def clear(self) -> None:
        """Delete every stored response (the file and its format marker stay)."""
        await self._store.run("DELETE FROM responses")

    async def open(self) -> None:
        """Open (and check) the file now rather than on first use."""
        await self._store.connection()

    async def aclose(self) -> None:
        """Close the connection and end its thread. Safe to call more than once."""
        await self._store.aclose()
