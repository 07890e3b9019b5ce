"""The budget ledger in the state store, shared by every process: per scope (``org``,
``team:NAME``, ``job:ID``, ``project:ID``) what was paid and what calls in flight hold, under the
scope's cap, and the caps saved across runs.

``SharedBook`` is the ``money.ledger.Book`` a run's ``Ledger`` keeps its rows in. Amounts are
integer nano-dollars, so a cap is reached exactly and never passed by a residue; a hold and a
settlement are each one transaction, and a settlement writes its call's journal row in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator.errors import TAKEN_OVER, LeaseLost
from orchestrator.money.ledger import CallRow, ExpiredHold, LedgerRow
from orchestrator.money.units import checked_nanos, usd_to_nanos
from orchestrator.store.base import Program, Statement, Store
from orchestrator.store.holders import Holders
from orchestrator.store.journal import JOURNAL_UPSERT, journal_row

# What each kind of scope was charged, from the journal: a ledger row starts from it.
_SCOPE_JOURNAL = {
    "org": "FROM journal j WHERE CAST(? AS TEXT) IS NOT NULL",
    "project": "FROM journal j WHERE j.project_id = ?",
    "team": "FROM journal j JOIN projects p ON p.id = j.project_id WHERE {team} = ?",
    "job": "FROM journal j JOIN projects p ON p.id = j.project_id WHERE {job} = ?",
}


# A hold and a settlement as one statement each where the store runs writes inside WITH
# (PostgreSQL): one round trip instead of one a statement. Both lock the ledger's rows in the
# one order every writer uses (the scopes' names, byte by byte), so two never deadlock.
_RESERVE_AT_ONCE = (
    "WITH wanted AS (SELECT w.scope, w.n FROM unnest(CAST(? AS TEXT[])) WITH ORDINALITY"
    "  AS w(scope, n)),"
    " locked AS (SELECT m.scope, m.cap_nanos, m.spent_nanos, m.reserved_nanos"
    "  FROM money_ledger m WHERE m.scope IN (SELECT scope FROM wanted)"
    '  ORDER BY m.scope COLLATE "C" FOR UPDATE),'
    " holder AS (SELECT owner FROM projects WHERE id = ?),"
    " refused AS (SELECT w.scope FROM wanted w LEFT JOIN locked l ON l.scope = w.scope"
    "  WHERE l.scope IS NULL OR (l.cap_nanos IS NOT NULL"
    "  AND l.spent_nanos + l.reserved_nanos + ? > l.cap_nanos) ORDER BY w.n LIMIT 1),"
    # Only while the run holds its project: one paused past its lease, whose project another
    # run took, is refused here even before it notices.
    " granted AS (SELECT 1 AS ok WHERE NOT EXISTS (SELECT 1 FROM refused)"
    "  AND EXISTS (SELECT 1 FROM holder WHERE owner = ?)),"
    " held AS (UPDATE money_ledger m SET reserved_nanos = m.reserved_nanos + ? FROM granted"
    "  WHERE m.scope IN (SELECT scope FROM wanted) RETURNING m.scope),"
    " hold AS (INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id,"
    "  phase, journal_key, model) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM granted)"
    " SELECT (SELECT owner FROM holder), (SELECT scope FROM refused)"
)
_SETTLE_AT_ONCE = (
    "WITH settled AS (SELECT s.id, s.actual FROM unnest(CAST(? AS TEXT[]), CAST(? AS INTEGER[]))"
    "  AS s(id, actual)),"
    " gone AS (DELETE FROM money_holds h USING settled s WHERE h.id = s.id"
    "  RETURNING h.scopes, h.amount_nanos, s.actual),"
    " per_scope AS (SELECT e.scope, CAST(SUM(g.amount_nanos) AS INTEGER) AS held,"
    "  CAST(SUM(g.actual) AS INTEGER) AS spent FROM gone g"
    "  CROSS JOIN LATERAL jsonb_array_elements_text(CAST(g.scopes AS JSONB)) AS e(scope)"
    "  GROUP BY e.scope),"
    " locked AS (SELECT m.scope FROM money_ledger m WHERE m.scope IN (SELECT scope FROM per_scope)"
    '  ORDER BY m.scope COLLATE "C" FOR UPDATE),'
    " moved AS (UPDATE money_ledger m SET spent_nanos = m.spent_nanos + p.spent,"
    "  reserved_nanos = m.reserved_nanos - p.held FROM per_scope p"
    "  WHERE m.scope = p.scope AND (SELECT count(*) FROM locked) > 0),"
    " charged AS (SELECT CAST(COALESCE(SUM(actual), 0) AS INTEGER) AS nanos FROM gone),"
    " written AS (INSERT INTO journal (project_id, key, task_id, phase, model, cost_nanos,"
    "  elapsed_seconds, entry, created_at) SELECT CAST(? AS TEXT), CAST(? AS TEXT),"
    "  CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), c.nanos, CAST(? AS REAL),"
    "  CAST(? AS BLOB), CAST(? AS REAL) FROM charged c WHERE CAST(? AS BOOLEAN)"
    "  AND (c.nanos > 0 OR CAST(? AS BLOB) IS NOT NULL)" + JOURNAL_UPSERT + ")"
    " SELECT nanos FROM charged"
)


class SharedBook:
    """The ledger's rows and holds, and the caps saved for the organisation, teams and jobs;
    a hold is granted only to the run that holds its project (``holders``)."""

    def __init__(self, store: Store, holders: Holders) -> None:
        self._store = store
        self._holders = holders

    # -- caps across runs: the organisation (every project here), a team, a job -----------------
    async def budget_caps(self) -> dict[str, float]:
        """Saved caps by scope: ``org``, ``team:NAME``, ``job:ID``."""
        rows = await self._store.run("SELECT scope, max_usd FROM budget_caps")
        return {str(scope): float(cap) for scope, cap in rows}

    async def save_budget_caps(self, caps: Mapping[str, float]) -> None:
        statements: list[Statement] = []
        for scope, cap in caps.items():
            statements.append(
                (
                    "INSERT INTO budget_caps (scope, max_usd) VALUES (?, ?)"
                    " ON CONFLICT (scope) DO UPDATE SET max_usd = excluded.max_usd",
                    (scope, cap),
                )
            )
            statements.append(_set_cap(scope, usd_to_nanos(cap)))
        await self._store.transaction(statements)

    async def scope_spend_nanos(self, team: str | None, job_id: str | None) -> dict[str, int]:
        """What every project here spent (``org``), and those charged to ``team`` / ``job_id``
        (their ``team`` / ``job`` setting): from the journal, so nothing paid is missed."""

        def charged_to(field: str) -> str:
            value = self._store.json_field("p.settings", field)
            return f"COALESCE(SUM(CASE WHEN {value} = ? THEN j.cost_nanos END), 0)"

        rows = await self._store.run(
            f"SELECT COALESCE(SUM(j.cost_nanos), 0), {charged_to('team')}, {charged_to('job')}"
            " FROM journal j JOIN projects p ON p.id = j.project_id",
            (team, job_id),
        )
        org, team_spent, job_spent = rows[0]
        spent = {"org": int(org)}
        if team is not None:
            spent[f"team:{team}"] = int(team_spent)
        if job_id is not None:
            spent[f"job:{job_id}"] = int(job_spent)
        return spent

    # -- the budget ledger: reservations of calls in flight, shared by every process ------------
    async def ledger_open(self, scopes: Iterable[str], project_id: str, max_nanos: int) -> None:
        """Make sure every scope of a run has its ledger row (a new one starts from what the
        journal says the scope paid, under its saved cap) and the project's cap is
        ``max_nanos``."""

        def open_rows() -> Program[None]:
            caps = yield from _saved_caps()
            for scope in scopes:
                yield ledger_row(self._store.json_field, scope, caps.get(scope))
            yield _set_cap(f"project:{project_id}", max_nanos)

        await self._store.atomic(open_rows())

    async def ledger_set_cap(self, scope: str, cap_nanos: int) -> None:
        await self._store.run(*_set_cap(scope, cap_nanos))

    async def ledger_reserve(
        self,
        hold_id: str,
        amount_nanos: int,
        scopes: tuple[str, ...],
        *,
        project_id: str,
        owner: str,
        task_id: str,
        phase: str,
        model: str | None,
        journal_key: str,
    ) -> str | None:
        """Hold ``amount_nanos`` on every scope, in their order, in one transaction, for a call
        to ``model``: None when held, else the first scope whose cap it could pass (then
        nothing is held anywhere)."""
        hold = hold_row(hold_id, project_id, owner, scopes, amount_nanos, task_id, phase,
                        journal_key, model)  # fmt: skip
        if self._store.writes_in_with:  # one statement, one round trip
            row = hold[1]
            holder, refused = (
                await self._store.run(
                    _RESERVE_AT_ONCE,
                    (list(scopes), project_id, amount_nanos, owner, amount_nanos, *row),
                )
            )[0]
            if holder != owner:
                raise LeaseLost(TAKEN_OVER.format(project_id))
            return None if refused is None else str(refused)

        def reserve() -> Program[str | None]:
            # Every scope in one statement (the paid call's hot path); a scope it could not
            # hold refuses the whole, and raising rolls back what the others held.
            held = yield (
                "UPDATE money_ledger SET reserved_nanos = reserved_nanos + ?"
                f" WHERE scope IN ({', '.join('?' * len(scopes))})"
                " AND (cap_nanos IS NULL OR spent_nanos + reserved_nanos + ? <= cap_nanos)"
                # Only while the run holds its project: one paused past its lease, whose
                # project another run took, is refused here even before it notices.
                " AND EXISTS (SELECT 1 FROM projects WHERE id = ? AND owner = ?)"
                " RETURNING scope",
                (amount_nanos, *scopes, amount_nanos, project_id, owner),
            )
            granted = {scope for (scope,) in held}
            refused = [scope for scope in scopes if scope not in granted]
            if refused:
                holder = yield ("SELECT owner FROM projects WHERE id = ?", (project_id,))
                if not holder or holder[0][0] != owner:
                    raise LeaseLost(TAKEN_OVER.format(project_id))
                raise _Refused(refused[0])
            yield hold
            return None

        try:
            return await self._store.atomic(reserve())
        except _Refused as refused:
            return refused.scope

    async def ledger(self, scopes: Iterable[str] | None = None) -> dict[str, LedgerRow]:
        """The ledger's rows (all of them, or those of ``scopes``)."""
        rows = await self._store.run(
            "SELECT scope, cap_nanos, spent_nanos, reserved_nanos FROM money_ledger"
        )
        wanted = None if scopes is None else set(scopes)
        return {
            scope: LedgerRow(None if cap is None else int(cap), int(spent), int(reserved))
            for scope, cap, spent, reserved in rows
            if wanted is None or scope in wanted
        }

    async def in_flight(self, project_id: str) -> list[tuple[str, str, str | None, int]]:
        """The project's calls in flight: each hold's task, phase, model (its catalog key;
        None for a hold made before holds kept it) and amount held."""
        rows = await self._store.run(
            "SELECT task_id, phase, model, amount_nanos FROM money_holds WHERE project_id = ?",
            (project_id,),
        )
        return [
            (str(task), str(phase), None if model is None else str(model), int(amount))
            for task, phase, model, amount in rows
        ]

    async def ledger_settle(
        self, settlements: Iterable[tuple[str, int]], journal: CallRow | None = None
    ) -> int:
        """Settle holds at what they cost in nano-dollars (0: released) and, in the same
        transaction, add what they cost to the call's journal row (not written when they cost
        nothing and there is no entry). A hold no longer there expired meanwhile (charged in
        full then): it adds nothing. Returns what was charged."""
        settlements = [(hold_id, checked_nanos(actual)) for hold_id, actual in settlements]
        if self._store.writes_in_with:  # one statement, one round trip
            row: tuple[Any, ...] = (None,) * 9
            if journal is not None:
                row = journal_row(journal, 0)[1]
            project_id, key, task_id, phase, model, _, elapsed, blob, created = row
            rows = await self._store.run(
                _SETTLE_AT_ONCE,
                (
                    [hold_id for hold_id, _ in settlements],
                    [actual for _, actual in settlements],
                    *(project_id, key, task_id, phase, model, elapsed, blob, created),
                    journal is not None,
                    blob,
                ),
            )
            return int(rows[0][0])

        def settle() -> Program[int]:
            charged = 0  # what the settled holds cost
            for hold_id, actual_nanos in settlements:
                gone = yield (
                    "DELETE FROM money_holds WHERE id = ? RETURNING scopes, amount_nanos",
                    (hold_id,),
                )
                if not gone:
                    continue
                scopes, amount = json.loads(gone[0][0]), int(gone[0][1])
                yield from _move_to_spent(scopes, amount, actual_nanos)
                charged += actual_nanos
            if journal is not None and (charged or journal.entry is not None):
                yield journal_row(journal, charged)
            return charged

        return await self._store.atomic(settle())

    async def ledger_expire(self) -> list[ExpiredHold]:
        """Charge in full, and journal, the holds of runs that ended without settling them
        (their process died, or lost its project): the vendor may have billed those calls."""
        rows = await self._store.run(
            "SELECT r.id, r.owner, p.owner, p.lease_until FROM money_holds r"
            " LEFT JOIN projects p ON p.id = r.project_id"
        )
        if not rows:
            return []
        now = await self._store.clock()
        expired = []
        for hold_id, owner, holder, lease_until in rows:
            if owner == holder and self._holders.alive(holder, float(lease_until), now):
                continue
            found = await self._store.atomic(_expire(hold_id))
            if found is not None:
                expired.append(found)
        return expired


