"""Jobs, agents running at once, and channels between the tasks of a run."""

from __future__ import annotations

import asyncio

import pytest
from conftest import fake_env
from test_resume import FAST

from orchestrator import AgentPool, Budget, Orchestrator, UnifiedClient
from orchestrator.jobs.agents import JobSpec
from orchestrator.money.caps import BudgetCapExceeded, BudgetHierarchy
from orchestrator.routing.backends import GreedyBackend, ParetoBackend
from orchestrator.routing.policy import Policy
from orchestrator.run.tasks import ProjectState, ProjectStatus, Task, TaskType

CODE_TASK = {"core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.")}


def agent(client, **options) -> Orchestrator:
    return Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False, **options)


async def test_a_job_runs_with_its_own_budget_caps_and_policies(fake, llm):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = agent(client, budget_hierarchy=BudgetHierarchy(job_budgets={"j1": 3.0}))
        spec = JobSpec(
            project_description="[project] add",
            success_criteria="add works",
            budget=Budget(max_usd=2.0),
            job_id="j1",
            policies=[Policy("no_kimi", blocked_providers=["kimi"])],
            tasks=CODE_TASK,
        )

        state = await orch.run_job(spec)
        over = JobSpec("[project] add", "add works", Budget(max_usd=3.0), job_id="j1")
        with pytest.raises(BudgetCapExceeded, match="job j1"):
            await orch.run_job(over)

    assert state.status is ProjectStatus.SUCCESS
    assert state.budget.max_usd == 2.0  # the job's budget, not the orchestrator's
    assert fake.count(model="kimi-k2.6") == 0  # the job's policy applied
    assert not orch.policies  # and only to the job


async def test_the_design_documents_pool_runs_agents_at_once_and_picks_the_best(fake, llm):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        pool = AgentPool()
        pool.add_agent("pareto", agent(client, optimization_backend=ParetoBackend()))
        pool.add_agent("greedy", agent(client, optimization_backend=GreedyBackend()))
        spec = JobSpec(
            project_description="[project] Build a FastAPI auth service",
            success_criteria="All tests pass",
            budget=Budget(max_usd=5.0),
            tasks=CODE_TASK,
        )

        results = await pool.run_parallel({"pareto": spec, "greedy": spec})
        best = pool.best_result(results)  # highest mean TaskResult.score
        merged_profiles = pool.merge_telemetry()

    assert all(isinstance(r, ProjectState) for r in results.values())
    authors = {name: r.results["core"].model_used.value for name, r in results.items()}
    assert authors == {"pareto": "deepseek-v4-pro", "greedy": "gemini-2.5-flash-lite"}
    assert best is not None and best[0] in {"pareto", "greedy"}
    # Counters add up across the agents; moving averages are averaged over those that measured.
    for key in ("deepseek/deepseek-v4-pro", "google/gemini-2.5-flash-lite"):
        calls = sum(a.profiles[key].calls for a in pool.agents.values())
        assert merged_profiles[key].calls == calls > 0


async def test_one_failing_agent_never_stops_the_others_nor_passes_a_shared_cap(fake, llm):
    llm.delay = 0.1
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        pool = AgentPool(BudgetHierarchy(team_budgets={"eng": 8.0}))
        for name in ("a", "b", "c"):
            pool.add_agent(name, agent(client))
        spec = JobSpec("[project] add", "add works", Budget(max_usd=5.0), team="eng",
                       tasks=CODE_TASK)  # fmt: skip

        results = await pool.run_parallel({"a": spec, "b": spec, "c": spec})

    finished = [r for r in results.values() if isinstance(r, ProjectState)]
    refused = [r for r in results.values() if isinstance(r, BudgetCapExceeded)]
    assert len(finished) == 1 and len(refused) == 2  # $5 + $5 could pass the $8 cap
    assert finished[0].status is ProjectStatus.SUCCESS


async def test_a_channel_passes_results_between_tasks_and_peeking_keeps_them(fake, llm):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = agent(client)
        ch = orch.get_channel("artifacts")

        def publish(event):
            if event.kind == "task_finished":
                ch.put_nowait({"type": "result", "task": event.task_id})

        orch.emit = publish
        tasks = {
            **CODE_TASK,
            "docs": Task("docs", TaskType.WRITING, "[docs] Write a README section.", ["core"]),
        }
        await orch.run_project("[project] add", "add works", tasks=tasks)

        msgs = ch.peek_all()  # items remain in the queue after peek
        assert [m["task"] for m in msgs] == ["core", "docs"]
        assert await ch.get() == {"type": "result", "task": "core"}
        assert len(ch) == 1
        assert orch.get_channel("artifacts") is ch

        waiting = asyncio.create_task(orch.get_channel("later").get())
        await asyncio.sleep(0.01)
        await orch.get_channel("later").put({"type": "schema", "content": "{}"})
        assert await asyncio.wait_for(waiting, 1) == {"type": "schema", "content": "{}"}
