"""The run, end to end over HTTP: the real SDKs, the fake provider, and a scripted set of LLMs."""

from __future__ import annotations

import asyncio
import random

import pytest
from conftest import NoWait, fake_env
from fake_provider import Reply
from scripted_llm import TaskScript, default_plan

from orchestrator import Budget, ConfigError, Orchestrator, RetryPolicy, UnifiedClient
from orchestrator.llm.cache import CacheError, DiskCache
from orchestrator.money.budget import BudgetExceeded
from orchestrator.run.tasks import ProjectStatus, Task, TaskStatus, TaskType
from orchestrator.store.books import SharedBook
from orchestrator.store.state import StateError, StateManager

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, clock=NoWait())
CRITERIA = "add works and is tested"


def code_task(task_id: str, *deps: str, validators=("python_syntax", "pytest")) -> dict:
    return {
        "id": task_id,
        "type": "code_generation",
        "prompt": f"[{task_id}] Write add(a, b) with tests.",
        "dependencies": list(deps),
        "hard_validators": list(validators),
        "acceptance": None,
    }


def prose_task(task_id: str, *deps: str, kind: str = "creative_writing") -> dict:
    return {
        "id": task_id,
        "type": kind,
        "prompt": f"[{task_id}] Write about add.",
        "dependencies": list(deps),
        "hard_validators": ["length"],
        "acceptance": None,
    }


def as_tasks(plan: list[dict]) -> dict[str, Task]:
    return {
        t["id"]: Task(
            id=t["id"],
            type=TaskType(t["type"]),
            prompt=t["prompt"],
            dependencies=t["dependencies"],
            hard_validators=t["hard_validators"],
        )
        for t in plan
    }


async def run(
    fake,
    *,
    tasks=None,
    budget=None,
    providers=None,
    cache=None,
    threshold=0.85,
    description="[project] Build an add library",
    client_options=None,
    **options,
):
    env = fake_env(fake.base_url, providers)
    async with UnifiedClient(
        env=env, retry=FAST, timeout=10, max_concurrency=4, **(client_options or {})
    ) as client:
        orchestrator = Orchestrator(
            budget=budget or Budget(max_usd=5.0, max_time_seconds=60),
            client=client,
            cache=cache,
            use_cache=cache is not None,
            quality_threshold=threshold,
            validator_timeout=30,
            **options,
        )
        return await orchestrator.run_project(description, CRITERIA, tasks=tasks)


# -- the whole job ----------------------------------------------------------------------------
async def test_a_project_is_decomposed_and_every_task_reaches_success(fake, llm):
    state = await run(fake)

    assert state.status is ProjectStatus.SUCCESS
    assert list(state.tasks) == [t["id"] for t in default_plan()]
    order = state.execution_order
    for task in state.tasks.values():
        for dep in task.dependencies:
            assert order.index(dep) < order.index(task.id)
    for result in state.results.values():
        assert result.status is TaskStatus.COMPLETED
        assert result.score >= 0.85 and result.deterministic_check_passed
        assert result.output and result.cost_usd > 0 and result.iterations == 1
    assert state.budget.spent_usd > 0
    assert state.budget.spent_usd == pytest.approx(
        sum(r.cost_usd for r in state.results.values()) + state.budget.phase_spent["decomposition"]
    )
    assert llm.count("plan") == 1
    assert state.api_health and all(state.api_health.values())


async def test_the_critic_and_evaluator_come_from_another_provider(fake, llm):
    state = await run(fake)

    for result in state.results.values():
        assert result.reviewer_model is not None
        assert result.reviewer_model.provider != result.model_used.provider
    author_of = {}
    for role, task, model in llm.roles:
        if role == "generate":
            author_of[task] = model
    critics = [(task, model) for role, task, model in llm.roles if role in ("critique", "grade")]
    assert critics and all(model != author_of[task] for task, model in critics)


async def test_routing_follows_the_design_table(fake, llm):
    state = await run(fake)

    assert state.results["core"].model_used.id == "kimi-k2.6"  # "Kimi K2.5" leads code generation
    assert state.results["docs"].model_used.id == "claude-opus-5"  # Claude Opus leads writing
    assert state.results["summary"].model_used.id == "gemini-2.5-flash"
    # Decomposition goes to the cheapest usable model.
    plan_model = next(model for role, _, model in llm.roles if role == "plan")
    assert plan_model == "gemini-2.5-flash-lite"


async def test_with_a_single_provider_the_reviewer_is_another_model_of_it(fake, llm):
    state = await run(fake, providers=("anthropic",))

    assert state.status is ProjectStatus.SUCCESS
    for result in state.results.values():
        assert result.model_used.provider == "anthropic"
        assert result.reviewer_model != result.model_used


