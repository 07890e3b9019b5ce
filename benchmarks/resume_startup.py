"""Resume start-up time and state-file size for a large interrupted project.

Builds the saved state of a 1,000-task project by running it for real over an in-process
provider that answers at once (~1.5 KB answers, each another text), cancelled once it has made
half of the calls the project would make (``--calls`` a task), as Ctrl-C would: what it saved is
what the engine saves (plan, journal, checkpoints, tasks cut off mid-loop). Then prints:
  (a) resume start-up: from a cold ``StateManager`` to a state ready to schedule (load, every
      ``TaskResult.from_record``, ``execution_order``), target <= 1 s; and ``Orchestrator.resume``
      up to its first provider call, and to the end, with the same provider: how many calls it
      made and how many journaled answers it replayed instead of paying again;
  (b) the state file's size after the interrupted run, target <= 20 MB.

    python benchmarks/resume_startup.py [--tasks 1000] [--calls 5] [--size 1500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from orchestrator import Budget, Catalog, Orchestrator, Task, TaskType, UnifiedClient
from orchestrator.errors import UnknownModelError
from orchestrator.llm.catalog import Model
from orchestrator.llm.providers.base import (
    ChatRequest,
    Endpoint,
    Failure,
    Progress,
    RawCompletion,
)
from orchestrator.run.taskgraph import execution_order
from orchestrator.run.tasks import TaskResult, TaskStatus
from orchestrator.store.journal import CallJournal
from orchestrator.store.state import StateManager
from orchestrator.text.tokens import typical_tokens

PROJECT_ID = "bench"
KEYS = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GEMINI_API_KEY": "x"}
START_UP_TARGET_S = 1.0
SIZE_TARGET_MB = 20.0


def code_text(rng: random.Random, size: int) -> str:
    """Varied code-like text: repetitive filler would compress to nothing and flatter the size."""
    lines: list[str] = []
    length = 0
    while length < size:
        a, b, n = rng.randrange(1000), rng.randrange(1000), rng.randrange(100)
        line = f"    value_{a} = compute_{b}(items[{n}]) + offset_{a % 7}  # step {n}\n"
        lines.append(line)
        length += len(line)
    return "def generated():\n" + "".join(lines)


def generated_graph(count: int, seed: int) -> dict[str, Task]:
    """Layers of ten tasks, each depending on one or two tasks of the layer before."""
    rng = random.Random(seed)
    types = [t for t in TaskType if t is not TaskType.EVALUATE]
    tasks: dict[str, Task] = {}
    for index in range(count):
        layer_start = index - index % 10
        previous = [f"t{i:04d}" for i in range(max(0, layer_start - 10), layer_start)]
        deps = rng.sample(previous, k=min(len(previous), rng.randint(1, 2))) if previous else []
        task_id = f"t{index:04d}"
        tasks[task_id] = Task(task_id, rng.choice(types), f"Write part {index}.", deps, [])
    return tasks


async def build_state(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """The interrupted run: the project run for real over ``InstantProvider`` (every call
    journaled and every task checkpointed by the engine itself), cancelled once it has made
    half of its calls, as Ctrl-C would. The journal's keys are then the requests' own, so the
    resume replays what was paid for (synthetic keys would replay nothing)."""
    tasks = generated_graph(args.tasks, args.seed)
    calls: list[float] = []
    stop_after = args.tasks * args.calls // 2
    half_made = asyncio.Event()

    def factory(kind: str, endpoint: Endpoint) -> InstantProvider:
        return InstantProvider(endpoint, calls, args.size, half_made, stop_after)

    started = time.perf_counter()
    async with UnifiedClient(env=KEYS, max_concurrency=8, adapter_factory=factory) as client:
        async with StateManager(path) as store:
            orchestrator = Orchestrator(
                budget=Budget(max_usd=1000.0, max_time_seconds=36000.0),
                client=client,
                state_manager=store,
                max_concurrency=8,
                use_cache=False,
            )
            run = asyncio.create_task(
                orchestrator.run_project(
                    "A large generated project", "every part works", PROJECT_ID, tasks=tasks
                )
            )
            await asyncio.wait({run, asyncio.create_task(half_made.wait())},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            run.cancel()
            with suppress(asyncio.CancelledError):
                await run
            saved = await store.projects.load(PROJECT_ID)
    seconds = time.perf_counter() - started
    finished = sum(r["status"] == TaskStatus.COMPLETED.value for r in saved.results.values())
    return {"seconds": seconds, "calls": len(calls), "finished": finished,
            "status": f"{saved.status.value} {saved.reason}"}  # fmt: skip


def file_mb(path: Path) -> float:
    """The database and whatever WAL / shared-memory files sit next to it."""
    files = [path, *path.parent.glob(path.name + "-*")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def resolver(catalog: Catalog) -> Callable[[str], Model | None]:
    def resolve(key: str) -> Model | None:
        with suppress(UnknownModelError):
            return catalog.resolve(key)
        return None

    return resolve


async def start_up(path: Path, catalog: Catalog) -> dict[str, float]:
    """A cold StateManager to the results and order the scheduler starts from."""
    resolve = resolver(catalog)
    t0 = time.perf_counter()
    store = StateManager(path)
    try:
        saved = await store.projects.load(PROJECT_ID)
        t1 = time.perf_counter()
        results = {t: TaskResult.from_record(r, resolve) for t, r in saved.results.items()}
        t2 = time.perf_counter()
        assert saved.tasks is not None
        order = execution_order(saved.tasks)
        t3 = time.perf_counter()
    finally:
        await store.aclose()
    assert len(order) == len(saved.tasks) and len(results) <= len(saved.tasks)
    return {"load": t1 - t0, "records": t2 - t1, "order": t3 - t2, "total": t3 - t0}


class InstantProvider:
    """Answers every call at once (noting when), another text each time; with ``enough``, sets it
    once ``enough_after`` calls have arrived."""

    def __init__(
        self,
        endpoint: Endpoint,
        calls: list[float],
        size: int,
        enough: asyncio.Event | None = None,
        enough_after: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.calls = calls
        self.size = size
        self.enough, self.enough_after = enough, enough_after

    async def complete(
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion:
        self.calls.append(time.perf_counter())
        if self.enough is not None and len(self.calls) >= self.enough_after:
            self.enough.set()
        if "score" in (request.json_schema or {}).get("properties", {}):
            return RawCompletion('{"score": 0.95, "reasoning": "ok"}', 1200, 40)
        # Another text each call: one text over and over would flatter the state's size. Like
        # a vendor, never more tokens than the request allows.
        text = code_text(random.Random(len(self.calls)), self.size)
        prompt = "".join(message.content for message in request.messages)
        return RawCompletion(text, typical_tokens(prompt), min(600, request.max_tokens))

    def classify(self, exc: BaseException) -> Failure | None:
        return None

    async def aclose(self) -> None:
        return None


class CountingJournal(CallJournal):
    """Counts the journal's replayed answers, to say what the full resume really did."""

    replayed = 0

    async def get(self, project_id: str, key: str) -> dict[str, Any] | None:
        entry = await super().get(project_id, key)
        self.replayed += entry is not None
        return entry


