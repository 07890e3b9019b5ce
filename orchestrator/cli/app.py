"""The ``orchestrator`` command line: its flags, and the program that reads them.

What each mode does is ``orchestrator.cli.commands``, imported once the flags are read: ``--help``,
``--version`` and a mistyped flag are answered without importing the engine, the stores and
their libraries.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from orchestrator.routing.backends import BACKENDS
from orchestrator.run.config import DEFAULT_MAX_FALLBACKS, DEFAULT_ROUNDS, TREE_NAME
from orchestrator.settings import CATALOG_ENV, DB_URL_ENV
from orchestrator.text.visible import VisibleFormatter

EXIT_SUCCESS = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
exit codes: 0 SUCCESS, 2 bad input, 3 PARTIAL_SUCCESS, 4 BUDGET_EXHAUSTED, 5 TIMEOUT,
6 SYSTEM_FAILURE, 130 interrupted (Ctrl-C or SIGTERM: the run is saved; continue it
with --resume ID)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, as for every other bad input
        self.exit(EXIT_BAD_INPUT, f"orchestrator: error: {message}\n")


class _Version(argparse.Action):
    """``--version``: the installed version, read from the package's metadata only when asked
    for (importing ``importlib.metadata`` would cost every other command too)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from orchestrator import __version__

        print(f"orchestrator {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Decompose a project into tasks and run them across several LLM vendors "
        "under a hard budget.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_new_run(parser.add_argument_group("a new run"))
    limits = parser.add_argument_group("limits and settings (for a resume: overrides)")
    _add_limits(limits)
    _add_tree(parser.add_argument_group("the project tree and its integration"))
    _add_governance(parser.add_argument_group("governance"))
    # The usage line lists the flags in the order they were added: --routing, then the models'
    # flags, then the validators' limits, though --help shows --routing and the validators'
    # limits among the limits.
    _add_routing(limits)
    _add_models(parser.add_argument_group("models"))
    _add_validator_limits(limits)
    _add_watching(parser.add_argument_group("watching a run"))
    _add_saved(parser.add_argument_group("saved projects"))
    _add_workers(
        parser.add_argument_group("workers (a PostgreSQL store: --db or $" + DB_URL_ENV + ")")
    )
    _add_general(parser)
    return parser


def _add_new_run(run: argparse._ArgumentGroup) -> None:
    run.add_argument("-p", "--project", help="project description (required for a new run)")
    run.add_argument("-c", "--criteria", help="acceptance criteria (required for a new run)")
    run.add_argument("-f", "--file", metavar="PATH", help="load the project from a YAML file")
    run.add_argument("--project-id", help="explicit project id (default: generated)")
    run.add_argument(
        "--restart",
        action="store_true",
        help="discard what is saved under --project-id (results and journal) and start again",
    )


def _add_limits(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument("-b", "--budget", type=float, help="spend ceiling in USD (default 8.0)")
    limits.add_argument(
        "-t", "--time", type=float, help="wall-clock limit in seconds (default 5400)"
    )
    limits.add_argument(
        "--concurrency",
        type=int,
        help="max LLM calls in flight (default 3); with --worker: projects run at once (default 1)",
    )
    limits.add_argument(
        "--max-tasks",
        type=int,
        metavar="N",
        help="a hard cap on the planned tasks (default: none; the planner is asked for 5-15)",
    )
    limits.add_argument(
        "--threshold", type=float, help="quality score a task must reach, 0-1 (default 0.85)"
    )
    limits.add_argument("-o", "--output-dir", metavar="DIR", help="write task outputs to DIR")
    limits.add_argument(
        "--overwrite",
        action="store_true",
        help="let --output-dir replace files this tool did not write or that changed since",
    )
    limits.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _add_tree(assembly: argparse._ArgumentGroup) -> None:
    assembly.add_argument(
        "--tree-name",
        metavar="NAME",
        help="directory inside --output-dir the tasks' named files are assembled in "
        f"(default {TREE_NAME})",
    )
    assembly.add_argument(
        "--integration-rounds",
        type=int,
        metavar="N",
        help="after the tasks, revision rounds that send the tree's failing checks back to "
        f"the tasks that wrote the files (default {DEFAULT_ROUNDS}; 0: check only)",
    )
    assembly.add_argument(
        "--no-integration",
        action="store_true",
        help="do not check the assembled tree (compile, imports, ruff, its tests in the "
        "sandbox) nor revise it; statuses come from the tasks alone",
    )


def _add_governance(governance: argparse._ArgumentGroup) -> None:
    governance.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file (YAML or JSON: global / team / job policies) every model choice obeys",
    )
    governance.add_argument(
        "--team", help="the team the run is for: its policies apply and its budget cap is charged"
    )
    governance.add_argument(
        "--forecast",
        action="store_true",
        help="print what the project is expected to cost (typical) and the most it can cost "
        "(high, capped by the budget) and its risk to the budget, calling no model (no key "
        "needed), and exit; learns from what earlier runs journaled when there is a state file",
    )
    governance.add_argument(
        "--job", metavar="ID", help="the job the run is for: its policies and its budget cap"
    )
    for scope, what in (("org", "every project in the state file"), ("team", "--team's runs"),
                        ("job", "--job's runs")):  # fmt: skip
        governance.add_argument(
            f"--{scope}-cap",
            type=float,
            metavar="USD",
            help=f"a cap on what {what} may spend in all, saved for later runs; a run that "
            "could pass a cap is refused before any spend",
        )


def _add_routing(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument(
        "--routing",
        choices=sorted(BACKENDS),
        help="how models are put in order for each job: table (the routing table, default), "
        "greedy (quality x trust / cost), weighted (weighted sum), pareto (non-dominated first), "
        "adaptive (learns which model passes each task type's checks for the least money)",
    )


def _add_models(models: argparse._ArgumentGroup) -> None:
    models.add_argument(
        "--local",
        action="store_true",
        help="run every step on the embedded local model (offline, $0; needs the local extra)",
    )
    models.add_argument(
        "--local-model",
        metavar="PATH",
        help="serve this GGUF file locally instead of the embedded model (implies --local)",
    )
    models.add_argument(
        "--call-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds one attempt at a model call may take, for every provider (default: the "
        "catalog's per-provider timeout, else 300)",
    )
    models.add_argument(
        "--max-fallbacks",
        type=int,
        metavar="N",
        help="models a call may fall back to after its routing choice, each paid for "
        f"(default {DEFAULT_MAX_FALLBACKS}; 0: the choice only); an answer cut off by the "
        "output limit falls back once only",
    )
    models.add_argument(
        "--allow-single-verdict",
        action="store_true",
        help="let a task complete on one usable evaluation when the other failed (default: "
        "two verdicts are needed)",
    )
    models.add_argument(
        "--providers",
        metavar="NAMES",
        help="use only these providers of the catalog, comma-separated (e.g. local, or "
        "openai,anthropic); the others are hidden",
    )


def _add_validator_limits(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument(
        "--validator-timeout",
        type=float,
        metavar="SECONDS",
        help="time limit of each validator run, e.g. a task's test suite (default 60)",
    )
    limits.add_argument(
        "--unsafe-validators",
        action="store_true",
        help="run model-written code (pytest, latex validators) WITHOUT a sandbox where none is "
        "available; it can then read your files and keys and use your network",
    )


def _add_watching(watch: argparse._ArgumentGroup) -> None:
    watch.add_argument(
        "--metrics-out",
        metavar="FILE",
        help="model and run metrics: FILE.prom (Prometheus text format, for a textfile "
        "collector; needs the metrics extra) or FILE.json, rewritten after every task; - "
        "prints a table at the end",
    )
    watch.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append a hash-chained JSONL record of every model choice and call to FILE as "
        "the run goes",
    )
    watch.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="serve a read-only page of the saved projects (the store runs use) at "
        "http://HOST:PORT/ until Ctrl-C, following running ones live; HOST is 127.0.0.1 unless "
        "given; with --audit-log FILE each project's page checks that log's chain; needs the "
        "web extra",
    )
    watch.add_argument(
        "--verify-audit",
        metavar="FILE",
        help="check an audit log's hash chain (exit 0 intact, 1 tampered with or not ending "
        "at --audit-head) and exit",
    )
    watch.add_argument(
        "--audit-head",
        metavar="HASH",
        help="with --verify-audit: the head hash a run printed, kept elsewhere; the log must end "
        "there, which catches records cut from its end",
    )


def _add_saved(saved: argparse._ArgumentGroup) -> None:
    saved.add_argument("--resume", metavar="ID", help="continue an interrupted project")
    saved.add_argument(
        "--db",
        metavar="URL",
        help=f"keep projects, the journal and the cache in this PostgreSQL database (a "
        f"postgresql:// URL; needs the distributed extra; default: ${DB_URL_ENV}, else the "
        "SQLite files in $ORCHESTRATOR_HOME)",
    )
    saved.add_argument(
        "--list-projects", action="store_true", help="print saved projects, newest first"
    )


def _add_workers(queued: argparse._ArgumentGroup) -> None:
    queued.add_argument(
        "--submit",
        action="store_true",
        help="save the project and queue it for a worker instead of running it here; prints its id",
    )
    queued.add_argument(
        "--worker",
        action="store_true",
        help="run queued projects until stopped (SIGTERM or Ctrl-C: calls in flight finish and "
        "are journaled, their projects go back to the queue)",
    )
    queued.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="with --worker: stop once the queue is done (nothing queued, no killed worker's "
        "project left)",
    )