# -- the loop per task ------------------------------------------------------------------------
async def test_a_validator_failure_scores_zero_and_the_next_revision_fixes_it(fake, llm):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.95], broken_versions={1})

    state = await run(fake, tasks=as_tasks(llm.plan))

    result = state.results["calc"]
    assert result.score_history == [0.0, 0.95]
    assert result.status is TaskStatus.COMPLETED and result.iterations == 2
    assert "v2@calc" in result.output
    # A version that fails its validators is not sent to the evaluator.
    assert llm.judged_versions("calc") == [2]


async def test_repeated_validator_failures_are_not_a_plateau(fake, llm):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.9], broken_versions={1, 2})

    state = await run(fake, tasks=as_tasks(llm.plan))

    result = state.results["calc"]
    assert result.score_history == [0.0, 0.0, 0.9]
    assert result.status is TaskStatus.COMPLETED


async def test_the_loop_stops_as_soon_as_the_threshold_is_met(fake, llm):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.86])

    state = await run(fake, tasks=as_tasks(llm.plan))

    assert state.results["calc"].iterations == 1
    assert llm.count("revise", "calc") == 1  # the one revision the critique asked for


async def test_the_loop_stops_on_a_plateau(fake, llm):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.50, 0.51, 0.99])

    state = await run(fake, tasks=as_tasks(llm.plan))

    result = state.results["calc"]
    assert result.score_history == [0.50, 0.51]
    assert result.iterations == 2 and "plateau" in result.reason
    assert result.status is TaskStatus.DEGRADED
    assert state.status is ProjectStatus.PARTIAL_SUCCESS


async def test_the_best_output_across_iterations_is_kept(fake, llm):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.7, 0.3, 0.4])

    state = await run(fake, tasks=as_tasks(llm.plan))

    result = state.results["calc"]
    assert result.score_history == [0.7, 0.3, 0.4]
    assert result.score == 0.7 and "v1@calc" in result.output
    assert result.iterations == 3  # code gets three iterations, prose two


async def test_prose_gets_two_iterations(fake, llm):
    llm.plan = [prose_task("essay")]
    llm.scripts["essay"] = TaskScript(scores=[0.3, 0.6, 0.9])

    state = await run(fake, tasks=as_tasks(llm.plan))

    assert state.results["essay"].score_history == [0.3, 0.6]
    assert state.results["essay"].iterations == 2


async def test_each_iteration_is_real_work_even_with_the_cache_on(fake, llm, tmp_path):
    llm.plan = [code_task("calc")]
    llm.scripts["calc"] = TaskScript(scores=[0.5, 0.7, 0.8])
    async with DiskCache(tmp_path / "cache.db") as cache:
        state = await run(fake, tasks=as_tasks(llm.plan), cache=cache)

    assert state.results["calc"].iterations == 3
    assert llm.count("revise", "calc") == 3
    assert llm.count("grade", "calc") == 6  # two evaluations per iteration, none from the cache


async def test_a_rerun_with_the_cache_pays_nothing(fake, llm, tmp_path):
    async with DiskCache(tmp_path / "cache.db") as cache:
        first = await run(fake, cache=cache)
        calls = fake.count()
        second = await run(fake, cache=cache)

    assert first.status is second.status is ProjectStatus.SUCCESS
    assert fake.count() == calls
    assert second.budget.spent_usd == 0


async def test_disagreeing_evaluations_ask_a_third(fake, llm):
    llm.plan = [prose_task("essay")]
    grades = iter([0.9, 0.5, 0.6])

    def responder(request):
        if "You grade an answer" in request.prompt_text:
            return Reply(text=f'{{"score": {next(grades)}, "reasoning": "x"}}')
        return llm(request)

    fake.responder = responder
    state = await run(fake, tasks=as_tasks(llm.plan), threshold=0.5)

    assert state.results["essay"].score_history[0] == 0.6  # the median of three


# -- failures -----------------------------------------------------------------------------------
async def test_dependants_of_a_failed_task_are_skipped_with_the_reason(fake, llm):
    llm.plan = [code_task("base"), code_task("uses", "base"), prose_task("notes", "uses")]
    llm.plan.append(prose_task("free"))

    def responder(request):
        if "[base]" in request.prompt_text and "You grade" not in request.prompt_text:
            return Reply(status=400)
        return llm(request)

    fake.responder = responder
    state = await run(fake, tasks=as_tasks(llm.plan))

    assert state.results["base"].status is TaskStatus.FAILED
    assert state.results["uses"].status is TaskStatus.SKIPPED
    assert "base" in state.results["uses"].reason
    assert state.results["notes"].status is TaskStatus.SKIPPED
    assert state.results["free"].status is TaskStatus.COMPLETED
    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    assert state.results["base"].degraded_fallback_count >= 1