class _Refused(Exception):
    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def ledger_row(
    json_field: Callable[[str, str], str],
    scope: str,
    cap_nanos: int | None,
    reserved_nanos: int = 0,
) -> Statement:
    """A scope's new ledger row: what the journal says it paid, unless it has one
    (``json_field``: the store's SQL for a field of the projects' settings)."""
    kind, _, name = scope.partition(":")
    source = _SCOPE_JOURNAL[kind].format(
        team=json_field("p.settings", "team"), job=json_field("p.settings", "job")
    )
    return (
        "INSERT INTO money_ledger (scope, cap_nanos, spent_nanos, reserved_nanos)"
        " SELECT CAST(? AS TEXT), CAST(? AS INTEGER),"
        f" CAST(COALESCE(SUM(j.cost_nanos), 0) AS INTEGER), CAST(? AS INTEGER) {source}"
        " ON CONFLICT (scope) DO NOTHING",
        (scope, cap_nanos, reserved_nanos, name or scope),
    )


def hold_row(
    hold_id: str,
    project_id: str,
    owner: str,
    scopes: tuple[str, ...],
    amount_nanos: int,
    task_id: str,
    phase: str,
    journal_key: str,
    model: str | None,
) -> Statement:
    """A call's hold, kept until it is settled: ``model`` the catalog key of the model the
    call was sent to, for the journal row of a hold that expires."""
    return (
        "INSERT INTO money_holds (id, project_id, owner, scopes, amount_nanos, task_id, phase,"
        " journal_key, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (hold_id, project_id, owner, json.dumps(scopes), amount_nanos, task_id, phase,
         journal_key, model),
    )  # fmt: skip