def _add_general(parser: argparse.ArgumentParser) -> None:
    """The flags outside any group: verbosity, the version and the model catalog."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: this tool's decisions at DEBUG (routing, cache, journal, retries, budget); "
        "-vv: the vendor SDKs' and HTTP libraries' too",
    )
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
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


def run() -> NoReturn:
    """The ``orchestrator`` program (``python -m orchestrator``): a process of its own."""
    try:
        code = _flushed(_main(None, whole_process=True))
    finally:
        # The process is about to end: the vendor SDKs' many objects are left to the OS
        # instead of the interpreter's final collection over them (0.7 s measured).
        gc.freeze()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, for ``argv`` (default: the process's arguments); the exit code."""
    return _flushed(_main(argv))


def _main(argv: Sequence[str] | None, whole_process: bool = False) -> int:
    args = build_parser().parse_args(argv)  # --help, --version, bad flags: answered here
    # Log records quote model output and servers' errors: shown with their controls escaped.
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose >= 2 else logging.WARNING, handlers=[handler]
    )
    if args.verbose:
        logging.getLogger("orchestrator").setLevel(logging.DEBUG)
    from orchestrator.cli import commands
    from orchestrator.llm import providers  # what the flags ask for, and the engine behind it

    if whole_process:
        providers.configure_for_command_line()
    return commands.execute(args)


def _flushed(code: int) -> int:
    try:
        # Written out now, not by the interpreter at exit: stdout to a pipe is buffered
        # (unless PYTHONUNBUFFERED), and the pipe's reader may be gone (`| head -1`).
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
    return code


def discard_stdout() -> None:
    """The reader went away (`| head -1`): what it did not want is not an error. Point stdout
    at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
