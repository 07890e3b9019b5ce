"""Projects run by workers on other processes or machines: procrastinate's queue in PostgreSQL.

``submit`` saves a project in the shared store and queues one job for it; ``work`` runs a
worker: each job resumes its project from the store (``Orchestrator.resume`` through the
command line's resume path), so a job run twice pays for nothing twice. A job is locked by its
project id (one worker at a time on a project), a stalled job (its worker killed) is retried
once its heartbeat is older than a project lease, and a worker asked to stop (SIGTERM, Ctrl-C)
starts no new call: the calls in flight finish and are journaled, and the job goes back to
the queue for another worker. A worker that leaves when idle leaves only once nothing is queued
and no project is left to a worker that stopped beating: it waits for such a project's lease to
run out and runs it itself. Imported only when a worker or a submission is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

import procrastinate
import psycopg

from orchestrator.aio import stop
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.store.base import shown
from orchestrator.store.holders import Holders
from orchestrator.store.lease import ProjectBusy, lease_seconds
from orchestrator.store.state import StateManager

log = logging.getLogger(__name__)

QUEUE_SCHEMA = "orchestrator_queue"
TASK_NAME = "orchestrator.run_project"
SHOWN_WAITS = 5  # an idle worker names at most this many projects it waits for, at -v

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
    # A project another run still holds (its worker was killed a moment ago) is tried again, as
    # the same job, once that run's lease can have ended: one job per project, however often.
    busy = procrastinate.RetryStrategy(
        wait=max(1, math.ceil(lease_seconds())), retry_exceptions={ProjectBusy}
    )
    app.task(name=TASK_NAME, pass_context=True, retry=busy)(_run_job)
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
                found = await cursor.fetchone()  # one row, whose value is None until created
                if found is None or found[0] is None:
                    await conn.execute(f"SET LOCAL search_path = {QUEUE_SCHEMA}")
                    schema = procrastinate.schema.SchemaManager.get_schema()
                    await conn.execute(schema)
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


async def waiting_for_a_worker(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    """The projects whose job waits in the queue for a worker to take it, read on ``conn`` (a
    connection to the store's database; none when nothing was ever queued there)."""
    cursor = await conn.execute("SELECT to_regclass(%s)", (f"{QUEUE_SCHEMA}.procrastinate_jobs",))
    found = await cursor.fetchone()
    if found is None or found[0] is None:
        return set()
    cursor = await conn.execute(
        f"SELECT queueing_lock FROM {QUEUE_SCHEMA}.procrastinate_jobs"
        " WHERE status = 'todo' AND task_name = %s",
        (TASK_NAME,),
    )
    return {str(lock) for (lock,) in await cursor.fetchall() if lock}


async def _defer(app: procrastinate.App, project_id: str) -> None:
    task = app.tasks[TASK_NAME].configure(lock=project_id, queueing_lock=project_id)
    await task.defer_async(project_id=project_id)


# The worker's state, for the job function procrastinate calls.
_runner: ProjectRunner | None = None
_stopping = asyncio.Event()
_running: set[str] = set()  # the projects this worker's jobs run now
_job_ended = asyncio.Event()  # one of them ended: a worker leaving when idle looks again


async def _run_job(context: procrastinate.JobContext, project_id: str) -> None:
    assert _runner is not None, "jobs run only in a worker started by orchestrator.jobs.workers"
    app = context.app
    _running.add(project_id)
    try:
        status = await _runner(project_id, _stopping)
    except ProjectBusy:
        log.info("project %s: another run holds it; this job is tried again later", project_id)
        raise  # retried by the queue (queue_app's retry strategy)
    finally:
        _running.discard(project_id)
        _job_ended.set()
    if _stopping.is_set() and status == "INTERRUPTED":
        await _requeue(app, project_id)  # released for another worker to finish
        log.warning("project %s released: this worker is stopping", project_id)


async def _requeue(app: procrastinate.App, project_id: str) -> None:
    with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued):
        await _defer(app, project_id)


