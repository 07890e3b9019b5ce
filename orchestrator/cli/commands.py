"""What the command line does, for the flags ``orchestrator.cli.app`` read: a new run, a resume, a
submission or a worker, a forecast, the saved projects, the catalog, an audit log's check."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.cli.app import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_SUCCESS, discard_stdout
from orchestrator.cli.project_file import ProjectSpec, check_project_id, load_project_file
from orchestrator.code.output_writer import (
    OutputError,
    check_output_dir,
    check_tree_name,
    write_outputs,
)
from orchestrator.code.sandbox import configured_limits
from orchestrator.errors import OrchestratorError
from orchestrator.llm.catalog import Catalog, Model
from orchestrator.llm.client import UnifiedClient
from orchestrator.llm.local import KEYLESS_NOTE, LOCAL_PROVIDER, LocalModel
from orchestrator.money.budget import Budget
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.forecast import CostForecaster, CostPredictor, ForecastReport, SpendHistory
from orchestrator.money.units import format_usd
from orchestrator.observe.audit import AuditLog, verify
from orchestrator.observe.metrics import MetricsExporter, exporter_for
from orchestrator.observe.progress import (
    ProgressPrinter,
    output_width,
    results_table,
    text_table,
    wrapped,
)
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.policy import PolicyEngine, PolicySet
from orchestrator.routing.policy_file import PolicyAnalyzer, load_policy_file
from orchestrator.routing.profiles import build_default_profiles
from orchestrator.routing.router import Router
from orchestrator.routing.screen import ConstraintPlanner
from orchestrator.run.client import run_client, run_models
from orchestrator.run.config import TREE_NAME, RunConfig
from orchestrator.run.orchestrator import FINISHED, Orchestrator, new_project_id
from orchestrator.run.tasks import ProjectState, ProjectStatus, Task, TaskType
from orchestrator.settings import DB_URL_ENV, home_dir, load_environment
from orchestrator.store.base import EXTRA_COMMAND, is_postgres_url, shown
from orchestrator.store.lease import ProjectBusy, lease_seconds
from orchestrator.store.state import StateManager
from orchestrator.text.visible import visible

EXIT_CODES: dict[ProjectStatus, int] = {
    ProjectStatus.INTERRUPTED: EXIT_INTERRUPTED,
    ProjectStatus.RUNNING: EXIT_INTERRUPTED,
    ProjectStatus.SUCCESS: 0,
    ProjectStatus.PARTIAL_SUCCESS: 3,
    ProjectStatus.BUDGET_EXHAUSTED: 4,
    ProjectStatus.TIMEOUT: 5,
    ProjectStatus.SYSTEM_FAILURE: 6,
}


def execute(args: argparse.Namespace) -> int:
    """What the flags ``args`` ask for (``orchestrator.cli.app`` reads them); the exit code."""
    project_id: str | None = None
    watch: _Watch | None = None
    try:
        if args.db:
            _use_database(args.db)
        if args.list_models:
            env = load_environment()
            catalog, local = _listed_catalog(args, env)
            sys.stdout.write(format_catalog(catalog, env, local))
            return EXIT_SUCCESS
        if args.list_projects:
            return asyncio.run(_list_projects())
        if args.audit_head and not args.verify_audit:
            raise _usage("--audit-head goes with --verify-audit FILE")
        if args.verify_audit:
            return _verify_audit(args.verify_audit, args.audit_head)
        _check_limits(args)
        if args.exit_when_idle and not args.worker:
            raise _usage("--exit-when-idle goes with --worker")
        if args.worker:
            return asyncio.run(_work(args))
        if args.resume:
            project_id = args.resume
            _probe_output_dir(args.output_dir, args.overwrite)
            watch = _Watch.from_args(args)
            return asyncio.run(_resume(args, watch))
        spec = _project_spec(args)
        if args.forecast:
            sys.stdout.write(forecast_text(spec, args))
            return EXIT_SUCCESS
        _probe_output_dir(spec.output_dir, args.overwrite, spec.description, spec.criteria)
        if args.submit:
            return asyncio.run(_submit(spec, args))
        watch = _Watch.from_args(args)
        spec.project_id = project_id = spec.project_id or new_project_id()
        return asyncio.run(_run(spec, args, watch))
    except OrchestratorError as exc:
        print(f"orchestrator: error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        discard_stdout()
        return EXIT_SUCCESS
    except (KeyboardInterrupt, asyncio.CancelledError):
        # The run is saved; a second Ctrl-C now must not turn a clean exit into a crash.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hint = f"; resume with: python -m orchestrator --resume {project_id}" if project_id else ""
        print(f"orchestrator: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if watch is not None:
            watch.close()  # however the run ended, the audit log's head is worth keeping


def _use_database(location: str) -> None:
    """Every store of this process in the PostgreSQL database at ``location``."""
    if not is_postgres_url(location):
        raise _usage("--db takes a postgresql:// URL; the SQLite files live in $ORCHESTRATOR_HOME")
    try:
        import psycopg  # noqa: F401 - configured: the driver must be there
    except ImportError:
        raise _usage(
            f"--db {shown(location)} needs the distributed extra: {EXTRA_COMMAND}"
        ) from None
    os.environ[DB_URL_ENV] = location


def _check_limits(args: argparse.Namespace) -> None:
    configured_limits()  # the sandbox's, from the environment: refused now, not mid-run
    # "not x > 0" rather than "x <= 0", so that nan is refused too.
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise _usage("--budget must be a number greater than 0")
    if args.time is not None and not (math.isfinite(args.time) and args.time > 0):
        raise _usage("--time must be a number greater than 0")
    timeout = args.call_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise _usage("--call-timeout must be a number greater than 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise _usage("--concurrency must be at least 1")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise _usage("--max-tasks must be at least 1")
    if args.forecast and args.resume:
        raise _usage("--forecast is for a new project (--project / --file), not --resume")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise _usage("--threshold must be between 0 and 1")
    timeout = args.validator_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise _usage("--validator-timeout must be a number greater than 0")
    lease_seconds()  # a bad $ORCHESTRATOR_LEASE_SECONDS is said before anything is recorded
    if args.integration_rounds is not None and args.integration_rounds < 0:
        raise _usage("--integration-rounds must be 0 or more")
    if args.max_fallbacks is not None and args.max_fallbacks < 0:
        raise _usage("--max-fallbacks must be 0 or more")
    if args.integration_rounds is not None and args.no_integration:
        raise _usage("--integration-rounds and --no-integration contradict each other")
    if args.tree_name is not None:
        try:
            check_tree_name(args.tree_name)
        except OutputError as exc:
            raise _usage(f"--tree-name: {exc}") from None


def _probe_output_dir(
    directory: str | None,
    overwrite: bool,
    description: str | None = None,
    criteria: str | None = None,
) -> None:
    """Make sure the outputs can be written before anything is paid for: the directory is
    writable and (unless ``--overwrite``) what it holds can be replaced (``check_output_dir``)."""
    if directory is None:
        return
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise _usage(f"--output-dir {directory} cannot be written: {exc.strerror}") from None
    if not overwrite:
        check_output_dir(path, description, criteria)


def _project_spec(args: argparse.Namespace) -> ProjectSpec:
    spec = load_project_file(args.file) if args.file else None
    description = args.project or (spec.description if spec else None)
    criteria = args.criteria or (spec.criteria if spec else None)
    if not description or not criteria:
        raise _usage("a new run needs --project and --criteria, or --file")
    merged = spec or ProjectSpec(description=description, criteria=criteria)
    merged.description, merged.criteria = description, criteria
    # Flags given on the command line win over the project file.
    for name, value in (
        ("budget", args.budget),
        ("time", args.time),
        ("project_id", args.project_id),
        ("concurrency", args.concurrency),
        ("quality_threshold", args.threshold),
        ("output_dir", args.output_dir),
        ("tree_name", args.tree_name),
        ("integration_rounds", args.integration_rounds),
        ("max_fallbacks", args.max_fallbacks),
    ):
        if value is not None:
            setattr(merged, name, value)
    if merged.project_id is not None:
        check_project_id(merged.project_id)  # the same rule as the project file's field
    if args.no_integration:
        merged.integration = False
    if merged.integration is False and args.integration_rounds is not None:
        raise _usage("--integration-rounds and no integration contradict each other")
    if merged.output_dir:
        # Absolute, so a resume started from another directory writes to the same place.
        merged.output_dir = str(Path(merged.output_dir).resolve())
    return merged


def _usage(message: str) -> OrchestratorError:
    return OrchestratorError(message)


def _verify_audit(path: str, head: str | None = None) -> int:
    check = verify(path, head=head)
    print(check.describe(path), file=sys.stdout if check.ok else sys.stderr)
    return EXIT_SUCCESS if check.ok else 1


@dataclass
class _Watch:
    """What the run is watched with: a metrics exporter and an audit log, both checked before
    anything is paid."""

    metrics: MetricsExporter | None = None
    audit: AuditLog | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Watch:
        metrics = None
        if args.metrics_out:
            metrics = exporter_for(args.metrics_out)
            if args.metrics_out != "-":
                _probe_file(args.metrics_out, "--metrics-out")
        audit = None
        if args.audit_log:
            _probe_file(args.audit_log, "--audit-log")
            audit = AuditLog(args.audit_log)
        return cls(metrics, audit)

    def attach(self, orchestrator: Orchestrator, printer: ProgressPrinter) -> None:
        orchestrator.display(printer)
        orchestrator.set_metrics_exporter(self.metrics)
        orchestrator.audit_log = self.audit

    async def finish(self, orchestrator: Orchestrator) -> None:
        if self.metrics is not None and not self.metrics.follows_run:
            orchestrator.export_metrics()  # the console table, after the results

    def close(self) -> None:
        """Write out the audit log and print its head hash, for the user to keep elsewhere
        (``--verify-audit FILE --audit-head HASH`` then catches records cut from its end)."""
        audit, self.audit = self.audit, None
        if audit is None:
            return
        audit.close()
        if audit.records:
            print(
                f"audit log {audit.path}: {len(audit.records)} records added; head {audit.head}",
                file=sys.stderr,
            )


def _probe_file(name: str, flag: str) -> None:
    """A file the run will write: its directory must exist and be writable."""
    directory = Path(name).resolve().parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise _usage(f"{flag} {name}: directory {directory} does not exist or is not writable")
    if Path(name).is_dir():
        raise _usage(f"{flag} {name} is a directory")


async def _run(spec: ProjectSpec, args: argparse.Namespace, watch: _Watch) -> int:
    config = _config(args, spec)
    async with _guarded(), StateManager() as store, _client(config) as (client, chosen):
        client.require_providers()
        orchestrator = _orchestrator(args, store, client, chosen)
        printer = _progress(args, orchestrator.budget)
        watch.attach(orchestrator, printer)
        with printer:  # the live area is gone before the results or an error is printed
            state = await orchestrator.run_project(
                spec.description, spec.criteria, spec.project_id, tasks=spec.tasks,
                restart=args.restart,
            )  # fmt: skip
    code = await _report(state, chosen.output_dir, args.overwrite, _tree_name(chosen))
    await watch.finish(orchestrator)
    return code


def _config(args: argparse.Namespace, spec: ProjectSpec | None = None) -> RunConfig:
    """What the flags (and, for a new run, its project file, which they win over) give;
    unset where neither says: a new run's defaults, or a resume's saved settings."""
    limits = spec or ProjectSpec(
        description="",
        criteria="",
        budget=args.budget,
        time=args.time,
        concurrency=args.concurrency,
        quality_threshold=args.threshold,
        output_dir=str(Path(args.output_dir).resolve()) if args.output_dir else None,
        tree_name=args.tree_name,
        integration=False if args.no_integration else None,
        integration_rounds=args.integration_rounds,
        max_fallbacks=args.max_fallbacks,
    )
    policies = _policies(args)
    providers = _provider_names(args.providers)
    return RunConfig(
        max_usd=limits.budget,
        max_time_seconds=limits.time,
        quality_threshold=limits.quality_threshold,
        concurrency=limits.concurrency,
        routing=args.routing,
        policies=tuple(policies) if policies is not None else None,
        team=args.team,
        job=args.job,
        integration=False if limits.integration is False else None,
        integration_rounds=limits.integration_rounds,
        max_tasks=args.max_tasks,
        max_fallbacks=limits.max_fallbacks,
        catalog=str(Path(args.catalog).resolve()) if args.catalog else None,
        providers=tuple(providers) if providers else None,
        local=args.local_model or args.local or None,
        call_timeout=args.call_timeout,
        validator_timeout=args.validator_timeout,
        allow_single_verdict=True if args.allow_single_verdict else None,
        use_cache=False if args.no_cache else None,
        output_dir=limits.output_dir,
        tree_name=limits.tree_name,
    )


def _tree_name(config: RunConfig) -> str:
    return config.tree_name or TREE_NAME


def _orchestrator(
    args: argparse.Namespace,
    store: StateManager,
    client: UnifiedClient,
    config: RunConfig | None = None,
) -> Orchestrator:
    """An orchestrator over this command's store and client, for a new run on ``config``,
    with what a run's config does not hold: the caps' amounts and whether code may run
    unsandboxed, asked each time."""
    return Orchestrator(
        config=config,
        state_manager=store,
        client=client,
        unsafe_validators=args.unsafe_validators,
        budget_hierarchy=_caps(args),
    )


async def _submit(spec: ProjectSpec, args: argparse.Namespace) -> int:
    """Save the project as a run would, pay nothing, and queue it for the workers."""
    distributed = _distributed()
    url = os.environ[DB_URL_ENV]
    config = _config(args, spec)
    async with (
        _guarded(),
        StateManager() as store,
        _client(config, running=False) as (client, chosen),
    ):
        orchestrator = _orchestrator(args, store, client, chosen)
        project_id = await orchestrator.create_project(
            spec.description, spec.criteria, spec.project_id, tasks=spec.tasks,
            restart=args.restart,
        )  # fmt: skip
        waiting = await distributed.enqueue(url, [project_id])
    print(project_id)
    if waiting:
        print(f"project {project_id} was already waiting for a worker", file=sys.stderr)
    return EXIT_SUCCESS


async def _work(args: argparse.Namespace) -> int:
    """A worker: each queued project is resumed by the library, on the settings it saved, a
    few at a time; its results are written where it saved them."""
    distributed = _distributed()

    async def run_one(project_id: str, stopping: asyncio.Event) -> str:
        orchestrator = Orchestrator()  # the store of $ORCHESTRATOR_DB_URL, the project's config
        orchestrator.stopping = stopping
        try:
            state = await orchestrator.resume(project_id)
            if state.already_finished:  # another worker's job finished it: nothing to report
                said = f"project {project_id} already finished with status {state.status.value}"
                print(said, file=sys.stderr)
                return state.status.value
            config = state.config
            assert config is not None
            await _report(state, config.output_dir, False, _tree_name(config))
        except ProjectBusy:
            raise  # the worker queues it again for when that run's lease ends
        except OrchestratorError as exc:
            print(
                f"orchestrator: project {project_id}: error: {visible(str(exc))}", file=sys.stderr
            )
            return "ERROR"
        print(
            f"project {project_id}: {state.status.value} {visible(state.reason)}", file=sys.stderr
        )
        return state.status.value

    await distributed.work(
        os.environ[DB_URL_ENV],
        run_one,
        concurrency=args.concurrency or 1,
        exit_when_idle=args.exit_when_idle,
    )
    return EXIT_SUCCESS


def _distributed() -> Any:
    """``orchestrator.run.workers``, imported only here; needs a PostgreSQL store."""
    url = os.environ.get(DB_URL_ENV)
    if not url:
        raise _usage(f"--submit and --worker need a PostgreSQL store: --db URL or ${DB_URL_ENV}")
    if not is_postgres_url(url):
        raise _usage(f"{DB_URL_ENV} must be a postgresql:// URL")
    try:
        from orchestrator.run import workers as distributed
    except ImportError:
        raise _usage(f"--submit and --worker need the distributed extra: {EXTRA_COMMAND}") from None
    return distributed


async def _resume(args: argparse.Namespace, watch: _Watch) -> int:
    _, code = await _resume_project(args, watch)
    return code


async def _resume_project(args: argparse.Namespace, watch: _Watch) -> tuple[ProjectState, int]:
    """Resume ``args.resume`` on the settings it saved, the flags given on top."""
    overrides = _config(args)
    async with _guarded(), StateManager() as store:
        status, settings = await store.run_settings(args.resume)
        running = status not in FINISHED
        config = overrides.over(RunConfig.from_settings(settings))
        async with _client(config, running=running) as (client, chosen):
            if running:
                client.require_providers()
            orchestrator = _orchestrator(args, store, client)
            printer = _progress(args)
            watch.attach(orchestrator, printer)
            if not running:
                print(
                    f"project {args.resume} already finished with status "
                    f"{status.value}; nothing to do",
                    file=sys.stderr,
                )
            with printer:
                # The models as chosen (the local model, the providers) are saved for the next.
                state = await orchestrator.resume(args.resume, config=chosen)
    resumed = state.config or chosen
    # A finished project ran nothing: nothing new to write, unless asked for explicitly.
    output_dir = resumed.output_dir if running else overrides.output_dir
    code = await _report(state, output_dir, args.overwrite, _tree_name(resumed))
    await watch.finish(orchestrator)
    return state, code


async def _report(
    state: ProjectState, output_dir: str | None, overwrite: bool, tree_name: str
) -> int:
    sys.stdout.write(results_table(state))
    if output_dir:
        try:
            written = await asyncio.to_thread(
                write_outputs, state, output_dir, overwrite=overwrite, tree_name=tree_name
            )
        except OutputError as exc:
            # The results are saved in the state file: nothing paid for is lost.
            raise OrchestratorError(
                f"{exc}; the results are saved, write them with "
                f"--resume {state.project_id} --output-dir DIR"
            ) from exc
        print(f"wrote {len(written)} files to {output_dir}", file=sys.stderr)
    return exit_code(state)


async def _list_projects() -> int:
    async with StateManager() as store:
        projects = await store.list_projects()
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
                datetime.fromtimestamp(p.updated_at).strftime("%Y-%m-%d %H:%M:%S"),
            )
        )
    print("\n".join(text_table(rows)))
    return EXIT_SUCCESS


@asynccontextmanager
async def _client(
    config: RunConfig, *, running: bool = True
) -> AsyncIterator[tuple[UnifiedClient, RunConfig]]:
    """The run's client (``run_client``), saying on stderr when the local model stands in for
    missing keys."""
    env = load_environment()

    def note(text: str) -> None:
        print(f"orchestrator: {text}", file=sys.stderr)

    async with run_client(config.resolved(), env, running=running, note=note) as (client, chosen):
        # Only what was given, and the models chosen: a resume fills the rest from the saved.
        yield client, RunConfig(local=chosen.local, providers=chosen.providers).over(config)


def _listed_catalog(
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
    providers = _provider_names(args.providers)
    if providers:
        catalog = catalog.only(providers)
        if LOCAL_PROVIDER not in providers:
            local = None
    return catalog, local


def _provider_names(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise _usage("--providers needs at least one provider name")
    return names


@asynccontextmanager
async def _guarded() -> AsyncIterator[None]:
    """SIGTERM stops a run the way Ctrl-C does: cancelled, checkpointed, resumable."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
    except (NotImplementedError, RuntimeError):
        yield  # not on this platform or thread
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _caps(args: argparse.Namespace) -> BudgetHierarchy:
    for scope in ("team", "job"):
        if getattr(args, f"{scope}_cap") is not None and not getattr(args, scope):
            raise OrchestratorError(f"--{scope}-cap needs --{scope} to say whose cap it is")
    for scope in ("org", "team", "job"):
        cap = getattr(args, f"{scope}_cap")
        if cap is not None and not (cap > 0 and math.isfinite(cap)):
            raise OrchestratorError(f"--{scope}-cap must be a positive number of dollars")
    return BudgetHierarchy(
        org_max_usd=args.org_cap,
        team_budgets={args.team: args.team_cap} if args.team_cap is not None else None,
        job_budgets={args.job: args.job_cap} if args.job_cap is not None else None,
    )


def _policies(args: argparse.Namespace) -> PolicySet | None:
    """The policies ``--policy`` gives for ``--team`` / ``--job``; their contradictions refuse
    the run, their warnings are printed."""
    if args.policy is None:
        return None
    policies = load_policy_file(args.policy).policies_for(team=args.team, job_id=args.job)
    report = PolicyAnalyzer.analyze(policies)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise OrchestratorError(f"policy file {args.policy}: {report.errors[0]}{more}")
    for warning in report.warnings:
        print(f"orchestrator: warning: {visible(warning)}", file=sys.stderr)
    return policies


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
    config = _config(args, spec)
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
        history = SpendHistory.from_journal(
            await store.measured_task_calls(), await store.measured_planning()
        )
        return await store.model_telemetry(), history, await store.measured_cost_estimates()


def _progress(args: argparse.Namespace, budget: Budget | None = None) -> ProgressPrinter:
    # With -v, log lines go to the same terminal: a live area redrawn in place would tear them.
    return ProgressPrinter(budget, live=False if args.verbose else None)


def exit_code(state: ProjectState) -> int:
    return EXIT_CODES[state.status]


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


def _price(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
