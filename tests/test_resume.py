"""Resuming through the Python API: spend and clock carried over, finished work never redone."""

from __future__ import annotations

import asyncio
import socket
from contextlib import asynccontextmanager

import pytest
from conftest import NoWait, eventually, fake_env
from scripted_llm import TaskScript
from test_engine import as_tasks

from orchestrator import Budget, ConfigError, Orchestrator, RetryPolicy, UnifiedClient
from orchestrator.run import projects
from orchestrator.run.tasks import ProjectStatus, Task, TaskStatus, TaskType
from orchestrator.store.state import StateManager, UnknownProjectError

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, clock=NoWait())
DESCRIPTION = "[project] Build an add library"
CRITERIA = "add works and is tested"


async def orchestrate(fake, action, *, budget=None, **kwargs):
    """Run ``action(orchestrator)`` with a new client and state manager, as a new process would."""
    async with (
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST, max_concurrency=3) as client,
        StateManager() as store,
    ):
        orchestrator = Orchestrator(
            budget=budget or Budget(max_usd=5.0, max_time_seconds=60),
            state_manager=store,
            client=client,
            use_cache=False,
        )
        return await action(orchestrator, **kwargs)


async def start(orchestrator, **kwargs):
    return await orchestrator.run_project(DESCRIPTION, CRITERIA, "p1", **kwargs)


async def resume(orchestrator, **kwargs):
    return await orchestrator.resume("p1", **kwargs)


async def test_a_run_stopped_by_its_budget_continues_with_a_bigger_one(fake, llm):
    llm.bill_max_output = True  # the whole run costs about $0.28
    stopped = await orchestrate(fake, start, budget=Budget(max_usd=0.1, max_time_seconds=60))
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED
    paid_before = stopped.budget.spent_usd
    done_before = {t for t, r in stopped.results.items() if r.status is TaskStatus.COMPLETED}
    requests_before = fake.count()

    resumed = await orchestrate(fake, resume, max_usd=1.0)

    assert resumed.status is ProjectStatus.SUCCESS
    assert resumed.budget.max_usd == 1.0
    assert resumed.budget.spent_usd >= paid_before  # carried over, not restarted
    assert resumed.budget.spent_usd <= 1.0
    assert set(resumed.results) == set(resumed.tasks)
    assert llm.count("plan") == 1  # the plan was saved, not asked for again
    # Tasks finished before the stop were not run again.
    new_tasks = {task for _, task, _ in llm.roles[requests_before:]}
    assert not new_tasks & done_before


async def test_a_resume_claiming_a_project_another_run_has_just_finished_runs_nothing(
    fake, llm, monkeypatch
):
    llm.bill_max_output = True
    stopped = await orchestrate(fake, start, budget=Budget(max_usd=0.1, max_time_seconds=60))
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED
    asked = fake.count()
    claim = projects.leased

    @asynccontextmanager
    async def finished_just_before(session, project_id):
        # Another worker's run of the project ends between this resume's read and its claim.
        await session.store.projects.finish(project_id, ProjectStatus.SUCCESS, "done there", 1.0)
        async with claim(session, project_id) as lease:
            yield lease

    monkeypatch.setattr(projects, "leased", finished_just_before)
    resumed = await orchestrate(fake, resume, max_usd=1.0)

    assert resumed.already_finished and resumed.status is ProjectStatus.SUCCESS
    assert resumed.reason == "done there"
    assert fake.count() == asked  # nothing asked again, nothing paid again


async def test_a_task_interrupted_mid_loop_replays_its_paid_calls(fake, llm):
    llm.scripts["core"] = TaskScript(scores=[0.5, 0.6, 0.95])
    llm.delay = 0.05
    run = asyncio.create_task(orchestrate(fake, start))
    # The third critique is asked only after both revisions and four verdicts were journaled.
    await eventually(lambda: llm.count("critique", "core") >= 3)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    async with StateManager() as store:
        assert (await store.projects.load("p1")).status is ProjectStatus.INTERRUPTED

    resumed = await orchestrate(fake, resume)

    core = resumed.results["core"]
    assert core.status is TaskStatus.COMPLETED and core.score_history == [0.5, 0.6, 0.95]
    # Paid once each: the calls made before the interruption were replayed from the journal;
    # only the critique in flight at that moment was asked again.
    assert llm.count("revise", "core") == 3
    assert llm.count("grade", "core") == 6
    assert llm.count("critique", "core") == 4
    assert llm.count("generate", "core") == 1


