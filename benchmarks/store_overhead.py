"""What keeping the state in PostgreSQL adds to each paid call, against the SQLite file.

Every paid call writes one journal row before its answer is used, and every finished task one
checkpoint. This times both, one after another (as a run does them), on the SQLite state file
(synchronous=FULL) and on a PostgreSQL database, and prints medians, 95th percentiles and the
ratio. Needs the distributed extra and a server:

    source .ci/postgres start     # a throwaway one; prints its URL
    python benchmarks/store_overhead.py [--url postgresql://...] [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.money.ledger import CallRow, Ledger
from orchestrator.money.units import NANOS_PER_USD
from orchestrator.store.state import StateManager

ENTRY = {"text": "x" * 2000, "parsed": None, "input_tokens": 900, "output_tokens": 500}
MODEL = "openai/gpt-4o"


async def held_project(store: StateManager) -> Ledger:
    """A new project, claimed, its ledger open on the org, team, job and project rows."""
    project = f"bench-{time.time_ns()}"
    await store.projects.create(
        project, description="d", criteria="c", max_usd=100.0, max_time_seconds=3600.0, settings={}
    )
    owner = f"bench:{os.getpid()}:{project}"
    assert await store.holders.claim(project, owner, 600.0) is None
    ledger = Ledger(store.books, project, owner)
    await ledger.open(100 * NANOS_PER_USD, "team", "job")
    return ledger


async def paid_call(ledger: Ledger, n: int) -> None:
    """What a run's paid call does: hold its worst case on every row of the ledger, then
    settle it with its journal row in one transaction."""
    hold = ledger.new_hold(NANOS_PER_USD // 100)
    await ledger.reserve(hold, task_id="t", phase="generation", model=MODEL, journal_key=f"c{n}")
    row = CallRow(ledger.project_id, f"c{n}", "t", "generation", MODEL, ENTRY, float(n))
    await ledger.store.ledger_settle([(hold.id, NANOS_PER_USD // 1000)], row)


async def measure(location: str | Path, calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"journal_put": [], "checkpoint": [], "paid_call": []}
    async with StateManager(location) as store:
        ledger = await held_project(store)
        project = ledger.project_id
        for n in range(calls):
            started = time.perf_counter()
            await paid_call(ledger, n)
            times["paid_call"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.journal.put(
                project, f"k{n}", task_id=f"t{n % 10}", phase="generation", model=MODEL,
                cost_nanos=NANOS_PER_USD // 1000, entry=ENTRY, elapsed=float(n),
            )  # fmt: skip
            times["journal_put"].append(time.perf_counter() - started)
            if n % 5 == 4:
                started = time.perf_counter()
                record = {"task_id": f"t{n}", "output": "y" * 4000}
                await store.projects.checkpoint(
                    project, f"t{n}", record, final=True, elapsed=float(n)
                )
                times["checkpoint"].append(time.perf_counter() - started)
        await store.projects.delete(project)
    return times


async def measure_together(location: str | Path, calls: int, at_once: int) -> tuple[float, float]:
    """``calls`` paid calls' bookkeeping, ``at_once`` of them at a time (as calls in flight
    together finish together): wall ms a call, and commits a call (the store commits the
    writes that arrive while one is committing with it)."""
    async with StateManager(location) as store:
        ledger = await held_project(store)
        gate = asyncio.Semaphore(at_once)

        async def gated(n: int) -> None:
            async with gate:
                await paid_call(ledger, n)

        # getattr: a checkout from before the commit counter is measured too (as 0 commits)
        before, started = getattr(store, "transactions", 0), time.perf_counter()
        await asyncio.gather(*(gated(n) for n in range(calls)))
        wall, commits = time.perf_counter() - started, getattr(store, "transactions", 0) - before
        await store.projects.delete(ledger.project_id)
    return wall / calls * 1000, commits / calls


def describe(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("give --url postgresql://... (or: source .ci/postgres start)")
    with tempfile.TemporaryDirectory() as directory:
        sqlite = await measure(Path(directory) / "state.db", args.calls)
        sqlite_together = await measure_together(Path(directory) / "state.db", args.calls, 8)
    postgres = await measure(args.url, args.calls)
    postgres_together = await measure_together(args.url, args.calls, 8)
    import psycopg

    with psycopg.connect(args.url) as conn:
        fsync_row = conn.execute("SHOW fsync").fetchone()
        commit_row = conn.execute("SHOW synchronous_commit").fetchone()
    assert fsync_row is not None and commit_row is not None
    fsync, commit = fsync_row[0], commit_row[0]
    print(f"{args.calls} journal writes, {args.calls // 5} checkpoints, one after another")
    print(f"SQLite: synchronous=FULL; PostgreSQL: fsync={fsync}, synchronous_commit={commit}")
    if fsync != "on":
        print("(a server without fsync, like the tests' throwaway one, flatters PostgreSQL)")
    print("paid_call = the ledger's hold and its settlement with the journal row (the run's path)")
    for what in ("journal_put", "paid_call", "checkpoint"):
        (s_median, s_p95), (p_median, p_p95) = describe(sqlite[what]), describe(postgres[what])
        print(
            f"{what:12} SQLite median {s_median:.3f} ms (p95 {s_p95:.3f}); PostgreSQL median "
            f"{p_median:.3f} ms (p95 {p_p95:.3f}); +{p_median - s_median:.3f} ms a call, "
            f"x{p_median / s_median:.1f}"
        )
    for name, (ms, commits) in (("SQLite", sqlite_together), ("PostgreSQL", postgres_together)):
        print(
            f"8 paid calls at a time on {name}: {ms:.3f} ms a call (wall), "
            f"{commits:.2f} commits a paid call"
        )


if __name__ == "__main__":
    asyncio.run(main())
