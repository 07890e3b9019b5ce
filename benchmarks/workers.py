"""Throughput of workers on the shared PostgreSQL store: projects per minute and paid calls per
second with 1, 2 and 4 worker processes, against the fake provider answering in 200 ms.

Each round queues the same number of small one-task projects (draft, critique, revision and
two verdicts: five calls each) in a fresh database and times the workers (``--worker
--concurrency C --exit-when-idle``) from their start until the last one exits. Needs the
distributed extra and a server:

    source .ci/postgres start     # a throwaway one; exports its URL
    python benchmarks/workers.py [--url postgresql://...] [--projects 48] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import psycopg  # noqa: E402
from conftest import fake_env  # noqa: E402
from fake_provider import FakeProvider  # noqa: E402
from scripted_llm import ScriptedLLM  # noqa: E402

from orchestrator import Budget, Orchestrator, Task, TaskType, UnifiedClient  # noqa: E402
from orchestrator.jobs.workers import enqueue  # noqa: E402
from orchestrator.store.state import StateManager  # noqa: E402

NOTE = {"note": Task(id="note", type=TaskType.WRITING, prompt="[note] Write a note.")}


def fresh_database(admin: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin.rsplit("/", 1)[0] + "/" + name


async def queue(url: str, base_url: str, count: int) -> None:
    async with StateManager(url) as store, UnifiedClient(env=fake_env(base_url)) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=1.0), state_manager=store, client=client, use_cache=False,
            integration=False, extra_settings={"use_cache": False},
        )  # fmt: skip
        ids = [f"bench{n:04}" for n in range(count)]
        for project_id in ids:
            await orchestrator.create_project(
                f"[project] notes for {project_id}", "notes are written", project_id, tasks=NOTE
            )
    await enqueue(url, ids)


def round_of(
    admin: str, workers: int, projects: int, concurrency: int, delay: float
) -> dict[str, float]:
    url = fresh_database(admin)
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as home:
        fake.responder = ScriptedLLM(delay=delay)
        asyncio.run(queue(url, fake.base_url, projects))
        env = {**os.environ, **fake_env(fake.base_url), "ORCHESTRATOR_HOME": home,
               "ORCHESTRATOR_DB_URL": url}  # fmt: skip
        command = [sys.executable, "-m", "orchestrator", "--worker", "--concurrency",
                   str(concurrency), "--exit-when-idle"]  # fmt: skip
        started = time.perf_counter()
        running = [
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(workers)
        ]
        done = sum(p.communicate()[1].decode().count(": SUCCESS") for p in running)
        seconds = time.perf_counter() - started
        calls = fake.count()
    return {"workers": workers, "done": done, "seconds": seconds, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORCHESTRATOR_TEST_PG_URL"))
    parser.add_argument("--projects", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4, help="projects per worker")
    parser.add_argument("--delay", type=float, default=0.2, help="the provider's answer time")
    args = parser.parse_args()
    if not args.url:
        sys.exit("no PostgreSQL: --url, or `source .ci/postgres start` first")
    print(f"{args.projects} one-task projects, 5 calls each, provider answers in "
          f"{args.delay * 1000:.0f} ms, {args.concurrency} projects per worker, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print("workers  done  seconds  projects/min  calls/s  speed-up")
    first = None
    for workers in (1, 2, 4):
        result = round_of(args.url, workers, args.projects, args.concurrency, args.delay)
        rate = result["done"] / result["seconds"] * 60
        first = first or rate
        print(f"{workers:>7}  {result['done']:>4}  {result['seconds']:>7.1f}  {rate:>12.1f}  "
              f"{result['calls'] / result['seconds']:>7.1f}  {rate / first:>7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
