"""Plans: the planner is asked for 5-15 tasks, but any valid plan it pays for is run; only a cap
the user sets is a rule, enforced with one repair request, then a plan within it that runs without
a planner, said in one line."""

from __future__ import annotations

from conftest import FAST_RETRY, fake_env, run_cli
from scripted_llm import default_plan

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.observe.events import Event
from orchestrator.run.tasks import ProjectStatus


async def plan_and_run(fake, **options):
    events: list[Event] = []
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0, max_time_seconds=60),
            client=client,
            use_cache=False,
            use_state=False,
            on_event=events.append,
            **options,
        )
        state = await orchestrator.run_project("[project] Build an add library", "add works")
    return state, events


async def test_a_valid_plan_with_fewer_tasks_than_asked_for_is_run_and_noted(fake, llm):
    llm.plan = default_plan()[:4]  # the planner was asked for 5-15

    state, events = await plan_and_run(fake)

    assert state.status is ProjectStatus.SUCCESS, state.reason
    assert len(state.tasks) == 4
    [note] = [e for e in events if e.kind == "plan_size"]
    assert note.data == {"tasks": 4, "guidance": (5, 15)}


async def test_a_plan_over_the_users_cap_gets_one_repair_then_a_plan_within_it(fake, llm):
    state, events = await plan_and_run(fake, max_tasks=3)  # the scripted planner insists on 5

    assert state.status is not ProjectStatus.SYSTEM_FAILURE
    assert list(state.tasks) == ["code", "tests"]  # the code and its tests: within the cap
    [notice] = [
        e.data["message"] for e in events if e.kind == "notice" and "planner" in str(e.data)
    ]
    assert "got 5 tasks, need at most 3" in notice and "--max-tasks" in notice
    assert "\n" not in notice and len(notice) < 500  # no dump of the answer
    assert llm.count("plan") == 6  # the choice and two fallbacks, each asked once more to repair


def test_max_tasks_on_the_command_line_is_that_cap(fake, llm, tmp_path):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli("-p", "[project] p", "-c", "c", "--max-tasks", "2", cwd=tmp_path, env=env)

    assert result.returncode in (0, 3), result.stderr
    assert "got 5 tasks, need at most 2" in result.stderr
    assert "plan: 1 tasks" in result.stderr  # a plan within the cap ran


async def test_every_task_is_told_the_project_it_is_part_of(fake, llm):
    state, _ = await plan_and_run(fake)

    assert state.status is ProjectStatus.SUCCESS
    authors = [r for r in fake.requests if "Task (" in r.prompt_text]
    assert authors and all("[project] Build an add library" in r.prompt_text for r in authors)
