"""The response cache: exact keys, durable storage, and no harm to files that are not ours."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
import time
from types import MappingProxyType
from typing import Any

import aiosqlite
import pytest
from conftest import sqlite_rows

from orchestrator.errors import OrchestratorError
from orchestrator.llm.cache import CacheError, DiskCache, cache_key

BASE: dict[str, Any] = {
    "provider": "openai",
    "base_url": "https://api.openai.com/v1",
    "model": "gpt-4o",
    "params": {
        "max_tokens": 512,
        "temperature": 0.2,
        "json_schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "native": True,
    },
    "messages": [{"role": "user", "content": "Write a haiku"}],
    "system": "Be brief.",
    "slot": "",
}


def key_with(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes})


def params_with(**changes: Any) -> dict[str, Any]:
    return {**BASE["params"], **changes}


# --- cache_key ---------------------------------------------------------------------------


def test_key_is_sha256_hex_and_deterministic():
    key = cache_key(**BASE)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    assert key == cache_key(**BASE)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"provider": "kimi"}, id="provider"),
        pytest.param({"base_url": None}, id="base_url-none"),
        pytest.param({"base_url": "http://127.0.0.1:11434/v1"}, id="base_url-other"),
        pytest.param({"model": "gpt-4o-mini"}, id="model"),
        pytest.param({"params": params_with(max_tokens=513)}, id="max_tokens"),
        pytest.param({"params": params_with(temperature=0.3)}, id="temperature"),
        pytest.param({"params": params_with(json_schema={"type": "object"})}, id="schema"),
        pytest.param({"params": params_with(native=False)}, id="native"),
        pytest.param({"params": params_with(top_p=0.9)}, id="extra-param"),
        pytest.param({"messages": [{"role": "user", "content": "Write a poem"}]}, id="content"),
        pytest.param({"messages": [{"role": "assistant", "content": "Write a haiku"}]}, id="role"),
        pytest.param(
            {"messages": [*BASE["messages"], {"role": "assistant", "content": "ok"}]},
            id="extra-message",
        ),
        pytest.param({"system": None}, id="system-none"),
        pytest.param({"system": ""}, id="system-empty"),
        pytest.param({"system": "Be thorough."}, id="system-text"),
        pytest.param({"slot": "evaluation-2"}, id="slot"),
    ],
)
def test_every_component_changes_the_key(changes):
    assert key_with(**changes) != cache_key(**BASE)


def test_none_and_empty_are_different_requests():
    keys = {
        cache_key(**BASE),
        key_with(system=None),
        key_with(system=""),
        key_with(base_url=None),
        key_with(base_url=""),
        key_with(slot="2"),
    }
    assert len(keys) == 6


def test_fields_cannot_bleed_into_each_other():
    assert key_with(provider="ab", model="c") != key_with(provider="a", model="bc")
    assert key_with(system="x", slot="") != key_with(system="", slot="x")


def test_message_order_matters():
    two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert key_with(messages=two) != key_with(messages=two[::-1])


def test_dict_ordering_does_not_change_the_key():
    reordered_params = dict(reversed(list(BASE["params"].items())))
    reordered_messages = [{"content": "Write a haiku", "role": "user"}]
    assert key_with(params=reordered_params, messages=reordered_messages) == cache_key(**BASE)


def test_any_mapping_is_accepted():
    proxied = key_with(
        params=MappingProxyType(BASE["params"]),
        messages=(MappingProxyType(BASE["messages"][0]),),
    )
    assert proxied == cache_key(**BASE)


def test_values_that_are_not_json_are_refused_rather_than_guessed():
    with pytest.raises(TypeError):
        key_with(params=params_with(schema=object()))


# --- DiskCache: storage ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def cache_location(request, tmp_path):
    """Where a cache lives: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "cache.db"
    return request.getfixturevalue("postgres_url")


async def test_round_trip(cache_location):
    value = {"text": "héllo ✓", "usage": {"input": 3, "output": 5}, "parsed": [1, None, True]}
    async with DiskCache(cache_location) as cache:
        assert await cache.get("k") is None
        await cache.put("k", value)
        assert await cache.get("k") == value


async def test_put_overwrites_the_same_key(cache_location):
    async with DiskCache(cache_location) as cache:
        await cache.put("k", {"v": 1})
        await cache.put("k", {"v": 2})
        assert await cache.get("k") == {"v": 2}
        assert (await cache.stats())["entries"] == 1


async def test_returned_values_are_independent_copies(cache_location):
    async with DiskCache(cache_location) as cache:
        await cache.put("k", {"v": [1]})
        (await cache.get("k"))["v"].append(2)
        assert await cache.get("k") == {"v": [1]}


