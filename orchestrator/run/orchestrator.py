"""``Orchestrator``: the facade a user holds. It makes runs (``orchestrator.run.engine.Run``) and
gives them what they share: the stores and client, the config given, telemetry and cost
predictions, hooks, the audit log, the request to stop.

Every project is recorded when it starts, every paid call is journaled before its answer is
used, and every finished task is checkpointed, so an interrupted run resumes by id and pays for
nothing twice.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import replace
from typing import Any

from orchestrator.cli.project_file import check_project_id
from orchestrator.code.integration import Integration
from orchestrator.errors import (
    ConfigError,
    UnknownModelError,
)
from orchestrator.llm.cache import DiskCache
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import UnifiedClient
from orchestrator.money.budget import Budget
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.forecast import CostPredictor
from orchestrator.money.units import usd_to_nanos
from orchestrator.observe.audit import AuditLog
from orchestrator.observe.events import Event, EventPump, EventSink, guarded, ignore
from orchestrator.observe.hooks import EventType, Hook, HookRegistry
from orchestrator.observe.metrics import MetricsExporter, MetricsSnapshot
from orchestrator.observe.metrics import collect as collect_metrics
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.backends import BACKENDS, OptimizationBackend
from orchestrator.routing.policy import Policy, PolicyEngine, PolicySet
from orchestrator.routing.profiles import ModelProfile
from orchestrator.routing.router import Decision, Router
from orchestrator.routing.screen import ConstraintPlanner
from orchestrator.run.agents import JobSpec
from orchestrator.run.channel import TaskChannel
from orchestrator.run.client import run_client
from orchestrator.run.config import RunConfig
from orchestrator.run.engine import Run, Session, restore_spend
from orchestrator.run.taskgraph import (
    execution_order,
    parse_tasks,
)
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskType,
)
from orchestrator.settings import load_environment
from orchestrator.store.lease import Lease
from orchestrator.store.state import SavedProject, StateError, StateManager, UnknownProjectError
from orchestrator.text.visible import shorten

FINISHED = (ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS)

log = logging.getLogger(__name__)


class Orchestrator:
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
        # The keyword arguments are a RunConfig's fields under their older names; they win.
        given = RunConfig(
            max_usd=budget.max_usd if budget is not None else None,
            max_time_seconds=budget.max_time_seconds if budget is not None else None,
            quality_threshold=quality_threshold,
            concurrency=max_concurrency,
            policies=tuple(policies) if policies else None,
            integration=integration,
            integration_rounds=integration_rounds,
            min_tasks=min_tasks,
            max_tasks=max_tasks,
            max_fallbacks=max_fallbacks,
            local=os.fspath(local) if isinstance(local, os.PathLike) else local,
            validator_timeout=validator_timeout,
            allow_single_verdict=allow_single_verdict,
            use_cache=use_cache,
        )
        self.config = given.over(config or RunConfig())
        self._backend: OptimizationBackend | None = None
        if optimization_backend is not None:
            self.set_optimization_backend(optimization_backend)
        limits = self.config.resolved()
        assert limits.max_usd is not None and limits.max_time_seconds is not None
        self.budget = budget or Budget(
            max_usd=limits.max_usd, max_time_seconds=limits.max_time_seconds
        )
        self._cache = cache
        self.state_manager = state_manager
        self._use_state = use_state
        self._client = client
        self.hooks = HookRegistry()
        # Time-boxed like the hooks (``hooks.timeout``).
        self._on_event = (
            EventPump(on_event, lambda: self.hooks.timeout) if on_event is not None else None
        )
        self._display: EventSink = ignore
        self.emit: EventSink = self._emit
        # Run model-written code without isolation: only when the user explicitly asks, for
        # the runs of this orchestrator (never saved: a resume asks again).
        self.unsafe_validators = unsafe_validators
        # Saved with the project besides its config, and returned on resume.
        self.extra_settings = dict(extra_settings or {})
        # What calls of each model and task type cost: routing and forecasts use it, every
        # answered call feeds it, and it is saved with each project it ran.
        self.cost_predictor = cost_predictor or CostPredictor()
        # Caps across runs (organisation, team, job), saved in the state file for later runs;
        # share one between orchestrators that run at once so they hold money together.
        self.budget_hierarchy = budget_hierarchy or BudgetHierarchy()
        # What this orchestrator's runs measured about each model (quality, trust, latency,
        # cost), by ``provider/id``; built from the client's catalog at the first run.
        self.telemetry = TelemetryCollector()
        self.metrics_exporter: MetricsExporter | None = None
        self._current_run: ProjectState | None = None  # the run the metrics report on
        self.channels: dict[str, TaskChannel] = {}
        # Once set (a worker shutting down), no new paid call starts, those in flight finish and
        # are journaled, and the run ends INTERRUPTED, resumable.
        self.stopping = asyncio.Event()
        # Every model selection and every call of this orchestrator's runs, hash-chained.
        self.audit_log = audit_log

    @property
    def policies(self) -> PolicySet:
        """The policies this orchestrator's runs obey (a resume's, when none are given, are the
        ones its project was started with)."""
        return PolicySet(self.config.policies or ())

    @property
    def profiles(self) -> dict[str, ModelProfile]:
        """What this orchestrator's runs measured about each model (``self.telemetry``)."""
        return self.telemetry.profiles

    def add_hook(self, event_type: EventType, callback: Hook) -> None:
        """Call ``callback`` with keyword arguments on every ``event_type`` of this
        orchestrator's runs (``orchestrator.hooks``): sync or async, time-boxed, and never able
        to break or stall a run."""
        self.hooks.add(event_type, callback)

    def display(self, sink: EventSink) -> None:
        """Also send every event to ``sink``, called in order on the event loop's thread as
        each happens: for a progress display that must not race the program's other output.
        It must return at once (``on_event`` handlers run off the loop, time-boxed); one that
        raises is logged once."""
        self._display = guarded(sink)

    def _emit(self, event: Event) -> None:
        self._display(event)
        if self._on_event is not None:
            self._on_event(event)
        self.hooks.dispatch(event)

    def set_metrics_exporter(self, exporter: MetricsExporter | None) -> None:
        """Where ``export_metrics`` writes (``orchestrator.metrics``); a file exporter is also
        written after every finished task and at the end of each run."""
        self.metrics_exporter = exporter

    def export_metrics(self) -> MetricsSnapshot:
        """Export the model telemetry and the latest run's figures with the exporter set (if
        any), and return them."""
        snapshot = self._metrics_snapshot()
        if self.metrics_exporter is not None:
            self.metrics_exporter.export(snapshot)
        return snapshot

    def _metrics_snapshot(self) -> MetricsSnapshot:
        return collect_metrics(self.telemetry.profiles, self._current_run)

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
        async with self._session(_constant(given.resolved())) as session:
            state.config = session.config
            async with self._capped(session, state.budget.max_nanos):
                saved = await self._create(session, state, tasks, restart)
                if saved is not None:
                    # The same project again: it continues, with this call's settings on top.
                    return await self._continue(session, saved, given)
                async with self._leased(session, state.project_id):
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
        async with self._session(_constant(given.resolved(), running=False)) as session:
            if session.store is None:
                raise ConfigError("a project saved for later needs a state store")
            async with self._capped(session, state.budget.max_nanos):
                saved = await self._create(session, state, tasks, restart)
                if saved is None and tasks is not None:
                    order = execution_order(dict(tasks))
                    await session.store.save_plan(state.project_id, dict(tasks), order, 0.0)
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

    async def _create(
        self,
        session: Session,
        state: ProjectState,
        tasks: Mapping[str, Task] | None,
        restart: bool,
    ) -> SavedProject | None:
        """Record the project (None), or find it saved with the same inputs (returned); one
        saved with other inputs is refused before anything is paid."""
        self._refuse_uncovered(session, tasks)
        self._preload(session, tasks, done=set())
        if session.store is None:
            return None
        if restart:
            await self._discard(session, state.project_id)
        created = await session.store.create_project(
            state.project_id,
            description=state.project_description,
            criteria=state.success_criteria,
            max_usd=state.budget.max_usd,
            max_time_seconds=state.budget.max_time_seconds,
            settings=self._settings(session.config),
        )
        if created:
            return None
        saved = await session.store.load(state.project_id)
        changed = _changed_inputs(saved, state.project_description, state.success_criteria, tasks)
        if changed:
            raise ConfigError(
                f"project id {state.project_id!r} was saved with other inputs "
                f"({'; '.join(changed)}): use another --project-id, or --restart "
                "(restart=True) to discard its saved state and start again"
            )
        return saved

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
            saved = await store.load(project_id)
            running = saved.status not in FINISHED
            return _resumed_config(saved, given if running else RunConfig()), running

        async with self._session(configure) as session:
            assert saved is not None and session.store is not None
            may_spend = usd_to_nanos(session.config.max_usd or 0.0) - saved.spent_nanos
            async with self._capped(session, max(0, may_spend)):
                return await self._continue(session, saved, given)

    # -- the run -------------------------------------------------------------------------------
    async def _continue(
        self, session: Session, saved: SavedProject, given: RunConfig
    ) -> ProjectState:
        """Run ``saved`` again (or report it, finished) on its config with ``given`` on top."""
        finished = saved.status in FINISHED
        # A finished project is reported as it was.
        config = _resumed_config(saved, RunConfig() if finished else given)
        if not finished:
            # The models of the session's client, as a resume must find them again.
            models = session.config
            config = replace(config, local=models.local, providers=models.providers)
        session.config = config
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
            already_finished=finished,
        )
        resolve = _resolver(session.client)
        if saved.tasks is not None:
            state.tasks, state.execution_order = saved.tasks, saved.execution_order
        for task_id, record in saved.results.items():
            state.results[task_id] = TaskResult.from_record(record, resolve)
        state.integration = _saved_integration(saved)
        if finished:
            state.api_health = session.client.api_health()
            self.emit(Event("already_finished", data={"status": saved.status.value}))
            return state
        if session.store is not None:
            self.cost_predictor.load(await session.store.cost_estimates(saved.project_id))
        self._refuse_uncovered(session, saved.tasks)
        self._preload(session, saved.tasks, done=saved.final_tasks)
        used_up = _used_up(budget)
        if used_up is not None:
            # Nothing could run: say which limit and how to give more, and change nothing.
            state.status, state.reason = used_up
            state.api_health = session.client.api_health()
            return state
        assert session.store is not None
        # Claimed first: a run refused because another holds the project changes nothing.
        async with self._leased(session, saved.project_id) as lease:
            assert lease is not None
            await session.store.update_run(
                saved.project_id,
                max_usd=budget.max_usd,
                max_time_seconds=budget.max_time_seconds,
                settings={**saved.settings, **self._settings(config)},
                owner=lease.owner,
            )
            # Only finished tasks are kept; interrupted ones run again, replaying their journal.
            state.results = {t: state.results[t] for t in saved.final_tasks if t in state.results}
            state.status, state.reason = ProjectStatus.RUNNING, ""
            await Run(self, session, state).execute(state.tasks or None, resumed=True)
        return state

    async def _discard(self, session: Session, project_id: str) -> None:
        """Forget a project's saved state, once no other run holds it."""
        assert session.store is not None
        try:
            await session.store.load(project_id)
        except UnknownProjectError:
            return
        async with self._leased(session, project_id):
            await session.store.delete_project(project_id)

    @asynccontextmanager
    async def _leased(self, session: Session, project_id: str) -> AsyncIterator[Lease | None]:
        """Hold the project for this run, so no other run pays for it (without a state store
        there is nothing to share)."""
        if session.store is None:
            yield None
            return
        async with Lease(session.store, project_id) as held:
            session.lease = held
            try:
                yield held
            finally:
                session.lease = None

    # -- resources and settings ---------------------------------------------------------------
    @asynccontextmanager
    async def _session(self, configure: Configure) -> AsyncIterator[Session]:
        """The state store, config, cache and client of one call, closing what was created
        here. ``configure`` says the call's config (resolved) and whether it will run (False:
        nothing is asked, so no local model is started), once the store is open."""
        async with AsyncExitStack() as stack:
            store = self.state_manager
            if store is None and self._use_state:
                store = StateManager()
                stack.push_async_callback(store.aclose)
            # Opened before anything is paid for: a corrupt or foreign file stops us here.
            if store is not None:
                await store.open()
            config, running = await configure(store)
            cache = self._cache if config.use_cache else None
            if cache is None and config.use_cache:
                cache = DiskCache()
                stack.push_async_callback(cache.aclose)
            if cache is not None:
                await cache.open()
            client = self._client
            if client is None:
                made = run_client(
                    config,
                    load_environment(),
                    running=running,
                    note=functools.partial(log.warning, "%s"),
                )
                opened, config = await stack.enter_async_context(made)
                client = opened
            try:
                yield Session(client, cache, store, config, backend=self._backend)
            finally:
                if self._on_event is not None:  # the handler has seen the call's events
                    await asyncio.shield(self._on_event.drain())

    @asynccontextmanager
    async def _capped(self, session: Session, may_spend_nanos: int) -> AsyncIterator[None]:
        """Hold ``may_spend_nanos`` against the organisation's, and the run's team's and job's
        caps while the run goes on (``BudgetCapExceeded`` if it could pass one)."""
        store, hierarchy = session.store, self.budget_hierarchy
        team, job_id = session.config.team, session.config.job
        if store is None:
            yield
            return
        if hierarchy.caps:
            await store.save_budget_caps(hierarchy.caps)  # for later runs and processes
        caps = await store.budget_caps()
        if not caps:
            yield
            return
        spent = await store.scope_spend_nanos(team, job_id)
        hold = hierarchy.hold(spent, caps, may_spend_nanos, team, job_id)
        try:
            yield
        finally:
            hierarchy.release(hold)

    async def _load_telemetry(self, session: Session) -> None:
        """What earlier runs measured about each model, for those this orchestrator has not
        measured itself: routing and the metrics start from it."""
        if session.store is None:
            return
        self.telemetry.ensure(session.client.catalog)
        self.telemetry.restore(await session.store.model_telemetry())

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

    def _refuse_uncovered(self, session: Session, tasks: Mapping[str, Task] | None) -> None:
        """Refuse, before anything is paid, a run whose policies leave some job without a
        model: the planner (without a task list), a task type's authors, the evaluators."""
        if not session.policies or not session.client.usable_providers():
            return
        router = replace(self._router(session), on_decision=None)
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

    def _decided(self, project_id: str | None, decision: Decision) -> None:
        log.debug("%s", decision.explain())
        if self.audit_log is not None:
            self.audit_log.record(
                "decision", decision.to_record(), project_id=project_id, task_id=decision.task_id
            )
        chosen = decision.chosen.value if decision.chosen else None
        self.emit(
            Event(
                "model_selected",
                decision.task_id,
                chosen,
                decision.role,
                {"decision": decision, "backend": decision.backend},
            )
        )

    def _preload(
        self, session: Session, tasks: Mapping[str, Task] | None, *, done: Collection[str]
    ) -> None:
        """Start loading the SDKs of the models the run's first calls go to, in the background,
        as soon as the plan is known: the planner's and, as the plan is not known yet, those of
        every task type; otherwise those of the tasks not ``done`` that can start at once."""
        client = session.client
        router = self._router(session)
        if tasks is None:
            types = [t for t in TaskType if t is not TaskType.EVALUATE]
            client.preload(router.first_calls(types, planner=True))
            return
        ready = [
            task
            for task_id, task in tasks.items()
            if task_id not in done and all(d in done for d in task.dependencies)
        ]
        client.preload(router.first_calls(task.type for task in ready))

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


Configure = Callable[[StateManager | None], Awaitable[tuple[RunConfig, bool]]]


def _constant(config: RunConfig, *, running: bool = True) -> Configure:
    """A call's config known before its store is read: a new project's (``running`` False: one
    saved for later)."""

    async def configure(store: StateManager | None) -> tuple[RunConfig, bool]:
        return config, running

    return configure


def _resumed_config(saved: SavedProject, given: RunConfig) -> RunConfig:
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


def _job_arguments(spec: JobSpec) -> dict[str, Any]:
    return {
        "project_description": spec.project_description,
        "success_criteria": spec.success_criteria,
        "project_id": spec.project_id,
        "tasks": spec.tasks,
        "team": spec.team,
        "job_id": spec.job_id,
    }


def new_project_id() -> str:
    return secrets.token_hex(6)
