"""``Session``: what one call of the ``Orchestrator`` runs with (the state store, the cache, the
client, the run's config and, while a run goes on, the project's lease), and how a call gets
one: ``open_session`` opens the stores and the client (closing what it made), ``leased`` holds
the project, ``capped`` holds the run's money against the budget caps.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from orchestrator.llm.cache import DiskCache
from orchestrator.llm.client import UnifiedClient
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.units import nanos_to_usd
from orchestrator.routing.backends import OptimizationBackend
from orchestrator.routing.policy import PolicySet
from orchestrator.run.client import run_client
from orchestrator.run.config import DEFAULTS, RunConfig
from orchestrator.run.tasks import TaskResult, TaskStatus
from orchestrator.settings import load_environment
from orchestrator.store.lease import Lease
from orchestrator.store.state import StateManager, UnknownProjectError

log = logging.getLogger(__name__)


@dataclass
class Session:
    """The client, stores, config and lease one call of the orchestrator runs with."""

    client: UnifiedClient
    cache: DiskCache | None
    store: StateManager | None
    config: RunConfig = DEFAULTS  # the run's, resolved, saved with it for its resumes
    lease: Lease | None = None  # held while a run of the project goes on
    backend: OptimizationBackend | None = None  # None: the config's routing

    @property
    def policies(self) -> PolicySet:
        """What this run's choices obey."""
        return PolicySet(self.config.policies or ())

    @property
    def may_write(self) -> bool:
        """Whether this run may write the project's state: not once it lost the project."""
        return self.store is not None and (self.lease is None or self.lease.lost is None)

    async def may_write_now(self) -> bool:
        """``may_write``, the lease confirmed with the store first: a run paused past its lease
        may not have seen yet that another run took the project, whose state it would overwrite."""
        if self.lease is not None:
            await self.lease.confirm()
        return self.may_write

    async def checkpoint(self, project_id: str, result: TaskResult, elapsed: float) -> None:
        """Write a task's result, with its cost as the journal says it (nothing once the project
        is lost; a lease found taken here is marked lost)."""
        if not self.may_write:
            return
        assert self.store is not None
        lease = self.lease
        unfinished = result.status in (TaskStatus.PENDING, TaskStatus.RUNNING)
        # One transaction: the lease confirmed (and renewed), the task's cost read from the
        # journal, its result written.
        spent = await self.store.projects.checkpoint_held(
            project_id,
            result.task_id,
            result.to_record(),
            final=not (result.interrupted or unfinished),
            elapsed=elapsed,
            owner=lease.owner if lease is not None else None,
            lease_seconds=lease.seconds if lease is not None else 0.0,
        )
        if spent is None:
            assert lease is not None
            lease.taken()
        else:
            result.cost_usd = nanos_to_usd(spent)


# A call's config (resolved) and whether it will run (False: nothing is asked, so no local model
# is started), said once the call's store is open (a resume reads it from there).
Configure = Callable[[StateManager | None], Awaitable[tuple[RunConfig, bool]]]


def constant(config: RunConfig, *, running: bool = True) -> Configure:
    """A call's config known before its store is read: a new project's (``running`` False: one
    saved for later)."""

    async def configure(store: StateManager | None) -> tuple[RunConfig, bool]:
        return config, running

    return configure


@asynccontextmanager
async def open_session(
    configure: Configure,
    *,
    store: StateManager | None,
    use_state: bool,
    cache: DiskCache | None,
    client: UnifiedClient | None,
    backend: OptimizationBackend | None,
) -> AsyncIterator[Session]:
    """The state store, config, cache and client of one call: those given, or made here (a
    store only with ``use_state``, a cache only where the config uses one) and closed at the
    end."""
    async with AsyncExitStack() as stack:
        if store is None and use_state:
            store = StateManager()
            stack.push_async_callback(store.aclose)
        # Opened before anything is paid for: a corrupt or foreign file stops us here.
        if store is not None:
            await store.open()
        config, running = await configure(store)
        if not config.use_cache:
            cache = None
        elif cache is None:
            cache = DiskCache()
            stack.push_async_callback(cache.aclose)
        if cache is not None:
            await cache.open()
        if client is None:
            note = functools.partial(log.warning, "%s")
            made = run_client(config, load_environment(), running=running, note=note)
            opened, config = await stack.enter_async_context(made)
            client = opened
        yield Session(client, cache, store, config, backend=backend)


@asynccontextmanager
async def leased(session: Session, project_id: str) -> AsyncIterator[Lease | None]:
    """Hold the project for this run, so no other run pays for it (without a state store there
    is nothing to share)."""
    if session.store is None:
        yield None
        return
    async with Lease(session.store.holders, project_id) as held:
        session.lease = held
        try:
            yield held
        finally:
            session.lease = None


async def discard(session: Session, project_id: str) -> None:
    """Forget a project's saved state, once no other run holds it."""
    assert session.store is not None
    try:
        await session.store.projects.load(project_id)
    except UnknownProjectError:
        return
    async with leased(session, project_id):
        await session.store.projects.delete(project_id)


@asynccontextmanager
async def capped(
    session: Session, hierarchy: BudgetHierarchy, may_spend_nanos: int
) -> AsyncIterator[None]:
    """Hold ``may_spend_nanos`` against the organisation's, and the run's team's and job's caps
    while the run goes on (``BudgetCapExceeded`` if it could pass one)."""
    store = session.store
    team, job_id = session.config.team, session.config.job
    if store is None:
        yield
        return
    if hierarchy.caps:
        await store.books.save_budget_caps(hierarchy.caps)  # for later runs and processes
    caps = await store.books.budget_caps()
    if not caps:
        yield
        return
    spent = await store.books.scope_spend_nanos(team, job_id)
    hold = hierarchy.hold(spent, caps, may_spend_nanos, team, job_id)
    try:
        yield
    finally:
        hierarchy.release(hold)
