"""Telemetry: what runs measure about each model, fed by every call, kept across runs."""

from __future__ import annotations

import asyncio

import pytest
from conftest import fake_env
from scripted_llm import ScriptedLLM, TaskScript
from test_resume import FAST

from orchestrator import Budget, Catalog, Orchestrator, StateManager, UnifiedClient
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.profiles import LATENCY_SAMPLES, ModelProfile, Outcomes, merged_record
from orchestrator.run.tasks import Task, TaskType

TASKS = {
    "core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                 ["python_syntax"]),
}  # fmt: skip


def test_p95_latency_is_read_from_the_last_fifty_calls():
    model = Catalog.load(env={}).resolve("kimi")
    profile = ModelProfile(model, "cn", True, 0.8)
    for millis in [10_000] * 10 + list(range(1, 101)):  # the slow early calls roll out
        profile.record_call(millis / 1000, ok=True, cost_usd=0.01)

    assert len(profile.recent_latencies_ms) == LATENCY_SAMPLES
    assert profile.latency_p95_ms == 98  # of 51..100
    assert profile.cost_avg_usd == 0.01


async def run(fake):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)
        return orch, state


async def test_every_call_and_validator_failure_is_measured_and_kept_for_later_runs(fake, llm):
    llm.scripts["core"] = TaskScript(scores=[0.9], broken_versions={1})  # 1st revision broken

    first, _ = await run(fake)
    # The model whose revision failed its checks (its work then went to another model).
    (measured,) = [p for p in first.profiles.values() if p.validator_failures]
    author = measured.model
    assert measured.calls >= 2 and measured.validator_failures >= 1
    assert measured.latency_p95_ms is not None and measured.cost_avg_usd

    # A new orchestrator (a new process) starts from what the state file kept.
    again, _ = await run(fake)
    kept = again.profiles[author.key]
    assert kept.calls > measured.calls  # the earlier run's calls plus this one's
    assert kept.validator_failures >= measured.validator_failures


async def test_the_planners_calls_count_and_cache_hits_do_not(fake, llm):
    async def run_with_cache():
        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
            orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_state=False)
            await orch.run_project("[project] add", "add works")
            return orch

    first = await run_with_cache()
    measured = {k: p.calls for k, p in first.telemetry.measured().items()}
    assert sum(measured.values()) == fake.count()  # the decomposition's call included

    again = await run_with_cache()  # every answer from the cache: nothing was called

    assert fake.count() == sum(measured.values())
    assert not any(p.calls for p in again.profiles.values())


# --- several orchestrators on one store ------------------------------------------------------
CATALOG = Catalog.load(env={})
KIMI = CATALOG.resolve("kimi-k2.5")


def judged(telemetry: TelemetryCollector, *passes: bool) -> None:
    for passed in passes:
        telemetry.record_call(KIMI, 1.0, ok=True, cost_usd=0.01)
        telemetry.record_judged(KIMI, "code_generation", passed, by_checks=not passed)


async def worker(store: StateManager) -> TelemetryCollector:
    """A worker's telemetry, started from what the store holds, as a run starts."""
    telemetry = TelemetryCollector()
    telemetry.ensure(CATALOG)
    telemetry.restore(await store.measures.model_telemetry())
    return telemetry


async def stored_code(store: StateManager) -> tuple[list[int], int]:
    record = (await store.measures.model_telemetry())[KIMI.key]
    return record["outcomes"]["code_generation"], record["calls"]


async def test_workers_saving_the_same_model_at_once_keep_each_others_measurements(
    state_location,
):
    async with StateManager(state_location) as first, StateManager(state_location) as second:
        earlier = await worker(first)
        judged(earlier, True, True, True)
        await earlier.save(first.measures)
        # Two workers start from the three answers saved, then each judges its own.
        a, b = await worker(first), await worker(second)
        judged(a, True, True, False)
        judged(b, False, False, False, False)

        await asyncio.gather(a.save(first.measures), b.save(second.measures))
        (passed, failed, *_), calls = await stored_code(first)
        assert (passed, failed, calls) == (3 + 2, 1 + 4, 3 + 3 + 4)

        # A second save adds only what was judged since the first.
        judged(a, True)
        await asyncio.gather(a.save(first.measures), a.save(first.measures))
        (passed, failed, *_), calls = await stored_code(second)
        assert (passed, failed, calls) == (6, 5, 11)
        # What each worker keeps in memory is still its own view.
        assert a.profiles[KIMI.key].outcomes["code_generation"].judged == 3 + 4


async def test_two_orchestrators_running_at_once_on_one_store_add_up_what_they_learned(
    fake, state_location
):
    fake.responder = ScriptedLLM(delay=0.02)  # both have loaded the store before either saves

    async def run_on(store: StateManager, project: str) -> Orchestrator:
        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
            orch = Orchestrator(
                budget=Budget(max_usd=5.0), client=client, use_cache=False, state_manager=store
            )
            await orch.run_project(f"[project] {project}", "add works", project, tasks=TASKS)
            return orch

    async with StateManager(state_location) as first, StateManager(state_location) as second:
        orchestrators = await asyncio.gather(run_on(first, "one"), run_on(second, "two"))
        records = await first.measures.model_telemetry()

    def answers(outcomes) -> int:
        return sum(Outcomes.from_record(o).judged for o in outcomes.values())

    learned = sum(
        p.outcomes[TaskType.CODE_GEN.value].judged
        for orch in orchestrators
        for p in orch.profiles.values()
        if TaskType.CODE_GEN.value in p.outcomes
    )
    saved = sum(answers(r.get("outcomes", {})) for r in records.values())
    assert learned >= 2 and saved == learned
    calls = sum(p.calls for orch in orchestrators for p in orch.profiles.values())
    assert sum(r["calls"] for r in records.values()) == calls


def test_a_saved_average_takes_this_processs_samples_on_top_of_what_others_saved():
    since = ModelProfile(KIMI, "cn", True, 0.8)
    now = ModelProfile(KIMI, "cn", True, 0.8)
    now.record_quality(1.0)  # one evaluation here: 0.8 -> 0.84
    now.record_call(0.5, ok=True, cost_usd=0.01)
    stored = {**since.to_record(), "quality": 0.5, "calls": 7, "recent_latencies_ms": [900.0]}

    merged = merged_record(stored, now.to_record(), since.to_record())

    # As if the stored average had taken the same sample: 0.8 x 0.5 + 0.2 x 1.0.
    assert merged["quality"] == pytest.approx(0.6)
    assert merged["calls"] == 8
    assert merged["recent_latencies_ms"] == [900.0, 500.0]
    assert merged_record(None, now.to_record(), since.to_record()) == now.to_record()
