"""A script ends when its run ends, whatever stores it passed in, and its stores stay its own.

Each script runs in a process of its own against the fake provider, as a user's would: its
cache and state store are made by the script (a SQLite file, or a PostgreSQL database) and
handed to the orchestrator, which leaves them open for the script to go on using, in the same
``asyncio.run`` or a later one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import fake_env, run_process

SECONDS = 60  # a run takes a few seconds here; a script kept alive by a thread never ends

PRELUDE = """\
import asyncio
import sys
import threading

from orchestrator import Budget, DiskCache, Orchestrator, StateManager

CACHE, STATE = sys.argv[1], sys.argv[2]


def orchestrator(cache, state):
    return Orchestrator(budget=Budget(max_usd=2.0, max_time_seconds=120), cache=cache,
                        state_manager=state)


def run(orch, what):
    return orch.run_project(project_description=f"Build {what}", success_criteria="it works")


async def look(state, cache):
    "Both stores, by many at once (as a run's tasks use them)."
    listed = await asyncio.gather(*(state.projects.summaries() for _ in range(16)))
    stats = await asyncio.gather(*(cache.stats() for _ in range(16)))
    print("projects:", sorted({len(projects) for projects in listed}))
    print("cached:", all(s["entries"] > 0 for s in stats))


def alive():
    "The threads that would keep the interpreter alive after the script's last line."
    return [t.name for t in threading.enumerate() if t is not threading.main_thread() and
            not t.daemon]
"""


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request, tmp_path):
    """Where the script's cache and state store live: two SQLite files, or one PostgreSQL
    database (each store in its own schema)."""
    if request.param == "sqlite":
        return str(tmp_path / "cache.db"), str(tmp_path / "state.db")
    url = request.getfixturevalue("postgres_url")
    return url, url


def run_script(body: str, stores: tuple[str, str], fake, tmp_path) -> list[str]:
    """The script's output lines, once it has ended by itself, successfully and with nothing
    on stderr."""
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(body), encoding="utf-8")
    env = {
        **fake_env(fake.base_url),
        "ORCHESTRATOR_HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",  # what it printed before it hung, if it does
    }
    try:
        result = run_process(
            [sys.executable, str(script), *stores], cwd=tmp_path, env=env, timeout=SECONDS
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"the script did not end within {SECONDS} s; it printed {out!r}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_a_script_that_never_closes_its_stores_ends_and_can_use_them_in_later_runs(
    fake, llm, tmp_path, stores
):
    lines = run_script(
        """
        cache, state = DiskCache(CACHE), StateManager(STATE)
        orch = orchestrator(cache, state)
        print(asyncio.run(run(orch, "an add library")).status.value)
        print("alive after the run:", alive())
        # The same stores, in the loops of later asyncio.run calls: a second run, then reads.
        print(asyncio.run(run(orch, "a sub library")).status.value)
        asyncio.run(look(state, cache))
        print("alive at the end:", alive())
        """,
        stores,
        fake,
        tmp_path,
    )

    assert lines == [
        "SUCCESS",
        "alive after the run: []",
        "SUCCESS",
        "projects: [2]",
        "cached: True",
        "alive at the end: []",
    ]


def test_a_script_that_closes_one_store_with_async_with_ends_and_can_close_the_other_later(
    fake, llm, tmp_path, stores
):
    lines = run_script(
        """
        cache = DiskCache(CACHE)


        async def main():
            async with StateManager(STATE) as state:
                result = await run(orchestrator(cache, state), "an add library")
                print(result.status.value)
                await look(state, cache)


        asyncio.run(main())
        print("alive after the run:", alive())
        # The cache, never closed in the run's loop, is closed by the script in another one.
        asyncio.run(cache.aclose())
        print("closed:", alive())
        """,
        stores,
        fake,
        tmp_path,
    )

    assert lines == [
        "SUCCESS",
        "projects: [1]",
        "cached: True",
        "alive after the run: []",
        "closed: []",
    ]


def test_a_script_that_runs_its_own_event_loop_and_never_closes_anything_ends(
    fake, llm, tmp_path, stores
):
    # No asyncio.run: the loop is neither closed nor told it is done, and the stores, still
    # open, must not hold up the interpreter's exit; nor keep a later asyncio.run from them.
    lines = run_script(
        """
        cache, state = DiskCache(CACHE), StateManager(STATE)
        loop = asyncio.new_event_loop()
        result = loop.run_until_complete(run(orchestrator(cache, state), "an add library"))
        print(result.status.value)
        asyncio.run(look(state, cache))
        """,
        stores,
        fake,
        tmp_path,
    )

    assert lines == ["SUCCESS", "projects: [1]", "cached: True"]
