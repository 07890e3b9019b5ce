"""A project's saved state, before and after its runs: ``record`` saves a new project before
anything is paid (or finds it saved with the same inputs), ``continue_saved`` runs a saved one
again where it stopped (or reports it, finished), and ``prepare`` is what both do before a run:
refuse one its policies cannot serve, and start loading the SDKs of its first calls."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

from orchestrator.code.integration import Integration
from orchestrator.errors import ConfigError, UnknownModelError
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import UnifiedClient
from orchestrator.money.budget import Budget
from orchestrator.observe.events import Event
from orchestrator.run.config import RunConfig
from orchestrator.run.engine import Run
from orchestrator.run.outcome import restore_spend
from orchestrator.run.session import Session, discard, leased
from orchestrator.run.tasks import ProjectState, ProjectStatus, Task, TaskResult, TaskType
from orchestrator.store.state import SavedProject, StateError
from orchestrator.text.visible import shorten

if TYPE_CHECKING:
    from orchestrator.routing.router import Router
    from orchestrator.run.orchestrator import Orchestrator

FINISHED = (ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS)


def new_project_id() -> str:
    return secrets.token_hex(6)


async def record(
    owner: Orchestrator,
    session: Session,
    state: ProjectState,
    tasks: Mapping[str, Task] | None,
    restart: bool,
) -> SavedProject | None:
    """Record the project (None), or find it saved with the same inputs (returned); one saved
    with other inputs is refused before anything is paid."""
    prepare(owner, session, tasks, done=set())
    if session.store is None:
        return None
    if restart:
        await discard(session, state.project_id)
    created = await session.store.projects.create(
        state.project_id,
        description=state.project_description,
        criteria=state.success_criteria,
        max_usd=state.budget.max_usd,
        max_time_seconds=state.budget.max_time_seconds,
        settings=owner._settings(session.config),
    )
    if created:
        return None
    saved = await session.store.projects.load(state.project_id)
    changed = _changed_inputs(saved, state.project_description, state.success_criteria, tasks)
    if changed:
        raise ConfigError(
            f"project id {state.project_id!r} was saved with other inputs "
            f"({'; '.join(changed)}): use another --project-id, or --restart "
            "(restart=True) to discard its saved state and start again"
        )
    return saved


async def continue_saved(
    owner: Orchestrator, session: Session, saved: SavedProject, given: RunConfig
) -> ProjectState:
    """Run ``saved`` again (or report it, finished) on its config with ``given`` on top."""
    finished = saved.status in FINISHED
    # A finished project is reported as it was.
    config = resumed_config(saved, RunConfig() if finished else given)
    if not finished:
        # The models of the session's client, as a resume must find them again.
        models = session.config
        config = replace(config, local=models.local, providers=models.providers)
    session.config = config
    state = _saved_state(saved, config, session.client)
    if finished:
        state.api_health = session.client.api_health()
        owner.emit(Event("already_finished", data={"status": saved.status.value}))
        return state
    if session.store is not None:
        owner.cost_predictor.load(await session.store.measures.cost_estimates(saved.project_id))
    prepare(owner, session, saved.tasks, done=saved.final_tasks)
    used_up = _used_up(state.budget)
    if used_up is not None:
        # Nothing could run: say which limit and how to give more, and change nothing.
        state.status, state.reason = used_up
        state.api_health = session.client.api_health()
        return state
    finished_since = await _run_again(owner, session, saved, state)
    if finished_since is not None:
        return await continue_saved(owner, session, finished_since, given)
    return state


async def _run_again(
    owner: Orchestrator, session: Session, saved: SavedProject, state: ProjectState
) -> SavedProject | None:
    """Run ``saved``'s unfinished tasks (those of ``state``), the project claimed first: a run
    refused because another holds the project changes nothing, and one that finished it
    since ``saved`` was read leaves nothing to run (that project, as saved now, is returned)."""
    assert session.store is not None
    async with leased(session, saved.project_id) as lease:
        assert lease is not None
        status, _ = await session.store.projects.run_settings(saved.project_id)
        if status in FINISHED:  # its lease was released just before this claim
            return await session.store.projects.load(saved.project_id)
        await session.store.projects.update_run(
            saved.project_id,
            max_usd=state.budget.max_usd,
            max_time_seconds=state.budget.max_time_seconds,
            settings={**saved.settings, **owner._settings(session.config)},
            owner=lease.owner,
        )
        # Only finished tasks are kept; interrupted ones run again, replaying their journal.
        state.results = {t: state.results[t] for t in saved.final_tasks if t in state.results}
        state.status, state.reason = ProjectStatus.RUNNING, ""
        await Run(owner, session, state).execute(state.tasks or None, resumed=True)
    return None


def _saved_state(saved: SavedProject, config: RunConfig, client: UnifiedClient) -> ProjectState:
    """``saved`` as its run left it, on ``config`` (resolved), its spend and clock carried
    over."""
    assert config.max_usd is not None and config.max_time_seconds is not None
    assert config.quality_threshold is not None
    budget = Budget(
        max_usd=config.max_usd,
        max_time_seconds=config.max_time_seconds,
        elapsed_before=saved.elapsed_seconds,
    )
    restore_spend(budget, saved)
    state = ProjectState(
        project_id=saved.project_id,
        project_description=saved.description,
        success_criteria=saved.criteria,
        budget=budget,
        status=saved.status,
        reason=saved.reason,
        quality_threshold=config.quality_threshold,
        config=config,
        already_finished=saved.status in FINISHED,
    )
    resolve = _resolver(client)
    if saved.tasks is not None:
        state.tasks, state.execution_order = saved.tasks, saved.execution_order
    for task_id, result in saved.results.items():
        state.results[task_id] = TaskResult.from_record(result, resolve)
    state.integration = _saved_integration(saved)
    return state


def prepare(
    owner: Orchestrator,
    session: Session,
    tasks: Mapping[str, Task] | None,
    *,
    done: Collection[str],
) -> None:
    """Before a run of ``tasks`` (None: not planned yet) pays anything: refuse it if its
    policies leave some job without a model (the planner, a task type's authors, the
    evaluators), then start loading, in the background, the SDKs of the models its first calls
    go to (the planner's and every task type's, or those of the tasks not ``done`` that can
    start at once)."""
    if session.policies and session.client.usable_providers():
        _refuse_uncovered(session, replace(owner._router(session), on_decision=None), tasks)
    router = owner._router(session)
    if tasks is None:
        types = [t for t in TaskType if t is not TaskType.EVALUATE]
        session.client.preload(router.first_calls(types, planner=True))
        return
    ready = [
        task
        for task_id, task in tasks.items()
        if task_id not in done and all(d in done for d in task.dependencies)
    ]
    session.client.preload(router.first_calls(task.type for task in ready))


def _refuse_uncovered(session: Session, router: Router, tasks: Mapping[str, Task] | None) -> None:
    types = sorted({t.type for t in tasks.values()}) if tasks is not None else list(TaskType)
    missing = [t.value for t in types if t is not TaskType.EVALUATE]
    missing = [name for name in missing if not router.generation_chain(TaskType(name))]
    if tasks is None and not router.decomposition_chain():
        missing.insert(0, "decomposition")
    if router.usable and not router.evaluator_chain(router.usable[0]):
        missing.append("evaluation")
    if missing:
        names = ", ".join(p.name for p in session.policies)
        raise ConfigError(
            f"the policies ({names}) leave no model for: {', '.join(missing)}; "
            "allow more providers, models or regions"
        )


def resumed_config(saved: SavedProject, given: RunConfig) -> RunConfig:
    """A saved project's config with ``given`` on top, the defaults under both."""
    try:
        kept = RunConfig.from_settings(saved.settings)
    except ConfigError as exc:
        raise StateError(f"project {saved.project_id!r}: {exc}") from None
    limits = RunConfig(max_usd=saved.max_usd, max_time_seconds=saved.max_time_seconds)
    return given.over(limits.over(kept)).resolved()


