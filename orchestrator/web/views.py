"""What the pages show, read from the state store: the projects, and one project's tasks, spend
against its caps, integration rounds, paid calls and audit check. Reading only: nothing here
writes to the store."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.code.integration import Integration, Round
from orchestrator.money.ledger import run_scopes, scope_name
from orchestrator.money.units import nanos_to_usd
from orchestrator.observe.audit import verify
from orchestrator.run.tasks import ProjectStatus
from orchestrator.store.holders import shown_owner
from orchestrator.store.journal import JournaledCall
from orchestrator.store.projects import SavedProject
from orchestrator.store.state import StateManager
from orchestrator.web.graph import Drawing, layered

CALLS_SHOWN = 500  # the newest paid calls a project's page lists
RECENT_SECONDS = 300.0  # the window of the recent burn rate


@dataclass(frozen=True)
class ProjectRow:
    """One project in the list."""

    project_id: str
    status: str
    holder: str | None  # the machine and process of the run that holds it now
    queued: bool  # waiting in the workers' queue for one to take it
    spent_usd: float
    max_usd: float
    tasks_done: int
    tasks_total: int
    updated_at: float

    @property
    def live(self) -> bool:
        return self.holder is not None


@dataclass(frozen=True)
class Verdict:
    """A validator's or an integration check's outcome, as a word and its detail."""

    name: str
    outcome: str  # passed, failed, skipped (the tool is absent), not run (no sandbox)
    detail: str

    @classmethod
    def of(cls, record: dict[str, Any]) -> Verdict:
        if record.get("not_run"):
            outcome = "not run"
        elif record.get("skipped"):
            outcome = "skipped"
        else:
            outcome = "passed" if record.get("passed") else "failed"
        return cls(str(record.get("name", "?")), outcome, str(record.get("detail", "")))


@dataclass(frozen=True)
class TaskView:
    task_id: str
    task_type: str
    dependencies: list[str]
    state: str  # a finished task's status, else running, in flight, interrupted or waiting
    model: str | None
    reviewer: str | None
    score: float | None
    iterations: int
    cost_usd: float
    validators: list[Verdict]
    reason: str
    in_flight: list[str]  # its calls in flight now: each one's phase, and model when known


@dataclass(frozen=True)
class CapView:
    """A scope's spend against its cap: paid, held by calls in flight, and the cap (None: no
    cap)."""

    name: str
    spent_usd: float
    held_usd: float
    cap_usd: float | None

    @property
    def percent(self) -> float | None:
        if not self.cap_usd:
            return None
        return min(100.0, 100.0 * (self.spent_usd + self.held_usd) / self.cap_usd)


@dataclass(frozen=True)
class RoundView:
    number: int
    passed: bool
    checks: list[Verdict]
    failures: list[str]
    revised: list[str]  # the tasks asked to revise


@dataclass(frozen=True)
class AuditView:
    path: str
    ok: bool
    description: str
    project_records: int


@dataclass
class ProjectPage:
    project_id: str
    description: str
    criteria: str
    status: str
    holder: str | None  # the machine and process of the run that holds it now
    queued: bool  # waiting in the workers' queue for one to take it
    reason: str
    spent_usd: float
    max_usd: float
    elapsed_seconds: float
    max_time_seconds: float
    tasks: list[TaskView]
    drawing: Drawing
    caps: list[CapView]
    burn_usd_per_minute: float  # over the whole run
    recent_burn_usd_per_minute: float  # over the last RECENT_SECONDS
    rounds: list[RoundView]
    integration_note: str
    calls: list[JournaledCall]
    calls_total: int
    audit: AuditView | None

    @property
    def live(self) -> bool:
        return self.holder is not None

    @property
    def tasks_done(self) -> int:
        return sum(task.state in _FINISHED for task in self.tasks)

    @property
    def state_counts(self) -> list[tuple[str, int]]:
        """How many tasks are in each state, the most common first."""
        return Counter(task.state for task in self.tasks).most_common()

    @property
    def minutes_to_cap(self) -> float | None:
        """At the recent burn rate, how long until the tightest cap is reached (None: not
        burning, or no cap)."""
        rate = self.recent_burn_usd_per_minute
        rooms = [c.cap_usd - c.spent_usd - c.held_usd for c in self.caps if c.cap_usd is not None]
        if rate <= 0 or not rooms or not self.live:
            return None
        return max(min(rooms), 0.0) / rate


_FINISHED = frozenset({"completed", "degraded", "failed", "skipped"})


async def project_rows(state: StateManager, queued: Set[str] = frozenset()) -> list[ProjectRow]:
    """Every project, those a run holds now first, then the newest (``queued``: the projects
    waiting in the workers' queue)."""
    holders = await state.holders.live()
    rows = []
    for summary in await state.projects.summaries():
        owner = holders.get(summary.project_id)
        holder = shown_owner(owner) if owner and summary.status == ProjectStatus.RUNNING else None
        rows.append(
            ProjectRow(
                summary.project_id,
                summary.status,
                holder,
                holder is None and summary.project_id in queued,
                summary.spent_usd,
                summary.max_usd,
                summary.tasks_done,
                summary.tasks_total,
                summary.updated_at,
            )
        )
    return sorted(rows, key=lambda row: not row.live)  # stable: newest first within each


async def project_page(
    state: StateManager,
    project_id: str,
    audit_log: Path | None = None,
    queued: Set[str] = frozenset(),
) -> ProjectPage:
    """One project as the store holds it now (``UnknownProjectError``: no such project;
    ``queued``: the projects waiting in the workers' queue)."""
    saved = await state.projects.load(project_id)
    holder = await _holder(state, project_id) if saved.status == ProjectStatus.RUNNING else None
    waiting = holder is None and project_id in queued
    in_flight: dict[str, list[str]] = {}
    for task_id, phase, model, _held in await state.books.in_flight(project_id):
        in_flight.setdefault(task_id, []).append(f"{phase} on {model}" if model else phase)
    calls, calls_total = await state.journal.latest(project_id, CALLS_SHOWN)
    called = {call.task_id for call in calls}
    tasks = [
        _task_view(
            saved,
            task_id,
            holder is not None,
            waiting,
            in_flight.get(task_id, []),
            task_id in called,
        )
        for task_id in saved.execution_order
    ]
    integration = Integration.from_dict(saved.integration) if saved.integration else None
    recent = await state.journal.spent_since(project_id, time.time() - RECENT_SECONDS)
    return ProjectPage(
        project_id=project_id,
        description=saved.description,
        criteria=saved.criteria,
        status=saved.status.value,
        holder=holder,
        queued=waiting,
        reason=saved.reason,
        spent_usd=saved.spent_usd,
        max_usd=saved.max_usd,
        elapsed_seconds=saved.elapsed_seconds,
        max_time_seconds=saved.max_time_seconds,
        tasks=tasks,
        drawing=layered(
            saved.execution_order,
            {t.task_id: t.dependencies for t in tasks},
            {t.task_id: t.state for t in tasks},
        ),
        caps=await _caps(state, saved),
        burn_usd_per_minute=60 * saved.spent_usd / saved.elapsed_seconds
        if saved.elapsed_seconds > 0
        else 0.0,
        recent_burn_usd_per_minute=60 * nanos_to_usd(recent) / RECENT_SECONDS,
        rounds=[_round_view(r) for r in integration.rounds] if integration else [],
        integration_note=integration.note if integration else "",
        calls=calls,
        calls_total=calls_total,
        audit=await asyncio.to_thread(_audit_view, audit_log, project_id) if audit_log else None,
    )


async def _holder(state: StateManager, project_id: str) -> str | None:
    """Which machine and process holds the project now (None: no live run does)."""
    lease = await state.holders.lease(project_id)
    return None if lease is None else shown_owner(lease[0])


def _task_view(
    saved: SavedProject,
    task_id: str,
    live: bool,
    queued: bool,
    in_flight: list[str],
    called: bool,
) -> TaskView:
    task = saved.tasks[task_id] if saved.tasks else None
    result = saved.results.get(task_id)
    if task_id in saved.final_tasks and result is not None:
        state = str(result.get("status", "failed"))
    elif in_flight:
        state = "in flight"
    elif result is not None or called:
        state = "running" if live else "interrupted"
    else:
        # Without a run, or a worker to come, nothing will run it until a resume does.
        state = "waiting" if live or queued else "not run"
    record = result or {}
    return TaskView(
        task_id=task_id,
        task_type=task.type.value if task else "",
        dependencies=list(task.dependencies) if task else [],
        state=state,
        model=record.get("model_used"),
        reviewer=record.get("reviewer_model"),
        score=record.get("score"),
        iterations=int(record.get("iterations", 0)),
        cost_usd=float(record.get("cost_usd", 0.0)),
        validators=[Verdict.of(v) for v in record.get("validator_results", [])],
        reason=str(record.get("reason", "")),
        in_flight=sorted(in_flight),
    )


async def _caps(state: StateManager, saved: SavedProject) -> list[CapView]:
    """Every cap that applies to the project, from the shared ledger: the project's own, its
    job's, its team's and the organisation's (the scopes without a cap are left out)."""
    settings = saved.settings
    scopes = run_scopes(saved.project_id, settings.get("team"), settings.get("job"))
    rows = await state.books.ledger(scopes)
    caps = []
    for scope in reversed(scopes):  # the project's first
        row = rows.get(scope)
        if scope.startswith("project:"):
            held = row.reserved_nanos if row else 0
            caps.append(CapView("project", saved.spent_usd, nanos_to_usd(held), saved.max_usd))
        elif row is not None and row.cap_nanos is not None:
            caps.append(
                CapView(
                    scope_name(scope),
                    nanos_to_usd(row.spent_nanos),
                    nanos_to_usd(row.reserved_nanos),
                    nanos_to_usd(row.cap_nanos),
                )
            )
    return caps


def _round_view(done: Round) -> RoundView:
    return RoundView(
        number=done.number,
        passed=done.passed,
        checks=[Verdict.of(check.to_dict()) for check in done.checks],
        failures=[f"{failure.check}: {failure.summary}" for failure in done.failures],
        revised=sorted(done.requests),
    )


def _audit_view(path: Path, project_id: str) -> AuditView:
    """The audit log's chain check, and how many of its records are this project's (read from
    a thread: the log may be long)."""
    check = verify(path)
    records = 0
    if check.ok:
        with path.open(encoding="utf-8", errors="replace") as lines:
            records = sum(_project_of(line) == project_id for line in lines)
    return AuditView(str(path), check.ok, check.describe(path), records)


def _project_of(line: str) -> object:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a last line cut off in mid-write; the check above said so
    return record.get("project_id") if isinstance(record, dict) else None