async def test_put_refuses_values_that_are_not_json_objects(cache_location):
    async with DiskCache(cache_location) as cache:
        with pytest.raises(TypeError):
            await cache.put("k", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await cache.put("k", {"v": object()})
        assert (await cache.stats())["entries"] == 0


async def test_persists_across_instances(tmp_path):
    path = tmp_path / "cache.db"
    first = DiskCache(path)
    await first.put("k", {"answer": 42})
    await first.aclose()
    async with DiskCache(path) as second:
        assert await second.get("k") == {"answer": 42}
        assert (await second.stats())["entries"] == 1


async def test_default_path_is_in_orchestrator_home(isolated_home):
    async with DiskCache() as cache:
        assert cache.path == isolated_home / "cache.db"
        await cache.put("k", {"v": 1})
    assert (isolated_home / "cache.db").is_file()


async def test_opens_lazily_and_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "cache.db"
    cache = DiskCache(path)
    assert not path.parent.exists()
    async with cache:
        await cache.put("k", {"v": 1})
    assert path.is_file()


async def test_file_is_in_wal_mode_and_marked_as_ours(tmp_path):
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        await cache.put("k", {"v": 1})
        assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
        assert sqlite_rows(path, "SELECT value FROM meta WHERE key = 'format'") == [
            ("orchestrator-cache-1",)
        ]


async def test_stats_counts_hits_and_misses_of_this_instance(tmp_path):
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        assert await cache.stats() == {"entries": 0, "hits": 0, "misses": 0}
        await cache.get("a")
        await cache.put("a", {"v": 1})
        await cache.put("b", {"v": 2})
        await cache.get("a")
        await cache.get("a")
        assert await cache.stats() == {"entries": 2, "hits": 2, "misses": 1}
    async with DiskCache(path) as other:
        assert await other.stats() == {"entries": 2, "hits": 0, "misses": 0}


async def test_clear_removes_every_entry(cache_location):
    async with DiskCache(cache_location) as cache:
        for i in range(5):
            await cache.put(f"k{i}", {"i": i})
        await cache.clear()
        assert (await cache.stats())["entries"] == 0
        assert await cache.get("k0") is None


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]", '"a string"'])
async def test_unreadable_stored_value_is_a_miss_and_is_dropped(tmp_path, caplog, stored):
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        await cache.put("bad", {"v": 1})
        await cache.put("good", {"v": 2})
        sqlite_rows(path, "UPDATE responses SET value = ? WHERE key = 'bad'", (stored,))
        with caplog.at_level(logging.WARNING, logger="orchestrator.llm.cache"):
            assert await cache.get("bad") is None
        assert str(path) in caplog.text and "bad" in caplog.text
        assert await cache.stats() == {"entries": 1, "hits": 0, "misses": 1}
        assert await cache.get("good") == {"v": 2}


# --- DiskCache: concurrency --------------------------------------------------------------


async def test_many_coroutines_and_a_second_instance_share_the_file(tmp_path):
    path = tmp_path / "cache.db"

    async def put_then_get(cache: DiskCache, key: str, i: int) -> None:
        await cache.put(key, {"i": i})
        assert await cache.get(key) == {"i": i}

    # Both instances start cold on a new file, as two resumed runs would; each one's reads
    # and writes interleave while the other commits. That mix is what breaks a connection
    # whose half-read SELECT stays open while it is asked to write.
    async with DiskCache(path) as first, DiskCache(path) as second:
        await asyncio.gather(
            *(put_then_get(first, f"a{i}", i) for i in range(200)),
            *(put_then_get(second, f"b{i}", i) for i in range(200)),
            *(first.get(f"b{i}") for i in range(200)),
            *(second.put(f"a{i}", {"i": i}) for i in range(0, 200, 7)),
        )
        assert (await first.stats())["entries"] == 400
        assert await second.get("a150") == {"i": 150}
        assert await first.get("b150") == {"i": 150}


async def test_reads_and_writes_wait_for_another_writer_instead_of_failing(tmp_path):
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        await cache.put("seed", {"v": 0})
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("""INSERT INTO responses VALUES ('other', '{"v": 1}', 0)""")
            asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
            # Gets and puts alternate, so if a get's statement stayed open across an await,
            # the next put would be writing from inside a read transaction: SQLite answers
            # that with "database is locked" at once instead of waiting for the lock.
            operations = []
            for i in range(20):
                operations += [cache.get("seed"), cache.put(f"k{i}", {"i": i})]
            started = time.monotonic()
            await asyncio.gather(*operations)
            assert time.monotonic() - started >= 0.15  # the writes really did wait
        finally:
            other.close()
        assert (await cache.stats())["entries"] == 22
        assert await cache.get("other") == {"v": 1}


async def test_switch_to_wal_waits_for_a_writer_in_another_connection(tmp_path):
    # The moment when two runs start on a new file: the file is ours but still in rollback
    # mode, and someone else holds the write lock; SQLite refuses the switch at once.
    path = tmp_path / "cache.db"
    async with DiskCache(path) as cache:
        await cache.put("k", {"v": 1})
    sqlite_rows(path, "PRAGMA journal_mode=DELETE")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.1, other.execute, "COMMIT")
        async with DiskCache(path) as cache:
            assert await cache.get("k") == {"v": 1}
            assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
    finally:
        other.close()


