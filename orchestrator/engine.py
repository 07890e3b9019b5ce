"""``Orchestrator``: decompose → schedule → run each task's loop, under a hard budget and clock.

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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from .agents import TaskChannel
from .audit import AuditLog
from .budget import PHASE_SHARES, Budget, BudgetExceeded
from .cache import DiskCache
from .catalog import Model
from .client import Completion, UnifiedClient
from .cost import BudgetHierarchy, CostPredictor
from .errors import (
    ConfigError,
    NoProvidersError,
    OrchestratorError,
    ProviderError,
    UnknownModelError,
)
from .events import Event, EventKind, EventPump, EventSink, guarded, ignore
from .fallback import ChainFailed, Failures, first_answer
from .gateway import Journal, LLMGateway
from .hooks import EventType, Hook, HookRegistry
from .integration import Integration, IntegrationPhase, Round
from .lease import Lease
from .ledger import Ledger
from .metrics import MetricsExporter, MetricsFeed, MetricsSnapshot
from .metrics import collect as collect_metrics
from .models import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
)
from .money import nanos_to_usd, usd_to_nanos
from .optimization import BACKENDS, OptimizationBackend
from .planner import ConstraintPlanner
from .policy import JobSpec, Policy, PolicyEngine, PolicySet
from .project_file import check_project_id
from .prompts import DECOMPOSE_SYSTEM, DECOMPOSE_USER
from .providers.base import Message
from .routing import DECOMPOSITION_MAX_TOKENS, Decision, Router
from .run_client import run_client
from .run_config import DEFAULTS, RunConfig
from .sandbox import Sandbox, choose
from .settings import load_environment
from .state import SavedProject, StateError, StateManager, UnknownProjectError
from .task_runner import (
    REVIEW_ROLES,
    ProvidersUnavailable,
    TaskContext,
    TaskRunner,
    describe_outage,
)
from .taskgraph import (
    TaskGraphError,
    decomposition_schema,
    default_plan,
    execution_order,
    parse_tasks,
)
from .telemetry import ModelProfile, TelemetryCollector
from .validators import EXECUTING_VALIDATORS, KNOWN_VALIDATORS

STOPPED_GRACEFULLY = "stopped on request: the calls in flight finished; resumable"
ONE_MODEL = (
    "one model only ({}): it critiques nothing and grades its own answers, so scores are "
    "self-assessed; add a key or a second model for independent review"
)
TWO_MODELS = (
    "two models only ({}, {}) for three roles (author, critic, evaluator): the model that "
    "critiques an answer also grades it, so its grade is not independent of its critique; add a "
    "key or a third model for a separate grader"
)
PLANNED_TASKS = (5, 15)  # what the planner is asked for; a plan outside it is still run
FINISHED = (ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS)

log = logging.getLogger(__name__)


def _shared_roles(usable: tuple[Model, ...]) -> str | None:
    """What the run says when fewer models can serve than an answer has roles, once."""
    if len(usable) >= len(REVIEW_ROLES) or not usable:
        return None
    if len(usable) == 1:
        return ONE_MODEL.format(usable[0].value)
    return TWO_MODELS.format(*(model.value for model in usable))


class DecompositionFailed(Exception):
    pass


@dataclass
class _Session:
    client: UnifiedClient
    cache: DiskCache | None
    store: StateManager | None
    config: RunConfig = DEFAULTS  # the run's, resolved, saved with it for its resumes
    lease: Lease | None = None  # held while a run of the project goes on
    backend: OptimizationBackend | None = None  # None: the config's routing

    @property
    def policies(self) -> PolicySet:
        """What this run's choices obey."""
        return PolicySet(self.config.policies or ())

    @property
    def may_write(self) -> bool:
        """Whether this run may write the project's state: not once it lost the project."""
        return self.store is not None and (self.lease is None or self.lease.lost is None)

    async def may_write_now(self) -> bool:
        """``may_write``, the lease confirmed with the store first: a run paused past its lease
        may not have seen yet that another run took the project, whose state it would overwrite."""
        if self.lease is not None:
            await self.lease.confirm()
        return self.may_write


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
        self._metrics_feed: MetricsFeed | None = None
        self._current_run: ProjectState | None = None  # the run the metrics report on
        self.channels: dict[str, TaskChannel] = {}
        # Set by ``stop_gracefully``: no new paid call starts, those in flight finish.
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
        if event.kind is EventKind.TASK_FINISHED and self._metrics_feed is not None:
            self._metrics_feed.request()

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
        ``orchestrator.optimization``); the default is the routing table's order. A backend
        of ``BACKENDS`` is saved by its name, for resumes; another is used as given."""
        self._backend = backend
        name = getattr(backend, "name", None)
        if isinstance(name, str) and type(backend) is BACKENDS.get(name):
            self.config = replace(self.config, routing=name)

    @property
    def optimization_backend(self) -> OptimizationBackend:
        """The backend the next runs use (for a resume, unless set: the one it saved)."""
        return self._backend or BACKENDS[self.config.resolved().routing or "table"]()

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
            async with self._capped(session, session.config.team, session.config.job,
                                    state.budget.max_nanos):  # fmt: skip
                saved = await self._create(session, state, tasks, restart)
                if saved is not None:
                    # The same project again: it continues, with this call's settings on top.
                    return await self._continue(session, saved, given)
                async with self._leased(session, state.project_id):
                    await self._run(session, state, tasks)
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
        async with self._session(_constant(given.resolved()), running=False) as session:
            if session.store is None:
                raise ConfigError("a project saved for later needs a state store")
            async with self._capped(session, session.config.team, session.config.job,
                                    state.budget.max_nanos):  # fmt: skip
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
        session: _Session,
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

    def stop_gracefully(self) -> None:
        """Start no new paid call: the calls in flight finish and are journaled, and the run
        ends INTERRUPTED, resumable (a worker shutting down). Safe from a signal handler."""
        self.stopping.set()

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
            async with self._capped(
                session, session.config.team, session.config.job, max(0, may_spend)
            ):
                return await self._continue(session, saved, given)

    # -- the run -------------------------------------------------------------------------------
    async def _continue(
        self, session: _Session, saved: SavedProject, given: RunConfig
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
        _restore_spend(budget, saved)
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
        if saved.status not in FINISHED and session.store is not None:
            self.cost_predictor.load(await session.store.cost_estimates(saved.project_id))
        if saved.status not in FINISHED:
            self._refuse_uncovered(session, saved.tasks)
            self._preload(session, saved.tasks, done=saved.final_tasks)
        if saved.status in FINISHED:
            state.api_health = session.client.api_health()
            self.emit(Event("already_finished", data={"status": saved.status.value}))
            return state
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
            await self._run(session, state, state.tasks or None, resumed=True)
        return state

    async def _run(
        self,
        session: _Session,
        state: ProjectState,
        tasks: Mapping[str, Task] | None,
        *,
        resumed: bool = False,
    ) -> None:
        await self._load_telemetry(session)
        self._current_run = state
        exporter = self.metrics_exporter
        feed = self._metrics_feed = (
            MetricsFeed(exporter, self._metrics_snapshot)
            if exporter is not None and getattr(exporter, "follows_run", False)
            else None
        )
        budget = state.budget
        budget.on_phase_warning.append(self._phase_warning)
        journal = await self._journal(session, budget)
        if self.audit_log is not None:
            self.audit_log.add_secrets(session.client.secrets())
        gateway = LLMGateway(
            session.client,
            budget,
            session.cache,
            journal,
            session.lease,
            audit=self.audit_log,
            project_id=state.project_id,
            telemetry=self.telemetry,
            stopping=self.stopping,
        )
        started: dict[str, Any] = {"project_id": state.project_id, "budget": budget}
        if resumed:
            # What the resume starts from: the plan's size (None: not planned yet) and its
            # finished tasks; the budget carries the spend so far.
            started.update(resumed=True, tasks=len(tasks) if tasks else None,
                           done=len(state.results))  # fmt: skip
        self.emit(Event("run_started", data=started))
        try:
            await self._plan_and_execute(session, state, gateway, tasks)
            if self.stopping.is_set() and state.status is ProjectStatus.BUDGET_EXHAUSTED:
                state.status, state.reason = ProjectStatus.INTERRUPTED, STOPPED_GRACEFULLY
        except asyncio.CancelledError:
            state.status, state.reason = ProjectStatus.INTERRUPTED, "interrupted"
            await asyncio.shield(self.hooks.drain(cancel=True))
            raise
        finally:
            await asyncio.shield(gateway.flush())
            await asyncio.shield(self._end_if_taken_over(session, state))
            budget.on_phase_warning.remove(self._phase_warning)
            state.api_health = session.client.api_health()
            if session.may_write:
                assert session.store is not None
                estimates = self.cost_predictor.export()
                await asyncio.shield(session.store.save_cost_estimates(state.project_id, estimates))
                measured = self.telemetry.export()
                await asyncio.shield(session.store.save_model_telemetry(measured))
                owner = session.lease.owner if session.lease else None
                # Shielded: the final status must be written even while being cancelled.
                await asyncio.shield(
                    session.store.finish(
                        state.project_id,
                        state.status,
                        state.reason,
                        budget.elapsed_seconds,
                        owner=owner,
                    )
                )
            if feed is not None:
                await feed.flush()  # the final figures, even while being cancelled
                self._metrics_feed = None
            if self.audit_log is not None:
                await asyncio.shield(asyncio.to_thread(self.audit_log.sync))
        self.emit(Event("run_finished", data={"status": state.status.value}))
        await self.hooks.drain()  # each is time-boxed: a slow one cannot hold the run up long

    async def _end_if_taken_over(self, session: _Session, state: ProjectState) -> None:
        """A run that lost its project, whatever else happened, ends SYSTEM_FAILURE saying so
        and reports what the store says the project paid (the new holder's calls included):
        its own figure would hide money spent, and its state is no longer the project's."""
        lease = session.lease
        if lease is None:
            return
        await lease.confirm()
        if lease.lost is None:
            return
        state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, lease.lost
        assert session.store is not None
        try:
            saved = await session.store.load(state.project_id)
        except OrchestratorError as exc:
            log.warning("the project's spend cannot be read back: %s; this run's own is shown", exc)
            return
        _restore_spend(state.budget, saved)

    async def _plan_and_execute(
        self,
        session: _Session,
        state: ProjectState,
        gateway: LLMGateway,
        tasks: Mapping[str, Task] | None,
    ) -> None:
        client = session.client
        try:
            client.require_providers()
        except NoProvidersError as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        router = self._router(session, state.budget, state.project_id)
        shared = _shared_roles(router.usable)
        if shared is not None:
            self.emit(Event("notice", data={"message": shared}))
        ctx = TaskContext(
            gateway=gateway,
            router=router,
            budget=state.budget,
            criteria=state.success_criteria,
            description=state.project_description,
            threshold=state.quality_threshold,
            emit=self.emit,
            telemetry=self.telemetry,
            allow_single_verdict=bool(session.config.allow_single_verdict),
            validator_timeout=session.config.validator_timeout or 0.0,
            unsafe_validators=self.unsafe_validators,
        )
        timed_out = False
        try:
            async with asyncio.timeout(max(0.0, state.budget.seconds_left())):
                if tasks is None:
                    tasks = await self._decompose(state, gateway, router, session.config)
                state.tasks = dict(tasks)
                state.execution_order = execution_order(state.tasks)
                if await session.may_write_now():
                    assert session.store is not None
                    await session.store.save_plan(
                        state.project_id,
                        state.tasks,
                        state.execution_order,
                        state.budget.elapsed_seconds,
                    )
                self.emit(
                    Event(
                        "decomposed", data={"tasks": len(state.tasks), "done": len(state.results)}
                    )
                )
                await self._choose_sandbox(state)
                await self._execute(session, state, ctx)
                await self._integrate(session, state, ctx)
        except TimeoutError:
            timed_out = True
        except DecompositionFailed as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        except BudgetExceeded as exc:
            state.status, state.reason = ProjectStatus.BUDGET_EXHAUSTED, str(exc)
            return
        except (OrchestratorError, ExceptionGroup) as exc:
            # Storage failing mid-run (a full disk, a file taken away): stop, keep what was
            # checkpointed, and say why. Anything else is a bug and propagates as one.
            errors = _leaves(exc)
            if not all(isinstance(e, OrchestratorError) for e in errors):
                raise
            with suppress(OrchestratorError):  # the store may be what failed
                await self._close_unfinished(session, state, timed_out=False)
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(errors[0])
            return
        await self._close_unfinished(session, state, timed_out)
        state.status = _final_status(state, timed_out, ctx.budget_exhausted, bool(ctx.outages))
        if state.status is ProjectStatus.SUCCESS and (unchecked := _self_assessed(state)):
            state.status, state.reason = ProjectStatus.PARTIAL_SUCCESS, unchecked
        elif state.status is ProjectStatus.SYSTEM_FAILURE:
            state.reason = describe_outage(ctx.outages)
        elif state.status is ProjectStatus.PARTIAL_SUCCESS and state.integration is not None:
            state.reason = state.integration.reason()

    async def _choose_sandbox(self, state: ProjectState) -> None:
        """Say once, before any task runs, how model-written code will be run, if it will."""
        pending = [t for t in state.tasks.values() if t.id not in state.results]
        if any(EXECUTING_VALIDATORS.intersection(t.hard_validators) for t in pending):
            await self._sandbox(state)

    async def _sandbox(self, state: ProjectState) -> Sandbox | None:
        """The sandbox model-written code runs in (None: it does not run), said once per run."""
        box = await choose(unsafe_allowed=self.unsafe_validators)
        isolation = box.isolation if box else "unavailable"
        if state.sandbox != isolation:
            if box is not None and not box.isolated:
                log.warning(
                    "no sandbox available: validators run model-written code WITHOUT isolation "
                    "(unsafe_validators); it can read your files and keys and use your network"
                )
            state.sandbox = isolation
            self.emit(Event("sandbox", data={"isolation": state.sandbox}))
        return box

    async def _integrate(self, session: _Session, state: ProjectState, ctx: TaskContext) -> None:
        """Check the assembled tree and send its failures back (``orchestrator.integration``);
        not after a run stopped early, which resumes here."""
        stopped = ctx.budget_exhausted or ctx.outages
        config = session.config
        if not config.integration or stopped:
            return
        if any(state.results[t].interrupted for t in state.execution_order):
            return

        async def revise(task_id: str, request: str, number: int) -> None:
            task, result = state.tasks[task_id], state.results[task_id]
            dependencies = {d: state.results[d] for d in task.dependencies}
            runner = TaskRunner(task, ctx, dependencies, result)
            try:
                await runner.revise_for_integration(request, number)
            except BudgetExceeded:
                ctx.budget_exhausted = True
                return  # unanswered: a resume with more budget asks again
            except ProvidersUnavailable as exc:
                ctx.outages.update(exc.errors)
                return
            result.integration_round = number
            await asyncio.shield(self._checkpoint(session, state, result))

        async def save(record: Integration) -> None:
            if await session.may_write_now():
                assert session.store is not None
                await asyncio.shield(
                    session.store.save_integration(
                        state.project_id, record.to_dict(), state.budget.elapsed_seconds
                    )
                )

        phase = IntegrationPhase(
            state,
            config.integration_rounds or 0,
            box=lambda: self._sandbox(state),
            seconds=config.validator_timeout or 0.0,
            revise=revise,
            save=save,
            stopped=lambda: ctx.budget_exhausted or bool(ctx.outages),
            on_round=self._integration_round,
        )
        await phase.run()

    def _integration_round(self, report: Round, record: Integration) -> None:
        data = {
            "round": report.number,
            "passed": report.passed,
            "checks": report.describe(),
            "revise": sorted(report.requests),
            "finished": record.finished,
        }
        self.emit(Event("integration", data=data))

    async def _decompose(
        self, state: ProjectState, gateway: LLMGateway, router: Router, config: RunConfig
    ) -> dict[str, Task]:
        max_tasks = config.max_tasks
        schema = decomposition_schema(min_tasks=1, max_tasks=max_tasks)
        guidance = _planned_tasks(config)
        system = DECOMPOSE_SYSTEM.format(
            min_tasks=guidance[0],
            max_tasks=guidance[1],
            types=", ".join(t.value for t in TaskType),
            validators=", ".join(sorted(KNOWN_VALIDATORS)),
        )
        prompt = DECOMPOSE_USER.format(
            description=state.project_description, criteria=state.success_criteria
        )
        about = {"phase": "decomposition"}

        async def attempt(model: Model) -> dict[str, Task]:
            self.emit(Event("call_started", model=model.value, role="decomposition", data=about))
            plan: dict[str, Task] = {}

            def usable(answer: Completion) -> None:
                plan.update(
                    parse_tasks(
                        answer.parsed,
                        origin=f"decomposition by {model.value}",
                        max_tasks=max_tasks,
                    )
                )
                execution_order(plan)  # a cyclic plan is as unusable as a malformed one

            answer = await gateway.ask(
                model,
                [Message("user", prompt)],
                system=system,
                max_tokens=DECOMPOSITION_MAX_TOKENS,
                phase="decomposition",
                slot="decompose",
                schema=schema,
                usable=usable,  # an unusable plan is not replayed by a rerun or a resume
            )
            finished = {**about, "cost_usd": answer.cost_usd, "cached": answer.from_cache}
            self.emit(Event("call_finished", None, model.value, "decomposition", finished))
            return plan

        def failed(model: Model, exc: Exception) -> None:
            if isinstance(exc, ProviderError):
                error = {**about, "error": str(exc)}
                self.emit(Event("call_failed", None, model.value, "decomposition", error))

        try:
            tasks, _ = await first_answer(
                router.decomposition_chain(),
                attempt,
                hand_over_on=(ProviderError, TaskGraphError),
                on_failure=failed,
            )
        except ChainFailed as exc:
            why = _why_no_plan(exc.failures, max_tasks)
            if exc.failures.only_outages:
                raise DecompositionFailed(f"decomposition failed: {why}") from None
            # The planners answered, but nothing they said can run (a small local model's
            # plans never can): a plan that can, rather than a failure.
            tasks = default_plan(state.project_description, state.success_criteria, max_tasks)
            message = (
                f"the planner's answers could not be used ({why}); running a plan of "
                f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} instead: "
                f"{', '.join(tasks)} (write tasks: in a project file to choose your own)"
            )
            log.info("%s", message)  # shown once, by the notice, where there is a display
            self.emit(Event("notice", data={"message": message}))
            return tasks
        if not guidance[0] <= len(tasks) <= guidance[1]:
            self.emit(Event("plan_size", data={"tasks": len(tasks), "guidance": guidance}))
        return tasks

    async def _execute(self, session: _Session, state: ProjectState, ctx: TaskContext) -> None:
        """Start every task as soon as its own dependencies are done."""
        finished = {task_id: asyncio.Event() for task_id in state.execution_order}
        for task_id in state.results:
            finished[task_id].set()  # checkpointed by an earlier run of this project

        async def run_one(task: Task) -> None:
            try:
                for dependency in task.dependencies:
                    await finished[dependency].wait()
                # A dependency stopped by the run (budget, clock, Ctrl-C) may hold a draft, but it
                # is unfinished: building on it would leave stale work once it is redone.
                blocked = [
                    d
                    for d in task.dependencies
                    if state.results[d].status in (TaskStatus.FAILED, TaskStatus.SKIPPED)
                    or state.results[d].interrupted
                ]
                if blocked:
                    # A dependency stopped by the run is unfinished, not failed: so is this task.
                    stopped = [d for d in blocked if state.results[d].interrupted]
                    if stopped:
                        reason = f"dependency {stopped[0]} was interrupted"
                    else:
                        reason = f"dependency {blocked[0]} did not produce output"
                    await self._skip(session, state, task, reason, final=not stopped)
                else:
                    # Started even after another task ran out of budget: a cheaper task may
                    # still fit, and one that does not stops at its first call, unpaid.
                    await self._run_task(session, state, task, ctx)
            finally:
                finished[task.id].set()

        async with asyncio.TaskGroup() as group:
            for task_id in state.execution_order:
                if task_id not in state.results:
                    group.create_task(run_one(state.tasks[task_id]))

    async def _run_task(
        self, session: _Session, state: ProjectState, task: Task, ctx: TaskContext
    ) -> None:
        result = TaskResult(task.id)
        state.results[task.id] = result
        self.emit(Event("task_started", task.id))
        dependencies = {d: state.results[d] for d in task.dependencies}
        try:
            await TaskRunner(task, ctx, dependencies, result).run()
        finally:
            # Shielded: a task stopped by Ctrl-C or the clock still leaves its checkpoint.
            await asyncio.shield(self._checkpoint(session, state, result))
        self.emit(Event("task_finished", task.id, data={"result": result}))

    async def _skip(
        self, session: _Session, state: ProjectState, task: Task, reason: str, *, final: bool
    ) -> None:
        result = TaskResult(
            task.id, status=TaskStatus.SKIPPED, reason=reason, interrupted=not final
        )
        state.results[task.id] = result
        await self._checkpoint(session, state, result)
        self.emit(Event("task_skipped", task.id, data={"reason": reason}))

    async def _checkpoint(self, session: _Session, state: ProjectState, result: TaskResult) -> None:
        if not session.may_write:
            return
        assert session.store is not None
        lease = session.lease
        unfinished = result.status in (TaskStatus.PENDING, TaskStatus.RUNNING)
        # One transaction: the lease confirmed (and renewed), the task's cost read from the
        # journal, its result written.
        spent = await session.store.checkpoint_held(
            state.project_id,
            result.task_id,
            result.to_record(),
            final=not (result.interrupted or unfinished),
            elapsed=state.budget.elapsed_seconds,
            owner=lease.owner if lease is not None else None,
            lease_seconds=lease.seconds if lease is not None else 0.0,
        )
        if spent is None:
            assert lease is not None
            lease.taken()
        else:
            result.cost_usd = nanos_to_usd(spent)

    async def _close_unfinished(
        self, session: _Session, state: ProjectState, timed_out: bool
    ) -> None:
        reason = "time limit reached" if timed_out else "not started"
        for task_id in state.execution_order:
            result = state.results.get(task_id)
            if result is None:
                result = TaskResult(
                    task_id, status=TaskStatus.SKIPPED, reason=reason, interrupted=True
                )
                state.results[task_id] = result
                await self._checkpoint(session, state, result)
            elif result.reason == "interrupted":
                result.reason = reason
                await self._checkpoint(session, state, result)

    async def _discard(self, session: _Session, project_id: str) -> None:
        """Forget a project's saved state, once no other run holds it."""
        assert session.store is not None
        try:
            await session.store.load(project_id)
        except UnknownProjectError:
            return
        async with self._leased(session, project_id):
            await session.store.delete_project(project_id)

    @asynccontextmanager
    async def _leased(self, session: _Session, project_id: str) -> AsyncIterator[Lease | None]:
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
    async def _session(
        self, configure: Configure, *, running: bool = True
    ) -> AsyncIterator[_Session]:
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
            config, will_run = await configure(store)
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
                    running=running and will_run,
                    note=functools.partial(log.warning, "%s"),
                )
                client, config = await stack.enter_async_context(made)
            try:
                yield _Session(client, cache, store, config, backend=self._backend)
            finally:
                if self._on_event is not None:  # the handler has seen the call's events
                    await asyncio.shield(self._on_event.drain())

    @asynccontextmanager
    async def _capped(
        self, session: _Session, team: str | None, job_id: str | None, may_spend_nanos: int
    ) -> AsyncIterator[None]:
        """Hold ``may_spend_nanos`` against the organisation's, the team's and the job's caps while
        the run goes on (``BudgetCapExceeded`` if it could pass one)."""
        store, hierarchy = session.store, self.budget_hierarchy
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

    async def _journal(self, session: _Session, budget: Budget) -> Journal | None:
        """The run's journal of paid calls, whose every call holds its worst case in the
        shared ledger on the organisation's, its team's, its job's and the project's rows."""
        store, lease = session.store, session.lease
        if store is None or lease is None:
            return None
        _, settings = await store.run_settings(lease.project_id)
        ledger = Ledger(store, lease.project_id, lease.owner)
        expired = await ledger.open(budget.max_nanos, settings.get("team"), settings.get("job"))
        for hold in expired:
            budget.charge(hold.amount_nanos, hold.phase)  # journaled by the sweep, as charged
        journal = Journal(store, lease.project_id, budget, ledger)
        await journal.load()
        return journal

    async def _load_telemetry(self, session: _Session) -> None:
        """What earlier runs measured about each model, for those this orchestrator has not
        measured itself: routing and the metrics start from it."""
        if session.store is None:
            return
        self.telemetry.ensure(session.client.catalog)
        self.telemetry.restore(await session.store.model_telemetry())

    def _router(
        self, session: _Session, budget: Budget | None = None, project_id: str | None = None
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
            backend=session.backend or BACKENDS[session.config.routing or "table"](),
            profiles=self.telemetry.profiles,
            on_decision=functools.partial(self._decided, project_id),
            planner=planner,
            cost_model=self.cost_predictor,
            max_fallbacks=session.config.max_fallbacks or 0,
        )

    def _refuse_uncovered(self, session: _Session, tasks: Mapping[str, Task] | None) -> None:
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
        self, session: _Session, tasks: Mapping[str, Task] | None, *, done: Collection[str]
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

    def _phase_warning(self, phase: str, ratio: float) -> None:
        self.emit(Event("budget_warning", data={"phase": phase, "ratio": ratio}))