def _move_to_spent(scopes: list[str], held: int, spent: int) -> Program[None]:
    for scope in sorted(scopes):  # the one order rows are locked in: no deadlock
        yield (
            "UPDATE money_ledger SET spent_nanos = spent_nanos + ?,"
            " reserved_nanos = reserved_nanos - ? WHERE scope = ?",
            (spent, held, scope),
        )


def _set_cap(scope: str, cap_nanos: int) -> Statement:
    return (
        "UPDATE money_ledger SET cap_nanos = ? WHERE scope = ?",
        (checked_nanos(cap_nanos), scope),
    )


def _saved_caps() -> Program[dict[str, int]]:
    """The caps saved for the organisation, teams and jobs (in USD, as they were given)."""
    rows = yield ("SELECT scope, max_usd FROM budget_caps", ())
    return {str(scope): usd_to_nanos(float(cap)) for scope, cap in rows}


def _expire(hold_id: str) -> Program[ExpiredHold | None]:
    gone = yield (
        "DELETE FROM money_holds WHERE id = ?"
        " RETURNING project_id, owner, scopes, amount_nanos, task_id, phase, journal_key, model",
        (hold_id,),
    )
    if not gone:
        return None  # settled or expired by another process meanwhile
    project_id, owner, scopes, amount, task_id, phase, key, model = gone[0]
    amount = int(amount)
    yield from _move_to_spent(json.loads(scopes), amount, amount)
    # Kept like a call cut off in flight: spend with nothing to replay, asked again on resume.
    unanswered = CallRow(project_id, f"{key}#unanswered", task_id, phase, model, None, 0.0)
    sql, args = journal_row(unanswered, amount)
    exists = yield ("SELECT 1 FROM projects WHERE id = ?", (project_id,))
    if exists:
        yield sql, args
    return ExpiredHold(project_id, owner, amount, phase)
