"""The cost layer: predicted call costs that learn from the run, and forecasts before any spend."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from conftest import LOCAL_CATALOG, fake_env, run_cli, write_file
from scripted_llm import TaskScript
from test_resume import FAST

from orchestrator import Budget, Catalog, Model, Orchestrator, UnifiedClient
from orchestrator.money.caps import BudgetCapExceeded, BudgetHierarchy
from orchestrator.money.forecast import CostForecaster, CostPredictor, RiskLevel, typical_call_usd
from orchestrator.routing.backends import GreedyBackend
from orchestrator.routing.profiles import build_default_profiles
from orchestrator.routing.router import Router
from orchestrator.run.tasks import ProjectState, ProjectStatus, Task, TaskType
from orchestrator.store.state import StateManager

CATALOG = Catalog.load(env={})
KIMI = CATALOG.resolve("kimi")
CODE_TASK = {"core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.")}


def test_the_design_documents_predictor_example_runs():
    predictor = CostPredictor(alpha=0.1)  # EMA; falls back to the catalog for unknown pairs

    # Record actual observed costs during execution
    predictor.record(Model.KIMI_K2_5, TaskType.CODE_GEN, actual_cost_usd=0.000032)
    # Predict future cost (EMA or catalog fallback)
    est = predictor.predict(Model.KIMI_K2_5, TaskType.CODE_GEN)
    # Find the cheapest model for a task type
    cheapest = predictor.cheapest_model(
        TaskType.CODE_GEN, candidates=[Model.KIMI_K2_5, Model.CLAUDE_3_5_OPUS]
    )

    assert Model.KIMI_K2_5 == KIMI  # the design's names are the catalog's aliases
    assert est == 0.000032
    assert cheapest == KIMI


def test_the_moving_average_weighs_the_newest_call_by_alpha_and_unknown_pairs_use_prices():
    predictor = CostPredictor(alpha=0.5)
    predictor.record(KIMI, TaskType.CODE_GEN, 0.01)
    predictor.record(KIMI, TaskType.CODE_GEN, 0.03)

    assert predictor.predict(KIMI, TaskType.CODE_GEN) == pytest.approx(0.02)
    assert predictor.samples(KIMI, TaskType.CODE_GEN) == 2
    assert predictor.predict(KIMI, TaskType.SUMMARIZE) == typical_call_usd(KIMI, TaskType.SUMMARIZE)
    with pytest.raises(ValueError):
        CostPredictor(alpha=0)


async def run(fake, **options):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False, **options)
        return await orch.run_project("[project] add", "add works", "p1", tasks=CODE_TASK)


async def test_every_answered_call_feeds_the_predictor_and_it_is_saved_with_the_project(fake, llm):
    predictor = CostPredictor()

    state = await run(fake, cost_predictor=predictor)

    author = state.results["core"].model_used
    assert predictor.samples(author, TaskType.CODE_GEN) == 2  # the draft and the revision
    assert predictor.predict(author, TaskType.CODE_GEN) > 0
    async with StateManager() as store:
        saved = {(m, t): n for m, t, _, n in await store.measures.cost_estimates("p1")}
    assert saved[(author.key, "code_generation")] == 2
    assert any(t == "evaluation" for _, t in saved)  # evaluations are learnt apart

    # A later orchestrator resuming the project starts from what it learnt.
    fresh = CostPredictor()
    fresh.load([(author.key, "code_generation", 0.5, 2)])
    assert fresh.predict(author, TaskType.CODE_GEN) == 0.5


async def test_routing_follows_measured_costs_once_there_are_some(fake, llm):
    predictor = CostPredictor()
    flash_lite = CATALOG.resolve("gemini-flash-lite")
    predictor.record(flash_lite, TaskType.CODE_GEN, 5.0)  # measured: far dearer than listed

    state = await run(fake, cost_predictor=predictor, optimization_backend=GreedyBackend())

    assert state.status is ProjectStatus.SUCCESS
    assert state.results["core"].model_used != flash_lite  # greedy's choice without the data


def test_a_model_measured_dearer_than_its_price_is_priced_as_measured_until_the_job_has_its_own():
    profiles = build_default_profiles(CATALOG)
    flash_lite = CATALOG.resolve("gemini-flash-lite")
    profile = profiles[flash_lite.key]
    predictor = CostPredictor()

    def greedy_author():
        models = tuple(p.model for p in profiles.values())
        router = Router(CATALOG, models, backend=GreedyBackend(), profiles=profiles,
                        cost_model=predictor)  # fmt: skip
        return router.generation_chain(TaskType.CODE_GEN)[0]

    assert greedy_author() == flash_lite  # the cheapest by catalog price
    profile.record_call(2.0, ok=True, cost_usd=5.0)  # measured (here or in an earlier run): dear

    assert predictor.predict(flash_lite, TaskType.CODE_GEN, profile) == 5.0
    assert greedy_author() != flash_lite
    predictor.record(flash_lite, TaskType.CODE_GEN, 0.0001)  # the job's own average wins
    assert predictor.predict(flash_lite, TaskType.CODE_GEN, profile) == 0.0001
    assert greedy_author() == flash_lite
    # Cheaper than the catalog's upper estimate: kept at it, so that a model is never preferred
    # for being compared by its short answers with the others' full-length estimates.
    profiles[KIMI.key].record_call(1.0, ok=True, cost_usd=0.000001)
    assert predictor.predict(KIMI, TaskType.CODE_GEN, profiles[KIMI.key]) == typical_call_usd(
        KIMI, TaskType.CODE_GEN
    )


def test_the_design_documents_forecast_example_runs_with_its_risk_levels():
    tasks = [Task(f"t{i}", TaskType.CODE_GEN, "x") for i in range(3)]
    predictor = CostPredictor(alpha=0.1)
    profiles = build_default_profiles()

    report = CostForecaster.forecast(tasks, profiles, predictor, budget=Budget(max_usd=10.0))

    assert report.estimated_total_usd == pytest.approx(sum(report.estimated_per_phase.values()))
    assert set(report.estimated_per_phase) == {
        "decomposition", "generation", "cross_review", "evaluation", "integration",
    }  # fmt: skip
    assert report.risk_level is RiskLevel.LOW
    total = report.estimated_total_usd
    for budget, level in ((total / 0.49, "low"), (total / 0.6, "medium"), (total / 0.8, "high")):
        again = CostForecaster.forecast(tasks, profiles, predictor, budget=Budget(max_usd=budget))
        assert again.risk_level.value == level


PROJECT_TASKS = {
    t.id: t
    for t in (
        Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests."),
        Task("docs", TaskType.WRITING, "[docs] Write a README section.", ["core"]),
        Task("summary", TaskType.SUMMARIZE, "[summary] Summarise the work.", ["docs"]),
    )
}


@pytest.mark.parametrize("answer_share", [None, 0.3, 1.0], ids=["short", "medium", "long"])
async def test_a_run_never_spends_more_than_the_forecasts_high_figure(fake, llm, answer_share):
    llm.output_share = answer_share  # answers of a few words, 30 % of the limit, all of it
    llm.scripts["core"] = TaskScript(scores=[0.5, 0.7, 0.9])  # iterates, verdicts disagree
    budget = Budget(max_usd=5.0)
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        profiles = build_default_profiles(client.catalog)
        forecast = CostForecaster.forecast(
            PROJECT_TASKS, profiles, budget=budget, description="[project] add",
            criteria="add works",
        )  # fmt: skip
        orch = Orchestrator(budget=budget, client=client, use_cache=False)
        state = await orch.run_project("[project] add", "add works", tasks=PROJECT_TASKS)

    spent = state.budget.spent_usd
    print(f"typical ${forecast.typical_usd:.4f}, high ${forecast.high_usd:.4f}, spent ${spent:.4f}")
    assert state.results["core"].iterations > 1
    assert 0 < spent <= forecast.high_usd <= budget.max_usd
    assert forecast.typical_usd < forecast.high_usd


def test_a_high_figure_past_the_budget_is_the_budget_and_says_the_run_would_stop():
    profiles = build_default_profiles()

    report = CostForecaster.forecast(PROJECT_TASKS, profiles, budget=Budget(max_usd=0.05))

    assert report.worst_usd > 0.05 and report.high_usd == 0.05
    assert report.passes_budget


def project_file(tmp_path, **settings):
    document = {
        "project": "[project] add", "criteria": "add works", "budget": 5,
        "tasks": [t.to_dict() for t in PROJECT_TASKS.values()], **settings,
    }  # fmt: skip
    path = tmp_path / "project.json"
    path.write_text(json.dumps(document))
    return str(path)


def forecast_figures(stdout: str) -> tuple[float, float]:
    """The typical and high figures a --forecast printed."""
    typical = re.search(r"^typical \$([\d.,]+) of", stdout, re.M)
    high = re.search(r"^high \$([\d.,]+)", stdout, re.M)
    assert typical and high, stdout
    return float(typical[1].replace(",", "")), float(high[1].replace(",", ""))


def test_the_typical_forecast_learns_what_journaled_runs_cost(fake, llm, tmp_path):
    env = fake_env(fake.base_url)
    project = project_file(tmp_path)
    before = run_cli("--file", project, "--forecast", cwd=tmp_path, env=env)
    assert before.returncode == 0, before.stderr
    assert "learned from earlier runs" not in before.stdout
    llm.bill_max_output = True  # an earlier run measured long answers
    ran = run_cli("--file", project, "--no-integration", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    calls = fake.count()

    after = run_cli("--file", project, "--forecast", cwd=tmp_path, env=env)

    assert after.returncode == 0, after.stderr
    assert fake.count() == calls  # a forecast calls no model
    typical_before, _ = forecast_figures(before.stdout)
    typical_after, high_after = forecast_figures(after.stdout)
    assert typical_after > 2 * typical_before
    assert high_after >= typical_after
    learned = next(line for line in after.stdout.splitlines() if line.startswith("learned"))
    assert "paid calls per task of code_generation (1 task)" in learned
    assert "cost per call of" in learned


@pytest.mark.parametrize(
    "args",
    [("--local",), ("--local", "--providers", "openai"), ()],
    ids=["local", "local-beside-a-cloud-provider", "keyless-stand-in"],
)
def test_a_run_on_the_local_model_forecasts_nothing(tmp_path, args):
    # Keys for another provider than the one named: only the local model is usable then.
    env = fake_env("http://127.0.0.1:9", providers=("kimi",)) if args else {}
    result = run_cli("-p", "A rate limiter", "-c", "tests pass", "--forecast", *args,
                     cwd=tmp_path, env=env)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert forecast_figures(result.stdout) == (0.0, 0.0)
    assert "risk low" in result.stdout
    lines = result.stdout.splitlines()
    assert (
        "runs on the embedded local model SmolLM2-135M-Instruct on this machine "
        "(offline, $0)" in lines
    )
    assert "models: smollm2-135m-instruct (on this machine, $0)" in lines


def test_a_forecast_names_the_models_routing_would_call(tmp_path):
    env = fake_env("http://127.0.0.1:9", providers=("openai",))
    result = run_cli("-p", "A rate limiter", "-c", "tests pass", "--forecast", cwd=tmp_path,
                     env=env)  # fmt: skip

    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("models: ")]
    names = line.removeprefix("models: ").split(", ")
    assert names and all(CATALOG.resolve(name).provider == "openai" for name in names)
    assert "on this machine" not in result.stdout  # nothing local runs


def test_a_catalog_model_priced_at_zero_forecasts_nothing(tmp_path):
    catalog = write_file(tmp_path / "catalog.yaml", LOCAL_CATALOG)
    result = run_cli("-p", "x", "-c", "y", "--forecast", "--catalog", str(catalog),
                     "--providers", "local", cwd=tmp_path)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert forecast_figures(result.stdout) == (0.0, 0.0)


def test_forecast_on_the_command_line_calls_nothing_and_prints_both_figures(tmp_path, fake):
    env = fake_env(fake.base_url)
    result = run_cli("-p", "A rate limiter", "-c", "tests pass", "--forecast", cwd=tmp_path,
                     env=env)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "no model was called" in result.stdout
    assert "risk low" in result.stdout
    typical, high = forecast_figures(result.stdout)
    assert 0 < typical < high == 8.0
    assert "high $8.00: the run's limits allow" in result.stdout  # ten tasks' worst: past $8
    assert "it would stop BUDGET_EXHAUSTED" in result.stdout
    assert "priced from the catalog: cost per call of" in result.stdout
    assert "assumes: no task list: the planner's call and 10 tasks" in result.stdout
    assert fake.count() == 0


def test_forecast_on_the_command_line_uses_what_earlier_runs_measured(tmp_path, isolated_home):
    args = ("-p", "A rate limiter", "-c", "tests pass", "--forecast")
    env = fake_env("http://127.0.0.1:9")  # keys, so that the cloud models are priced
    fresh = run_cli(*args, cwd=tmp_path, env=env)
    assert fresh.returncode == 0 and "risk low" in fresh.stdout
    assert not (isolated_home / "state.db").exists()  # a forecast creates no state file

    author = CATALOG.resolve("Kimi K2.5")  # the routing table's first author of code
    measured = {"calls": 4, "cost_avg_usd": 0.5, "quality": 0.9, "trust": 1.0}

    async def save():
        async with StateManager() as store:
            await store.measures.save_model_telemetry({author.key: measured})

    asyncio.run(save())
    informed = run_cli(*args, cwd=tmp_path, env=env)

    assert informed.returncode == 0, informed.stderr
    assert "risk high" in informed.stdout  # ten tasks' two $0.50 calls are past the $8 budget
    learned = f"learned from earlier runs: cost per call of {author.value} (its telemetry)"
    assert learned in informed.stdout


async def charged_run(fake, hierarchy=None, budget=10.0, **charge):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=budget), client=client, use_cache=False,
            budget_hierarchy=hierarchy,
        )  # fmt: skip
        return await orch.run_project("[project] add", "add works", tasks=CODE_TASK, **charge)


async def test_the_design_documents_hierarchy_caps_runs_across_orchestrators(fake, llm):
    hier = BudgetHierarchy(
        org_max_usd=100.0,
        team_budgets={"eng": 30.0},
        job_budgets={"job_001": 10.0},
    )

    first = await charged_run(fake, hier, team="eng", job_id="job_001")
    assert first.status is ProjectStatus.SUCCESS
    requests = fake.count()

    # The job has spent something, so another $10 run could pass its $10 cap: refused unpaid,
    # even by an orchestrator that was given no hierarchy (the caps are saved).
    with pytest.raises(ValueError, match=r"the job job_001 budget of \$10\.00 could be exceeded"):
        await charged_run(fake, None, team="eng", job_id="job_001")
    assert fake.count() == requests

    fits = await charged_run(fake, None, budget=9.0, team="eng", job_id="job_001")
    assert fits.status is ProjectStatus.SUCCESS


async def test_runs_at_once_hold_their_budgets_so_together_they_never_pass_a_cap(fake, llm):
    llm.delay = 0.2
    hier = BudgetHierarchy(team_budgets={"eng": 12.0})

    results = await asyncio.gather(
        charged_run(fake, hier, team="eng"),
        charged_run(fake, hier, team="eng"),
        return_exceptions=True,
    )

    refused = [r for r in results if isinstance(r, BudgetCapExceeded)]
    assert len(refused) == 1
    assert "held by runs in progress" in str(refused[0])
    assert sum(isinstance(r, ProjectState) for r in results) == 1


def test_the_command_line_charges_a_team_and_refuses_a_run_that_could_pass_its_cap(
    fake, llm, tmp_path
):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    project = ("-p", "[project] Build an add library", "-c", "add works", "--budget", "2")

    refused = run_cli(*project, "--team", "eng", "--team-cap", "1.5", cwd=tmp_path, env=env)

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "orchestrator: error: the team eng budget of $1.50 could be exceeded by $0.50: "
        "$0.00 spent, $0.00 held by runs in progress, and this run may spend up to $2.00"
    ]
    assert fake.count() == 0
    # The cap was saved: a later run for the team is held to it without repeating it.
    again = run_cli(*project, "--team", "eng", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "team eng budget of $1.50" in again.stderr
    assert run_cli(*project, "--team", "ops", cwd=tmp_path, env=env).returncode == 0


def test_the_constraint_planner_screens_out_what_the_policies_block_and_the_budget_cannot_pay():
    from orchestrator.routing.backends import Candidate
    from orchestrator.routing.policy import Policy, PolicyEngine
    from orchestrator.routing.screen import ConstraintPlanner

    profiles = build_default_profiles(CATALOG)
    candidates = [
        Candidate(profiles[m.key], cost_usd=cost)
        for m, cost in (
            (CATALOG.resolve("gemini-flash-lite"), 0.002),  # the cheapest, but blocked
            (CATALOG.resolve("deepseek-flash"), 0.005),
            (CATALOG.resolve("gpt-4o-mini"), 0.004),
            (CATALOG.resolve("claude-opus"), 0.12),
        )
    ]
    planner = ConstraintPlanner(
        PolicyEngine([Policy("no_google", blocked_providers=["google"])]),
        budget_left=lambda: 0.05,
    )

    screened = planner.screen(candidates)

    allowed = [c.model.value for c in screened.allowed]
    assert allowed == ["deepseek-v4-flash", "gpt-4o-mini", "claude-opus-5"]
    assert [(m.value, why) for m, why in screened.excluded] == [
        ("gemini-2.5-flash-lite", "excluded by policy no_google: provider google is blocked")
    ]
    assert screened.unaffordable == {"anthropic/claude-opus-5"}


def test_forecast_is_for_a_new_project_and_applies_the_policies(tmp_path):
    refused = run_cli("--resume", "p1", "--forecast", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--forecast is for a new project" in refused.stderr

    policy = tmp_path / "p.yaml"
    policy.write_text("global:\n  - name: us\n    allowed_regions: [us]\n")
    args = ("-p", "x", "-c", "y", "--forecast")
    env = fake_env("http://127.0.0.1:9")  # keys: a forecast over the cloud models
    free = run_cli(*args, cwd=tmp_path, env=env)
    us_only = run_cli(*args, "--policy", str(policy), cwd=tmp_path, env=env)

    assert free.returncode == us_only.returncode == 0
    assert free.stdout != us_only.stdout  # Kimi, the table's first author, is not in the US
