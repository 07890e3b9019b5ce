"""What runs measured, kept in the state store for later ones: what calls cost per model and task
type, how many calls a task took, what planning cost, and each model's telemetry.

All of it is derived (redone, not paid for), so it is written without a sync of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator.money.units import nanos_to_usd
from orchestrator.store.base import Program, Store
from orchestrator.store.projects import parse_plan

# What a model's telemetry record becomes, given the one stored (None: none, or unreadable).
Update = Callable[[dict[str, Any] | None], dict[str, Any]]


class Measures:
    """The cost estimates and model telemetry of one store, and what its journal says runs took."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- what calls cost, learnt per model and task type -----------------------------------------
    async def cost_estimates(self, project_id: str) -> list[tuple[str, str, float, int]]:
        """(model key, task type, moving average USD per call, samples) the project learnt."""
        rows = await self._store.run(
            "SELECT model, task_type, average_usd, samples FROM cost_estimates"
            " WHERE project_id = ?",
            (project_id,),
        )
        return [(str(m), str(t), float(a), int(n)) for m, t, a, n in rows]

    async def save_cost_estimates(
        self, project_id: str, estimates: Iterable[tuple[str, str, float, int]]
    ) -> None:
        await self._store.transaction(
            [
                (
                    "INSERT INTO cost_estimates (project_id, model, task_type, average_usd,"
                    " samples) VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, model, task_type)"
                    " DO UPDATE SET average_usd = excluded.average_usd,"
                    " samples = excluded.samples",
                    (project_id, model, task_type, average, samples),
                )
                for model, task_type, average, samples in estimates
            ],
            durable=False,  # derived: redone, not paid for
        )

    async def measured_cost_estimates(self) -> list[tuple[str, str, float, int]]:
        """(model key, task type, average USD per call, samples) over every project: each
        project's moving average weighted by its samples."""
        rows = await self._store.run(
            "SELECT model, task_type, SUM(average_usd * samples), SUM(samples)"
            " FROM cost_estimates WHERE samples > 0 GROUP BY model, task_type"
        )
        return [(str(m), str(t), float(total) / int(n), int(n)) for m, t, total, n in rows]

    async def measured_task_calls(self) -> list[tuple[str, str, str, str, int]]:
        """(project id, task id, task type, phase, paid calls) for every finished task of every
        planned project and each phase it paid in: what earlier runs took per task."""
        plans = await self._store.run("SELECT id, plan FROM projects WHERE plan IS NOT NULL")
        types = {
            (str(project_id), task.id): task.type.value
            for project_id, plan in plans
            for task in (parse_plan(plan)[0] or {}).values()
        }
        rows = await self._store.run(
            "SELECT j.project_id, j.task_id, j.phase, COUNT(*) FROM journal j"
            " JOIN results r ON r.project_id = j.project_id AND r.task_id = j.task_id"
            " WHERE r.final = 1 GROUP BY j.project_id, j.task_id, j.phase"
        )
        return [
            (str(p), str(t), types[(str(p), str(t))], str(phase), int(n))
            for p, t, phase, n in rows
            if (str(p), str(t)) in types
        ]

    async def measured_planning(self) -> list[float]:
        """What planning each planned project cost (its decomposition calls, from the journal)."""
        rows = await self._store.run(
            "SELECT SUM(j.cost_nanos) FROM journal j JOIN projects p ON p.id = j.project_id"
            " WHERE j.phase = 'decomposition' AND p.plan IS NOT NULL GROUP BY j.project_id"
        )
        return [nanos_to_usd(int(nanos)) for (nanos,) in rows]

    # -- what runs measured about each model, across runs -------------------------------------
    async def model_telemetry(self) -> dict[str, dict[str, Any]]:
        rows = await self._store.run("SELECT model, record FROM model_telemetry")
        found: dict[str, dict[str, Any]] = {}
        for model, text in rows:
            record = _record(text)
            if record is not None:  # a damaged row only costs what it measured
                found[str(model)] = record
        return found

    async def save_model_telemetry(self, records: Mapping[str, dict[str, Any] | Update]) -> None:
        """Each model's telemetry record, in one transaction: a record as it is, or an update,
        given what is stored for the model (None: nothing yet) and returning what to store.

        An update reads the model's row locked (inserted empty if there was none), so that
        processes saving the same model at once on a shared store take turns: each merges
        into what the other wrote rather than overwriting it. Models are taken in one order
        (their keys), so two such saves never deadlock."""

        def save() -> Program[None]:
            for model in sorted(records):
                update = records[model]
                if callable(update):
                    rows = yield (
                        "INSERT INTO model_telemetry (model, record) VALUES (?, 'null')"
                        " ON CONFLICT (model) DO UPDATE SET record = model_telemetry.record"
                        " RETURNING record",
                        (model,),
                    )
                    update = update(_record(rows[0][0]) if rows else None)
                yield (
                    "INSERT INTO model_telemetry (model, record) VALUES (?, ?)"
                    " ON CONFLICT (model) DO UPDATE SET record = excluded.record",
                    (model, json.dumps(update)),
                )

        await self._store.atomic(save(), durable=False)  # derived: redone, not paid for


def _record(text: Any) -> dict[str, Any] | None:
    """A stored telemetry record, or None for none (a row just made) or a damaged one."""
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None
