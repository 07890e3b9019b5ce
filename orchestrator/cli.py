"""The ``orchestrator`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .budget import Budget
from .catalog import Catalog
from .client import UnifiedClient
from .engine import Orchestrator
from .errors import OrchestratorError
from .models import ProjectState, ProjectStatus
from .output_writer import write_outputs
from .progress import ProgressPrinter, results_table
from .project_file import ProjectSpec, load_project_file
from .settings import CATALOG_ENV, load_environment

EXIT_SUCCESS = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[ProjectStatus, int] = {
    ProjectStatus.SUCCESS: 0,
    ProjectStatus.PARTIAL_SUCCESS: 3,
    ProjectStatus.BUDGET_EXHAUSTED: 4,
    ProjectStatus.TIMEOUT: 5,
    ProjectStatus.SYSTEM_FAILURE: 6,
}

EPILOG = """\
exit codes: 0 SUCCESS, 2 bad input, 3 PARTIAL_SUCCESS, 4 BUDGET_EXHAUSTED, 5 TIMEOUT,
6 SYSTEM_FAILURE, 130 interrupted (Ctrl-C)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every other bad input
        self.exit(EXIT_BAD_INPUT, f"orchestrator: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Decompose a project into tasks and run them across several LLM vendors "
        "under a hard budget.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("a new run")
    run.add_argument("-p", "--project", help="project description (required for a new run)")
    run.add_argument("-c", "--criteria", help="acceptance criteria (required for a new run)")
    run.add_argument("-f", "--file", metavar="PATH", help="load the project from a YAML file")
    run.add_argument("-b", "--budget", type=float, help="spend ceiling in USD (default 8.0)")
    run.add_argument("-t", "--time", type=float, help="wall-clock limit in seconds (default 5400)")
    run.add_argument("--project-id", help="explicit project id (default: generated)")
    run.add_argument("--concurrency", type=int, help="max LLM calls in flight (default 3)")
    run.add_argument(
        "--threshold", type=float, help="quality score a task must reach, 0-1 (default 0.85)"
    )
    run.add_argument("-o", "--output-dir", metavar="DIR", help="write task outputs to DIR")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    parser.add_argument("-v", "--verbose", action="store_true", help="enable DEBUG logging")
    parser.add_argument(
        "--list-models",
        action="store_true",
        help="print the model catalog with prices and which providers are usable now",
    )
    parser.add_argument(
        "--catalog",
        metavar="PATH",
        help=f"YAML file extending or overriding the built-in model catalog (or ${CATALOG_ENV})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.list_models:
            env = load_environment()
            catalog = Catalog.load(args.catalog, env=env)
            sys.stdout.write(format_catalog(catalog, env))
            return EXIT_SUCCESS
        spec = _project_spec(args)
        return asyncio.run(_run(spec, args))
    except OrchestratorError as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("orchestrator: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _project_spec(args: argparse.Namespace) -> ProjectSpec:
    spec = load_project_file(args.file) if args.file else None
    description = args.project or (spec.description if spec else None)
    criteria = args.criteria or (spec.criteria if spec else None)
    if not description or not criteria:
        raise _usage("a new run needs --project and --criteria, or --file")
    merged = ProjectSpec(description=description, criteria=criteria)
    if spec is not None:
        merged = spec
        merged.description, merged.criteria = description, criteria
    # Flags given on the command line win over the project file.
    for name, value in (
        ("budget", args.budget),
        ("time", args.time),
        ("project_id", args.project_id),
        ("concurrency", args.concurrency),
        ("quality_threshold", args.threshold),
        ("output_dir", args.output_dir),
    ):
        if value is not None:
            setattr(merged, name, value)
    if merged.budget is not None and merged.budget <= 0:
        raise _usage("--budget must be greater than 0")
    if merged.time is not None and merged.time <= 0:
        raise _usage("--time must be greater than 0")
    if merged.concurrency is not None and merged.concurrency < 1:
        raise _usage("--concurrency must be at least 1")
    if merged.quality_threshold is not None and not 0 <= merged.quality_threshold <= 1:
        raise _usage("--threshold must be between 0 and 1")
    if merged.output_dir is not None and Path(merged.output_dir).is_file():
        raise _usage(f"--output-dir {merged.output_dir} is a file")
    return merged


def _usage(message: str) -> OrchestratorError:
    return OrchestratorError(message)


async def _run(spec: ProjectSpec, args: argparse.Namespace) -> int:
    budget = Budget(
        max_usd=spec.budget if spec.budget is not None else 8.0,
        max_time_seconds=spec.time if spec.time is not None else 5400.0,
    )
    concurrency = spec.concurrency or 3
    async with UnifiedClient(catalog_path=args.catalog, max_concurrency=concurrency) as client:
        client.require_providers()
        orchestrator = Orchestrator(
            budget=budget,
            max_concurrency=concurrency,
            client=client,
            use_cache=not args.no_cache,
            quality_threshold=spec.quality_threshold
            if spec.quality_threshold is not None
            else 0.85,
            on_event=ProgressPrinter(budget),
        )
        state = await orchestrator.run_project(
            spec.description, spec.criteria, spec.project_id, tasks=spec.tasks
        )
    sys.stdout.write(results_table(state))
    if spec.output_dir:
        written = await asyncio.to_thread(write_outputs, state, spec.output_dir)
        print(f"wrote {len(written)} files to {spec.output_dir}", file=sys.stderr)
    return exit_code(state)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def exit_code(state: ProjectState) -> int:
    return EXIT_CODES[state.status]


def format_catalog(catalog: Catalog, env: Mapping[str, str]) -> str:
    """The catalog as a table, prices in USD per 1M tokens, and which providers have a key."""
    header = ("alias", "model id", "provider", "in", "out", "cached", "context", "json", "usable")
    rows = [header]
    for m in catalog.models:
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
                "yes" if catalog.providers[m.provider].usable(env) else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5, 6}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("Prices: USD per 1M tokens. json: native JSON-schema output, or JSON mode.")
    for name, spec in catalog.providers.items():
        if spec.usable(env):
            state = f"usable ({spec.base_url(env)})"
        else:
            state = "no key: set " + " or ".join(spec.key_env)
        lines.append(f"{name:<10} {state}")
    return "\n".join(lines) + "\n"


def _price(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
