"""One process of the multi-process liveness test: runs one whole project of prose tasks over
the fake provider, charged to the team and job every process shares, with its own budget and
``CONCURRENCY`` calls at once; prints "ready", waits for a line on stdin (so that every process
starts its run together), then prints how the run ended as JSON.

    python tests/money_process.py LOCATION BASE_URL PROJECT_ID BUDGET CONCURRENCY TASKS MODE

MODE is ``exact`` (the orchestrator's ledger), or a broken one the test must catch:
``naive`` reserves by reading and then writing (two processes can both see the same room), and
``hoard`` keeps each attempt's hold until its call goes ahead again or answers (a call then
waits on its own holds, and a call that fails keeps them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from conftest import FAST_RETRY, fake_env
from ledger_stress import NaiveLedger
from test_engine import as_tasks, prose_task

import orchestrator.llm.providers.anthropic
import orchestrator.llm.providers.gemini
import orchestrator.llm.providers.openai_compat

# The vendor SDKs are imported before "ready": every run can call from its first moment.
import orchestrator.run.engine
from orchestrator import Budget, BudgetCapExceeded, Orchestrator, UnifiedClient
from orchestrator.money.ledger import Hold, Ledger
from orchestrator.store.state import StateManager

TEAM, JOB = "eng", "nightly"
MAX_TIME_SECONDS = 120.0  # far beyond what any run takes: a TIMEOUT means a run got stuck


class HoardingLedger(Ledger):
    """Settles an attempt that answered nothing only when its call goes ahead again (its next
    reservation was granted or refused) or answers: until then the call holds it, and a retry
    near the budget waits on its own call's holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Journal key -> the settlements (holds, journal row) of its call not yet written.
        self.kept: dict[str, list[tuple[Sequence[Hold], Any]]] = {}

    async def reserve(self, hold: Hold, *, journal_key: str, **call: Any) -> None:
        try:
            await super().reserve(hold, journal_key=journal_key, **call)
        finally:
            for holds, row in self.kept.pop(journal_key, []):
                await super().settle(holds, row)

    async def settle(self, holds: Sequence[Hold], journal: Any = None) -> None:
        if journal is not None and journal[4] is None:  # no answer: the call may go on
            self.kept.setdefault(journal[1], []).append((holds, journal))
            return
        for kept, row in self.kept.pop(journal[1], []) if journal is not None else []:
            await super().settle(kept, row)
        await super().settle(holds, journal)


LEDGERS = {"exact": Ledger, "naive": NaiveLedger, "hoard": HoardingLedger}


async def main(
    location: str, base_url: str, project_id: str, max_usd: float, concurrency: int, tasks: int
) -> dict[str, Any]:
    plan = [prose_task(f"t{n}") for n in range(tasks)]
    budget = Budget(max_usd=max_usd, max_time_seconds=MAX_TIME_SECONDS)
    async with (
        UnifiedClient(env=fake_env(base_url), retry=FAST_RETRY, max_concurrency=concurrency) as c,
        StateManager(location) as store,
    ):
        run = Orchestrator(
            budget=budget, state_manager=store, client=c, use_cache=False, min_tasks=1
        )
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        try:
            state = await run.run_project(
                "[project] Notes", "they read well", project_id, tasks=as_tasks(plan),
                team=TEAM, job_id=JOB,
            )  # fmt: skip
        except BudgetCapExceeded as refused:  # the caps had no room for it: refused, unpaid
            return {"status": "REFUSED", "spent": 0.0, "reason": str(refused)}
    return {"status": state.status.value, "spent": state.budget.spent_usd, "reason": state.reason}


if __name__ == "__main__":
    location, base_url, project_id, max_usd, concurrency, tasks, mode = sys.argv[1:]
    orchestrator.run.engine.Ledger = LEDGERS[mode]  # type: ignore[misc]
    ended = asyncio.run(
        main(location, base_url, project_id, float(max_usd), int(concurrency), int(tasks))
    )
    print(json.dumps(ended), flush=True)