async def test_a_failing_model_hands_over_to_the_next_in_the_chain(fake, llm):
    llm.plan = [code_task("calc")]
    fake.set_down("kimi-k2.6")

    state = await run(fake, tasks=as_tasks(llm.plan))

    result = state.results["calc"]
    assert result.status is TaskStatus.COMPLETED
    assert result.model_used.id == "claude-sonnet-5"  # next after Kimi for code generation
    assert result.degraded_fallback_count >= 1


async def test_time_limit_ends_the_run_with_timeout_and_keeps_what_was_done(fake, llm):
    llm.delay = 0.4
    started = asyncio.get_running_loop().time()

    state = await run(fake, budget=Budget(max_usd=5.0, max_time_seconds=2.0))

    assert state.status is ProjectStatus.TIMEOUT
    assert asyncio.get_running_loop().time() - started < 4
    assert set(state.results) == set(state.tasks)
    assert all(r.status is not TaskStatus.RUNNING for r in state.results.values())


async def test_budget_exhaustion_stops_the_run_without_overspending(fake, llm):
    llm.bill_max_output = True  # every answer as long as allowed: the run costs about $0.28
    budget = Budget(max_usd=0.05, max_time_seconds=60)

    state = await run(fake, budget=budget)
    budget = state.budget  # the run's own: the one given holds the limits

    assert state.status is ProjectStatus.BUDGET_EXHAUSTED
    assert budget.spent_usd <= budget.max_usd
    # It stops because nothing more fits, not early: most of the budget did real work.
    assert budget.spent_usd > 0.8 * budget.max_usd
    assert budget.reserved_usd == 0
    assert any("budget" in r.reason for r in state.results.values())
    assert sum(r.cost_usd for r in state.results.values()) == pytest.approx(
        budget.spent_usd - budget.phase_spent["decomposition"]
    )


async def test_a_tight_budget_writes_with_a_model_it_can_afford(fake, llm):
    # Claude Opus's writing call (2048 tokens at $25/M) is estimated at about $0.06: held back.
    state = await run(fake, budget=Budget(max_usd=0.04, max_time_seconds=60))

    assert state.status is ProjectStatus.SUCCESS
    docs = state.results["docs"]
    assert docs.model_used.id != "claude-opus-5"
    # Chosen so, not found out by a refused reservation: no call was tried on Opus.
    assert ("generate", "docs", "claude-opus-5") not in llm.roles


async def test_no_provider_key_is_a_system_failure_naming_the_variables():
    async with UnifiedClient(env={}) as client:
        state = await Orchestrator(client=client, use_cache=False).run_project("x", "y")

    assert state.status is ProjectStatus.SYSTEM_FAILURE
    assert "OPENAI_API_KEY" in state.reason


async def test_unusable_plans_give_way_to_the_code_and_its_tests_said_in_one_notice(fake, llm):
    llm.plan = [{"id": "only-one", "type": "poetry"}]
    events = []

    state = await run(fake, on_event=events.append)

    assert state.status is not ProjectStatus.SYSTEM_FAILURE
    assert list(state.tasks) == ["code", "tests"]
    assert state.tasks["tests"].dependencies == ["code"]
    assert "pytest" in state.tasks["tests"].hard_validators
    [notice] = [
        e.data["message"] for e in events if e.kind == "notice" and "planner" in str(e.data)
    ]
    assert "running a plan of 2 tasks instead: code, tests" in notice
    # The planner's choice and its two fallbacks each got the request and one repair request
    # before the run gave up on planning.
    assert llm.count("plan") == 6


async def test_a_cyclic_decomposition_is_not_run(fake, llm):
    plan = default_plan()
    plan[0]["dependencies"] = ["summary"]
    llm.plan = plan
    events = []

    state = await run(fake, on_event=events.append)

    assert list(state.tasks) == ["code", "tests"]
    assert any("cycle" in str(e.data.get("message")) for e in events if e.kind == "notice")
    # Each planner's call is said to end with its unusable plan, as any failed call is: the
    # progress display never shows the next planner as one more call beside it.
    planning = [e for e in events if e.role == "decomposition"]
    assert [e.kind for e in planning] == ["call_started", "call_failed"] * 3
    assert all("cycle" in e.data["error"] for e in planning if e.kind == "call_failed")


