"""Jobs (``JobSpec``): a project with its own budget and caps, run by ``Orchestrator.run_job`` or by
several orchestrators at once (``AgentPool``)."""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError
from orchestrator.money.budget import Budget
from orchestrator.routing.profiles import ModelProfile, merge_profiles
from orchestrator.run.tasks import ProjectState
from orchestrator.settings import DB_URL_ENV

if TYPE_CHECKING:
    from orchestrator.money.caps import BudgetHierarchy
    from orchestrator.routing.policy import Policy
    from orchestrator.run.orchestrator import Orchestrator
    from orchestrator.run.tasks import Task


@dataclass
class JobSpec:
    """One job for ``Orchestrator.run_job`` or an ``AgentPool``: a project with its own budget,
    charged to ``team`` / ``job_id``'s caps, under ``policies`` besides the orchestrator's."""

    project_description: str
    success_criteria: str
    budget: Budget = field(default_factory=Budget)
    team: str | None = None
    job_id: str | None = None
    policies: Iterable[Policy] = ()
    tasks: Mapping[str, Task] | None = None
    project_id: str | None = None


class AgentPool:
    """Orchestrators (agents) that run jobs at once: A/B tests of routing backends, ensembles,
    spreading load. The agents share one ``BudgetHierarchy``, so the caps hold across them."""

    def __init__(self, budget_hierarchy: BudgetHierarchy | None = None) -> None:
        self.agents: dict[str, Orchestrator] = {}
        self.budget_hierarchy = budget_hierarchy

    def add_agent(self, name: str, orchestrator: Orchestrator) -> None:
        if name in self.agents:
            raise ValueError(f"an agent called {name!r} is already in the pool")
        if self.budget_hierarchy is None:
            self.budget_hierarchy = orchestrator.budget_hierarchy
        else:
            self.budget_hierarchy.caps.update(orchestrator.budget_hierarchy.caps)
            orchestrator.budget_hierarchy = self.budget_hierarchy
        self.agents[name] = orchestrator

    async def run_parallel(
        self, jobs: Mapping[str, JobSpec]
    ) -> dict[str, ProjectState | BaseException]:
        """Each agent runs its job, all at once; an agent that fails (a cap, a policy, an
        error) has its exception as its result and never stops the others."""
        unknown = [name for name in jobs if name not in self.agents]
        if unknown:
            raise KeyError(f"no agent called {', '.join(map(repr, unknown))} in the pool")
        names = list(jobs)
        results = await asyncio.gather(
            *(self.agents[name].run_job(jobs[name]) for name in names), return_exceptions=True
        )
        return dict(zip(names, results, strict=True))

    async def submit_parallel(
        self, jobs: Mapping[str, JobSpec], queue_url: str | None = None
    ) -> dict[str, str | BaseException]:
        """Queue each agent's job for the workers (``python -m orchestrator --worker``) instead
        of running it here: each agent saves its project (checked, nothing paid) and its id is
        the result; an agent that fails has its exception instead. ``queue_url``: the
        PostgreSQL database of the queue, by default ``$ORCHESTRATOR_DB_URL``."""
        from orchestrator.jobs.workers import enqueue  # the distributed extra, only when asked for

        url = queue_url or os.environ.get(DB_URL_ENV)
        if not url:
            raise ConfigError(f"submitting needs the queue's PostgreSQL database: ${DB_URL_ENV}")
        unknown = [name for name in jobs if name not in self.agents]
        if unknown:
            raise KeyError(f"no agent called {', '.join(map(repr, unknown))} in the pool")
        names = list(jobs)
        saved = await asyncio.gather(
            *(self.agents[name].submit_job(jobs[name]) for name in names), return_exceptions=True
        )
        await enqueue(url, [p for p in saved if isinstance(p, str)])
        return dict(zip(names, saved, strict=True))

    @staticmethod
    def best_result(
        results: Mapping[str, ProjectState | BaseException],
    ) -> tuple[str, ProjectState] | None:
        """The agent whose run has the highest mean task score (failed agents left out)."""
        scored = [
            (statistics.fmean(r.score for r in state.results.values()), name, state)
            for name, state in results.items()
            if isinstance(state, ProjectState) and state.results
        ]
        if not scored:
            return None
        _, name, state = max(scored, key=lambda item: item[0])
        return name, state

    def merge_telemetry(self) -> dict[str, ModelProfile]:
        """Every agent's model profiles in one: moving averages (quality, trust, latency, cost)
        averaged over the agents that measured the model, counters summed."""
        return merge_profiles(agent.profiles for agent in self.agents.values())