def _why_no_plan(failures: Failures, max_tasks: int | None) -> str:
    if failures.only_outages:
        return describe_outage(failures.outages)
    if failures.stopped_by_truncation:
        return failures.truncation_reason()
    detail = failures.last
    if max_tasks is not None and "need at most" in detail:
        detail += "; raise --max-tasks (max_tasks=) or simplify the project"
    return detail


def _planned_tasks(config: RunConfig) -> tuple[int, int]:
    """How many tasks the planner is asked for: guidance, not a rule."""
    upper = PLANNED_TASKS[1] if config.max_tasks is None else config.max_tasks
    lower = min(config.min_tasks or 1, upper)
    return lower, max(lower, min(PLANNED_TASKS[1], upper))


Configure = Callable[[StateManager | None], Awaitable[tuple[RunConfig, bool]]]


def _constant(config: RunConfig) -> Configure:
    """A call's config known before its store is read: a new project's."""

    async def configure(store: StateManager | None) -> tuple[RunConfig, bool]:
        return config, True

    return configure


def _resumed_config(saved: SavedProject, given: RunConfig) -> RunConfig:
    """A saved project's config with ``given`` on top, the defaults under both."""
    try:
        kept = RunConfig.from_settings(saved.settings)
    except ConfigError as exc:
        raise StateError(f"project {saved.project_id!r}: {exc}") from None
    limits = RunConfig(max_usd=saved.max_usd, max_time_seconds=saved.max_time_seconds)
    return given.over(limits.over(kept)).resolved()


