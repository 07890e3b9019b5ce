"""A run's final status and its reason: settled from its tasks' results once they have run
(``settle``: SUCCESS only when every task completed, the assembled tree passed and something
independent of the authors checked the work), overridden when another run took the project
(``end_if_taken_over``), and saved with what the run learned (``save_end``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestrator.errors import OrchestratorError
from orchestrator.money.budget import PHASE_SHARES, Budget
from orchestrator.money.units import format_usd
from orchestrator.run.session import Session
from orchestrator.run.tasks import ProjectState, ProjectStatus, TaskStatus
from orchestrator.store.state import SavedProject
from orchestrator.task.calls import describe_outage

if TYPE_CHECKING:
    from orchestrator.run.orchestrator import Orchestrator

log = logging.getLogger(__name__)


def settle(
    state: ProjectState, *, timed_out: bool, budget_exhausted: bool, outages: Mapping[str, str]
) -> None:
    """Set ``state``'s status and reason: ``timed_out`` (the clock stopped the run),
    ``budget_exhausted`` (the budget stopped a task) and ``outages`` (the providers whose outage
    stopped one, with their last errors) are what its tasks reported."""
    state.status = _final_status(state, timed_out, budget_exhausted, bool(outages))
    if state.status is ProjectStatus.SUCCESS and (unchecked := _self_assessed(state)):
        state.status, state.reason = ProjectStatus.PARTIAL_SUCCESS, unchecked
    elif state.status is ProjectStatus.SYSTEM_FAILURE:
        state.reason = describe_outage(outages)
    elif state.status is ProjectStatus.PARTIAL_SUCCESS and state.integration is not None:
        state.reason = state.integration.reason()
    elif state.status in _LIMITS and not state.reason:
        state.reason = _stopped_by_limit(state)


# What stopped a run at a limit, and the flag that raises it on a resume.
_LIMITS = {ProjectStatus.BUDGET_EXHAUSTED: "--budget", ProjectStatus.TIMEOUT: "--time"}


def _stopped_by_limit(state: ProjectState) -> str:
    """Why a run stopped at its budget or its time limit, how far it got, and how to go on."""
    budget = state.budget
    if state.status is ProjectStatus.BUDGET_EXHAUSTED:
        limit = (
            f"the budget of {format_usd(budget.max_usd)} cannot pay for the next call "
            f"({format_usd(budget.spent_usd)} spent)"
        )
    else:
        limit = f"the time limit of {budget.max_time_seconds:g} s ran out"
    results = [state.results[t] for t in state.execution_order if t in state.results]
    finished = sum(not r.interrupted for r in results)
    return (
        f"{limit}: {finished} of {len(state.execution_order)} tasks finished; the rest resume "
        f"with --resume {state.project_id} (and a larger {_LIMITS[state.status]})"
    )


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


async def end_if_taken_over(session: Session, state: ProjectState) -> None:
    """A run that lost its project, whatever else happened, ends SYSTEM_FAILURE saying so and
    reports what the store says the project paid (the new holder's calls included): its own
    figure would hide money spent, and its state is no longer the project's."""
    lease = session.lease
    if lease is None:
        return
    await lease.confirm()
    if lease.lost is None:
        return
    state.status, state.reason = ProjectStatus.SYSTEM_FAILURE, lease.lost
    assert session.store is not None
    try:
        saved = await session.store.projects.load(state.project_id)
    except OrchestratorError as exc:
        log.warning("the project's spend cannot be read back: %s; this run's own is shown", exc)
        return
    restore_spend(state.budget, saved)


async def save_end(owner: Orchestrator, session: Session, state: ProjectState) -> None:
    """The final status and what was learned of costs and models, written (unless the run lost
    its project) even while the run is being cancelled."""
    if not session.may_write:
        return
    assert session.store is not None
    estimates = owner.cost_predictor.export()
    await asyncio.shield(session.store.measures.save_cost_estimates(state.project_id, estimates))
    await asyncio.shield(owner.telemetry.save(session.store.measures))
    holder = session.lease.owner if session.lease else None
    await asyncio.shield(
        session.store.projects.finish(
            state.project_id, state.status, state.reason, state.budget.elapsed_seconds, owner=holder
        )
    )


def restore_spend(budget: Budget, saved: SavedProject) -> None:
    """The budget shows what the journal says the project paid, each phase's share too."""
    budget.spent_nanos = saved.spent_nanos
    budget.phase_nanos = {**dict.fromkeys(PHASE_SHARES, 0), **saved.phase_nanos}
