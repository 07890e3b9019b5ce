"""The flags read and checked before anything is paid for, and what they make: the limits, the
new project's spec, the run's config, its policies and its budget caps."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from orchestrator.cli.project_file import ProjectSpec, check_project_id, load_project_file
from orchestrator.code.output_writer import OutputError, check_output_dir, check_tree_name
from orchestrator.code.sandbox import configured_limits
from orchestrator.errors import OrchestratorError
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.routing.policy import PolicySet
from orchestrator.routing.policy_file import PolicyAnalyzer, load_policy_file
from orchestrator.run.config import RunConfig
from orchestrator.settings import DB_URL_ENV
from orchestrator.store.base import EXTRA_COMMAND, is_postgres_url, shown
from orchestrator.store.lease import lease_seconds
from orchestrator.text.visible import visible


def usage_error(message: str) -> OrchestratorError:
    """A bad flag or combination of flags: said on one line, exit code 2."""
    return OrchestratorError(message)


def use_database(location: str) -> None:
    """Every store of this process in the PostgreSQL database at ``location``."""
    if not is_postgres_url(location):
        raise usage_error(
            "--db takes a postgresql:// URL; the SQLite files live in $ORCHESTRATOR_HOME"
        )
    try:
        import psycopg  # noqa: F401 - configured: the driver must be there
    except ImportError:
        raise usage_error(
            f"--db {shown(location)} needs the distributed extra: {EXTRA_COMMAND}"
        ) from None
    os.environ[DB_URL_ENV] = location


def check_limits(args: argparse.Namespace) -> None:
    """Refuse, before anything is recorded or paid for, limits no run could keep."""
    configured_limits()  # the sandbox's, from the environment: refused now, not mid-run
    # "not x > 0" rather than "x <= 0", so that nan is refused too.
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise usage_error("--budget must be a number greater than 0")
    if args.time is not None and not (math.isfinite(args.time) and args.time > 0):
        raise usage_error("--time must be a number greater than 0")
    timeout = args.call_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise usage_error("--call-timeout must be a number greater than 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise usage_error("--concurrency must be at least 1")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise usage_error("--max-tasks must be at least 1")
    if args.forecast and args.resume:
        raise usage_error("--forecast is for a new project (--project / --file), not --resume")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise usage_error("--threshold must be between 0 and 1")
    timeout = args.validator_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise usage_error("--validator-timeout must be a number greater than 0")
    lease_seconds()  # a bad $ORCHESTRATOR_LEASE_SECONDS is said before anything is recorded
    if args.integration_rounds is not None and args.integration_rounds < 0:
        raise usage_error("--integration-rounds must be 0 or more")
    if args.max_fallbacks is not None and args.max_fallbacks < 0:
        raise usage_error("--max-fallbacks must be 0 or more")
    if args.integration_rounds is not None and args.no_integration:
        raise usage_error("--integration-rounds and --no-integration contradict each other")
    if args.tree_name is not None:
        try:
            check_tree_name(args.tree_name)
        except OutputError as exc:
            raise usage_error(f"--tree-name: {exc}") from None


def probe_output_dir(
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
        raise usage_error(f"--output-dir {directory} cannot be written: {exc.strerror}") from None
    if not overwrite:
        check_output_dir(path, description, criteria)


def project_spec(args: argparse.Namespace) -> ProjectSpec:
    """The new project: ``--file``'s, with the flags given on top, or the flags' alone."""
    spec = load_project_file(args.file) if args.file else None
    description = args.project or (spec.description if spec else None)
    criteria = args.criteria or (spec.criteria if spec else None)
    if not description or not criteria:
        raise usage_error("a new run needs --project and --criteria, or --file")
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
        ("routing", args.routing),
    ):
        if value is not None:
            setattr(merged, name, value)
    if merged.project_id is not None:
        check_project_id(merged.project_id)  # the same rule as the project file's field
    if args.no_integration:
        merged.integration = False
    if merged.integration is False and args.integration_rounds is not None:
        raise usage_error("--integration-rounds and no integration contradict each other")
    if merged.output_dir:
        # Absolute, so a resume started from another directory writes to the same place.
        merged.output_dir = str(Path(merged.output_dir).resolve())
    return merged


def run_config(args: argparse.Namespace, spec: ProjectSpec | None = None) -> RunConfig:
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
        routing=args.routing,
    )
    policies = policy_set(args)
    providers = provider_names(args.providers)
    return RunConfig(
        max_usd=limits.budget,
        max_time_seconds=limits.time,
        quality_threshold=limits.quality_threshold,
        concurrency=limits.concurrency,
        routing=limits.routing,
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


def provider_names(text: str | None) -> list[str] | None:
    """``--providers``' names, lower-cased; None when not given."""
    if not text:
        return None
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise usage_error("--providers needs at least one provider name")
    return names


def policy_set(args: argparse.Namespace) -> PolicySet | None:
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


def budget_caps(args: argparse.Namespace) -> BudgetHierarchy:
    """The caps ``--org-cap`` / ``--team-cap`` / ``--job-cap`` set, each checked."""
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