async def test_another_process_writing_at_the_same_time(tmp_path):
    path = tmp_path / "cache.db"
    writer = (
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n"
        "for i in range(300):\n"
        "    conn.execute('INSERT OR REPLACE INTO responses VALUES (?, ?, ?)',\n"
        "                 (f'p{i}', '{\"i\": %d}' % i, time.time()))\n"
        "conn.close()\n"
    )
    async with DiskCache(path) as cache:
        await cache.stats()  # the schema exists before the other process starts writing
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, str(path))
        for i in range(300):
            await cache.put(f"c{i}", {"i": i})
            await cache.get(f"p{i}")
        assert await process.wait() == 0
        assert (await cache.stats())["entries"] == 600
        assert await cache.get("p299") == {"i": 299}


async def test_one_connection_and_one_schema_setup_per_instance(tmp_path, monkeypatch):
    statements: list[str] = []
    real_connect = aiosqlite.connect

    class Recording(sqlite3.Connection):
        def execute(self, sql, *args):  # type: ignore[override]
            statements.append(sql)
            return super().execute(sql, *args)

    def counting_connect(database, **kwargs):
        statements.append("<connect>")
        return real_connect(database, factory=Recording, **kwargs)

    monkeypatch.setattr(aiosqlite, "connect", counting_connect)
    async with DiskCache(tmp_path / "cache.db") as cache:
        # Concurrent first use must not race into opening two connections.
        await asyncio.gather(*(cache.get(f"k{i}") for i in range(20)))
        for i in range(20):
            await cache.put(f"k{i}", {"i": i})
    assert statements.count("<connect>") == 1
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 2
    assert sum(s.startswith("PRAGMA journal_mode") for s in statements) == 1


# --- DiskCache: files that are not ours --------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(bytes(range(256)) * 16, id="binary"),
        pytest.param(b"these are my notes\n", id="text"),
        pytest.param(b"SQLite format 3\x00" + b"\xff" * 4080, id="bad-sqlite-header"),
    ],
)
async def test_corrupt_file_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "cache.db"
    path.write_bytes(content)
    threads = threading.active_count()
    cache = DiskCache(path)
    for _ in range(2):  # a retry must not "repair" the file either
        with pytest.raises(CacheError) as caught:
            await cache.put("k", {"v": 1})
        message = str(caught.value)
        assert str(path) in message and "not a valid cache database" in message
        assert "\n" not in message
    await cache.aclose()
    assert path.read_bytes() == content
    assert threading.active_count() == threads


def _foreign_tables(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")


def _other_format(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('format', 'someone-else-2')")


def _meta_with_other_columns(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (name TEXT, data BLOB)")
    conn.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, value TEXT)")


@pytest.mark.parametrize("build", [_foreign_tables, _other_format, _meta_with_other_columns])
async def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path, build):
    path = tmp_path / "cache.db"
    conn = sqlite3.connect(path)
    with conn:
        build(conn)
    conn.close()
    content = path.read_bytes()
    async with DiskCache(path) as cache:
        with pytest.raises(CacheError, match="another kind") as caught:
            await cache.get("k")
        assert str(path) in str(caught.value)
        assert isinstance(caught.value, OrchestratorError)
    assert path.read_bytes() == content
    assert sqlite_rows(path, "PRAGMA journal_mode") == [("delete",)]


async def test_an_empty_file_is_taken_over(tmp_path):
    path = tmp_path / "cache.db"
    path.touch()
    async with DiskCache(path) as cache:
        await cache.put("k", {"v": 1})
        assert await cache.get("k") == {"v": 1}


# --- DiskCache: lifecycle ----------------------------------------------------------------


async def test_closed_cache_refuses_every_operation(tmp_path):
    cache = DiskCache(tmp_path / "cache.db")
    await cache.put("k", {"v": 1})
    await cache.aclose()
    for call in (
        cache.get("k"),
        cache.put("k", {"v": 2}),
        cache.stats(),
        cache.clear(),
    ):
        with pytest.raises(CacheError, match="cache is closed"):
            await call


async def test_a_cache_never_used_can_be_closed_and_then_refuses_use(tmp_path):
    path = tmp_path / "cache.db"
    cache = DiskCache(path)
    await cache.aclose()
    with pytest.raises(CacheError, match="cache is closed"):
        await cache.get("k")
    assert not path.exists()


async def test_aclose_is_idempotent(tmp_path):
    cache = DiskCache(tmp_path / "cache.db")
    await cache.put("k", {"v": 1})
    await cache.aclose()
    await cache.aclose()
    async with cache:
        pass  # __aexit__ closes a third time


async def test_close_during_concurrent_use_raises_cache_error_not_internals(tmp_path):
    cache = DiskCache(tmp_path / "cache.db")
    await cache.put("k", {"v": 1})
    *answers, closed = await asyncio.gather(
        *(cache.get("k") for _ in range(50)), cache.aclose(), return_exceptions=True
    )
    assert closed is None
    for answer in answers:
        assert answer == {"v": 1} or isinstance(answer, CacheError)


async def test_no_thread_is_left_behind_after_close(tmp_path):
    threads = threading.active_count()
    cache = DiskCache(tmp_path / "cache.db")
    await asyncio.gather(*(cache.put(f"k{i}", {"i": i}) for i in range(50)))
    assert threading.active_count() == threads + 1  # exactly one worker thread
    await cache.aclose()
    assert threading.active_count() == threads
