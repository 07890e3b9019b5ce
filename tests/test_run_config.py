"""A run's settings are one saved ``RunConfig``: a resume made by a script or a worker, which
gives nothing, runs on what the project was started with, and what a resume changes is saved
for the next one, the same way for every setting."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import fake_env
from test_engine import as_tasks, code_task

from orchestrator import Orchestrator
from orchestrator.errors import ConfigError
from orchestrator.observe.events import EventKind
from orchestrator.routing.policy import Policy
from orchestrator.run.config import DEFAULTS, RunConfig
from orchestrator.run.tasks import ProjectStatus
from orchestrator.store.state import StateError, StateManager

PROJECT = ("[project] Build an add library", "add works")
# Every setting away from its default, as a project could be started with.
STARTED = RunConfig(
    max_usd=4.0,
    max_time_seconds=300.0,
    quality_threshold=0.8,
    concurrency=2,
    routing="greedy",
    policies=(Policy(name="no-deepseek", blocked_providers=["deepseek"]),),
    team="platform",
    job="nightly",
    integration=False,
    min_tasks=1,
    max_tasks=4,
    max_fallbacks=1,
    providers=("anthropic", "google"),
    call_timeout=30.0,
    validator_timeout=45.0,
    allow_single_verdict=True,
    use_cache=False,
    output_dir="/results/started",
    tree_name="lib",
)
# What a later resume changes: every setting again, to something else.
CHANGED = RunConfig(
    max_usd=3.0,
    max_time_seconds=200.0,
    quality_threshold=0.7,
    concurrency=1,
    routing="pareto",
    policies=(Policy(name="no-kimi", blocked_providers=["kimi"]),),
    integration=True,
    integration_rounds=1,
    min_tasks=2,
    max_tasks=3,
    max_fallbacks=0,
    providers=("openai",),
    call_timeout=20.0,
    validator_timeout=30.0,
    allow_single_verdict=False,
    output_dir="/results/changed",
    tree_name="app",
)


@pytest.fixture
def keys(fake, monkeypatch):
    """The provider keys and addresses in the environment, as a script's would be: an
    orchestrator given no client makes its own from the run's config."""
    for name, value in fake_env(fake.base_url).items():
        monkeypatch.setenv(name, value)


async def saved_config(project_id: str) -> RunConfig:
    async with StateManager() as store:
        _, settings = await store.projects.run_settings(project_id)
    return RunConfig.from_settings(settings)


async def test_a_script_resuming_with_nothing_given_runs_on_the_settings_it_was_started_with(
    fake, llm, keys
):
    plan = [code_task("core")]
    llm.plan = plan
    # Saved for later, nothing paid (as --submit does); then resumed as a worker or a script does.
    await Orchestrator(config=STARTED).create_project(*PROJECT, "p1", tasks=as_tasks(plan))
    resumer = Orchestrator()
    backends = set()
    resumer.display(
        lambda e: backends.add(e.data["backend"]) if e.kind is EventKind.MODEL_SELECTED else None
    )

    state = await resumer.resume("p1")

    assert state.status is ProjectStatus.SUCCESS, state.reason
    assert state.config == dataclasses.replace(STARTED.resolved(), local=False)
    assert backends == {"greedy"}
    assert fake.requests and {r.api for r in fake.requests} <= {"anthropic", "gemini"}
    assert state.budget.max_usd == 4.0 and state.quality_threshold == 0.8
    assert state.integration is None  # integration stayed off


async def test_what_a_resume_changes_is_saved_for_the_next_one_for_every_setting(fake, llm, keys):
    plan = [code_task("core")]
    llm.plan = plan
    await Orchestrator(config=STARTED).create_project(*PROJECT, "p1", tasks=as_tasks(plan))

    changed = await Orchestrator().resume("p1", config=CHANGED)
    again = await Orchestrator().resume("p1")  # finished: reported on what it saved

    expected = dataclasses.replace(CHANGED.over(STARTED).resolved(), local=False)
    assert changed.status is ProjectStatus.SUCCESS, changed.reason
    assert changed.config == expected
    assert again.already_finished and again.config == expected
    saved = await saved_config("p1")
    for name, value in CHANGED.given().items():
        if name not in ("max_usd", "max_time_seconds"):  # the project's own columns
            assert getattr(saved, name) == value, name
    assert (again.budget.max_usd, again.budget.max_time_seconds) == (3.0, 200.0)
    assert {r.api for r in fake.requests} == {"openai"}


async def test_a_resume_takes_overrides_by_name_and_refuses_a_name_that_is_no_setting(
    fake, llm, keys
):
    plan = [code_task("core")]
    llm.plan = plan
    await Orchestrator(config=STARTED).create_project(*PROJECT, "p1", tasks=as_tasks(plan))

    with pytest.raises(ConfigError, match="not a run setting"):
        await Orchestrator().resume("p1", max_dollars=2.0)
    state = await Orchestrator().resume("p1", max_usd=2.5, routing="table")

    assert state.budget.max_usd == 2.5 and state.config.routing == "table"
    assert (await saved_config("p1")).routing == "table"


async def test_a_saved_setting_that_cannot_be_used_is_a_one_line_error_naming_the_project(
    fake, llm, keys
):
    plan = [code_task("core")]
    llm.plan = plan
    await Orchestrator(config=STARTED).create_project(*PROJECT, "p1", tasks=as_tasks(plan))
    async with StateManager() as store:
        await store._store.run(
            "UPDATE projects SET settings = ? WHERE id = ?", ('{"routing": "fastest"}', "p1")
        )

    with pytest.raises(StateError, match=r"project 'p1': .*unknown routing 'fastest'"):
        await Orchestrator().resume("p1")
    assert fake.count() == 0


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("max_usd", float("nan"), "max_usd must be 0 or more"),
        ("max_time_seconds", 0, "max_time_seconds must be greater than 0"),
        ("concurrency", 0, "concurrency must be at least 1"),
        ("concurrency", 2.5, "concurrency must be a whole number"),
        ("max_tasks", "3", "max_tasks must be a number"),
        ("quality_threshold", 1.5, "quality threshold must be between 0 and 1"),
        ("routing", "fastest", "unknown routing 'fastest'"),
        ("integration", "yes", "integration must be true or false"),
        ("local", 3, "local must be true, false or a model file"),
    ],
)
def test_a_setting_a_run_cannot_use_is_refused_in_one_line(field, value, said):
    with pytest.raises(ConfigError, match=said):
        RunConfig(**{field: value})


def test_a_config_fills_what_it_leaves_unset_from_another_then_from_the_defaults():
    mine = RunConfig(routing="greedy", max_tasks=3)

    merged = mine.over(RunConfig(routing="table", concurrency=1))

    assert merged.given() == {"routing": "greedy", "max_tasks": 3, "concurrency": 1}
    assert merged.resolved() == dataclasses.replace(
        DEFAULTS, routing="greedy", max_tasks=3, concurrency=1
    )
    assert RunConfig.from_settings(STARTED.to_settings()) == STARTED