def _saved_integration(saved: SavedProject) -> Integration | None:
    if saved.integration is None:
        return None
    try:
        return Integration.from_dict(saved.integration)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(
            f"project {saved.project_id!r}: its saved integration record cannot be read ({exc})"
        ) from exc


def _used_up(budget: Budget) -> tuple[ProjectStatus, str] | None:
    """The limit a resume would hit before doing anything, with how to raise it, if any."""
    if budget.seconds_left() <= 0:
        return ProjectStatus.TIMEOUT, (
            f"the time limit of {budget.max_time_seconds:g} s is used up "
            f"({budget.elapsed_seconds:.0f} s elapsed); resume with --time SECONDS "
            "(max_time_seconds=) to give it more"
        )
    if budget.remaining_usd <= 0:
        return ProjectStatus.BUDGET_EXHAUSTED, (
            f"the budget of ${budget.max_usd:g} is spent; resume with --budget USD (max_usd=) "
            "to give it more"
        )
    return None


def _changed_inputs(
    saved: SavedProject, description: str, criteria: str, tasks: Mapping[str, Task] | None
) -> list[str]:
    """What differs between a saved project and a new run under its id, one phrase each."""
    changed = []
    if saved.description != description:
        changed.append(f"description was {shorten(saved.description, 60)!r}")
    if saved.criteria != criteria:
        changed.append(f"criteria were {shorten(saved.criteria, 60)!r}")
    if tasks is not None and saved.tasks is not None:
        before = {t: task.to_dict() for t, task in saved.tasks.items()}
        after = {t: task.to_dict() for t, task in tasks.items()}
        edited = sorted(t for t in before.keys() & after.keys() if before[t] != after[t])
        for label, ids in (
            ("tasks added", sorted(after.keys() - before.keys())),
            ("tasks removed", sorted(before.keys() - after.keys())),
            ("tasks changed", edited),
        ):
            if ids:
                changed.append(f"{label}: {', '.join(ids)}")
    return changed


def _resolver(client: UnifiedClient) -> Callable[[str], Model | None]:
    def resolve(key: str) -> Model | None:
        with suppress(UnknownModelError):
            return client.catalog.resolve(key)
        return None  # the model left the catalog since; the result keeps everything else

    return resolve
