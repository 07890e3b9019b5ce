"""``Orchestrator``: the facade a user holds. It makes runs (``orchestrator.run.engine.Run``) and
gives them what they share: the stores and client (each call's ``orchestrator.run.session``),
the config given, cost predictions and budget caps, the request to stop, and what watches them
(``orchestrator.run.observed``: telemetry, hooks, events, metrics, the audit log). A project's
saved state, recorded before a run and continued by a resume, is ``orchestrator.run.projects``.

Every project is recorded when it starts, every paid call is journaled before its answer is
used, and every finished task is checkpointed, so an interrupted run resumes by id and pays for
nothing twice.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from orchestrator.cli.project_file import check_project_id
from orchestrator.errors import ConfigError
from orchestrator.jobs.agents import JobSpec
from orchestrator.llm.cache import DiskCache
from orchestrator.llm.client import UnifiedClient
from orchestrator.money.budget import Budget
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.forecast import CostPredictor
from orchestrator.money.units import usd_to_nanos
from orchestrator.observe.audit import AuditLog
from orchestrator.observe.events import EventSink
from orchestrator.routing.backends import BACKENDS, OptimizationBackend
from orchestrator.routing.policy import Policy, PolicyEngine, PolicySet
from orchestrator.routing.router import Router
from orchestrator.routing.screen import ConstraintPlanner
from orchestrator.run.channel import TaskChannel
from orchestrator.run.config import RunConfig
from orchestrator.run.engine import Run
from orchestrator.run.observed import Observed
from orchestrator.run.projects import (
    FINISHED,
    continue_saved,
    new_project_id,
    record,
    resumed_config,
)
from orchestrator.run.session import Configure, Session, capped, constant, leased, open_session
from orchestrator.run.taskgraph import execution_order, parse_tasks
from orchestrator.run.tasks import ProjectState, Task
from orchestrator.store.state import SavedProject, StateManager


class Orchestrator(Observed):
    """Runs and resumes projects: ``await Orchestrator(budget=Budget(8.0)).run_project(...)``.

    What a run uses (limits, threshold, routing, policies, integration, task limits, models,
    timeouts, output settings) is a ``RunConfig``: given here (``config=``, or the keyword
    arguments of the same meaning, which win), to ``run_project`` or to ``resume``; what none
    of them gives, a new run takes from the defaults and a resume from what the project saved.

    ``cache`` defaults to a ``DiskCache`` and ``state_manager`` to a ``StateManager``, both in
    ``$ORCHESTRATOR_HOME`` (``use_cache=False`` / ``use_state=False`` turn them off);
    ``client`` defaults to a ``UnifiedClient`` made from the run's config (its catalog,
    providers, local model, call timeout and concurrency) over the keys in the environment.
    What the orchestrator creates it also closes; what it is given stays open.
    """

    # Run model-written code without isolation: only when the user explicitly asks, for the
    # runs of this orchestrator (never saved: a resume asks again).
    unsafe_validators: bool
    # Saved with the project besides its config, and returned on resume.
    extra_settings: dict[str, Any]
    # What calls of each model and task type cost: routing and forecasts use it, every answered
    # call feeds it, and it is saved with each project it ran.
    cost_predictor: CostPredictor
    # Caps across runs (organisation, team, job), saved in the state file for later runs; share
    # one between orchestrators that run at once so they hold money together.
    budget_hierarchy: BudgetHierarchy
    # Once set (a worker shutting down), no new paid call starts, those in flight finish and are
    # journaled, and the run ends INTERRUPTED, resumable.
    stopping: asyncio.Event

    def __init__(
        self,
        budget: Budget | None = None,
        cache: DiskCache | None = None,
        state_manager: StateManager | None = None,
        max_concurrency: int | None = None,
        *,
        config: RunConfig | None = None,
        client: UnifiedClient | None = None,
        use_cache: bool | None = None,
        use_state: bool = True,
        quality_threshold: float | None = None,
        on_event: EventSink | None = None,
        validator_timeout: float | None = None,
        unsafe_validators: bool = False,
        min_tasks: int | None = None,
        max_tasks: int | None = None,
        extra_settings: Mapping[str, Any] | None = None,
        optimization_backend: OptimizationBackend | None = None,
        policies: Iterable[Policy] | None = None,
        cost_predictor: CostPredictor | None = None,
        budget_hierarchy: BudgetHierarchy | None = None,
        audit_log: AuditLog | None = None,
        local: bool | str | os.PathLike[str] | None = None,
        allow_single_verdict: bool | None = None,
        integration: bool | None = None,
        integration_rounds: int | None = None,
        max_fallbacks: int | None = None,
    ) -> None:
        super().__init__(on_event, audit_log)
        # The keyword arguments are a RunConfig's fields, some under older names; they win.
        given = RunConfig(
            quality_threshold=quality_threshold,
            integration=integration,
            integration_rounds=integration_rounds,
            min_tasks=min_tasks,
            max_tasks=max_tasks,
            max_fallbacks=max_fallbacks,
            validator_timeout=validator_timeout,
            allow_single_verdict=allow_single_verdict,
            use_cache=use_cache,
        )
        renamed = _renamed(budget, max_concurrency, policies, local)
        self.config = renamed.over(given).over(config or RunConfig())
        self._backend: OptimizationBackend | None = None
        if optimization_backend is not None:
            self.set_optimization_backend(optimization_backend)
        self.budget = budget or _default_budget(self.config)
        self.state_manager, self._use_state = state_manager, use_state
        self._cache, self._client = cache, client
        self.unsafe_validators = unsafe_validators
        self.extra_settings = dict(extra_settings or {})
        self.cost_predictor = cost_predictor or CostPredictor()
        self.budget_hierarchy = budget_hierarchy or BudgetHierarchy()
        self.channels: dict[str, TaskChannel] = {}
        self.stopping = asyncio.Event()

    @property
    def policies(self) -> PolicySet:
        """The policies this orchestrator's runs obey (a resume's, when none are given, are the
        ones its project was started with)."""
        return PolicySet(self.config.policies or ())

    def set_optimization_backend(self, backend: OptimizationBackend) -> None:
        """How models are put in order for every choice of the next runs (see
        ``orchestrator.routing.backends``); the default is the routing table's order. A backend
        of ``BACKENDS`` is saved by its name, for resumes; another is used as given."""
        self._backend = backend
        name = getattr(backend, "name", None)
        if isinstance(name, str) and type(backend) is BACKENDS.get(name):
            self.config = replace(self.config, routing=name)

    @property
    def optimization_backend(self) -> OptimizationBackend:
        """The backend the next runs use (for a resume, unless set: the one it saved)."""
        return self._backend or self.config.backend()

    # -- public entry points ----------------------------------------------------------------------
    async def run_project(
        self,
        project_description: str,
        success_criteria: str,
        project_id: str | None = None,
        *,
        tasks: Mapping[str, Task] | None = None,
        quality_threshold: float | None = None,
        restart: bool = False,
        team: str | None = None,
        job_id: str | None = None,
        config: RunConfig | None = None,
    ) -> ProjectState:
        """Run a new project and return its final state; failures are statuses, not raises.

        ``config`` (and ``quality_threshold``, ``team``, ``job_id``, which win over it) says
        what this run uses besides what the orchestrator was given; the result is saved with
        the project for its resumes. ``team`` and ``job_id`` charge the run to those budget
        caps (``budget_hierarchy``, and caps saved by earlier runs): a run that could pass one
        is refused with ``BudgetCapExceeded`` before anything is paid.

        An existing ``project_id`` with the same inputs continues that project (as ``resume``
        does, with what this call and this orchestrator give on top of what it saved); with
        other inputs (description, criteria, tasks) it is refused with ``ConfigError`` before
        anything is paid, unless ``restart`` discards its saved state (journal included) first.
        """
        given = self._given(config, quality_threshold=quality_threshold, team=team, job=job_id)
        state, tasks = self._new_state(project_description, success_criteria, project_id, tasks,
                                       given)  # fmt: skip
        async with self._session(constant(given.resolved())) as session:
            state.config = session.config
            async with capped(session, self.budget_hierarchy, state.budget.max_nanos):
                saved = await record(self, session, state, tasks, restart)
                if saved is not None:
                    # The same project again: it continues, with this call's settings on top.
                    return await continue_saved(self, session, saved, given)
                async with leased(session, state.project_id):
                    await Run(self, session, state).execute(tasks)
        return state

    async def create_project(
        self,
        project_description: str,
        success_criteria: str,
        project_id: str | None = None,
        *,
        tasks: Mapping[str, Task] | None = None,
        quality_threshold: float | None = None,
        restart: bool = False,
        team: str | None = None,
        job_id: str | None = None,
        config: RunConfig | None = None,
    ) -> str:
        """Save a project to be run later by ``resume`` (a worker's, say) and return its id,
        with every check ``run_project`` makes before paying anything, and nothing paid."""
        given = self._given(config, quality_threshold=quality_threshold, team=team, job=job_id)
        state, tasks = self._new_state(project_description, success_criteria, project_id, tasks,
                                       given)  # fmt: skip
        async with self._session(constant(given.resolved(), running=False)) as session:
            if session.store is None:
                raise ConfigError("a project saved for later needs a state store")
            async with capped(session, self.budget_hierarchy, state.budget.max_nanos):
                saved = await record(self, session, state, tasks, restart)
                if saved is None and tasks is not None:
                    order = execution_order(dict(tasks))
                    await session.store.projects.save_plan(
                        state.project_id, dict(tasks), order, 0.0
                    )
        return state.project_id

    def _given(self, config: RunConfig | None, **fields: Any) -> RunConfig:
        """What a call gives (``fields``, then ``config``) over what this orchestrator was
        given: not yet the defaults, nor what a project saved."""
        try:
            named = RunConfig(**{k: v for k, v in fields.items() if v is not None})
        except TypeError as exc:
            raise ConfigError(f"not a run setting: {exc}") from None
        return named.over(config or RunConfig()).over(self.config)

    def _new_state(
        self,
        project_description: str,
        success_criteria: str,
        project_id: str | None,
        tasks: Mapping[str, Task] | None,
        given: RunConfig,
    ) -> tuple[ProjectState, Mapping[str, Task] | None]:
        if project_id is not None:
            check_project_id(project_id)
        if tasks is not None:
            # Tasks built in code get the same checks as a project file's: ids, deps, validators.
            tasks = parse_tasks({"tasks": [t.to_dict() for t in tasks.values()]}, origin="tasks")
        config = given.resolved()
        assert config.quality_threshold is not None
        state = ProjectState(
            project_id=project_id or new_project_id(),
            project_description=project_description,
            success_criteria=success_criteria,
            budget=self._fresh_budget(config),
            quality_threshold=config.quality_threshold,
            config=config,
        )
        return state, tasks

    async def run_job(self, spec: JobSpec) -> ProjectState:
        """Run ``spec`` with its own budget, charged to its team's and job's caps and under its
        policies besides this orchestrator's; the caps and every policy are checked before
        anything is paid (``BudgetCapExceeded``, ``ConfigError``)."""
        return await self._for_job(spec).run_project(**_job_arguments(spec))

    async def submit_job(self, spec: JobSpec) -> str:
        """Save ``spec`` as ``run_job`` would run it (its budget, caps and policies checked,
        nothing paid) for a worker to run; its project id."""
        return await self._for_job(spec).create_project(**_job_arguments(spec))

    def _for_job(self, spec: JobSpec) -> Orchestrator:
        job = copy.copy(self)  # the same client, stores, profiles and predictor
        job.budget = spec.budget
        policies = (*(self.config.policies or ()), *spec.policies)
        job.config = replace(
            self.config,
            max_usd=spec.budget.max_usd,
            max_time_seconds=spec.budget.max_time_seconds,
            policies=policies or None,
        )
        return job

    def get_channel(self, name: str) -> TaskChannel:
        """The channel called ``name``, created on first use: for hooks and event handlers to
        pass structured results between the tasks of a run."""
        return self.channels.setdefault(name, TaskChannel())

    async def resume(
        self, project_id: str, config: RunConfig | None = None, **overrides: Any
    ) -> ProjectState:
        """Continue an interrupted project where it stopped, with its spend and clock carried over.

        It runs on the ``RunConfig`` it saved, with what is given here (``overrides``, by field
        name, e.g. ``max_usd=2.0``, then ``config``) and what this orchestrator was given on
        top, field by field; the result is saved for the next resume. A finished project
        (SUCCESS, PARTIAL_SUCCESS) is returned as saved and nothing runs. An unknown id raises
        ``UnknownProjectError``.
        """
        if not self._use_state and self.state_manager is None:
            raise ConfigError("resuming needs a state manager")
        given = self._given(config, **overrides)
        saved: SavedProject | None = None

        async def configure(store: StateManager | None) -> tuple[RunConfig, bool]:
            nonlocal saved
            assert store is not None
            saved = await store.projects.load(project_id)
            running = saved.status not in FINISHED
            return resumed_config(saved, given if running else RunConfig()), running

        async with self._session(configure) as session:
            assert saved is not None and session.store is not None
            may_spend = usd_to_nanos(session.config.max_usd or 0.0) - saved.spent_nanos
            async with capped(session, self.budget_hierarchy, max(0, may_spend)):
                return await continue_saved(self, session, saved, given)

    # -- resources and settings ---------------------------------------------------------------
    @asynccontextmanager
    async def _session(self, configure: Configure) -> AsyncIterator[Session]:
        """The session of one call (``open_session``: the stores and client this orchestrator
        was given, or made for the call), ended once the event handler has seen its events."""
        opened = open_session(
            configure,
            store=self.state_manager,
            use_state=self._use_state,
            cache=self._cache,
            client=self._client,
            backend=self._backend,
        )
        async with opened as session:
            try:
                yield session
            finally:
                await self._events_seen()

    def _router(
        self, session: Session, budget: Budget | None = None, project_id: str | None = None
    ) -> Router:
        """The model chooser of a run: this orchestrator's backend and profiles, the run's
        policies and budget, over the models usable now, every choice reported as the choice
        of ``project_id`` (runs of one orchestrator at once are audited apart)."""
        client = session.client
        self.telemetry.ensure(client.catalog)
        planner = ConstraintPlanner(
            PolicyEngine(session.policies),
            budget_left=(lambda: budget.remaining_usd) if budget is not None else None,
        )
        return Router(
            client.catalog,
            tuple(client.available_models()),
            client.is_healthy,
            backend=session.backend or session.config.backend(),
            profiles=self.telemetry.profiles,
            on_decision=functools.partial(self._decided, project_id),
            planner=planner,
            cost_model=self.cost_predictor,
            max_fallbacks=session.config.max_fallbacks or 0,
        )

    def _fresh_budget(self, config: RunConfig) -> Budget:
        """The run's limits, with nothing spent and the clock starting now: a run never
        inherits the spend or the elapsed time of an earlier one (``state.budget``)."""
        assert config.max_usd is not None and config.max_time_seconds is not None
        return Budget(
            max_usd=config.max_usd,
            max_time_seconds=config.max_time_seconds,
            clock=self.budget.clock,
            on_phase_warning=list(self.budget.on_phase_warning),
        )

    def _settings(self, config: RunConfig) -> dict[str, Any]:
        """What a project saves of its run: the config (its limits are columns of their own)
        and what the orchestrator was asked to keep with it."""
        saved = config.to_settings()
        for limit in ("max_usd", "max_time_seconds"):
            saved.pop(limit, None)
        return {**self.extra_settings, **saved}


def _renamed(
    budget: Budget | None,
    max_concurrency: int | None,
    policies: Iterable[Policy] | None,
    local: bool | str | os.PathLike[str] | None,
) -> RunConfig:
    """The ``Orchestrator`` keyword arguments whose ``RunConfig`` fields have other names or
    kinds: the budget's limits, the concurrency, the policies and the local model."""
    return RunConfig(
        max_usd=budget.max_usd if budget is not None else None,
        max_time_seconds=budget.max_time_seconds if budget is not None else None,
        concurrency=max_concurrency,
        policies=tuple(policies) if policies else None,
        local=os.fspath(local) if isinstance(local, os.PathLike) else local,
    )


def _default_budget(config: RunConfig) -> Budget:
    """The budget of ``config``'s limits (the defaults' where it gives none)."""
    limits = config.resolved()
    assert limits.max_usd is not None and limits.max_time_seconds is not None
    return Budget(max_usd=limits.max_usd, max_time_seconds=limits.max_time_seconds)


def _job_arguments(spec: JobSpec) -> dict[str, Any]:
    return {
        "project_description": spec.project_description,
        "success_criteria": spec.success_criteria,
        "project_id": spec.project_id,
        "tasks": spec.tasks,
        "team": spec.team,
        "job_id": spec.job_id,
    }
