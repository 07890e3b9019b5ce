"""What the command line reports without running a project: the saved projects, the model
catalog, a forecast of what a project will cost, an audit log's check."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.cli.app import EXIT_SUCCESS
from orchestrator.cli.options import provider_names, run_config
from orchestrator.cli.project_file import ProjectSpec
from orchestrator.llm.catalog import Catalog, Model
from orchestrator.llm.local import KEYLESS_NOTE, LOCAL_PROVIDER, LocalModel
from orchestrator.money.budget import Budget
from orchestrator.money.forecast import CostForecaster, CostPredictor, ForecastReport, SpendHistory
from orchestrator.money.units import format_usd
from orchestrator.observe.audit import verify
from orchestrator.observe.progress import format_time, output_width, text_table, wrapped
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.policy import PolicyEngine
from orchestrator.routing.profiles import build_default_profiles
from orchestrator.routing.router import Router
from orchestrator.routing.screen import ConstraintPlanner
from orchestrator.run.client import run_models
from orchestrator.run.tasks import Task, TaskType
from orchestrator.settings import DB_URL_ENV, home_dir, load_environment
from orchestrator.store.state import StateManager


def verify_audit(path: str, head: str | None = None) -> int:
    """``--verify-audit``: whether the log at ``path`` is intact (and ends at ``head``)."""
    check = verify(path, head=head)
    print(check.describe(path), file=sys.stdout if check.ok else sys.stderr)
    return EXIT_SUCCESS if check.ok else 1


async def list_projects() -> int:
    """``--list-projects``: the saved projects, newest first, as a table."""
    async with StateManager() as store:
        projects = await store.projects.summaries()
    if not projects:
        print("no saved projects", file=sys.stderr)
        return EXIT_SUCCESS
    rows = [("id", "status", "spent / budget", "tasks", "updated")]
    for p in projects:
        rows.append(
            (
                p.project_id,
                p.status,
                f"{format_usd(p.spent_usd)} / {format_usd(p.max_usd)}",
                f"{p.tasks_done}/{p.tasks_total}",
                format_time(p.updated_at),
            )
        )
    print("\n".join(text_table(rows)))
    return EXIT_SUCCESS


def listed_catalog(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[Catalog, LocalModel | None]:
    """What ``--list-models`` shows: the catalog with the local model a run could start (the
    embedded one, or --local-model's file) unless the catalog has a "local" provider of its
    own; only --providers' providers when given."""
    catalog = Catalog.load(args.catalog, env=env)
    local = None
    if LOCAL_PROVIDER not in catalog.providers:
        local = LocalModel(Path(args.local_model) if args.local_model else None)
        catalog = local.unstarted_catalog(catalog)
    providers = provider_names(args.providers)
    if providers:
        catalog = catalog.only(providers)
        if LOCAL_PROVIDER not in providers:
            local = None
    return catalog, local


def _price(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def format_catalog(
    catalog: Catalog, env: Mapping[str, str], local: LocalModel | None = None
) -> str:
    """The catalog as a table, prices in USD per 1M tokens, and which providers have a key;
    ``local``, the local model the catalog's "local" provider serves, is usable where this
    machine has what it needs (the local extra, the model's wheel or file)."""
    missing = local.missing() if local is not None else None
    header = ("alias", "model id", "provider", "in", "out", "cached", "context", "json", "usable")
    rows = [header]
    for m in catalog.models:
        if local is not None and m.provider == LOCAL_PROVIDER:
            usable = missing is None
        else:
            usable = catalog.providers[m.provider].usable(env)
        rows.append(
            (
                m.alias,
                m.id,
                m.provider,
                _price(m.price.input),
                _price(m.price.output),
                _price(m.price.cached_input),
                f"{m.context_window:,}",
                "schema" if m.json_schema else "mode",
                "yes" if usable else "no",
            )
        )
    width = output_width()
    # Narrow, the cached price, the context, the JSON support and the alias give way before
    # a model id (what a user types) is cut.
    lines = text_table(
        rows, right=frozenset({3, 4, 5, 6}), width=width, drop=(5, 6, 7, 0), whole=frozenset({1})
    )
    footer = ["Prices: USD per 1M tokens. json: native JSON-schema output, or JSON mode."]
    for name, spec in catalog.providers.items():
        if local is not None and name == LOCAL_PROVIDER:
            where = f"{local.description} on this machine, free (--local"
            where += "; stands in when no key is set)" if local.model_path is None else ")"
            state = f"usable: {where}" if missing is None else f"not usable: {where}: {missing}"
        elif spec.usable(env):
            state = f"usable ({spec.base_url(env)})"
        else:
            state = "no key: set " + " or ".join(spec.key_env)
        footer.append(f"{name:<10} {state}")
    return "\n".join([*lines, "", *wrapped(footer, width)]) + "\n"


# Without a task list, a forecast assumes a plan this long (the middle of what is asked for).
ASSUMED_PLAN_TASKS = 10


def forecast_text(spec: ProjectSpec, args: argparse.Namespace) -> str:
    """The ``--forecast`` report: what the project is expected to cost and the most it can
    cost with the models this run would call, which figures earlier runs measured, and what
    the rest assumes."""
    report, task_count, assumptions, local = forecast_report(spec, args)
    budget = report.budget_usd
    rows = [("phase", "typical", "high")]
    rows += [
        (phase, format_usd(usd), format_usd(report.high_per_phase[phase]))
        for phase, usd in report.estimated_per_phase.items()
    ]
    lines = [f"forecast for {task_count} tasks; no model was called"]
    if local is not None and all(m.provider == LOCAL_PROVIDER for m in report.models):
        lines.append(f"runs on {local.description} on this machine (offline, $0)")
    if report.models:
        lines.append("models: " + ", ".join(_priced_name(m) for m in report.models))
    lines += text_table(rows)
    lines.append(
        f"typical {format_usd(report.typical_usd)} of {format_usd(budget)} "
        f"({report.typical_usd / budget:.0%}): risk {report.risk_level.value}"
    )
    if report.passes_budget:
        lines.append(
            f"high {format_usd(report.high_usd)}: the run's limits allow "
            f"{format_usd(report.worst_usd)}, past the budget; it would stop BUDGET_EXHAUSTED"
        )
    else:
        lines.append(f"high {format_usd(report.high_usd)} ({report.high_usd / budget:.0%})")
    if report.learned:
        lines.append("learned from earlier runs: " + "; ".join(report.learned))
    if report.priced:
        lines.append("priced from the catalog: " + "; ".join(report.priced))
    lines += [f"assumes: {a}" for a in assumptions + report.assumptions]
    return "\n".join(lines) + "\n"


def _priced_name(model: Model) -> str:
    """A model as a forecast names it: a local or free one says it costs nothing."""
    if not model.price.free:
        return model.value
    where = "on this machine, " if model.provider == LOCAL_PROVIDER else ""
    return f"{model.value} ({where}$0)"


def forecast_report(
    spec: ProjectSpec, args: argparse.Namespace
) -> tuple[ForecastReport, int, list[str], LocalModel | None]:
    """The forecast of ``spec`` run with ``args``, calling no model: the report, how many
    tasks it counts, what the command line assumed besides the report's assumptions, and the
    local model the run would start (None: none)."""
    env = load_environment()
    config = run_config(args, spec)
    catalog, providers, local, stands_in = run_models(config, env, running=True)
    assumptions = []
    if local is not None:
        catalog = local.unstarted_catalog(catalog)
        providers = providers or (LOCAL_PROVIDER,)
        if stands_in:
            assumptions.append(KEYLESS_NOTE)
        missing = local.missing()
        if missing is not None:
            assumptions.append(f"the local model cannot run here yet: {missing}")
    if providers:
        catalog = catalog.only(list(providers))
    keyed = set(catalog.usable_providers(env))
    profiles = {
        key: profile
        for key, profile in build_default_profiles(catalog).items()
        if not keyed or profile.provider in keyed
    }
    telemetry, history, estimates = asyncio.run(_stored_measurements())
    TelemetryCollector(profiles).restore({k: v for k, v in telemetry.items() if k in profiles})
    predictor = CostPredictor()
    predictor.load(estimates)
    run = config.resolved()  # the defaults a run would take where nothing is given
    assert run.max_usd is not None and run.max_fallbacks is not None
    models = tuple(p.model for p in profiles.values())
    router = Router(
        catalog, models, backend=run.backend(), profiles=profiles,
        planner=ConstraintPlanner(PolicyEngine(run.policies or ())), cost_model=predictor,
        max_fallbacks=run.max_fallbacks,
    )  # fmt: skip
    tasks = list(spec.tasks.values()) if spec.tasks else None
    if tasks is None:
        tasks = [
            Task(f"t{i}", TaskType.CODE_GEN, spec.description) for i in range(ASSUMED_PLAN_TASKS)
        ]
        assumptions.append(
            f"no task list: the planner's call and {ASSUMED_PLAN_TASKS} tasks, each priced as "
            "code generation (give tasks: in a project file for a closer figure)"
        )
    assumptions.append(
        f"routing {run.routing}, over "
        + (f"the usable providers ({', '.join(sorted(keyed))})" if keyed else
           "every catalog model (no provider key is set)")
    )  # fmt: skip
    report = CostForecaster.forecast(
        tasks, profiles, predictor, Budget(max_usd=run.max_usd), router=router,
        decomposition=spec.tasks is None, history=history,
        integration_rounds=(run.integration_rounds or 0) if run.integration else 0,
        description=spec.description, criteria=spec.criteria,
    )  # fmt: skip
    return report, len(tasks), assumptions, local


async def _stored_measurements() -> tuple[
    dict[str, dict[str, Any]], SpendHistory, list[tuple[str, str, float, int]]
]:
    """What earlier runs measured, from the state database if there is one (a forecast never
    creates it): each model's telemetry, the calls their tasks took, what calls cost."""
    if not os.environ.get(DB_URL_ENV) and not (home_dir() / "state.db").is_file():
        return {}, SpendHistory(), []
    async with StateManager() as store:
        measures = store.measures
        history = SpendHistory.from_journal(
            await measures.measured_task_calls(), await measures.measured_planning()
        )
        return await measures.model_telemetry(), history, await measures.measured_cost_estimates()
