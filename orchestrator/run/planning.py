"""The plan of a run: ``decompose`` asks the planners, in the router's order, for the project's
tasks, and settles for a plan that can run (``default_plan``) when none of their answers can;
only when no planner could be reached does it fail (``DecompositionFailed``)."""

from __future__ import annotations

import logging

from orchestrator.code.validators import KNOWN_VALIDATORS
from orchestrator.errors import ProviderError
from orchestrator.llm.client import Completion
from orchestrator.llm.fallback import Call, ChainFailed, Failures, ask_chain
from orchestrator.llm.gateway import LLMGateway
from orchestrator.llm.providers.base import Message
from orchestrator.observe.events import Event, EventSink
from orchestrator.routing.router import DECOMPOSITION_MAX_TOKENS, Router
from orchestrator.run.config import RunConfig
from orchestrator.run.prompts import DECOMPOSE_SYSTEM, DECOMPOSE_USER
from orchestrator.run.taskgraph import (
    TaskGraphError,
    decomposition_schema,
    default_plan,
    execution_order,
    parse_tasks,
)
from orchestrator.run.tasks import ProjectState, Task, TaskType
from orchestrator.task.calls import describe_outage

log = logging.getLogger(__name__)

PLANNED_TASKS = (5, 15)  # what the planner is asked for; a plan outside it is still run


class DecompositionFailed(Exception):
    pass


async def decompose(
    state: ProjectState, config: RunConfig, gateway: LLMGateway, router: Router, emit: EventSink
) -> dict[str, Task]:
    """The tasks of ``state``'s project, as a planner wrote them (or the default plan)."""
    max_tasks = config.max_tasks
    guidance = _planned_tasks(config)
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
            _decomposition_call(state, max_tasks, guidance),
            emit,
            hand_over_on=(ProviderError, TaskGraphError),
            usable=usable,
        )
    except ChainFailed as exc:
        return _instead(state, exc.failures, max_tasks, emit)
    tasks = plans[-1]
    if not guidance[0] <= len(tasks) <= guidance[1]:
        emit(Event("plan_size", data={"tasks": len(tasks), "guidance": guidance}))
    return tasks


def _decomposition_call(
    state: ProjectState, max_tasks: int | None, guidance: tuple[int, int]
) -> Call:
    """What the planners are asked: the project, the task types and validators, the plan's
    schema."""
    system = DECOMPOSE_SYSTEM.format(
        min_tasks=guidance[0],
        max_tasks=guidance[1],
        types=", ".join(t.value for t in TaskType),
        validators=", ".join(sorted(KNOWN_VALIDATORS)),
    )
    prompt = DECOMPOSE_USER.format(
        description=state.project_description, criteria=state.success_criteria
    )
    return Call(
        [Message("user", prompt)],
        system=system,
        max_tokens=DECOMPOSITION_MAX_TOKENS,
        phase="decomposition",
        slot="decompose",
        step="decomposition",
        about={"phase": "decomposition"},
        schema=decomposition_schema(min_tasks=1, max_tasks=max_tasks),
    )


def _instead(
    state: ProjectState, failures: Failures, max_tasks: int | None, emit: EventSink
) -> dict[str, Task]:
    """The plan run when no planner's answer can be: none, when no planner answered."""
    why = _why_no_plan(failures, max_tasks)
    if failures.only_outages:
        raise DecompositionFailed(f"decomposition failed: {why}") from None
    # The planners answered, but nothing they said can run (a small local model's plans never
    # can): a plan that can, rather than a failure.
    tasks = default_plan(state.project_description, state.success_criteria, max_tasks)
    message = (
        f"the planner's answers could not be used ({why}); running a plan of "
        f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} instead: "
        f"{', '.join(tasks)} (write tasks: in a project file to choose your own)"
    )
    log.info("%s", message)  # shown once, by the notice, where there is a display
    emit(Event("notice", data={"message": message}))
    return tasks


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