async def work(
    url: str,
    runner: ProjectRunner,
    *,
    concurrency: int = 1,
    exit_when_idle: bool = False,
) -> None:
    """Run queued projects, ``concurrency`` at a time, until stopped (or, with
    ``exit_when_idle``, until the queue is done: see ``_leave_when_idle``)."""
    global _runner
    if concurrency < 1:
        raise ConfigError("--concurrency for a worker must be at least 1")
    await prepare_queue(url)
    _runner = runner
    _stopping.clear()
    _running.clear()
    app = queue_app(url)
    lease = lease_seconds()
    async with app.open_async(), StateManager(url) as store, _sweeping(app, store.holders, lease):
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=concurrency,
                wait=True,  # an empty queue is not the end: see _leave_when_idle
                install_signal_handlers=False,
                update_heartbeat_interval=max(lease / 3, 0.2),
                stalled_worker_timeout=lease,
                fetch_job_polling_interval=min(lease / 3, 5.0),
                delete_jobs="never",
            )
        )
        left = asyncio.Event()

        def leave() -> None:
            left.set()
            if not worker.cancelling():  # once: a second cancel would cut procrastinate's drain
                worker.cancel()  # it stops fetching; a job it just took runs to its end

        with _on_stop_signal(lambda: _stop(worker)):
            watch = _leave_when_idle(app, store.holders, lease, leave) if exit_when_idle else None
            async with _background(watch):
                try:
                    await worker
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    asked = _stopping.is_set() or left.is_set()
                    if not asked or (current is not None and current.cancelling()):
                        raise
                    # Stopped as asked (drained, its jobs handed back) or idle: a clean end.


def _stop(worker: asyncio.Task[None]) -> None:
    """Start no new call or job; the calls in flight finish and the jobs end resumable."""
    if not _stopping.is_set():
        log.warning("stopping: calls in flight finish, then their projects are released")
        _stopping.set()
        if not worker.cancelling():  # not already leaving, idle
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


async def _retry_stalled(app: procrastinate.App, holders: Holders, lease: float) -> None:
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
            project_id = str(job.task_kwargs.get("project_id"))
            if await holders.held(project_id):
                continue
            log.warning("project %s: its worker stopped; queued again", project_id)
            await app.job_manager.retry_job(job)
    except Exception as exc:  # the queue's database may be away a moment: next sweep
        log.warning("stalled-job sweep failed: %s", exc)


@contextlib.asynccontextmanager
async def _sweeping(app: procrastinate.App, holders: Holders, lease: float) -> AsyncIterator[None]:
    """A sweep now, so that even a worker leaving when idle picks up stalled work, then every
    half lease while the worker runs."""
    await _retry_stalled(app, holders, lease)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(lease / 2)
            await _retry_stalled(app, holders, lease)

    async with _background(sweep()):
        yield


