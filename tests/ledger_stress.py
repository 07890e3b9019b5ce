"""One process of the shared-budget stress test: claims its project, then keeps CALLS calls in
flight, each holding its worst case in the ledger, paying all of it and journaling it, until
the caps refuse. ``naive`` reserves by reading and then writing, as a ledger must not.

    python tests/ledger_stress.py LOCATION PROJECT_ID CALLS AMOUNT exact|naive

Prints how many calls it paid.
"""

from __future__ import annotations

import asyncio
import sys

from orchestrator.money.budget import BudgetExceeded
from orchestrator.money.ledger import CallRow, Hold, Ledger
from orchestrator.money.units import usd_to_nanos
from orchestrator.store.state import StateManager, new_owner

TEAM, JOB = "eng", "nightly"


class NaiveLedger(Ledger):
    """Reads what each scope has left, then holds: two processes can both see the same room."""

    async def reserve(
        self, hold: Hold, *, task_id: str, phase: str, model: str | None, journal_key: str
    ) -> None:
        rows = await self.store.ledger(self.scopes)
        for scope in self.scopes:
            row = rows[scope]
            committed = row.spent_nanos + row.reserved_nanos + hold.amount_nanos
            if row.cap_nanos is not None and committed > row.cap_nanos:
                raise BudgetExceeded(f"{scope} is full")
        # The time a decision takes between the read and the write: wide enough that callers
        # overlap in it on a loaded machine too (at 2 ms, one run in many happened not to).
        await asyncio.sleep(0.02)
        for scope in self.scopes:
            await self.store._store.run(
                "UPDATE money_ledger SET reserved_nanos = reserved_nanos + ? WHERE scope = ?",
                (hold.amount_nanos, scope),
            )
        await self.store._store.run(
            "INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id,"
            " phase, journal_key, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (hold.id, self.project_id, self.owner, _json(self.scopes), hold.amount_nanos,
             task_id, phase, journal_key, model),
        )  # fmt: skip


def _json(scopes: tuple[str, ...]) -> str:
    import json

    return json.dumps(scopes)


async def main(location: str, project_id: str, calls: int, amount: float, mode: str) -> int:
    owner = new_owner()
    async with StateManager(location) as store:
        assert await store.holders.claim(project_id, owner, 60.0) is None
        kind = NaiveLedger if mode == "naive" else Ledger
        ledger = kind(store.books, project_id, owner)
        await ledger.open(usd_to_nanos(100.0), TEAM, JOB)
        paid = 0

        async def caller(number: int) -> None:
            nonlocal paid
            while True:
                hold = ledger.new_hold(usd_to_nanos(amount))
                try:
                    await ledger.reserve(
                        hold, task_id="t", phase="generation", model="openai/gpt-4o",
                        journal_key="k",
                    )  # fmt: skip
                except BudgetExceeded:
                    return
                await asyncio.sleep(0.005)  # the provider answers
                hold.actual_nanos = hold.amount_nanos  # every call costs its worst case
                key = f"{owner}-{number}-{paid}"
                row = CallRow(project_id, key, "t", "generation", "openai/gpt-4o", None, 0.0)
                await store.books.ledger_settle([(hold.id, hold.actual_nanos)], row)
                paid += 1

        await asyncio.gather(*(caller(n) for n in range(calls)))
        await store.holders.release(project_id, owner)
    return paid


if __name__ == "__main__":
    location, project_id, calls, amount, mode = sys.argv[1:]
    print(asyncio.run(main(location, project_id, int(calls), float(amount), mode)))
