"""Orchestration overhead and scheduling efficiency on a generated 30-task graph.

Runs the real engine against an in-process provider with injected latency and prints:
  (a) orchestration overhead per call at zero latency (median gap between consecutive calls
      with one call in flight), target <= 1 ms;
  (b) makespan / critical-path bound at 200 ms latency with concurrency >= the graph's width,
      target <= 1.05.

    python benchmarks/engine_overhead.py [--tasks 30] [--latency 0.2] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

from graph_shape import critical_path_length, width

from orchestrator import Budget, DiskCache, Orchestrator, Task, TaskType, UnifiedClient
from orchestrator.llm.providers.base import (
    ChatRequest,
    Endpoint,
    Failure,
    Progress,
    RawCompletion,
)
from orchestrator.store.sqlite import SQLiteStore
from orchestrator.store.state import StateManager

CALLS_IN_SEQUENCE_PER_TASK = 4  # generate, critique, revise, then both evaluations at once


class InProcessProvider:
    """Answers every role instantly (after ``latency``) and records when each call ran."""

    def __init__(self, endpoint: Endpoint, latency: float, spans: list[tuple[float, float]]):
        self.endpoint = endpoint
        self.latency = latency
        self.spans = spans

    async def complete(
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion:
        started = time.perf_counter()
        if self.latency:
            await asyncio.sleep(self.latency)
        schema = request.json_schema or {}
        if "score" in schema.get("properties", {}):
            text = '{"score": 0.95, "reasoning": "meets the criteria"}'
        else:
            text = "A complete answer to the task, long enough to pass a length check."
        self.spans.append((started, time.perf_counter()))
        return RawCompletion(text=text, input_tokens=200, output_tokens=60)

    def classify(self, exc: BaseException) -> Failure | None:
        return None

    async def aclose(self) -> None:
        return None


def generated_graph(count: int, seed: int) -> dict[str, Task]:
    """Layers of five tasks, each depending on one or two tasks of the layer before."""
    rng = random.Random(seed)
    types = [t for t in TaskType if t is not TaskType.EVALUATE]
    tasks: dict[str, Task] = {}
    previous: list[str] = []
    layer: list[str] = []
    for index in range(count):
        if index % 5 == 0 and index:
            previous, layer = layer, []
        task_id = f"t{index:02d}"
        deps = rng.sample(previous, k=min(len(previous), rng.randint(1, 2))) if previous else []
        tasks[task_id] = Task(task_id, rng.choice(types), f"Do part {index}.", deps, [])
        layer.append(task_id)
    return tasks


async def run_graph(
    tasks: dict[str, Task],
    latency: float,
    concurrency: int,
    store_dir: Path | None,
    synchronous: str = "FULL",
) -> tuple[float, list[tuple[float, float]]]:
    """One run; with ``store_dir``, the cache and the state journal live there, as by default.

    ``synchronous`` is the state file's setting: FULL (the default, every commit on disk) or
    NORMAL (what it would cost to risk the last commits on a power loss)."""
    spans: list[tuple[float, float]] = []
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GEMINI_API_KEY": "x"}

    def factory(kind: str, endpoint: Endpoint) -> InProcessProvider:
        return InProcessProvider(endpoint, latency, spans)

    cache = DiskCache(store_dir / "cache.db") if store_dir else None
    store = StateManager(store_dir / "state.db") if store_dir else None
    if store is not None:
        assert isinstance(store._store, SQLiteStore)  # a directory: a SQLite file
        store._store.synchronous = synchronous
    async with UnifiedClient(
        env=env, max_concurrency=concurrency, adapter_factory=factory
    ) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=100.0, max_time_seconds=600),
            client=client,
            cache=cache,
            use_cache=cache is not None,
            state_manager=store,
            use_state=store is not None,
        )
        started = time.perf_counter()
        state = await orchestrator.run_project("benchmark", "criteria", tasks=tasks)
        makespan = time.perf_counter() - started
    for closable in (cache, store):
        if closable is not None:
            await closable.aclose()
    assert state.status.value == "SUCCESS", state.status
    return makespan, spans


def overhead_ms(spans: list[tuple[float, float]]) -> tuple[float, float]:
    ordered = sorted(spans)
    gaps = [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(ordered)]
    return statistics.median(gaps), statistics.mean(gaps)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tasks = generated_graph(args.tasks, args.seed)
    graph_width = width(tasks)
    print(
        f"graph: {len(tasks)} tasks, width {graph_width}, depth {critical_path_length(tasks):.0f}"
    )

    _, spans = await run_graph(tasks, 0.0, 1, None)
    median, mean = overhead_ms(spans)
    print(
        f"(a) overhead per call, no cache, no state: median {median:.3f} ms, mean {mean:.3f} ms "
        f"over {len(spans)} calls (target median <= 1 ms)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        _, spans = await run_graph(tasks, 0.0, 1, Path(tmp))
    median, mean = overhead_ms(spans)
    print(
        f"    with cache and journal, state synced FULL (the default): median {median:.3f} ms, "
        f"mean {mean:.3f} ms"
    )
    with tempfile.TemporaryDirectory() as tmp:
        _, spans = await run_graph(tasks, 0.0, 1, Path(tmp), synchronous="NORMAL")
    normal_median, normal_mean = overhead_ms(spans)
    print(
        f"    the same with the state synced NORMAL: median {normal_median:.3f} ms, mean "
        f"{normal_mean:.3f} ms; FULL costs {mean - normal_mean:+.3f} ms per call (mean)"
    )

    concurrency = 2 * graph_width  # each task has up to two calls in flight (the evaluations)
    makespan, spans = await run_graph(tasks, args.latency, concurrency, None)
    per_task = CALLS_IN_SEQUENCE_PER_TASK * args.latency
    bound = critical_path_length(tasks) * per_task
    print(
        f"(b) makespan {makespan:.3f} s, critical-path bound {bound:.3f} s, "
        f"ratio {makespan / bound:.4f} at concurrency {concurrency} (target <= 1.05)"
    )


if __name__ == "__main__":
    asyncio.run(main())