@contextlib.asynccontextmanager
async def _background(work: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """``work`` (if any) runs beside the block, and is cancelled when the block ends."""
    if work is None:
        yield
        return
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        await stop(task)


async def _leave_when_idle(
    app: procrastinate.App, holders: Holders, lease: float, leave: Callable[[], None]
) -> None:
    """Call ``leave`` once this worker runs no job, nothing is queued and no project is left
    to a worker that stopped beating (killed).

    Such a project is waited for: once its lease runs out the sweep queues its job again and
    this worker (or another) takes it over, resuming it from its journal. A project whose lease
    is renewed while this worker watches is held by a live run, which will finish it: it is not
    waited for. A held project is waited for until its lease ends; anything else (a job
    queued, or taken by a worker that holds no lease on it) for at most three leases. Each wait
    is said at -v, and a wait given up is said, so a worker leaving when idle never hangs.
    """
    poll = min(lease / 4, 5.0)
    idle: _Idle | None = None  # what this worker has seen since it last ran a job
    while True:
        if _running or _job_ended.is_set():
            idle = None  # it ran a job since it last looked: what it saw then is out of date
        _job_ended.clear()
        if not _running:
            idle = idle or _Idle(lease)
            waits = await idle.waits(app, holders)
            if not waits:
                log.info("idle: nothing queued and no project left by a stopped worker; leaving")
                leave()
                return
            for what in waits[:SHOWN_WAITS]:
                log.info("idle, waiting for %s", what)
            if len(waits) > SHOWN_WAITS:
                log.info("idle, waiting for %d more projects", len(waits) - SHOWN_WAITS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_job_ended.wait(), poll)


class _Idle:
    """What an idle worker still waits for: the unfinished jobs of the queue, and their
    projects' leases as first seen, over one idle spell."""

    def __init__(self, lease: float):
        self.lease = lease
        self.patience = 3 * lease
        self.since: dict[tuple[object, ...], float] = {}  # each thing waited for: since when
        self.given_up: set[tuple[object, ...]] = set()
        self.leases: dict[str, tuple[str, float]] = {}  # project: (holder, lease end) first seen
        self.live: set[str] = set()  # projects whose lease moved: a live run holds them

    async def waits(self, app: procrastinate.App, holders: Holders) -> list[str]:
        """'project ID: why' for each job still to wait for; none: the worker may leave."""
        try:
            return await self._waits(app, holders)
        except Exception as exc:  # the queue's database may be away a moment: look again
            why = f"the queue, which cannot be read: {str(exc).splitlines()[0]}"
            return [why] if self._patient(("queue",), why) else []

    async def _waits(self, app: procrastinate.App, holders: Holders) -> list[str]:
        await _retry_stalled(app, holders, self.lease)  # a killed worker's free project: queued
        manager = app.job_manager
        todo = await manager.list_jobs_async(task=TASK_NAME, status="todo")
        doing = await manager.list_jobs_async(task=TASK_NAME, status="doing")
        stalled = await manager.get_stalled_jobs(
            task_name=TASK_NAME, seconds_since_heartbeat=self.lease
        )
        dead = {job.id for job in stalled}  # their worker stopped beating
        waits = []
        for job in [*todo, *doing]:
            project_id = str(job.task_kwargs.get("project_id"))
            if project_id in self.live:
                continue
            held = await holders.lease(project_id)
            if held is not None:
                holder, ends, now = held
                if self.leases.setdefault(project_id, (holder, ends)) != (holder, ends):
                    self.live.add(project_id)
                    log.info("project %s: its lease was renewed: left to its live run", project_id)
                    continue
                kind = "held"
                why = f"its lease ends in {max(ends - now, 0):.1f} s (at {_clock(ends)})"
                if job.id in dead:
                    why = f"its worker stopped beating; {why}"
            elif job.status == "todo":
                kind = "queued"
                when = job.scheduled_at
                if when is not None and when > datetime.now(UTC):
                    why = f"queued to run at {_clock(when.timestamp())}"
                else:
                    why = "queued"
            elif job.id in dead:
                kind = "stalled"
                why = "its worker stopped beating; queued again at the next sweep"
            else:
                kind = "unclaimed"
                why = "its worker beats but holds no lease on it (it just began, or was killed)"
            # A held project's wait ends with its lease (a lease that moves: a live run's).
            if kind == "held" or self._patient((job.id, job.status, kind), why, project_id):
                waits.append(f"project {project_id}: {why}")
        return waits

    def _patient(self, key: tuple[object, ...], why: str, project_id: str = "") -> bool:
        """Whether to go on waiting for ``key``: for at most three leases."""
        since = self.since.setdefault(key, time.monotonic())
        if time.monotonic() - since <= self.patience:
            return True
        if key not in self.given_up:
            self.given_up.add(key)
            what = f"project {project_id}" if project_id else why
            log.warning("idle for %.0f s, no longer waiting for %s (%s)", self.patience, what, why)
        return False


def _clock(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%H:%M:%S UTC")
