"""Projects run by workers on other processes or machines: procrastinate's queue in PostgreSQL.

``submit`` saves a project in the shared store and queues one job for it; ``work`` runs a
worker: each job resumes its project from the store (``Orchestrator.resume`` through the
command line's resume path), so a job run twice pays for nothing twice. A job is locked by its
project id (one worker at a time on a project), a stalled job (its worker killed) is retried
once its heartbeat is older than a project lease, and a worker asked to stop (SIGTERM, Ctrl-C)
starts no new call: the calls in flight finish and are journaled, and the job goes back to
the queue for another worker. Imported only when a worker or a submission is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import procrastinate
import psycopg

from .errors import ConfigError, OrchestratorError
from .lease import ProjectBusy, lease_seconds
from .sqlite_store import shown
from .state import StateManager

log = logging.getLogger(__name__)

QUEUE_SCHEMA = "orchestrator_queue"
TASK_NAME = "orchestrator.run_project"

# Runs one queued project to its end and says its status; ``ProjectBusy`` when another run
# still holds it. Set by ``work`` (the command line's resume path).
ProjectRunner = Callable[[str, asyncio.Event], Awaitable[str]]


def queue_app(url: str) -> procrastinate.App:
    """The procrastinate app on the queue tables in ``url``'s ``orchestrator_queue`` schema."""
    connector = procrastinate.PsycopgConnector(
        conninfo=url,
        kwargs={"options": f"-c search_path={QUEUE_SCHEMA}"},
        min_size=1,
        max_size=4,
    )
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, pass_context=True)(_run_job)
    return app


async def prepare_queue(url: str) -> None:
    """Create the queue's tables once (several processes may start at once)."""
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (QUEUE_SCHEMA,))
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {QUEUE_SCHEMA}")
                cursor = await conn.execute(
                    "SELECT to_regclass(%s)", (f"{QUEUE_SCHEMA}.procrastinate_jobs",)
                )
                if (await cursor.fetchone())[0] is None:
                    await conn.execute(f"SET LOCAL search_path = {QUEUE_SCHEMA}")
                    schema = procrastinate.schema.SchemaManager.get_schema()
                    await conn.execute(schema)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise OrchestratorError(
            f"cannot use the work queue in {shown(url)}: {str(exc).splitlines()[0]}"
        ) from exc


async def enqueue(url: str, project_ids: Iterable[str]) -> set[str]:
    """Queue a job for each project; those with one already waiting for a worker are returned
    (and not queued twice)."""
    await prepare_queue(url)
    app = queue_app(url)
    waiting = set()
    async with app.open_async():
        for project_id in project_ids:
            try:
                await _defer(app, project_id)
            except procrastinate.exceptions.AlreadyEnqueued:
                waiting.add(project_id)
    return waiting


async def _defer(app: procrastinate.App, project_id: str, delay: float = 0.0) -> None:
    task = app.tasks[TASK_NAME].configure(
        lock=project_id,
        queueing_lock=project_id,
        schedule_in={"seconds": delay} if delay else None,
    )
    await task.defer_async(project_id=project_id)


# The worker's state, for the job function procrastinate calls.
_runner: ProjectRunner | None = None
_stopping = asyncio.Event()


async def _run_job(context: procrastinate.JobContext, project_id: str) -> None:
    assert _runner is not None, "jobs run only in a worker started by orchestrator.distributed"
    app = context.app
    try:
        status = await _runner(project_id, _stopping)
    except ProjectBusy:
        # Its last run's lease has not ended yet (a worker killed a moment ago): come back then.
        await _requeue(app, project_id, delay=lease_seconds())
        return
    if _stopping.is_set() and status == "INTERRUPTED":
        await _requeue(app, project_id)  # released for another worker to finish
        log.warning("project %s released: this worker is stopping", project_id)


async def _requeue(app: procrastinate.App, project_id: str, delay: float = 0.0) -> None:
    with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued):
        await _defer(app, project_id, delay)


async def work(
    url: str,
    runner: ProjectRunner,
    *,
    concurrency: int = 1,
    exit_when_idle: bool = False,
) -> None:
    """Run queued projects, ``concurrency`` at a time, until stopped (or, with
    ``exit_when_idle``, until the queue is empty)."""
    global _runner
    if concurrency < 1:
        raise ConfigError("--concurrency for a worker must be at least 1")
    await prepare_queue(url)
    _runner = runner
    _stopping.clear()
    app = queue_app(url)
    lease = lease_seconds()
    async with app.open_async(), StateManager(url) as store, _sweeping(app, store, lease):
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=concurrency,
                wait=not exit_when_idle,
                install_signal_handlers=False,
                update_heartbeat_interval=max(lease / 3, 0.2),
                stalled_worker_timeout=lease,
                fetch_job_polling_interval=min(lease / 3, 5.0),
                delete_jobs="never",
            )
        )
        with _on_stop_signal(lambda: _stop(worker)):
            try:
                await worker
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not _stopping.is_set() or (current is not None and current.cancelling()):
                    raise
                # Stopped as asked, with its jobs drained and handed back: a clean end.


def _stop(worker: asyncio.Task[None]) -> None:
    """Start no new call or job; the calls in flight finish and the jobs end resumable."""
    if not _stopping.is_set():
        log.warning("stopping: calls in flight finish, then their projects are released")
        _stopping.set()
        worker.cancel()  # procrastinate stops fetching and waits for the running jobs


@contextlib.contextmanager
def _on_stop_signal(stop: Callable[[], None]) -> Any:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop)
    try:
        yield
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


async def _retry_stalled(app: procrastinate.App, store: StateManager, lease: float) -> None:
    """Send back to the queue the jobs of workers that stopped beating (killed): their
    projects resume from their journals elsewhere.

    A worker draining its jobs has stopped its queue heartbeat (procrastinate stops it before
    it waits for the running jobs) while its runs go on renewing their project leases: a job
    whose project a live run holds is not stalled.
    """
    try:
        stalled = await app.job_manager.get_stalled_jobs(
            task_name=TASK_NAME, seconds_since_heartbeat=lease
        )
        for job in stalled:
            if await store.held(str(job.task_kwargs.get("project_id"))):
                continue
            log.warning("project %s: its worker stopped; queued again", job.task_kwargs)
            await app.job_manager.retry_job(job)
    except Exception as exc:  # the queue's database may be away a moment: next sweep
        log.warning("stalled-job sweep failed: %s", exc)


@contextlib.asynccontextmanager
async def _sweeping(
    app: procrastinate.App, store: StateManager, lease: float
) -> AsyncIterator[None]:
    """A sweep now, so that even a worker leaving when idle picks up stalled work, then every
    half lease while the worker runs."""
    await _retry_stalled(app, store, lease)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(lease / 2)
            await _retry_stalled(app, store, lease)

    sweeper = asyncio.create_task(sweep())
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