async def test_resuming_a_finished_project_changes_nothing(fake, llm):
    finished = await orchestrate(fake, start)
    assert finished.status is ProjectStatus.SUCCESS
    requests = fake.count()

    again = await orchestrate(fake, resume, max_usd=100.0)

    assert again.status is ProjectStatus.SUCCESS
    assert fake.count() == requests
    assert again.budget.max_usd == finished.budget.max_usd  # the override was not applied
    assert {t: r.output for t, r in again.results.items()} == {
        t: r.output for t, r in finished.results.items()
    }
    async with StateManager() as store:
        assert (await store.projects.load("p1")).status is ProjectStatus.SUCCESS


async def test_an_unknown_project_id_is_a_clear_error(fake, llm):
    with pytest.raises(UnknownProjectError, match="--list-projects"):
        await orchestrate(fake, resume)


async def test_a_taken_project_id_with_another_description_is_refused(fake, llm):
    await orchestrate(fake, start)
    requests = fake.count()

    async def other(orchestrator):
        return await orchestrator.run_project("a different project", CRITERIA, "p1")

    with pytest.raises(ConfigError, match=r"saved with other inputs \(description was"):
        await orchestrate(fake, other)
    assert fake.count() == requests


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"success_criteria": "add is fast"}, "criteria were 'add works and is tested'"),
        ({"tasks": "edited"}, "tasks changed: core"),
        ({"tasks": "extended"}, "tasks added: extra"),
    ],
)
async def test_a_finished_project_rerun_with_changed_inputs_is_refused_before_any_spend(
    fake, llm, change, said
):
    plan = as_tasks(llm.plan)
    await orchestrate(fake, start, tasks=plan)
    requests = fake.count()
    if change.get("tasks") == "edited":
        plan["core"].prompt += " Also subtract."
    elif change.get("tasks") == "extended":
        plan["extra"] = Task("extra", TaskType.WRITING, "[extra] More.", ["core"], ["length"])
    criteria = change.get("success_criteria", CRITERIA)

    async def rerun(orchestrator):
        return await orchestrator.run_project(DESCRIPTION, criteria, "p1", tasks=plan)

    with pytest.raises(ConfigError, match=said):
        await orchestrate(fake, rerun)
    assert fake.count() == requests

    async def restart(orchestrator):
        return await orchestrator.run_project(DESCRIPTION, criteria, "p1", tasks=plan, restart=True)

    fresh = await orchestrate(fake, restart)

    assert fresh.status is ProjectStatus.SUCCESS
    assert fake.count() > requests  # started again, paid again: what --restart means
    async with StateManager() as store:
        saved = await store.projects.load("p1")
    assert saved.criteria == criteria and set(saved.tasks) == set(plan)


async def test_the_same_project_id_and_description_continues_the_project(fake, llm):
    llm.bill_max_output = True
    stopped = await orchestrate(fake, start, budget=Budget(max_usd=0.05, max_time_seconds=60))
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED

    continued = await orchestrate(fake, start, budget=Budget(max_usd=1.0, max_time_seconds=60))

    # The project picks up where it stopped, with the limits of the new command.
    assert llm.count("plan") == 1
    assert continued.status is ProjectStatus.SUCCESS
    assert continued.budget.max_usd == 1.0
    assert continued.budget.spent_usd >= stopped.budget.spent_usd


async def test_a_timed_out_run_resumes_with_more_time_and_its_clock_carried_over(fake, llm):
    llm.delay = 0.3
    stopped = await orchestrate(fake, start, budget=Budget(max_usd=5.0, max_time_seconds=1.5))
    assert stopped.status is ProjectStatus.TIMEOUT
    llm.delay = 0

    resumed = await orchestrate(fake, resume, max_time_seconds=60)

    assert resumed.status is ProjectStatus.SUCCESS
    assert resumed.budget.elapsed_seconds >= 1.5


async def test_a_project_being_run_cannot_be_run_twice_at_once(fake, llm):
    llm.delay = 0.05
    first = asyncio.create_task(orchestrate(fake, start))
    await eventually(lambda: fake.count() >= 2)

    with pytest.raises(ConfigError, match="is being run by"):
        await orchestrate(fake, resume)
    with pytest.raises(ConfigError, match="is being run by"):
        await orchestrate(fake, start)

    finished = await first
    assert finished.status is ProjectStatus.SUCCESS
    assert llm.count("plan") == 1  # nothing was paid twice


async def test_a_run_killed_outright_does_not_hold_its_project(fake, llm, tmp_path):
    async with StateManager() as store:
        await store.projects.create(
            "p1", description=DESCRIPTION, criteria=CRITERIA, max_usd=5.0,
            max_time_seconds=60, settings={},
        )  # fmt: skip
        # A holder on this machine whose process no longer exists, as after kill -9.
        dead = f"{socket.gethostname()}:{2**22 + 12345}:gone"
        assert await store.holders.claim("p1", dead, lease_seconds=3600) is None

    resumed = await orchestrate(fake, resume)

    assert resumed.status is ProjectStatus.SUCCESS
