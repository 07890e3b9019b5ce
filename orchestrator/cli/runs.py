"""The command line's runs: a new run, a resume, a submission to the workers and a worker, each
reported as its results table, the files it wrote and its exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from orchestrator.cli.app import EXIT_INTERRUPTED, EXIT_SUCCESS
from orchestrator.cli.options import budget_caps, run_config, usage_error
from orchestrator.cli.project_file import ProjectSpec
from orchestrator.cli.watch import Watch, progress_printer
from orchestrator.code.output_writer import OutputError, write_outputs
from orchestrator.errors import OrchestratorError
from orchestrator.llm.client import UnifiedClient
from orchestrator.observe.progress import results_table
from orchestrator.run.client import run_client
from orchestrator.run.config import TREE_NAME, RunConfig
from orchestrator.run.orchestrator import Orchestrator
from orchestrator.run.projects import FINISHED
from orchestrator.run.tasks import ProjectState, ProjectStatus
from orchestrator.settings import DB_URL_ENV, load_environment
from orchestrator.store.base import EXTRA_COMMAND, is_postgres_url
from orchestrator.store.lease import ProjectBusy
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


async def run_new(spec: ProjectSpec, args: argparse.Namespace, watch: Watch) -> int:
    """Run the new project ``spec`` here, watched by ``watch``; its exit code."""
    config = run_config(args, spec)
    async with _guarded(), StateManager() as store, _client(config) as (client, chosen):
        client.require_providers()
        orchestrator = _orchestrator(args, store, client, chosen)
        printer = progress_printer(args, orchestrator.budget)
        watch.attach(orchestrator, printer)
        with printer:  # the live area is gone before the results or an error is printed
            state = await orchestrator.run_project(
                spec.description, spec.criteria, spec.project_id, tasks=spec.tasks,
                restart=args.restart,
            )  # fmt: skip
    code = await _report(state, chosen.output_dir, args.overwrite, _tree_name(chosen))
    await watch.finish(orchestrator)
    return code


async def resume(args: argparse.Namespace, watch: Watch) -> int:
    """Continue ``args.resume`` here, watched by ``watch``; its exit code."""
    _, code = await _resume_project(args, watch)
    return code


async def _resume_project(args: argparse.Namespace, watch: Watch) -> tuple[ProjectState, int]:
    """Resume ``args.resume`` on the settings it saved, the flags given on top."""
    overrides = run_config(args)
    async with _guarded(), StateManager() as store:
        status, settings = await store.projects.run_settings(args.resume)
        running = status not in FINISHED
        config = overrides.over(RunConfig.from_settings(settings))
        async with _client(config, running=running) as (client, chosen):
            if running:
                client.require_providers()
            orchestrator = _orchestrator(args, store, client)
            printer = progress_printer(args)
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


async def submit(spec: ProjectSpec, args: argparse.Namespace) -> int:
    """Save the project as a run would, pay nothing, and queue it for the workers."""
    distributed = _distributed()
    url = os.environ[DB_URL_ENV]
    config = run_config(args, spec)
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


async def work(args: argparse.Namespace) -> int:
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
    """``orchestrator.jobs.workers``, imported only here; needs a PostgreSQL store."""
    url = os.environ.get(DB_URL_ENV)
    if not url:
        raise usage_error(
            f"--submit and --worker need a PostgreSQL store: --db URL or ${DB_URL_ENV}"
        )
    if not is_postgres_url(url):
        raise usage_error(f"{DB_URL_ENV} must be a postgresql:// URL")
    try:
        from orchestrator.jobs import workers as distributed
    except ImportError:
        raise usage_error(
            f"--submit and --worker need the distributed extra: {EXTRA_COMMAND}"
        ) from None
    return distributed


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
        budget_hierarchy=budget_caps(args),
    )


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


def _tree_name(config: RunConfig) -> str:
    return config.tree_name or TREE_NAME


def exit_code(state: ProjectState) -> int:
    """The program's exit code for a run that ended as ``state``."""
    return EXIT_CODES[state.status]
