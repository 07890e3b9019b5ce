"""The state store's tables: its format, what a new store is made of, what an older one gains
(tables, columns), and the one migration (amounts in float USD to integer nano-dollars)."""

from __future__ import annotations

import json
from collections.abc import Callable

from orchestrator.errors import OrchestratorError
from orchestrator.money.units import usd_to_nanos
from orchestrator.store.base import Execute, Statement
from orchestrator.store.books import hold_row, ledger_row

STATE_FORMAT = "orchestrator-state-1"


class StateError(OrchestratorError):
    """The state file cannot be used (corrupt, foreign, unreachable) or is closed."""


# What each paid call cost, in integer nano-dollars (``money``): sums are exact; and the
# catalog key of the model it went to (NULL in a row journaled before rows kept it).
_JOURNAL = (
    "CREATE TABLE journal ("
    " project_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " cost_nanos INTEGER NOT NULL, elapsed_seconds REAL NOT NULL, entry BLOB,"
    " created_at REAL NOT NULL, model TEXT, PRIMARY KEY (project_id, key))"
)
_JOURNAL_INDEX = "CREATE INDEX journal_task ON journal (project_id, task_id)"
# Marks a store whose amounts are integers; one made before is converted when opened.
_MONEY_MARK = "INSERT INTO meta (key, value) VALUES ('money', 'integer nano-dollars')"
SCHEMA = (
    "CREATE TABLE projects ("
    " id TEXT PRIMARY KEY, description TEXT NOT NULL, criteria TEXT NOT NULL,"
    " max_usd REAL NOT NULL, max_time_seconds REAL NOT NULL, settings TEXT NOT NULL,"
    " plan TEXT, task_count INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,"
    " reason TEXT NOT NULL DEFAULT '', elapsed_seconds REAL NOT NULL DEFAULT 0,"
    " owner TEXT, lease_until REAL NOT NULL DEFAULT 0,"
    " created_at REAL NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE results ("
    " project_id TEXT NOT NULL, task_id TEXT NOT NULL, final INTEGER NOT NULL,"
    " record BLOB NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (project_id, task_id))",
    _JOURNAL,
    _JOURNAL_INDEX,
    _MONEY_MARK,
)
# Tables added since the format was first released; a file made before them gains them.
ADDITIONS = (
    "CREATE TABLE IF NOT EXISTS cost_estimates ("
    " project_id TEXT NOT NULL, model TEXT NOT NULL, task_type TEXT NOT NULL,"
    " average_usd REAL NOT NULL, samples INTEGER NOT NULL,"
    " PRIMARY KEY (project_id, model, task_type))",
    "CREATE TABLE IF NOT EXISTS budget_caps (scope TEXT PRIMARY KEY, max_usd REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS model_telemetry (model TEXT PRIMARY KEY, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS integration (project_id TEXT PRIMARY KEY, record TEXT NOT NULL)",
    # The budget ledger: per scope (org, team:NAME, job:ID, project:ID) what was paid and what
    # calls in flight hold, with the scope's cap (NULL: none), shared by every process here;
    # in integer nano-dollars, so a cap is reached exactly and never passed by a residue.
    "CREATE TABLE IF NOT EXISTS money_ledger (scope TEXT PRIMARY KEY, cap_nanos INTEGER,"
    " spent_nanos INTEGER NOT NULL, reserved_nanos INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS money_holds ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount_nanos INTEGER NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL, model TEXT)",
)
# Columns added to tables since the format was first released, as (table, column, type): a
# store made before them gains them when opened (``add_columns``), NULL in the rows it had.
ADDED_COLUMNS = (
    # The catalog key of the model a paid call went to, kept with its cost and its hold.
    ("journal", "model", "TEXT"),
    ("money_holds", "model", "TEXT"),
)
# The ledger as files made before amounts were integers kept it, in float USD: read once, when
# such a file is opened, and then dropped (``to_nano_dollars``).
_USD_LEDGER = (
    "CREATE TABLE IF NOT EXISTS budget_ledger ("
    " scope TEXT PRIMARY KEY, cap REAL, spent REAL NOT NULL, reserved REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS budget_reservations ("
    " id TEXT PRIMARY KEY, project_id TEXT NOT NULL, owner TEXT NOT NULL, scopes TEXT NOT NULL,"
    " amount REAL NOT NULL, task_id TEXT NOT NULL, phase TEXT NOT NULL,"
    " journal_key TEXT NOT NULL)",
)


async def add_columns(execute: Execute, column_names: Callable[[str], Statement]) -> None:
    """Give a store made before them the ``ADDED_COLUMNS``, in the transaction that opens it
    (``column_names``: the store's query for a table's columns). Before ``to_nano_dollars``,
    which writes the holds it carries over with theirs."""
    for table, column, kind in ADDED_COLUMNS:
        if column not in {row[0] for row in await execute(*column_names(table))}:
            await execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


async def to_nano_dollars(execute: Execute, json_field: Callable[[str, str], str]) -> None:
    """Bring a file made when amounts were float USD to integer nano-dollars, once, in the
    transaction that opens it: each journaled cost to the nearest nano-dollar, the holds
    of calls in flight carried over, and the ledger's rows rebuilt from the journal
    (``json_field``: the store's SQL for a field of the projects' settings)."""
    if await execute("SELECT 1 FROM meta WHERE key = 'money'"):
        return
    for statement in _USD_LEDGER:  # a file older than the ledger has none: an empty one
        await execute(statement)
    await execute("DROP INDEX IF EXISTS journal_task")
    await execute("ALTER TABLE journal RENAME TO journal_usd")
    await execute(_JOURNAL)
    await execute(_JOURNAL_INDEX)
    for project_id, key, task_id, phase, cost_usd, elapsed, entry, created_at in await execute(
        "SELECT project_id, key, task_id, phase, cost_usd, elapsed_seconds, entry, created_at"
        " FROM journal_usd"
    ):
        await execute(
            "INSERT INTO journal (project_id, key, task_id, phase, cost_nanos,"
            " elapsed_seconds, entry, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (project_id, key, task_id, phase, usd_to_nanos(float(cost_usd)), elapsed, entry,
             created_at),
        )  # fmt: skip
    held: dict[str, int] = {}
    for hold_id, project_id, owner, scopes, amount, task_id, phase, key in await execute(
        "SELECT id, project_id, owner, scopes, amount, task_id, phase, journal_key"
        " FROM budget_reservations"
    ):
        amount_nanos = usd_to_nanos(float(amount))
        await execute(*hold_row(hold_id, project_id, owner, tuple(json.loads(scopes)),
                                amount_nanos, task_id, phase, key, None))  # fmt: skip
        for scope in json.loads(scopes):
            held[scope] = held.get(scope, 0) + amount_nanos
    for scope, cap in await execute("SELECT scope, cap FROM budget_ledger"):
        cap_nanos = None if cap is None else usd_to_nanos(float(cap))
        await execute(*ledger_row(json_field, scope, cap_nanos, held.get(scope, 0)))
    for table in ("journal_usd", "budget_reservations", "budget_ledger"):
        await execute(f"DROP TABLE {table}")
    await execute(_MONEY_MARK)
