"""Telemetry: what runs measure about each model, fed by every call, kept across runs."""

from __future__ import annotations

from conftest import fake_env
from scripted_llm import TaskScript
from test_resume import FAST

from orchestrator import Budget, Catalog, Orchestrator, UnifiedClient
from orchestrator.routing.profiles import LATENCY_SAMPLES, ModelProfile
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
