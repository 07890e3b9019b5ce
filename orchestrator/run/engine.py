"""The engine: ``Run``, one run of one project, from its plan to its final status.

``Run.execute`` is the control loop: decompose (unless the plan is known), start every task as
soon as its dependencies are done, integrate the tree, then settle the status and save it. A
``Run`` owns what is the run's alone: its project's state, the session it runs in (client,
stores, lease, config), its gateway and journal, its metrics feed, and what its tasks reported
(the budget ran out, providers were down). Any number of runs of one ``Orchestrator``
(``orchestrator.run.orchestrator``) go on at once without sharing any of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.code.integration import Integration, IntegrationPhase, Round
from orchestrator.code.sandbox import Sandbox, choose
from orchestrator.code.validators import EXECUTING_VALIDATORS, KNOWN_VALIDATORS
from orchestrator.errors import NoProvidersError, OrchestratorError, ProviderError
from orchestrator.llm.cache import DiskCache
from orchestrator.llm.catalog import Model
from orchestrator.llm.client import Completion, UnifiedClient
from orchestrator.llm.fallback import Call, ChainFailed, Failures, ask_chain
from orchestrator.llm.gateway import Journal, LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.money.budget import PHASE_SHARES, Budget, BudgetExceeded
from orchestrator.money.ledger import Ledger
from orchestrator.money.units import nanos_to_usd
from orchestrator.observe.events import Event, EventKind
from orchestrator.observe.metrics import MetricsFeed, MetricsSnapshot
from orchestrator.observe.metrics import collect as collect_metrics
from orchestrator.routing.backends import OptimizationBackend
from orchestrator.routing.policy import PolicySet
from orchestrator.routing.router import DECOMPOSITION_MAX_TOKENS, Router
from orchestrator.run.config import DEFAULTS, RunConfig
from orchestrator.run.prompts import DECOMPOSE_SYSTEM, DECOMPOSE_USER
from orchestrator.run.task_runner import (
    REVIEW_ROLES,
    ProvidersUnavailable,
    TaskContext,
    TaskRunner,
    describe_outage,
)
from orchestrator.run.taskgraph import (
    TaskGraphError,
    decomposition_schema,
    default_plan,
    execution_order,
    parse_tasks,
)
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
)
from orchestrator.store.lease import Lease
from orchestrator.store.state import SavedProject, StateManager

if TYPE_CHECKING:
    from orchestrator.run.orchestrator import Orchestrator

log = logging.getLogger(__name__)

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
class Session:
    """The client, stores, config and lease one call of the orchestrator runs with."""

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


class Run:
    """One run of ``state``'s project in ``session``, for ``owner``."""

    def __init__(self, owner: Orchestrator, session: Session, state: ProjectState) -> None:
        self.owner = owner
        self.session = session
        self.state = state
        self.gateway: LLMGateway | None = None  # made when the run starts, with its journal
        # What its tasks reported: the budget stopped one; providers whose outage stopped one,
        # with their last errors (the run cannot finish).
        self.budget_exhausted = False
        self.outages: dict[str, str] = {}
        # Exported after every finished task and at the end, where the exporter follows runs.
        exporter = owner.metrics_exporter
        self.feed = (
            MetricsFeed(exporter, self.metrics)
            if exporter is not None and getattr(exporter, "follows_run", False)
            else None
        )

    def emit(self, event: Event) -> None:
        self.owner.emit(event)
        if event.kind is EventKind.TASK_FINISHED and self.feed is not None:
            self.feed.request()

    def metrics(self) -> MetricsSnapshot:
        """This run's figures, with what the orchestrator measured of each model."""
        return collect_metrics(self.owner.telemetry.profiles, self.state)

    async def execute(self, tasks: Mapping[str, Task] | None, *, resumed: bool = False) -> None:
        """Run the project to its final status, saved (``tasks``: the plan, when known)."""
        state, session = self.state, self.session
        await self.owner._load_telemetry(session)
        self.owner._current_run = state  # what export_metrics reports on: the latest run
        budget = state.budget
        budget.on_phase_warning.append(self._phase_warning)
        gateway = self.gateway = await self._gateway()
        started: dict[str, Any] = {"project_id": state.project_id, "budget": budget}
        if resumed:
            # What the resume starts from: the plan's size (None: not planned yet) and its
            # finished tasks; the budget carries the spend so far.
            started.update(resumed=True, tasks=len(tasks) if tasks else None,
                           done=len(state.results))  # fmt: skip
        self.emit(Event("run_started", data=started))
        try:
            await self._plan_and_execute(tasks)
            if self.owner.stopping.is_set() and state.status is ProjectStatus.BUDGET_EXHAUSTED:
                state.status, state.reason = ProjectStatus.INTERRUPTED, STOPPED_GRACEFULLY
        except asyncio.CancelledError:
            state.status, state.reason = ProjectStatus.INTERRUPTED, "interrupted"
            await asyncio.shield(self.owner.hooks.drain(cancel=True))
            raise
        finally:
            await asyncio.shield(gateway.flush())
            await asyncio.shield(self._end_if_taken_over())
            budget.on_phase_warning.remove(self._phase_warning)
            state.api_health = session.client.api_health()
            await self._save_end()
        self.emit(Event("run_finished", data={"status": state.status.value}))
        await self.owner.hooks.drain()  # each is time-boxed: a slow one cannot hold the run up long

    async def _gateway(self) -> LLMGateway:
        """Every paid call of the run goes through it: held, journaled, cached, audited."""
        session, owner = self.session, self.owner
        if owner.audit_log is not None:
            owner.audit_log.add_secrets(session.client.secrets())
        return LLMGateway(
            session.client,
            self.state.budget,
            session.cache,
            await self._journal(),
            session.lease,
            audit=owner.audit_log,
            project_id=self.state.project_id,
            telemetry=owner.telemetry,
            stopping=owner.stopping,
        )

    async def _save_end(self) -> None:
        """The final status, what was learned of costs and models, the last metrics and the
        audit log: written even while the run is being cancelled."""
        state, session, owner = self.state, self.session, self.owner
        if session.may_write:
            assert session.store is not None
            estimates = owner.cost_predictor.export()
            await asyncio.shield(session.store.save_cost_estimates(state.project_id, estimates))
            await asyncio.shield(session.store.save_model_telemetry(owner.telemetry.export()))
            holder = session.lease.owner if session.lease else None
            await asyncio.shield(
                session.store.finish(
                    state.project_id,
                    state.status,
                    state.reason,
                    state.budget.elapsed_seconds,
                    owner=holder,
                )
            )
        if self.feed is not None:
            await self.feed.flush()  # the final figures
        if owner.audit_log is not None:
            await asyncio.shield(asyncio.to_thread(owner.audit_log.sync))

    async def _end_if_taken_over(self) -> None:
        """A run that lost its project, whatever else happened, ends SYSTEM_FAILURE saying so
        and reports what the store says the project paid (the new holder's calls included):
        its own figure would hide money spent, and its state is no longer the project's."""
        session, state = self.session, self.state
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
        restore_spend(state.budget, saved)

    async def _plan_and_execute(self, tasks: Mapping[str, Task] | None) -> None:
        session, state = self.session, self.state
        client = session.client
        try:
            client.require_providers()
        except NoProvidersError as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        router = self.owner._router(session, state.budget, state.project_id)
        assert self.gateway is not None  # made as the run started
        shared = _shared_roles(router.usable)
        if shared is not None:
            self.emit(Event("notice", data={"message": shared}))
        ctx = TaskContext(
            gateway=self.gateway,
            router=router,
            budget=state.budget,
            criteria=state.success_criteria,
            description=state.project_description,
            threshold=state.quality_threshold,
            emit=self.emit,
            telemetry=self.owner.telemetry,
            allow_single_verdict=bool(session.config.allow_single_verdict),
            validator_timeout=session.config.validator_timeout or 0.0,
            unsafe_validators=self.owner.unsafe_validators,
        )
        timed_out = False
        try:
            async with asyncio.timeout(max(0.0, state.budget.seconds_left())):
                if tasks is None:
                    tasks = await self._decompose(router)
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
                        "decomposed",
                        data={"tasks": len(state.tasks), "done": len(state.results)},
                    )
                )
                await self._choose_sandbox()
                await self._execute(ctx)
                await self._integrate(ctx)
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
                await self._close_unfinished(timed_out=False)
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(errors[0])
            return
        await self._close_unfinished(timed_out)
        state.status = _final_status(state, timed_out, self.budget_exhausted, bool(self.outages))
        if state.status is ProjectStatus.SUCCESS and (unchecked := _self_assessed(state)):
            state.status, state.reason = ProjectStatus.PARTIAL_SUCCESS, unchecked
        elif state.status is ProjectStatus.SYSTEM_FAILURE:
            state.reason = describe_outage(self.outages)
        elif state.status is ProjectStatus.PARTIAL_SUCCESS and state.integration is not None:
            state.reason = state.integration.reason()

    async def _choose_sandbox(self) -> None:
        """Say once, before any task runs, how model-written code will be run, if it will."""
        pending = [t for t in self.state.tasks.values() if t.id not in self.state.results]
        if any(EXECUTING_VALIDATORS.intersection(t.hard_validators) for t in pending):
            await self._sandbox()

    async def _sandbox(self) -> Sandbox | None:
        """The sandbox model-written code runs in (None: it does not run), said once per run."""
        state = self.state
        box = await choose(unsafe_allowed=self.owner.unsafe_validators)
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

    async def _integrate(self, ctx: TaskContext) -> None:
        """Check the assembled tree and send its failures back (``orchestrator.code.integration``);
        not after a run stopped early, which resumes here."""
        session, state = self.session, self.state
        stopped = self.budget_exhausted or self.outages
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
                self.budget_exhausted = True
                return  # unanswered: a resume with more budget asks again
            except ProvidersUnavailable as exc:
                self.outages.update(exc.errors)
                return
            result.integration_round = number
            await asyncio.shield(self._checkpoint(result))

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
            box=lambda: self._sandbox(),
            seconds=config.validator_timeout or 0.0,
            revise=revise,
            save=save,
            stopped=lambda: self.budget_exhausted or bool(self.outages),
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

    async def _decompose(self, router: Router) -> dict[str, Task]:
        config = self.session.config
        state = self.state
        gateway = self.gateway
        assert gateway is not None  # made as the run started
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
        call = Call(
            [Message("user", prompt)],
            system=system,
            max_tokens=DECOMPOSITION_MAX_TOKENS,
            phase="decomposition",
            slot="decompose",
            step="decomposition",
            about={"phase": "decomposition"},
            schema=schema,
        )
        plans: list[dict[str, Task]] = []

        def usable(answer: Completion) -> None:
            origin = f"decomposition by {answer.model.value}"
            plan = parse_tasks(answer.parsed, origin=origin, max_tasks=max_tasks)
            execution_order(plan)  # a cyclic plan is as unusable as a malformed one
            plans.append(plan)

        try:
            # An unusable plan hands over, and is not replayed by a rerun or a resume.
            await ask_chain(
                gateway,
                router.decomposition_chain(),
                call,
                self.emit,
                hand_over_on=(ProviderError, TaskGraphError),
                usable=usable,
            )
            tasks = plans[-1]
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

    async def _execute(self, ctx: TaskContext) -> None:
        """Start every task as soon as its own dependencies are done."""
        state = self.state
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
                    await self._skip(task, reason, final=not stopped)
                else:
                    # Started even after another task ran out of budget: a cheaper task may
                    # still fit, and one that does not stops at its first call, unpaid.
                    await self._run_task(task, ctx)
            finally:
                finished[task.id].set()

        async with asyncio.TaskGroup() as group:
            for task_id in state.execution_order:
                if task_id not in state.results:
                    group.create_task(run_one(state.tasks[task_id]))

    async def _run_task(self, task: Task, ctx: TaskContext) -> None:
        result = TaskResult(task.id)
        self.state.results[task.id] = result
        self.emit(Event("task_started", task.id))
        dependencies = {d: self.state.results[d] for d in task.dependencies}
        try:
            outcome = await TaskRunner(task, ctx, dependencies, result).run()
        finally:
            # Shielded: a task stopped by Ctrl-C or the clock still leaves its checkpoint.
            await asyncio.shield(self._checkpoint(result))
        self.budget_exhausted |= outcome.budget_exhausted
        self.outages.update(outcome.outages)
        self.emit(Event("task_finished", task.id, data={"result": result}))

    async def _skip(self, task: Task, reason: str, *, final: bool) -> None:
        result = TaskResult(
            task.id, status=TaskStatus.SKIPPED, reason=reason, interrupted=not final
        )
        self.state.results[task.id] = result
        await self._checkpoint(result)
        self.emit(Event("task_skipped", task.id, data={"reason": reason}))

    async def _checkpoint(self, result: TaskResult) -> None:
        session = self.session
        if not session.may_write:
            return
        assert session.store is not None
        lease = session.lease
        unfinished = result.status in (TaskStatus.PENDING, TaskStatus.RUNNING)
        # One transaction: the lease confirmed (and renewed), the task's cost read from the
        # journal, its result written.
        spent = await session.store.checkpoint_held(
            self.state.project_id,
            result.task_id,
            result.to_record(),
            final=not (result.interrupted or unfinished),
            elapsed=self.state.budget.elapsed_seconds,
            owner=lease.owner if lease is not None else None,
            lease_seconds=lease.seconds if lease is not None else 0.0,
        )
        if spent is None:
            assert lease is not None
            lease.taken()
        else:
            result.cost_usd = nanos_to_usd(spent)

    async def _close_unfinished(self, timed_out: bool) -> None:
        state = self.state
        reason = "time limit reached" if timed_out else "not started"
        for task_id in state.execution_order:
            result = state.results.get(task_id)
            if result is None:
                result = TaskResult(
                    task_id, status=TaskStatus.SKIPPED, reason=reason, interrupted=True
                )
                state.results[task_id] = result
                await self._checkpoint(result)
            elif result.reason == "interrupted":
                result.reason = reason
                await self._checkpoint(result)

    async def _journal(self) -> Journal | None:
        """The run's journal of paid calls, whose every call holds its worst case in the
        shared ledger on the organisation's, its team's, its job's and the project's rows."""
        store, lease = self.session.store, self.session.lease
        if store is None or lease is None:
            return None
        budget = self.state.budget
        _, settings = await store.run_settings(lease.project_id)
        ledger = Ledger(store, lease.project_id, lease.owner)
        expired = await ledger.open(budget.max_nanos, settings.get("team"), settings.get("job"))
        for hold in expired:
            budget.charge(hold.amount_nanos, hold.phase)  # journaled by the sweep, as charged
        journal = Journal(store, lease.project_id, budget, ledger)
        await journal.load()
        return journal

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
    # Whether each pytest run, the tasks' and the last integration round's, ran and passed.
    passed = [
        v.passed and not (v.skipped or v.not_run)
        for r in results
        for v in r.validator_results
        if v.name == "pytest"
    ]
    if state.integration is not None and state.integration.rounds:
        checks = state.integration.rounds[-1].checks
        passed += [c.passed and not (c.skipped or c.not_run) for c in checks if c.name == "pytest"]
    if any(passed):
        return None
    authors = sorted({r.model_used.value for r in results if r.model_used is not None})
    return (
        f"every grade came from the model that wrote the answer ({', '.join(authors)}) and no "
        "test ran and passed, so nothing independent checked the work; add a key or a second "
        "model for independent grading"
    )


def restore_spend(budget: Budget, saved: SavedProject) -> None:
    """The budget shows what the journal says the project paid, each phase's share too."""
    budget.spent_nanos = saved.spent_nanos
    budget.phase_nanos = {**dict.fromkeys(PHASE_SHARES, 0), **saved.phase_nanos}


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
