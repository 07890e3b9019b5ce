"""A project's spend is one figure wherever it is read, before and after a resume.

A run over four vendors whose answers carry cached prompt tokens, thinking tokens and (Anthropic)
cache writes is interrupted, then resumed. Each time, what the run reports (its budget, its
tasks' costs, summary.json), what the project saved, the journal of paid calls and the budget
ledger's project row agree to the nano-dollar (each read as integer nano-dollars, which is how
the books keep them); and the resume pays for no call twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import eventually, sqlite_rows
from fake_provider import RecordedRequest, Reply
from scripted_llm import ScriptedLLM, TaskScript
from test_engine import code_task, prose_task
from test_exactness import CATALOG, run_plan

from orchestrator import Budget
from orchestrator.code.output_writer import write_outputs
from orchestrator.money.units import usd_to_nanos
from orchestrator.run.tasks import ProjectState, ProjectStatus
from orchestrator.store.state import StateManager

PROJECT = "p1"
# Kimi writes the code, GPT-4o reviews it, Claude writes the docs and Gemini sums up; the
# evaluators come from other vendors again.
PLAN = [
    code_task("core"),
    prose_task("docs", "core"),
    prose_task("summary", "core", "docs", kind="summarization"),
]


class WarmCacheVendor:
    """The scripted LLMs answering as thinking models behind a warm prompt cache: every answer
    reports cached prompt tokens and thinking tokens, Anthropic's cache writes too, each vendor
    in its own usage shape. It keeps its own bill: what it answered, at the catalog's prices."""

    def __init__(self, llm: ScriptedLLM) -> None:
        self.llm = llm
        self.billed = 0  # in nano-dollars
        self.answered = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        reply = self.llm(request)
        # Within what a real vendor can report: a token is at least a byte of the prompt, and
        # the output limit bounds thinking and answer together.
        prompt = max(8, len(request.prompt_text) // 3)
        cached = prompt // 2 + 1
        written = prompt // 8 if request.api == "anthropic" else 0
        whole_limit = reply.output_tokens  # set when the LLMs bill all of max_tokens
        thinking = 150 + len(reply.text) % 97
        if whole_limit is not None:
            thinking = min(thinking, whole_limit // 2)
            answer = whole_limit - thinking
        else:
            answer = max(1, len(reply.text) // 4)
        # Anthropic's input_tokens leaves out what was read from or written to the cache.
        sent_input = prompt - cached - written if request.api == "anthropic" else prompt
        reply = dataclasses.replace(
            reply,
            input_tokens=sent_input,
            output_tokens=answer,
            cached_tokens=cached,
            cache_write_tokens=written,
            reasoning_tokens=thinking,
        )
        price = CATALOG.resolve(request.model).price
        with self._lock:
            self.billed += price.cost_nanos(prompt, answer + thinking, cached, written)
            self.answered += 1
        return reply


@pytest.fixture
def vendor(fake, llm) -> WarmCacheVendor:
    llm.plan = PLAN
    llm.scripts["core"] = TaskScript(scores=[0.5, 0.95])  # one revision: more calls to count
    warm = WarmCacheVendor(llm)
    fake.responder = warm
    return warm


def state_file() -> Path:
    return Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db"


async def journal_costs(only_answered: bool = False) -> dict[str, int]:
    """The project's journal: each paid call's key and what it cost."""
    answered = " AND entry IS NOT NULL" if only_answered else ""
    rows = sqlite_rows(
        state_file(),
        f"SELECT key, cost_nanos FROM journal WHERE project_id = ?{answered}",
        (PROJECT,),
    )
    return dict(rows)


async def stored_books() -> dict[str, int]:
    """The spend as the store keeps it: the journal's sum, the ledger's project row and the
    saved project (its total and its tasks')."""
    ((journal,),) = sqlite_rows(
        state_file(), "SELECT SUM(cost_nanos) FROM journal WHERE project_id = ?", (PROJECT,)
    )
    async with StateManager() as store:
        ledger = (await store.books.ledger())[f"project:{PROJECT}"]
        saved = await store.projects.load(PROJECT)
    assert ledger.reserved_nanos == 0  # nothing is held once the run is over
    tasks = [result["cost_usd"] for result in saved.results.values()]
    return {
        "the journal's sum": journal,
        "the ledger's project row": ledger.spent_nanos,
        "the saved project": saved.spent_nanos,
        "the saved tasks": sum(usd_to_nanos(cost) for cost in tasks),
    }


def reported_books(state: ProjectState, out: Path) -> dict[str, int]:
    """The spend as the run reports it: its budget, its tasks, and summary.json."""
    write_outputs(state, out)
    summary = json.loads((out / "summary.json").read_text())
    tasks = [task["result"] for task in summary["tasks"] if task["result"] is not None]
    return {
        "the run's budget": state.budget.spent_nanos,
        "the run's tasks": sum(usd_to_nanos(r.cost_usd) for r in state.results.values()),
        "summary.json's budget": usd_to_nanos(summary["budget"]["spent_usd"]),
        "summary.json's tasks": sum(usd_to_nanos(result["cost_usd"]) for result in tasks),
    }


def assert_agree(books: dict[str, int]) -> None:
    journal = books["the journal's sum"]
    assert journal > 0
    assert books == dict.fromkeys(books, journal), f"against the journal's {journal} nano-dollars"


async def test_a_run_stopped_by_its_budget_and_resumed_reports_one_spend_everywhere(
    fake, vendor, llm, tmp_path
):
    llm.bill_max_output = True  # every answer as long as allowed: $0.085 runs out midway
    stopped = await run_plan(fake, PLAN, Budget(max_usd=0.085, max_time_seconds=60))
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED
    assert {r.api for r in fake.requests} == {"openai", "anthropic", "gemini"}
    assert_agree({**await stored_books(), **reported_books(stopped, tmp_path / "stopped")})
    # Every answer the vendor billed is journaled, once: none was cut off by the stop.
    assert vendor.billed == sum((await journal_costs()).values())
    paid_before = await journal_costs(only_answered=True)
    answered_before = vendor.answered

    resumed = await run_plan(fake, PLAN, None, resume=True, max_usd=1.0)

    assert resumed.status is ProjectStatus.SUCCESS, resumed.reason
    assert vendor.answered > answered_before  # the resume did pay for the rest
    assert_agree({**await stored_books(), **reported_books(resumed, tmp_path / "resumed")})
    journal = await journal_costs()
    # Replayed, not asked again: a call paid again would add to its row's cost.
    assert {key: journal[key] for key in paid_before} == paid_before
    assert vendor.billed == sum(journal.values())


async def test_a_run_cancelled_mid_call_and_resumed_reports_one_spend_everywhere(
    fake, vendor, llm, tmp_path
):
    llm.delay = 0.05
    run = asyncio.create_task(run_plan(fake, PLAN, Budget(max_usd=5.0, max_time_seconds=60)))
    await eventually(lambda: llm.count("critique", "core") >= 1)
    run.cancel()  # Ctrl-C, with a call in flight
    with pytest.raises(asyncio.CancelledError):
        await run
    interrupted = await stored_books()
    assert_agree(interrupted)
    # The call cut off in flight is charged at its worst case: the books never hold less than
    # the vendor billed.
    assert vendor.billed <= interrupted["the journal's sum"]
    paid_before = await journal_costs(only_answered=True)
    llm.delay = 0.0

    resumed = await run_plan(fake, PLAN, None, resume=True)

    assert resumed.status is ProjectStatus.SUCCESS, resumed.reason
    assert_agree({**await stored_books(), **reported_books(resumed, tmp_path / "resumed")})
    journal = await journal_costs()
    assert {key: journal[key] for key in paid_before} == paid_before
    assert vendor.billed <= sum(journal.values())