class CountingStateManager(StateManager):
    """A state manager whose journal counts what it replays."""

    journal: CountingJournal

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.journal = CountingJournal(self._store)


async def full_resume(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    calls: list[float] = []

    def factory(kind: str, endpoint: Endpoint) -> InstantProvider:
        return InstantProvider(endpoint, calls, args.size)

    async with UnifiedClient(env=KEYS, max_concurrency=8, adapter_factory=factory) as client:
        store = CountingStateManager(path)
        try:
            orchestrator = Orchestrator(
                budget=Budget(max_usd=1000.0, max_time_seconds=36000.0),
                client=client,
                state_manager=store,
                use_cache=False,
            )
            t0 = time.perf_counter()
            state = await orchestrator.resume(PROJECT_ID)
            t_end = time.perf_counter()
        finally:
            await store.aclose()
    return {
        "first_call": (calls[0] - t0) if calls else float("nan"),
        "total": t_end - t0,
        "calls": len(calls),
        "replayed": store.journal.replayed,
        "status": state.status.value,
        "done": sum(r.status is TaskStatus.COMPLETED for r in state.results.values()),
    }


def ratio(value: float, target: float) -> str:
    return f"{value / target:.3f}x target"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=5, help="journaled calls per task")
    parser.add_argument("--size", type=int, default=1500, help="bytes per answer and output")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    catalog = Catalog.load(env={})

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        built = await build_state(path, args)
        size = file_mb(path)
        print(
            f"state of a {args.tasks}-task project run over an instant provider ({args.size} B "
            f"answers) and cancelled after {built['calls']:.0f} calls: {built['status']}, "
            f"{built['finished']:.0f} tasks finished; the run took {built['seconds']:.2f} s"
        )

        runs = [await start_up(path, catalog) for _ in range(args.repeat)]
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        worst = max(r["total"] for r in runs)
        print(
            f"(a) start-up, cold StateManager -> ready to schedule: median {median['total']:.3f} s"
            f" (load {median['load']:.3f}, from_record {median['records']:.3f}, "
            f"execution_order {median['order']:.3f}), worst {worst:.3f} s over {args.repeat}; "
            f"target <= {START_UP_TARGET_S:.0f} s: {ratio(median['total'], START_UP_TARGET_S)}"
        )

        resumes = []
        for index in range(min(args.repeat, 3)):
            # A resume rewrites the state, so each one starts from its own copy.
            copy = Path(tmp) / f"resume-{index}.db"
            shutil.copyfile(path, copy)
            resumes.append(await full_resume(copy, args))
        first = statistics.median(r["first_call"] for r in resumes)
        total = statistics.median(r["total"] for r in resumes)
        last = resumes[-1]
        print(
            f"    Orchestrator.resume to its first provider call: median {first:.3f} s "
            f"({ratio(first, START_UP_TARGET_S)}); to the end: median {total:.3f} s"
        )
        print(
            f"    the resume ran {last['calls']} calls, replayed {last['replayed']} journaled "
            f"answers, finished {last['status']} with {last['done']}/{args.tasks} tasks completed"
        )
        print(
            f"(b) state file after the interrupted run: {size:.2f} MB; "
            f"target <= {SIZE_TARGET_MB:.0f} MB: {ratio(size, SIZE_TARGET_MB)}"
        )
        print(f"    after the resume finished it:         {file_mb(copy):.2f} MB")


if __name__ == "__main__":
    asyncio.run(main())
