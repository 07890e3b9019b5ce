"""Money and state stay exact whatever ends a paid call or a write: cancellation, lost leases,
garbled vendor answers, reused objects and power loss. One specification per way it could break."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import socket
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
from conftest import (
    FAST_RETRY,
    FakeClock,
    clean_environment,
    eventually,
    fake_env,
    sqlite_rows,
    task_spend_nanos,
    write_file,
)
from fake_provider import RecordedRequest, Reply
from fake_provider import _usage as usage
from scripted_llm import ScriptedLLM, TaskScript
from test_durability import worst_case as worst_case_of
from test_engine import as_tasks, code_task, prose_task

from orchestrator import (
    Budget,
    BudgetExceeded,
    ConfigError,
    ModelUnavailableError,
    Orchestrator,
    ProviderError,
    RetryPolicy,
    UnifiedClient,
)
from orchestrator.llm.cache import DiskCache
from orchestrator.llm.catalog import Catalog
from orchestrator.llm.context_window import worst_case_nanos
from orchestrator.llm.gateway import LLMGateway
from orchestrator.llm.providers.base import ChatRequest, Message
from orchestrator.money.units import nanos_to_usd, usd_to_nanos
from orchestrator.run.tasks import ProjectStatus, TaskResult, TaskStatus
from orchestrator.store import lease as lease_module
from orchestrator.store.holders import Holders
from orchestrator.store.state import StateError, StateManager

CATALOG = Catalog.load(env={})
PROJECT = {
    "description": "d",
    "criteria": "c",
    "max_usd": 5.0,
    "max_time_seconds": 60.0,
    "settings": {},
}


@pytest.fixture
async def store(tmp_path):
    async with StateManager(tmp_path / "state.db") as manager:
        assert await manager.projects.create("p", **PROJECT)
        yield manager


# --- the state database --------------------------------------------------------------------


async def test_a_transaction_cancelled_while_waiting_for_the_write_lock_leaves_no_open_transaction(
    store, tmp_path
):
    # Another process holds the write lock, so our checkpoint waits on BEGIN IMMEDIATE.
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    record = TaskResult("a", output="x", status=TaskStatus.COMPLETED).to_record()
    checkpoint = asyncio.create_task(
        store.projects.checkpoint("p", "a", record, final=True, elapsed=1.0)
    )
    await asyncio.sleep(0.3)
    checkpoint.cancel()  # Ctrl-C, SIGTERM or the deadline lands here
    await asyncio.sleep(0.1)
    other.execute("COMMIT")
    other.close()
    with pytest.raises(asyncio.CancelledError):
        await checkpoint

    # Later autocommit writes of the run are really committed, not joined to an open
    # transaction and rolled back at close.
    await store.journal.put(
        "p", "k", task_id="a", phase="generation", model="openai/gpt-4o",
        cost_nanos=420_000_000, entry=None, elapsed=2.0,
    )  # fmt: skip
    await store.projects.finish("p", ProjectStatus.INTERRUPTED, "interrupted", 2.0)
    another = sqlite3.connect(tmp_path / "state.db", timeout=0.5)
    another.execute("BEGIN IMMEDIATE")  # nobody holds the file's write lock
    another.rollback()
    another.close()
    await store.aclose()
    assert sqlite_rows(tmp_path / "state.db", "SELECT cost_nanos FROM journal") == [(420_000_000,)]
    assert sqlite_rows(tmp_path / "state.db", "SELECT status FROM projects") == [("INTERRUPTED",)]
    # The transaction itself ran to its end: the checkpoint is complete.
    assert sqlite_rows(tmp_path / "state.db", "SELECT task_id, final FROM results") == [("a", 1)]


async def test_the_state_database_syncs_every_commit_to_disk(store):
    db = await store._store.connection()
    [(level,)] = await db.execute_fetchall("PRAGMA synchronous")
    assert level == 2  # FULL: a commit survives a power loss or an OS crash


async def test_the_cache_keeps_the_faster_normal_sync(tmp_path):
    async with DiskCache(tmp_path / "cache.db") as cache:
        db = await cache._store.connection()
        [(level,)] = await db.execute_fetchall("PRAGMA synchronous")
    assert level == 1  # NORMAL: losing the last cached answers only costs a repeat call


# --- every paid attempt is settled and journaled, whatever ends it ----------------------------

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number"}},
    "required": ["score"],
    "additionalProperties": False,
}
HTML_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def worst_case(gateway: LLMGateway, model: str, prompt: str, max_tokens: int) -> int:
    m = gateway.client.catalog.resolve(model)
    request = ChatRequest(messages=(Message("user", prompt),), max_tokens=max_tokens)
    return worst_case_nanos(m, request)


async def ask(gateway: LLMGateway, model: str, prompt: str = "hello", **options):
    m = gateway.client.catalog.resolve(model)
    options = {"system": None, "max_tokens": 100, "phase": "generation", "slot": "s", **options}
    return await gateway.ask(m, [Message("user", prompt)], task_id="t", **options)


async def journal_rows(gateway: LLMGateway) -> list[tuple[str, int, bool]]:
    """(what the row keeps: an answer or nothing to replay, its cost in nano-dollars, whether
    kept) per call."""
    rows = await gateway.journal.store._store.run(
        "SELECT cost_nanos, entry IS NOT NULL FROM journal ORDER BY created_at"
    )
    return [("answer" if kept else "unanswered", cost, bool(kept)) for cost, kept in rows]


async def test_a_garbled_vendor_answer_is_a_provider_failure_charged_at_its_worst_case(
    gateway, fake
):
    fake.script("gpt-4o-mini", Reply(raw_body=HTML_PAGE))

    with pytest.raises(ProviderError) as caught:
        await ask(gateway, "gpt-4o-mini")

    assert "unexpected" in str(caught.value)
    assert caught.value.__cause__ is not None  # the SDK's own exception is kept as the cause
    # The vendor got the request and may bill it: charged its worst case, and journaled.
    charged = worst_case(gateway, "gpt-4o-mini", "hello", 100)
    assert caught.value.spent_nanos == charged
    assert gateway.budget.spent_nanos == charged
    assert await journal_rows(gateway) == [("unanswered", charged, False)]


async def test_a_call_cancelled_in_flight_is_charged_its_worst_case_and_journaled(gateway, fake):
    fake.script("gpt-4o-mini", Reply(text="late", delay=5))
    call = asyncio.create_task(ask(gateway, "gpt-4o-mini"))
    await eventually(lambda: fake.count() == 1)  # the vendor has the request

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    charged = worst_case(gateway, "gpt-4o-mini", "hello", 100)
    assert gateway.budget.spent_nanos == charged
    assert gateway.budget.reserved_nanos == 0
    assert await journal_rows(gateway) == [("unanswered", charged, False)]


async def test_a_structured_answer_paid_before_a_cancelled_repair_stays_in_the_journal(
    gateway, fake
):
    fake.script("gpt-4o-mini", "not JSON at all", Reply(text='{"score": 1}', delay=5))
    call = asyncio.create_task(ask(gateway, "gpt-4o-mini", schema=SCHEMA))
    await eventually(lambda: fake.count() == 2)  # the repair request is out

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    [(kind, cost, kept)] = await journal_rows(gateway)
    assert kind == "unanswered" and not kept
    # The first (paid, invalid) answer and the repair's worst case are both on the books.
    assert cost == gateway.budget.spent_nanos
    assert cost > worst_case(gateway, "gpt-4o-mini", "hello", 100)


async def test_a_repair_refused_by_the_budget_reports_what_the_first_answer_cost(fake):
    fake.script("gpt-4o-mini", "x" * 20_000)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, timeout=10) as client:
        m = client.catalog.resolve("gpt-4o-mini")
        first = worst_case_nanos(m, ChatRequest(messages=(Message("user", "hi"),), max_tokens=50))
        budget = Budget(max_usd=nanos_to_usd(first * 3), max_time_seconds=60)

        with pytest.raises(BudgetExceeded) as caught:
            await client.complete(
                "gpt-4o-mini", "hi", max_tokens=50, schema=SCHEMA, spend=budget.guard("generation")
            )

    assert caught.value.spent_usd > 0
    assert caught.value.spent_usd == pytest.approx(budget.spent_usd)


# --- the run ---------------------------------------------------------------------------------


async def run_plan(fake, plan, budget, project_id="p1", **kwargs):
    async with (
        UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY, max_concurrency=3) as client,
        StateManager() as store,
    ):
        orchestrator = Orchestrator(
            budget=budget, state_manager=store, client=client, use_cache=False, min_tasks=1
        )
        if kwargs.pop("resume", False):
            return await orchestrator.resume(project_id, **kwargs)
        return await orchestrator.run_project(
            "[project] Build an add library", "add works", project_id, tasks=as_tasks(plan)
        )


async def test_dependants_of_a_task_stopped_by_the_budget_wait_for_it_to_finish(fake, llm):
    plan = [code_task("core"), prose_task("summary", "core", kind="summarization")]
    llm.plan = plan
    llm.scripts["core"] = TaskScript(scores=[0.5, 0.6, 0.95])
    llm.bill_max_output = True  # core's loop runs out of money; the summary's calls are cheap

    stopped = await run_plan(fake, plan, Budget(max_usd=0.03, max_time_seconds=60))

    core, summary = stopped.results["core"], stopped.results["summary"]
    assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED
    assert core.interrupted and core.output  # a draft, not a finished answer
    assert summary.status is TaskStatus.SKIPPED and summary.interrupted
    assert "core was interrupted" in summary.reason
    assert llm.count("generate", "summary") == 0  # never built on the unfinished draft

    resumed = await run_plan(fake, plan, None, resume=True, max_usd=2.0)

    assert resumed.status is ProjectStatus.SUCCESS
    # The summary was written from core's finished answer.
    final_core = resumed.results["core"].output
    summary_prompts = [r.prompt_text for r in fake.requests if "[summary]" in r.prompt_text]
    assert summary_prompts and all(final_core.strip()[:40] in p for p in summary_prompts)


async def test_each_run_of_an_orchestrator_starts_its_own_clock_and_spend(fake, llm):
    now = [1000.0]
    limits = Budget(max_usd=5.0, max_time_seconds=60, clock=lambda: now[0])
    plan = [code_task("core")]
    llm.plan = plan
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST_RETRY) as client:
        orchestrator = Orchestrator(budget=limits, client=client, use_cache=False, use_state=False)
        now[0] += 3600  # the Budget was built an hour before the run
        first = await orchestrator.run_project("[project] a", "c", "one", tasks=as_tasks(plan))
        second = await orchestrator.run_project("[project] b", "c", "two", tasks=as_tasks(plan))

    assert first.status is second.status is ProjectStatus.SUCCESS
    assert first.budget is not second.budget
    assert second.budget.spent_usd == pytest.approx(first.budget.spent_usd)  # not the sum
    assert first.budget.elapsed_seconds < 60
    assert limits.spent_usd == 0  # the limits given are a template, never spent


# --- the project lease ---------------------------------------------------------------------------


def live_holder() -> str:
    """A run of another orchestrator in a process on this machine that is alive (ours)."""
    return f"{socket.gethostname()}:{os.getpid()}:another"


async def test_a_resume_refused_because_another_run_holds_the_project_changes_nothing(fake):
    async with StateManager() as store:
        await store.projects.create("p1", **{**PROJECT, "settings": {"output_dir": "/mine"}})
        await store.projects.finish("p1", ProjectStatus.INTERRUPTED, "interrupted", 1.0)
        assert await store.holders.claim("p1", live_holder(), 60) is None

    with pytest.raises(ConfigError, match="is being run by"):
        await run_plan(fake, [], None, resume=True, max_usd=9.0, max_time_seconds=99.0)

    async with StateManager() as store:
        saved = await store.projects.load("p1")
    assert (saved.max_usd, saved.max_time_seconds) == (5.0, 60.0)
    assert saved.settings == {"output_dir": "/mine"}
    assert saved.status is ProjectStatus.INTERRUPTED


async def test_an_expired_lease_of_a_live_run_on_this_machine_is_not_taken(tmp_path):
    async with StateManager(tmp_path / "state.db") as store:
        await store.projects.create("p1", **PROJECT)
        holder = live_holder()
        assert await store.holders.claim("p1", holder, lease_seconds=-10) is None  # expired at once

        # A clock jump makes every lease look expired; a live holder still keeps its project.
        assert await store.holders.claim("p1", "me", 60) == holder


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setattr(lease_module, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    monkeypatch.setattr(lease_module, "RETRY_SECONDS", 0.05)


async def test_a_run_that_loses_its_lease_stops_paying_at_once_and_leaves_the_project_alone(
    fake, llm, short_lease
):
    plan = [code_task("core"), code_task("more", "core"), code_task("last", "more")]
    llm.plan = plan
    llm.delay = 0.1
    run = asyncio.create_task(run_plan(fake, plan, Budget(max_usd=5.0, max_time_seconds=60)))
    await eventually(lambda: fake.count() >= 2)
    # Another process takes the project (as after a clock jump on another machine).
    thief = "elsewhere:1:thief"
    steal = sqlite3.connect(Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db")
    with steal:
        steal.execute("UPDATE projects SET owner = ?, lease_until = 1e12", (thief,))
    steal.close()
    paid_at_steal = fake.count()

    state = await run

    assert state.status is ProjectStatus.SYSTEM_FAILURE
    assert "another run took project 'p1'" in state.reason
    # One renewal period (0.2 s) of calls at 0.1 s each, at most, and those in flight.
    assert fake.count() - paid_at_steal <= 3 + 3
    rows = sqlite_rows(
        Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db", "SELECT owner, status FROM projects"
    )
    assert rows == [(thief, "RUNNING")]  # the thief's project, untouched by the loser


THIEF = "elsewhere:1:thief"
THIEFS_CALL_USD = 0.02  # what the run that took the project paid for a call of its own


def take_over_at_first_grading(llm, store: Path | str, delay: float):
    """A responder: when the run's answer is first graded, another machine takes the project
    (its lease had run out) in ``store`` (a state file or a PostgreSQL URL) and pays for a call
    of its own; the grade comes ``delay`` later."""
    taken = threading.Event()

    def respond(request: RecordedRequest) -> Reply:
        reply = llm(request)
        if "--- Answer to grade ---" in request.prompt_text and not taken.is_set():
            taken.set()
            sqlite_rows(store, "UPDATE projects SET owner = ?, lease_until = 1e12", (THIEF,))
            sqlite_rows(
                store,
                "INSERT INTO journal (project_id, key, task_id, phase, cost_nanos,"
                " elapsed_seconds, entry, created_at) VALUES (?, ?, ?, ?, ?, 0, NULL, 0)",
                ("p1", "thief-call", "only", "generation", usd_to_nanos(THIEFS_CALL_USD)),
            )
            reply.delay = delay
        return reply

    return respond


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(0.5, id="seen-by-a-renewal-while-the-grade-was-awaited"),
        # The grade comes at once and the run finishes long before its next renewal (60 s),
        # as a run paused past its lease (SIGSTOP) and continued does.
        pytest.param(0.0, id="finished-before-the-next-renewal"),
    ],
)
async def test_a_run_that_lost_its_lease_ends_system_failure_reporting_the_stores_spend(
    fake, llm, monkeypatch, delay
):
    if delay:
        monkeypatch.setattr(lease_module, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    plan = [prose_task("only")]
    llm.plan = plan
    state_file = Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db"
    fake.responder = take_over_at_first_grading(llm, state_file, delay)

    state = await run_plan(fake, plan, Budget(max_usd=5.0, max_time_seconds=60))

    # The run stopped paying once its project was taken: the ledger refused whatever it still
    # asked, and the task is left unfinished, for the project's new holder to take up. (Its two
    # verdicts are asked at once: both may have been under way before the takeover, and then it
    # finished in memory only; either way nothing of it is written below.)
    only = state.results["only"]
    assert not only.interrupted or "another run took project 'p1'" in only.reason
    assert state.status is ProjectStatus.SYSTEM_FAILURE
    assert "another run took project 'p1'" in state.reason
    assert "\n" not in state.reason
    # The project's spend as journaled, the other run's call included; not this run's own.
    (journaled,) = sqlite_rows(state_file, "SELECT SUM(cost_nanos) FROM journal")[0]
    assert journaled > usd_to_nanos(THIEFS_CALL_USD)
    assert state.budget.spent_nanos == journaled
    # The project is left to the run that took it: nothing of the loser's is written over it.
    assert sqlite_rows(state_file, "SELECT owner, status FROM projects") == [(THIEF, "RUNNING")]
    assert sqlite_rows(state_file, "SELECT task_id FROM results") == []


async def test_a_failed_renewal_is_retried_and_the_run_goes_on(fake, llm, short_lease, monkeypatch):
    plan = [code_task("core")]
    llm.plan = plan
    llm.delay = 0.1
    real_renew = Holders.renew
    failures = []

    async def flaky_renew(self, *args, **kwargs):
        if not failures:
            failures.append("disk busy")
            raise StateError("state file: database is locked")
        return await real_renew(self, *args, **kwargs)

    monkeypatch.setattr(Holders, "renew", flaky_renew)

    state = await run_plan(fake, plan, Budget(max_usd=5.0, max_time_seconds=60))

    assert failures
    assert state.status is ProjectStatus.SUCCESS, state.reason


async def test_a_lease_ends_with_its_run_even_when_a_renewal_swallows_the_cancellation(
    tmp_path, short_lease, monkeypatch
):
    # Python 3.11's asyncio.wait_for (psycopg's pool waits with it) returns instead of raising
    # when a cancellation arrives just as its wait ends: the renewer goes on as if never stopped,
    # and a worker waited for its run's end forever.
    real_renew = Holders.renew
    renewing = asyncio.Event()

    async def renew_deaf_to_one_cancellation(self, *args):
        if not renewing.is_set():
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return await real_renew(self, *args)

    monkeypatch.setattr(Holders, "renew", renew_deaf_to_one_cancellation)
    async with StateManager(tmp_path / "state.db") as store:
        await store.projects.create("p1", **PROJECT)

        async def run_ending_while_its_lease_is_renewed() -> None:
            async with lease_module.Lease(store.holders, "p1"):
                await renewing.wait()

        run = asyncio.create_task(run_ending_while_its_lease_is_renewed())
        ended, _ = await asyncio.wait({run}, timeout=10)

        assert ended, "the lease's renewer went on after its run ended"
        assert await store.holders.claim("p1", "the next run", 60) is None  # released


# --- the cache -------------------------------------------------------------------------------


async def test_the_cache_is_keyed_on_the_request_as_sent_so_a_catalog_change_gets_a_new_answer(
    fake, tmp_path
):
    capped = write_file(
        tmp_path / "catalog.yaml",
        """
        models:
          - id: gpt-4o-mini
            provider: openai
            max_output_tokens: 50
        """,
    )
    fake.script("gpt-4o-mini", "an answer cut off at 50 tokens", "the whole answer")

    async def ask_through(catalog_path) -> str:
        async with (
            UnifiedClient(
                env=fake_env(fake.base_url), catalog_path=catalog_path, retry=FAST_RETRY
            ) as client,
            DiskCache(tmp_path / "cache.db") as cache,
        ):
            gateway = LLMGateway(client, Budget(max_usd=5.0, max_time_seconds=60), cache)
            answer = await ask(gateway, "gpt-4o-mini", max_tokens=1000)
            await gateway.flush()
            return answer.text

    assert await ask_through(capped) == "an answer cut off at 50 tokens"
    # The catalog no longer caps the model: 1,000 tokens are really sent now.
    assert await ask_through(None) == "the whole answer"
    assert [r.body["max_completion_tokens"] for r in fake.requests] == [50, 1000]


async def test_the_cache_key_holds_the_gemini_api_version(fake, tmp_path):
    async def key_with(version: str | None) -> str:
        catalog = write_file(
            tmp_path / f"catalog-{version}.yaml",
            f"providers:\n  google:\n    kind: gemini\n    api_version: {version or 'null'}\n",
        )
        async with UnifiedClient(
            env=fake_env(fake.base_url), catalog_path=catalog, retry=FAST_RETRY
        ) as client:
            fake.script("gemini-2.5-flash", "hi")
            cache = DiskCache(tmp_path / f"cache-{version}.db")
            async with cache:
                gateway = LLMGateway(client, Budget(max_usd=5.0, max_time_seconds=60), cache)
                await ask(gateway, "gemini-2.5-flash")
                await gateway.flush()
                return (await cache._store.run("SELECT key FROM responses"))[0][0]

    assert await key_with("v1beta") != await key_with("v1")


# --- health ----------------------------------------------------------------------------------


async def test_after_the_cooldown_one_trial_call_goes_through_and_the_others_fail_fast(fake):
    fake.script("gpt-4o-mini", Reply(status=500, text="down"), Reply(text="back", delay=0.5))
    clock = FakeClock()
    async with UnifiedClient(
        env=fake_env(fake.base_url),
        retry=RetryPolicy(max_attempts=1, clock=clock),
        failure_threshold=1,
        cooldown=0.2,
        max_concurrency=5,
    ) as client:
        with pytest.raises(ProviderError):
            await client.complete("gpt-4o-mini", "hi")  # the breaker opens
        clock.advance(0.2)  # the cooldown has passed

        outcomes = await asyncio.gather(
            *(client.complete("gpt-4o-mini", "hi") for _ in range(4)), return_exceptions=True
        )

    answers = [o for o in outcomes if not isinstance(o, BaseException)]
    assert [a.text for a in answers] == ["back"]
    assert all(isinstance(o, ModelUnavailableError) for o in outcomes if o not in answers)
    assert fake.count() == 2  # the failure, then the one trial


async def test_a_tasks_cost_is_what_its_journal_holds_even_for_calls_cancelled_in_flight(fake, llm):
    plan = [code_task("core")]
    llm.plan = plan
    llm.delay = 0.3
    run = asyncio.create_task(run_plan(fake, plan, Budget(max_usd=5.0, max_time_seconds=60)))
    await eventually(lambda: llm.count("critique", "core") >= 1)
    run.cancel()  # the critique is in flight
    with pytest.raises(asyncio.CancelledError):
        await run

    async with StateManager() as store:
        saved = await store.projects.load("p1")
        journaled = await task_spend_nanos(store, "p1", "core")
    rows = sqlite_rows(store.path, "SELECT entry IS NULL FROM journal WHERE task_id = 'core'")
    assert any(unanswered for (unanswered,) in rows)  # the critique, charged
    assert saved.results["core"]["cost_usd"] == nanos_to_usd(journaled)
    assert saved.spent_nanos == journaled  # no decomposition: core is all of it


# --- the books, under random interruptions and failures --------------------------------------


class BillingVendor:
    """The scripted LLMs behind a vendor that fails at random and keeps its own bill.

    A request is billed when the vendor answers it (200), whether or not anybody is still
    waiting for the answer; an error status is not billed.
    """

    def __init__(self, llm: ScriptedLLM, rng: random.Random) -> None:
        self.llm, self.rng = llm, rng
        self.failing = True
        self.billed = 0  # in nano-dollars
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        if not request.model:  # a body cut off by kill -9: nothing to answer or bill
            return Reply(status=400, text="no model")
        reply = self.llm(request)
        with self._lock:
            roll = self.rng.random() if self.failing else 1.0
            if roll < 0.08:
                return Reply(status=500, text="the vendor is down")
            if roll < 0.12:
                reply = Reply(raw_body="<html>a proxy's error page</html>")
            elif roll < 0.35:
                reply = dataclasses.replace(reply, delay=self.rng.uniform(0.05, 0.4))
            self.billed += CATALOG.resolve(request.model).price.cost_nanos(*usage(request, reply))
        return reply


async def journal_costs(only_answered: bool = False) -> dict[str, int]:
    async with StateManager() as store:
        rows = await store._store.run(
            "SELECT key, cost_nanos FROM journal"
            + (" WHERE entry IS NOT NULL" if only_answered else "")
        )
    return dict(rows)


async def project_recorded(project_id: str) -> bool:
    async with StateManager() as store:
        return any(p.project_id == project_id for p in await store.projects.summaries())


async def resume_paying_nothing_twice(fake, plan, vendor: BillingVendor):
    """Resume to the end with the vendor well again; no journaled call may be paid again."""
    answered = await journal_costs(only_answered=True)
    vendor.failing = False
    resumed = await run_plan(fake, plan, None, resume=True, max_usd=5.0, max_time_seconds=60)
    assert resumed.status in (ProjectStatus.SUCCESS, ProjectStatus.PARTIAL_SUCCESS), resumed.reason
    after = await journal_costs()
    # A resume replays every journaled answer: no journaled call was paid for again.
    assert {key: after[key] for key in answered} == answered
    return resumed, after


def random_plan(rng: random.Random) -> list[dict]:
    plan: list[dict] = []
    for index in range(rng.randint(2, 4)):
        deps = rng.sample([t["id"] for t in plan], k=min(len(plan), rng.randint(0, 1)))
        make = rng.choice([code_task, prose_task])
        plan.append(make(f"t{index}", *deps))
    return plan


@pytest.mark.parametrize("seed", range(6))
async def test_random_interruptions_and_failures_never_break_the_books(fake, llm, seed):
    rng = random.Random(seed)
    plan = random_plan(rng)
    llm.plan = plan
    llm.bill_max_output = rng.random() < 0.5
    vendor = BillingVendor(llm, rng)
    fake.responder = vendor
    budget = Budget(max_usd=rng.uniform(0.01, 0.3), max_time_seconds=rng.choice([0.7, 1.5, 60]))

    run = asyncio.create_task(run_plan(fake, plan, budget))
    if rng.random() < 0.5:  # Ctrl-C at a random point
        await asyncio.sleep(rng.uniform(0.05, 1.0))
        run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run

    recorded = sum((await journal_costs()).values())
    assert recorded <= budget.max_nanos  # the ceiling held
    assert vendor.billed <= recorded  # nothing the vendor billed is missing
    if not await project_recorded("p1"):
        # Ctrl-C before the run recorded its project (a slow start): nothing was paid, and
        # there is nothing to resume.
        assert vendor.billed == 0 and recorded == 0
        return
    resumed, after = await resume_paying_nothing_twice(fake, plan, vendor)

    assert vendor.billed <= sum(after.values())
    assert resumed.budget.spent_nanos == sum(after.values())
    tasks = sum(usd_to_nanos(r.cost_usd) for r in resumed.results.values())
    assert tasks == sum(after.values())


@pytest.mark.parametrize("seed", range(3))
async def test_kill_9_at_a_random_point_loses_at_most_the_calls_in_flight(
    fake, llm, tmp_path, seed
):
    rng = random.Random(1000 + seed)
    plan = random_plan(rng)
    llm.plan = plan
    vendor = BillingVendor(llm, rng)
    fake.responder = vendor
    max_usd = rng.uniform(0.05, 0.3)
    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"project": "[project] p", "criteria": "c", "tasks": plan}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "--file", str(project), "--project-id", "p1",
        "--no-cache", "--concurrency", "3", "--budget", str(max_usd),
        env={**clean_environment(), **fake_env(fake.base_url)},
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    kill_after = rng.randint(1, 8)
    try:
        await eventually(lambda: fake.count() >= kill_after or process.returncode is not None)
        at_kill = fake.count()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    recorded = sum((await journal_costs()).values())
    assert recorded <= usd_to_nanos(max_usd)
    # Nobody is left to record the calls in flight: they, at most, are billed but not recorded.
    in_flight = [r for r in fake.requests[max(0, at_kill - 3) :] if r.model]
    assert vendor.billed <= recorded + sum(usd_to_nanos(worst_case_of(r)) for r in in_flight)
    await resume_paying_nothing_twice(fake, plan, vendor)
