"""The engine: ``Run``, one run of one project, from its plan to its final status.

``Run.execute`` is the control loop: plan (``orchestrator.run.planning``, unless the plan is
known), start every task as soon as its dependencies are done, integrate the tree, then settle
the status (``orchestrator.run.outcome``) and save it. A ``Run`` owns what is the run's alone:
its project's state, the session it runs in (``orchestrator.run.session``: client, stores,
lease, config), its gateway and journal, its metrics feed, and what its tasks reported (the
budget ran out, providers were down). Any number of runs of one ``Orchestrator``
(``orchestrator.run.orchestrator``) go on at once without sharing any of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from orchestrator.code.integration import Integration, IntegrationPhase, Round
from orchestrator.code.sandbox import Sandbox, choose
from orchestrator.code.validators import EXECUTING_VALIDATORS
from orchestrator.errors import NoProvidersError, OrchestratorError
from orchestrator.llm.catalog import Model
from orchestrator.llm.gateway import Journal, LLMGateway
from orchestrator.money.budget import BudgetExceeded
from orchestrator.money.ledger import Ledger
from orchestrator.observe.events import Event, EventKind
from orchestrator.observe.metrics import MetricsFeed, MetricsSnapshot
from orchestrator.observe.metrics import collect as collect_metrics
from orchestrator.routing.router import Router
from orchestrator.run.outcome import end_if_taken_over, save_end, settle
from orchestrator.run.planning import DecompositionFailed, decompose
from orchestrator.run.session import Session
from orchestrator.run.taskgraph import execution_order
from orchestrator.run.tasks import ProjectState, ProjectStatus, Task, TaskResult, TaskStatus
from orchestrator.task.calls import ProvidersUnavailable
from orchestrator.task.evaluation import REVIEW_ROLES
from orchestrator.task.runner import TaskContext, TaskRunner

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


def _shared_roles(usable: tuple[Model, ...]) -> str | None:
    """What the run says when fewer models can serve than an answer has roles, once."""
    if len(usable) >= len(REVIEW_ROLES) or not usable:
        return None
    if len(usable) == 1:
        return ONE_MODEL.format(usable[0].value)
    return TWO_MODELS.format(*(model.value for model in usable))


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
            await asyncio.shield(end_if_taken_over(session, state))
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
        """The final status, what was learned of costs and models (``save_end``), the last
        metrics and the audit log: written even while the run is being cancelled."""
        await save_end(self.owner, self.session, self.state)
        if self.feed is not None:
            await self.feed.flush()  # the final figures
        if self.owner.audit_log is not None:
            await asyncio.shield(asyncio.to_thread(self.owner.audit_log.sync))

    async def _plan_and_execute(self, tasks: Mapping[str, Task] | None) -> None:
        """Plan (unless ``tasks`` is the plan), run every task, integrate the tree and settle
        the status, all within the run's time limit."""
        session, state = self.session, self.state
        try:
            session.client.require_providers()
        except NoProvidersError as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        router = self.owner._router(session, state.budget, state.project_id)
        ctx = self._context(router)
        timed_out = False
        try:
            async with asyncio.timeout(max(0.0, state.budget.seconds_left())):
                await self._plan(tasks, router)
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
        settle(
            state, timed_out=timed_out, budget_exhausted=self.budget_exhausted, outages=self.outages
        )

    def _context(self, router: Router) -> TaskContext:
        """What every task of the run works with (saying first if its models must share the
        roles of an answer)."""
        session, state = self.session, self.state
        assert self.gateway is not None  # made as the run started
        shared = _shared_roles(router.usable)
        if shared is not None:
            self.emit(Event("notice", data={"message": shared}))
        return TaskContext(
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

    async def _plan(self, tasks: Mapping[str, Task] | None, router: Router) -> None:
        """The run's plan: ``tasks``, or the planner's (``orchestrator.run.planning``), saved."""
        session, state = self.session, self.state
        if tasks is None:
            assert self.gateway is not None  # made as the run started
            tasks = await decompose(state, session.config, self.gateway, router, self.emit)
        state.tasks = dict(tasks)
        state.execution_order = execution_order(state.tasks)
        if await session.may_write_now():
            assert session.store is not None
            await session.store.projects.save_plan(
                state.project_id, state.tasks, state.execution_order, state.budget.elapsed_seconds
            )
        self.emit(Event("decomposed", data={"tasks": len(state.tasks), "done": len(state.results)}))

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
                    session.store.projects.save_integration(
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
            if ctx.router.learns:  # what routing learned from the task, kept for a resume
                await asyncio.shield(self._save_telemetry())
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
        await self.session.checkpoint(
            self.state.project_id, result, self.state.budget.elapsed_seconds
        )

    async def _save_telemetry(self) -> None:
        if self.session.may_write:
            assert self.session.store is not None
            await self.owner.telemetry.save(self.session.store.measures)

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
        _, settings = await store.projects.run_settings(lease.project_id)
        ledger = Ledger(store.books, lease.project_id, lease.owner)
        expired = await ledger.open(budget.max_nanos, settings.get("team"), settings.get("job"))
        for hold in expired:
            budget.charge(hold.amount_nanos, hold.phase)  # journaled by the sweep, as charged
        journal = Journal(store.journal, lease.project_id, budget, ledger)
        await journal.load()
        return journal

    def _phase_warning(self, phase: str, ratio: float) -> None:
        self.emit(Event("budget_warning", data={"phase": phase, "ratio": ratio}))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