async def test_a_plan_that_could_not_be_used_is_asked_again_by_the_next_run(fake, llm, tmp_path):
    llm.plan = [{"id": "a", "type": "code_generation", "prompt": "p", "dependencies": ["nope"],
                 "hard_validators": [], "acceptance": None}]  # fmt: skip
    async with DiskCache(tmp_path / "cache.db") as cache:
        await run(fake, cache=cache)
        asked = llm.count("plan")
        llm.plan = default_plan()

        state = await run(fake, cache=cache)

    assert llm.count("plan") == asked + 1  # not the unusable plan again, from the cache
    assert set(state.tasks) == {t["id"] for t in default_plan()}


async def test_a_cyclic_task_list_given_directly_is_a_clear_error(fake, llm):
    tasks = as_tasks([code_task("a", "b"), code_task("b", "a")])

    with pytest.raises(ConfigError, match="cycle"):
        await run(fake, tasks=tasks)
    assert fake.count() == 0


# -- the budget ceiling -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
async def test_concurrent_calls_never_overshoot_the_ceiling(fake, seed):
    rng = random.Random(seed)

    def responder(request):
        limit = request.body.get("max_completion_tokens") or request.body.get("max_tokens")
        limit = limit or request.body["generationConfig"]["maxOutputTokens"]
        return Reply(text="x" * rng.randint(1, 400), output_tokens=rng.randint(1, limit))

    fake.responder = responder
    budget = Budget(max_usd=rng.uniform(0.01, 0.05), max_time_seconds=60)
    models = ["gpt-4o", "claude-opus-5", "gemini-2.5-pro", "kimi-k3", "deepseek-v4-pro"]
    async with UnifiedClient(env=fake_env(fake.base_url), max_concurrency=8) as client:

        async def one() -> str:
            prompt = "p" * rng.randint(10, 5000)
            try:
                await client.complete(
                    rng.choice(models),
                    prompt,
                    max_tokens=rng.randint(16, 2048),
                    spend=budget.guard("generation"),
                )
            except BudgetExceeded:
                return "refused"
            return "paid"

        outcomes = await asyncio.gather(*(one() for _ in range(60)))

    assert "refused" in outcomes and "paid" in outcomes
    assert budget.spent_usd <= budget.max_usd
    assert budget.reserved_usd == pytest.approx(0)


# -- storage failing ----------------------------------------------------------------------------
class FailingJournal(StateManager):
    """A state file that stops accepting writes after a few paid calls (a full disk)."""

    def __init__(self, path, fail_after: int) -> None:
        super().__init__(path)
        self.books = FailingBook(self._store, self.holders, self.path, fail_after)


class FailingBook(SharedBook):
    """The books of a full disk: a call's journal row, written with its settlement, fails
    after ``fail_after`` of them."""

    def __init__(self, store, holders, path, fail_after: int) -> None:
        super().__init__(store, holders)
        self.path = path
        self.writes = 0
        self.fail_after = fail_after

    async def ledger_settle(self, settlements, journal=None) -> int:
        if journal is not None:
            self.writes += 1
            if self.writes > self.fail_after:
                raise StateError(f"state file {self.path}: database or disk is full")
        return await super().ledger_settle(settlements, journal)


class FailingCache(DiskCache):
    async def put(self, key, value) -> None:
        raise CacheError(f"cache file {self.path}: database or disk is full")


async def test_a_state_file_that_fails_mid_run_stops_it_as_a_resumable_system_failure(
    fake, llm, tmp_path
):
    store = FailingJournal(tmp_path / "state.db", fail_after=8)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orchestrator = Orchestrator(client=client, state_manager=store, use_cache=False)
        state = await orchestrator.run_project("[p] x", CRITERIA, "disk")

    assert state.status is ProjectStatus.SYSTEM_FAILURE
    assert "disk is full" in state.reason
    unfinished = [r for r in state.results.values() if r.status is not TaskStatus.COMPLETED]
    assert unfinished and all(r.interrupted for r in unfinished)
    await store.aclose()


async def test_a_cache_that_fails_mid_run_is_dropped_and_the_run_goes_on(fake, llm, tmp_path):
    async with FailingCache(tmp_path / "cache.db") as cache:
        state = await run(fake, cache=cache)

    assert state.status is ProjectStatus.SUCCESS


@pytest.mark.parametrize(
    "failure", [RuntimeError("display crashed"), SystemExit("display crashed")]
)
async def test_an_event_handler_that_raises_never_breaks_the_run(fake, llm, caplog, failure):
    calls = []

    def broken(event):
        calls.append(event.kind)
        raise failure

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0), client=client, use_cache=False, on_event=broken
        )
        state = await orchestrator.run_project("[project] Build an add library", "add works")

    assert state.status is ProjectStatus.SUCCESS
    assert "task_finished" in calls  # it kept being called
    warnings = [r.getMessage() for r in caplog.records if "display crashed" in r.getMessage()]
    assert len(warnings) == 1 and "the run goes on" in warnings[0]