def _final_status(
    state: ProjectState, timed_out: bool, budget_exhausted: bool, outage: bool
) -> ProjectStatus:
    statuses = [state.results[t].status for t in state.execution_order]
    integrated = state.integration is None or state.integration.passed
    if statuses and all(s is TaskStatus.COMPLETED for s in statuses) and integrated:
        return ProjectStatus.SUCCESS
    if timed_out:
        return ProjectStatus.TIMEOUT
    if outage:
        # Providers being down says nothing of the work: the run stops, resumable, and says so.
        return ProjectStatus.SYSTEM_FAILURE
    if budget_exhausted or any(state.results[t].interrupted for t in state.execution_order):
        return ProjectStatus.BUDGET_EXHAUSTED
    return ProjectStatus.PARTIAL_SUCCESS


def _self_assessed(state: ProjectState) -> str | None:
    """Why a run's success would rest on no evidence independent of its authors (every grade
    came from the model that wrote the answer, and no test ran and passed), or None."""
    results = [state.results[t] for t in state.execution_order]
    if not results or not all(r.self_graded for r in results):
        return None
    tests = [v for r in results for v in r.validator_results if v.name == "pytest"]
    if state.integration is not None and state.integration.rounds:
        tests += [c for c in state.integration.rounds[-1].checks if c.name == "pytest"]
    if any(t.passed and not (t.skipped or t.not_run) for t in tests):
        return None
    authors = sorted({r.model_used.value for r in results if r.model_used is not None})
    return (
        f"every grade came from the model that wrote the answer ({', '.join(authors)}) and no "
        "test ran and passed, so nothing independent checked the work; add a key or a second "
        "model for independent grading"
    )


def _restore_spend(budget: Budget, saved: SavedProject) -> None:
    """The budget shows what the journal says the project paid, each phase's share too."""
    budget.spent_nanos = saved.spent_nanos
    budget.phase_nanos = {**dict.fromkeys(PHASE_SHARES, 0), **saved.phase_nanos}


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
        changed.append(f"description was {_excerpt(saved.description)!r}")
    if saved.criteria != criteria:
        changed.append(f"criteria were {_excerpt(saved.criteria)!r}")
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


def _resolver(client: UnifiedClient):
    def resolve(key: str) -> Model | None:
        with suppress(UnknownModelError):
            return client.catalog.resolve(key)
        return None  # the model left the catalog since; the result keeps everything else

    return resolve


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _job_arguments(spec: JobSpec) -> dict[str, Any]:
    return {
        "project_description": spec.project_description,
        "success_criteria": spec.success_criteria,
        "project_id": spec.project_id,
        "tasks": spec.tasks,
        "team": spec.team,
        "job_id": spec.job_id,
    }


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_project_id() -> str:
    return uuid.uuid4().hex[:12]
