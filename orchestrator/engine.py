"""``Orchestrator``: decompose → schedule → run each task's loop, under a hard budget and clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

from .budget import Budget, BudgetExceeded
from .cache import DiskCache
from .client import UnifiedClient
from .errors import NoProvidersError, ProviderError
from .events import Event, EventSink, ignore
from .gateway import LLMGateway
from .models import ProjectState, ProjectStatus, Task, TaskResult, TaskStatus, TaskType
from .prompts import DECOMPOSE_SYSTEM, DECOMPOSE_USER
from .providers.base import Message
from .routing import DECOMPOSITION_MAX_TOKENS, Router
from .task_runner import TaskContext, TaskRunner
from .taskgraph import TaskGraphError, decomposition_schema, execution_order, parse_tasks
from .validators import KNOWN_VALIDATORS

DECOMPOSITION_ATTEMPTS = 2  # models asked before giving up; each answer is paid for


class DecompositionFailed(Exception):
    pass


class Orchestrator:
    """Runs projects: ``await Orchestrator(budget=Budget(8.0)).run_project(description, criteria)``.

    ``cache`` defaults to a ``DiskCache`` in ``$ORCHESTRATOR_HOME`` (``use_cache=False`` turns it
    off); ``client`` defaults to a ``UnifiedClient`` over the keys in the environment.
    """

    def __init__(
        self,
        budget: Budget | None = None,
        cache: DiskCache | None = None,
        state_manager: object | None = None,
        max_concurrency: int = 3,
        *,
        client: UnifiedClient | None = None,
        use_cache: bool = True,
        quality_threshold: float = 0.85,
        on_event: EventSink | None = None,
        validator_timeout: float = 60.0,
        min_tasks: int = 5,
        max_tasks: int = 15,
    ) -> None:
        if not 0.0 <= quality_threshold <= 1.0:
            raise ValueError("quality_threshold must be between 0 and 1")
        self.budget = budget or Budget()
        self._cache = cache
        self._use_cache = use_cache
        self.state_manager = state_manager
        self.max_concurrency = max_concurrency
        self._client = client
        self.quality_threshold = quality_threshold
        self.emit = on_event or ignore
        self.validator_timeout = validator_timeout
        self.min_tasks = min_tasks
        self.max_tasks = max_tasks
        self.budget.on_phase_warning.append(self._phase_warning)

    def _phase_warning(self, phase: str, ratio: float) -> None:
        self.emit(Event("budget_warning", data={"phase": phase, "ratio": ratio}))

    async def run_project(
        self,
        project_description: str,
        success_criteria: str,
        project_id: str | None = None,
        *,
        tasks: Mapping[str, Task] | None = None,
        quality_threshold: float | None = None,
    ) -> ProjectState:
        """Run the whole project and return its final state; failures are statuses, not raises."""
        if tasks is not None:
            # Tasks built in code get the same checks as a project file's: ids, deps, validators.
            tasks = parse_tasks({"tasks": [t.to_dict() for t in tasks.values()]}, origin="tasks")
        state = ProjectState(
            project_id=project_id or new_project_id(),
            project_description=project_description,
            success_criteria=success_criteria,
            budget=self.budget,
            quality_threshold=(
                self.quality_threshold if quality_threshold is None else quality_threshold
            ),
        )
        client = self._client or UnifiedClient(max_concurrency=self.max_concurrency)
        cache = self._cache if self._cache is not None or not self._use_cache else DiskCache()
        self.emit(Event("run_started", data={"project_id": state.project_id}))
        try:
            await self._run(state, client, cache, tasks)
        finally:
            state.api_health = client.api_health()
            if self._client is None:
                await client.aclose()
            if cache is not None and self._cache is None:
                await cache.aclose()
        self.emit(Event("run_finished", data={"status": state.status.value}))
        return state

    async def _run(
        self,
        state: ProjectState,
        client: UnifiedClient,
        cache: DiskCache | None,
        tasks: Mapping[str, Task] | None,
    ) -> None:
        try:
            client.require_providers()
        except NoProvidersError as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        router = Router(client.catalog, tuple(client.available_models()), client.is_healthy)
        gateway = LLMGateway(client, state.budget, cache)
        ctx = TaskContext(
            gateway=gateway,
            router=router,
            budget=state.budget,
            criteria=state.success_criteria,
            threshold=state.quality_threshold,
            emit=self.emit,
            validator_timeout=self.validator_timeout,
        )
        timed_out = False
        try:
            async with asyncio.timeout(max(0.0, state.budget.seconds_left())):
                if tasks is None:
                    tasks = await self._decompose(state, gateway, router)
                state.tasks = dict(tasks)
                state.execution_order = execution_order(state.tasks)
                self.emit(Event("decomposed", data={"tasks": len(state.tasks)}))
                await self._execute(state, ctx)
        except TimeoutError:
            timed_out = True
        except DecompositionFailed as exc:
            state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, str(exc)
            return
        except BudgetExceeded as exc:
            state.status, state.reason = ProjectStatus.BUDGET_EXHAUSTED, str(exc)
            return
        self._close_unfinished(state, "time limit reached" if timed_out else "not started")
        state.status = _final_status(state, timed_out, ctx.budget_exhausted)

    async def _decompose(
        self, state: ProjectState, gateway: LLMGateway, router: Router
    ) -> dict[str, Task]:
        schema = decomposition_schema(min_tasks=self.min_tasks, max_tasks=self.max_tasks)
        system = DECOMPOSE_SYSTEM.format(
            min_tasks=self.min_tasks,
            max_tasks=self.max_tasks,
            types=", ".join(t.value for t in TaskType),
            validators=", ".join(sorted(KNOWN_VALIDATORS)),
        )
        prompt = DECOMPOSE_USER.format(
            description=state.project_description, criteria=state.success_criteria
        )
        problems: list[str] = []
        for model in router.decomposition_chain()[:DECOMPOSITION_ATTEMPTS]:
            self.emit(Event("call_started", model=model.value, role="decomposition"))
            try:
                answer = await gateway.ask(
                    model,
                    [Message("user", prompt)],
                    system=system,
                    max_tokens=DECOMPOSITION_MAX_TOKENS,
                    phase="decomposition",
                    slot="decompose",
                    schema=schema,
                )
                tasks = parse_tasks(
                    answer.parsed,
                    origin=f"decomposition by {model.value}",
                    min_tasks=self.min_tasks,
                    max_tasks=self.max_tasks,
                )
                execution_order(tasks)  # a cyclic plan is as unusable as a malformed one
                return tasks
            except (ProviderError, TaskGraphError) as exc:
                problems.append(str(exc))
        detail = problems[-1] if problems else "no model available"
        raise DecompositionFailed(f"decomposition failed: {detail}")

    async def _execute(self, state: ProjectState, ctx: TaskContext) -> None:
        """Start every task as soon as its own dependencies are done."""
        finished = {task_id: asyncio.Event() for task_id in state.execution_order}

        async def run_one(task: Task) -> None:
            try:
                for dependency in task.dependencies:
                    await finished[dependency].wait()
                blocked = [
                    d
                    for d in task.dependencies
                    if state.results[d].status in (TaskStatus.FAILED, TaskStatus.SKIPPED)
                ]
                if blocked:
                    self._skip(state, task, f"dependency {blocked[0]} did not produce output")
                elif ctx.budget_exhausted:
                    self._skip(state, task, "budget exhausted before it started")
                else:
                    await self._run_task(state, task, ctx)
            finally:
                finished[task.id].set()

        async with asyncio.TaskGroup() as group:
            for task_id in state.execution_order:
                group.create_task(run_one(state.tasks[task_id]))

    async def _run_task(self, state: ProjectState, task: Task, ctx: TaskContext) -> None:
        result = TaskResult(task.id)
        state.results[task.id] = result
        self.emit(Event("task_started", task.id))
        dependencies = {d: state.results[d] for d in task.dependencies}
        await TaskRunner(task, ctx, dependencies, result).run()
        self.emit(Event("task_finished", task.id, data={"result": result}))

    def _skip(self, state: ProjectState, task: Task, reason: str) -> None:
        state.results[task.id] = TaskResult(task.id, status=TaskStatus.SKIPPED, reason=reason)
        self.emit(Event("task_skipped", task.id, data={"reason": reason}))

    def _close_unfinished(self, state: ProjectState, reason: str) -> None:
        for task_id in state.execution_order:
            result = state.results.get(task_id)
            if result is None:
                state.results[task_id] = TaskResult(
                    task_id, status=TaskStatus.SKIPPED, reason=reason
                )
            elif result.reason == "interrupted":
                result.reason = reason


def _final_status(state: ProjectState, timed_out: bool, budget_exhausted: bool) -> ProjectStatus:
    statuses = [state.results[t].status for t in state.execution_order]
    if statuses and all(s is TaskStatus.COMPLETED for s in statuses):
        return ProjectStatus.SUCCESS
    if timed_out:
        return ProjectStatus.TIMEOUT
    if budget_exhausted:
        return ProjectStatus.BUDGET_EXHAUSTED
    return ProjectStatus.PARTIAL_SUCCESS


def new_project_id() -> str:
    return uuid.uuid4().hex[:12]
