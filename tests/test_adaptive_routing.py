"""Adaptive routing: each kind of task goes to the model that passes its checks for the least
money, learned from how its answers were judged; a model whose answers keep failing their
checks is sent to the back for that kind of task, and every choice says why in figures."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import replace

import pytest
from conftest import fake_env, run_cli, write_file
from scripted_llm import ScriptedLLM
from test_resume import FAST

from orchestrator import Budget, Catalog, Orchestrator, RunConfig, StateManager, UnifiedClient
from orchestrator.cli.project_file import ProjectFileError, load_project_file
from orchestrator.observe.telemetry import TelemetryCollector
from orchestrator.routing.backends import (
    BACKENDS,
    PRIOR_ANSWERS,
    AdaptiveBackend,
    Candidate,
    RoutingTableBackend,
)
from orchestrator.routing.policy import Policy
from orchestrator.routing.profiles import (
    DEMOTE_AFTER,
    DEMOTED_FOR,
    ModelProfile,
    Outcomes,
    merge_profiles,
    streak_held_back,
)
from orchestrator.routing.router import (
    CRITIQUE_MAX_TOKENS,
    TYPICAL_PROMPT_TOKENS,
    Decision,
    Router,
)
from orchestrator.run.taskgraph import parse_tasks
from orchestrator.run.tasks import ProjectStatus, TaskType
from orchestrator.text.schemas import shipped_schema

CODE = TaskType.CODE_GEN


def candidate(name: str, *, quality: float, cost: float, task_type=CODE, rank=None) -> Candidate:
    model = replace(Catalog.load(env={}).resolve(name), quality=quality)
    profile = ModelProfile(model, "us", False, quality)
    return Candidate(profile, cost_usd=cost, table_rank=rank, task_type=task_type)


def judge(c: Candidate, task_type: TaskType, *results: bool) -> None:
    for passed in results:
        c.profile.judged(task_type.value, passed, by_checks=not passed)


def firsts(backend: AdaptiveBackend, candidates: list[Candidate], draws: int = 300) -> Counter:
    return Counter(backend.rank(candidates)[0].model.value for _ in range(draws))


def test_of_two_models_that_pass_alike_the_cheaper_gets_the_work():
    cheap = candidate("gemini-flash-lite", quality=0.8, cost=0.001)
    dear = candidate("claude-opus", quality=0.8, cost=0.05)
    for c in (cheap, dear):
        judge(c, CODE, *[True] * 8, False)

    chosen = firsts(AdaptiveBackend(seed=1), [dear, cheap])

    assert chosen["gemini-2.5-flash-lite"] > 0.95 * 300


def routed_authors(telemetry: TelemetryCollector, task_type: TaskType, backend) -> Decision:
    """The decision of a router over two models for an author of ``task_type``."""
    catalog = Catalog.load(env={})
    usable = tuple(catalog.resolve(name) for name in ("kimi-k2.5", "gpt-4o"))
    telemetry.ensure(catalog)
    decisions: list[Decision] = []
    router = Router(catalog, usable, backend=backend, profiles=telemetry.profiles,
                    on_decision=decisions.append)  # fmt: skip
    router.generation_chain(task_type, "t")
    return decisions[0]


@pytest.mark.parametrize("backend", [RoutingTableBackend(), AdaptiveBackend(seed=2)])
def test_a_model_that_keeps_failing_its_checks_goes_last_for_that_kind_of_task_only(backend):
    telemetry = TelemetryCollector()
    telemetry.ensure(Catalog.load(env={}))
    kimi = Catalog.load(env={}).resolve("kimi-k2.5")
    for _ in range(DEMOTE_AFTER):
        telemetry.record_judged(kimi, CODE.value, False, by_checks=True)

    code = routed_authors(telemetry, CODE, backend)
    writing = routed_authors(telemetry, TaskType.WRITING, backend)

    # Kimi leads the routing table for code, and is held back behind gpt-4o...
    assert [m.value for m in code.chain] == ["gpt-4o", "kimi-k2.6"]
    (why,) = [why for m, why in code.held_back if m == kimi]
    assert why.startswith("held back: its last 2 answers of this task type failed their checks")
    # ...but what its code did says nothing of its writing.
    assert kimi not in [m for m, _ in writing.held_back]


def test_a_demoted_model_is_tried_again_once_enough_other_answers_were_judged():
    telemetry = TelemetryCollector()
    telemetry.ensure(Catalog.load(env={}))
    kimi, gpt = (Catalog.load(env={}).resolve(n) for n in ("kimi-k2.5", "gpt-4o"))
    for _ in range(DEMOTE_AFTER):
        telemetry.record_judged(kimi, CODE.value, False, by_checks=True)

    def demoted() -> bool:
        decision = routed_authors(telemetry, CODE, RoutingTableBackend())
        return kimi in [m for m, _ in decision.held_back]

    for _ in range(DEMOTED_FOR - 1):
        telemetry.record_judged(gpt, CODE.value, True, by_checks=False)
        assert demoted()
    telemetry.record_judged(gpt, CODE.value, True, by_checks=False)
    assert not demoted()  # on trial: in its place again
    # One more failed check and it is held back again.
    telemetry.record_judged(kimi, CODE.value, False, by_checks=True)
    assert demoted()


def test_a_pass_ends_a_demotion():
    model = candidate("kimi-k2.5", quality=0.9, cost=0.001)
    judge(model, CODE, False, False, True)

    assert model.profile.outcomes[CODE.value] == Outcomes(passed=1, failed=2, failing_checks=0)


def test_a_free_model_that_rarely_passes_goes_after_one_likelier_to_pass():
    free = candidate("gemini-flash-lite", quality=0.1, cost=0.0)
    judge(free, CODE, *[False] * 6)
    free.profile.outcomes[CODE.value].failing_checks = 0  # judged low, not failing checks
    paid = candidate("gpt-4o", quality=0.9, cost=0.02)

    chosen = firsts(AdaptiveBackend(seed=3), [free, paid])

    assert chosen["gpt-4o"] > 0.95 * 300


def test_an_untried_model_still_gets_some_work_while_a_tried_one_is_known_good():
    tried = candidate("gpt-4o", quality=0.8, cost=0.01)
    judge(tried, CODE, *[True] * 5)
    untried = candidate("claude-sonnet", quality=0.8, cost=0.01)

    chosen = firsts(AdaptiveBackend(seed=4), [tried, untried])

    assert chosen["gpt-4o"] > chosen["claude-sonnet-5"] > 0


def test_each_place_gives_the_posterior_figures_behind_it():
    model = candidate("gpt-4o", quality=0.8, cost=0.01)
    judge(model, CODE, True, True, False)

    (ranked,) = AdaptiveBackend(seed=5).rank([model])

    figures = ranked.figures
    assert (figures["passed"], figures["failed"], figures["prior"]) == (2.0, 1.0, 0.8)
    alpha, beta = PRIOR_ANSWERS * 0.8 + 2, PRIOR_ANSWERS * 0.2 + 1
    assert figures["mean"] == pytest.approx(alpha / (alpha + beta))
    assert 0 < figures["drawn"] < 1
    assert ranked.score == pytest.approx(figures["drawn"] / 0.01)
    mean = f"{alpha / (alpha + beta):.2f}"
    assert ranked.reason.startswith(f"code_generation passed 2 of 3 (prior 0.80): mean {mean}, ")


def test_a_model_is_weighed_by_what_a_whole_attempt_costs_not_its_call_alone():
    # Every attempt pays a critique and verdicts, whoever writes it: the call is a small part.
    cheap = candidate("gemini-flash-lite", quality=0.8, cost=0.0004)
    sure = candidate("gpt-4o-mini", quality=0.8, cost=0.0009)
    judge(cheap, CODE, *[True, False] * 10)  # passes half its answers
    judge(sure, CODE, *[True] * 19, False)  # (both ranked on their means: their latest failed)
    by_call = [cheap, sure]
    by_attempt = [replace(c, overhead_usd=0.0075) for c in by_call]

    assert firsts(AdaptiveBackend(seed=7), by_call)["gemini-2.5-flash-lite"] > 0.9 * 300
    assert firsts(AdaptiveBackend(seed=7), by_attempt)["gpt-4o-mini"] > 0.9 * 300
    (ranked,) = AdaptiveBackend(seed=7).rank(by_attempt[1:])
    assert ranked.figures["attempt_usd"] == pytest.approx(0.0084)
    assert "$0.0084 an attempt (the call $0.0009)" in ranked.reason


def test_a_known_good_model_gets_most_of_the_work_and_the_others_one_draw_in_as_many():
    known = candidate("gpt-4o-mini", quality=0.8, cost=0.001)
    judge(known, CODE, *[True] * 20)
    untried = [
        candidate(n, quality=0.8, cost=0.001)
        for n in ("gemini-flash-lite", "gpt-6-luna", "deepseek-flash", "claude-haiku")
    ]
    backend = AdaptiveBackend(seed=8)

    ranked = [backend.rank([known, *untried]) for _ in range(1000)]

    explored = sum(r.figures["explored"] for rank in ranked for r in rank)
    assert explored == pytest.approx(1000, rel=0.15)  # one candidate in five, 5 x 1000 / 5
    chosen = Counter(rank[0].model.value for rank in ranked)
    assert chosen["gpt-4o-mini"] > 0.75 * 1000 and len(chosen) > 1


def test_a_model_whose_latest_answer_failed_its_checks_is_ranked_on_its_record_not_drawn():
    failing = candidate("gemini-flash-lite", quality=0.8, cost=0.001)
    judge(failing, CODE, True, True, False)
    backend = AdaptiveBackend(seed=9)

    places = [backend.rank([failing]) for _ in range(100)]

    assert all(rank[0].figures["explored"] == 0.0 for rank in places)
    assert places[0][0].reason.startswith(
        "code_generation passed 2 of 3 (prior 0.80): mean 0.74, not drawn: ranked on its mean"
    )


def test_ties_go_to_the_model_measured_faster():
    slow, fast = (candidate(n, quality=0.9, cost=0.01) for n in ("gpt-4o", "claude-sonnet"))
    slow.profile.latency_ms, fast.profile.latency_ms = 9000.0, 800.0
    for c in (slow, fast):
        judge(c, CODE, True, False)  # failing: ranked on its mean, so the two are level

    order = [r.model.value for r in AdaptiveBackend(seed=10).rank([slow, fast])]

    assert order == ["claude-sonnet-5", "gpt-4o"]


def test_two_unlucky_answers_do_not_hold_back_a_model_with_a_good_record_under_adaptive_routing():
    telemetry = TelemetryCollector()
    telemetry.ensure(Catalog.load(env={}))
    kimi = Catalog.load(env={}).resolve("kimi-k2.5")
    for passed in [True] * 4 + [False] + [True] * 4 + [False] + [True] + [False] * 2:
        telemetry.record_judged(kimi, CODE.value, passed, by_checks=not passed)

    def held(backend) -> bool:
        decision = routed_authors(telemetry, CODE, backend)
        return kimi in [m for m, _ in decision.held_back]

    # It passed 9 of its 11 answers before these two: two failures in a row are what such a
    # model does now and then (4% of the time), and its posterior has counted them...
    rate = AdaptiveBackend().rate_before_streak(telemetry.profiles[kimi.key], CODE.value)
    assert rate == pytest.approx((PRIOR_ANSWERS * 0.8 + 9) / (PRIOR_ANSWERS + 11))
    assert held(RoutingTableBackend())
    assert not held(AdaptiveBackend(seed=11))
    # ...but three in a row are under 1% at its record: the model has changed.
    assert streak_held_back(rate) == 3
    telemetry.record_judged(kimi, CODE.value, False, by_checks=True)
    assert held(AdaptiveBackend(seed=11))


def test_the_router_gives_adaptive_routing_what_an_attempt_pays_besides_its_call():
    catalog = Catalog.load(env={})
    usable = tuple(
        catalog.resolve(n) for n in ("gemini-flash-lite", "kimi-k2.5", "gpt-4o", "claude-opus")
    )
    decisions: list[Decision] = []
    router = Router(catalog, usable, backend=AdaptiveBackend(seed=12),
                    on_decision=decisions.append)  # fmt: skip

    router.generation_chain(CODE, "core")

    (decision,) = decisions
    figures = {r.model.value: r.figures for r in decision.ranked}
    lite = figures["gemini-2.5-flash-lite"]
    # Its critic is the routing table's first for code review (Kimi) and its two verdicts the
    # evaluation table's first two (Kimi, Claude Opus): another provider's, every one.
    kimi, opus = catalog.resolve("kimi-k2.5"), catalog.resolve("claude-opus")
    expected = (
        kimi.price.cost(TYPICAL_PROMPT_TOKENS, CRITIQUE_MAX_TOKENS)
        + kimi.price.cost(TYPICAL_PROMPT_TOKENS, 600)
        + opus.price.cost(TYPICAL_PROMPT_TOKENS, 600)
    )
    assert lite["attempt_usd"] - lite["cost_usd"] == pytest.approx(expected)
    # Kimi's own answers are critiqued and judged by other providers' models.
    assert figures["kimi-k2.6"]["attempt_usd"] - figures["kimi-k2.6"]["cost_usd"] != pytest.approx(
        expected
    )


def test_a_job_that_writes_no_answer_of_its_own_keeps_the_routing_table():
    critics = [
        candidate("gpt-4o", quality=0.9, cost=0.02, task_type=None, rank=1),
        candidate("kimi-k2.5", quality=0.9, cost=0.001, task_type=None, rank=0),
    ]

    assert AdaptiveBackend(seed=6).rank(critics) == RoutingTableBackend().rank(critics)


def test_what_was_learned_is_saved_restored_and_merged_across_orchestrators():
    first = candidate("gpt-4o", quality=0.8, cost=0.01).profile
    second = candidate("gpt-4o", quality=0.8, cost=0.01).profile
    first.judged(CODE.value, False, by_checks=True)
    second.judged(CODE.value, True, by_checks=False)
    second.judged(TaskType.WRITING.value, True, by_checks=False)

    saved = json.loads(json.dumps(first.to_record()))
    restored = candidate("gpt-4o", quality=0.8, cost=0.01).profile
    restored.restore(saved)
    merged = merge_profiles([{"m": restored}, {"m": second}])["m"]

    assert restored.outcomes == {CODE.value: Outcomes(0, 1, 1)}
    assert merged.outcomes == {CODE.value: Outcomes(1, 1, 1), "creative_writing": Outcomes(1, 0, 0)}
    assert Outcomes.from_record([3, 1, 0]) == Outcomes(3, 1, 0, 0)  # saved before the clock


def test_a_saved_record_that_is_not_counts_reads_as_nothing_seen():
    profile = candidate("gpt-4o", quality=0.8, cost=0.01).profile
    profile.restore({"outcomes": {"code_generation": "garbage", "summarization": [1, -4, "x"]}})

    assert profile.outcomes == {"code_generation": Outcomes(), "summarization": Outcomes()}


def test_a_project_file_asks_for_a_backend_by_name_and_an_unknown_one_is_refused(tmp_path):
    good = write_file(tmp_path / "p.yaml", "project: p\ncriteria: c\nrouting: adaptive\n")
    bad = write_file(tmp_path / "q.yaml", "project: p\ncriteria: c\nrouting: clever\n")

    assert load_project_file(good).routing == "adaptive"
    with pytest.raises(ProjectFileError, match="routing"):
        load_project_file(bad)


def test_the_project_files_backends_are_the_command_lines():
    names = shipped_schema("project.schema.json")["properties"]["routing"]["enum"]

    assert sorted(names) == sorted(BACKENDS)


# --- over HTTP, through the real SDKs and the fake provider ---------------------------------------
CODE_CHAIN = [
    {"id": f"c{i}", "type": "code_generation", "prompt": f"[c{i}] Write add(a, b).",
     "dependencies": [f"c{i - 1}"] if i else [], "hard_validators": ["python_syntax"],
     "acceptance": None}
    for i in range(6)
]  # fmt: skip


def code_written_by(llm, model: str, since: int = 0) -> list[str | None]:
    """The tasks ``model`` wrote or revised code for, in order, after the first ``since``
    requests."""
    return [t for role, t, m in llm.roles[since:] if m == model and role in ("generate", "revise")]


PROJECT = "adds"
SEED = 1


async def run_adaptive(
    fake, store, *, policies=(), description="[project] adds", restart=False, backend=None
):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0, max_time_seconds=120),
            state_manager=store,
            client=client,
            use_cache=False,
            config=RunConfig(integration=False, policies=tuple(policies)),
            # Seeded: the same draws every time.
            optimization_backend=backend or AdaptiveBackend(seed=SEED),
        )
        tasks = parse_tasks({"tasks": CODE_CHAIN})
        return await orchestrator.run_project(
            description, "add works", PROJECT, tasks=tasks, restart=restart
        )


async def test_a_model_whose_code_never_compiles_stops_getting_code_in_the_run_and_the_next(
    fake, tmp_path
):
    llm = fake.responder = ScriptedLLM(plan=CODE_CHAIN, broken_authors=1)
    async with StateManager(tmp_path / "state.db") as store:
        first = await run_adaptive(fake, store)
        (broken,) = llm.broken
        written = code_written_by(llm, broken)
        # Its failing answer's next revision went to another model, and the task passed.
        assert first.status is ProjectStatus.SUCCESS
        assert first.results["c0"].model_used.value != broken
        # Once its answers had failed their checks (at most two tasks' worth), it got no more
        # code: the routing table would have sent it every answer of all six.
        assert len(set(written)) <= DEMOTE_AFTER and len(written) <= 2 * DEMOTE_AFTER, written
        saved = await store.measures.model_telemetry()
        assert saved[first.results["c0"].model_used.key]["outcomes"]["code_generation"][0] >= 1
        assert await failing_on_record(store, llm)

        seen = len(llm.roles)
        second = await run_adaptive(fake, store, description="[project] more adds", restart=True)

    assert second.status is ProjectStatus.SUCCESS
    assert code_written_by(llm, broken, since=seen) == []


async def test_under_the_routing_table_too_failing_code_moves_to_another_model(fake, tmp_path):
    llm = fake.responder = ScriptedLLM(plan=CODE_CHAIN, broken_authors=1)
    async with StateManager(tmp_path / "state.db") as store:
        state = await run_adaptive(fake, store, backend=RoutingTableBackend())

    (broken,) = llm.broken
    assert broken == "kimi-k2.6"  # the routing table's first choice for code
    assert state.status is ProjectStatus.SUCCESS  # each failing answer revised by another
    # Its first two tasks' answers failed their checks: then it was held back, and the table
    # no longer sent it every answer of all six tasks.
    assert set(code_written_by(llm, broken)) == {"c0", "c1"}
    assert all(r.model_used.value != broken for r in state.results.values())


async def test_learning_never_brings_back_a_model_a_policy_forbids(fake, tmp_path):
    llm = fake.responder = ScriptedLLM(plan=CODE_CHAIN)
    async with StateManager(tmp_path / "state.db") as store:
        free = await run_adaptive(fake, store)
        # Every answer passes here: learning sends the work to a cheap model...
        favourite = free.results["c0"].model_used.provider
        assert all(r.model_used.provider == favourite for r in free.results.values())
        seen = len(llm.roles)

        state = await run_adaptive(
            fake, store, policies=[Policy("not-it", blocked_providers=[favourite])],
            description="[project] adds elsewhere", restart=True,
        )  # fmt: skip

    # ...and a policy forbidding its provider still stands.
    assert state.status is ProjectStatus.SUCCESS
    catalog = Catalog.load(env={})
    assert {catalog.resolve(m).provider for _, _, m in llm.roles[seen:]}.isdisjoint({favourite})


async def test_what_a_run_learned_is_saved_with_each_task_and_a_resume_starts_from_it(
    fake, tmp_path
):
    llm = fake.responder = ScriptedLLM(plan=CODE_CHAIN, broken_authors=1, delay=0.05)
    async with StateManager(tmp_path / "state.db") as store:
        run = asyncio.create_task(run_adaptive(fake, store))
        # Saved as tasks finish, not only at the end: a run killed now keeps it.
        while not await failing_on_record(store, llm):
            assert not run.done(), "the run ended before its broken author's failures were saved"
            await asyncio.sleep(0.05)
        assert not run.done(), "the run ended before what it learned was saved"
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        (broken,) = llm.broken
        seen = await requests_once_quiet(llm)

        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
            fresh = Orchestrator(  # a new process: nothing learned in memory
                budget=Budget(max_usd=5.0, max_time_seconds=120), state_manager=store,
                client=client, use_cache=False,
            )  # fmt: skip
            resumed = await fresh.resume(PROJECT)

    assert resumed.status is ProjectStatus.SUCCESS
    assert code_written_by(llm, broken, since=seen) == []


async def requests_once_quiet(llm, quiet: float = 0.5) -> int:
    """How many requests the fake has seen once none has arrived for ``quiet`` seconds: one the
    cancelled run sent just before its end (seen by the fake a moment later under load) is the
    cancelled run's, not the resume's."""
    count, deadline = -1, time.monotonic() + 30
    while count != len(llm.roles):
        assert time.monotonic() < deadline, "the fake kept receiving requests after the cancel"
        count = len(llm.roles)
        await asyncio.sleep(quiet)
    return count


async def failing_on_record(store, llm) -> bool:
    """Whether the store holds what was learned of the broken author's code: its latest answers
    failed their checks and none passed. (Adaptive routing ranks it on that record, behind the
    models with better ones, from its first failed answer on, where the routing table needs two
    to hold it back.)"""
    if not llm.broken:
        return False
    records = await store.measures.model_telemetry()
    found = [r for key, r in records.items() if key.endswith("/" + llm.broken[0])]
    code = found[0].get("outcomes", {}).get("code_generation") if found else None
    return bool(code) and code[0] == 0 and code[2] >= 1


def test_the_audit_record_and_the_v_line_carry_the_figures_behind_a_choice():
    catalog = Catalog.load(env={})
    usable = tuple(m for m in catalog.models if m.provider in ("openai", "google"))
    decisions = []
    router = Router(catalog, usable, backend=AdaptiveBackend(seed=1), on_decision=decisions.append)

    router.generation_chain(CODE, "core")

    (decision,) = decisions
    first = decision.to_record()["candidates"][0]
    assert set(first["figures"]) >= {"passed", "failed", "prior", "mean", "drawn", "cost_usd"}
    assert "passes a dollar" in decision.explain() and "drawn" in decision.explain()


def test_a_project_file_routing_adaptively_shows_each_choices_figures_at_v(fake, llm, tmp_path):
    project = write_file(
        tmp_path / "add.yaml",
        """
        project: "[project] Build an add library"
        criteria: add works
        routing: adaptive
        tasks:
          - id: core
            type: code_generation
            prompt: "[core] Write add(a, b) with tests."
        """,
    )
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli("--file", str(project), "--no-integration", "-v", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "generation for core:" in x)
    assert "(adaptive: code_generation passed 0 of 0 (prior " in line
    assert "passes a dollar); then " in line
