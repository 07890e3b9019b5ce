"""Model selection: one path for every choice, ordered by the chosen backend, with its reasons."""

from __future__ import annotations

import pytest
from conftest import fake_env, run_cli, write_file
from test_resume import FAST

from orchestrator import Budget, Catalog, Orchestrator, UnifiedClient
from orchestrator.routing.backends import (
    Candidate,
    GreedyBackend,
    ParetoBackend,
    WeightedSumBackend,
)
from orchestrator.routing.profiles import ModelProfile, build_default_profiles
from orchestrator.routing.router import Router
from orchestrator.run.tasks import Task, TaskType

CODE_TASK = {"core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.")}


def profile(name: str, quality: float, price: float, latency: float | None = None) -> Candidate:
    model = Catalog.load(env={}).resolve(name)
    p = ModelProfile(model, "us", False, quality, latency_ms=latency)
    return Candidate(p, cost_usd=price)


def test_each_backend_orders_candidates_by_its_own_criterion_and_says_why():
    cheap = profile("gemini-flash-lite", quality=0.6, price=0.001)
    balanced = profile("deepseek-pro", quality=0.9, price=0.02)
    premium = profile("claude-opus", quality=0.95, price=0.12)
    worse = profile("gemini-pro", quality=0.85, price=0.05)  # beaten by "balanced" on both
    candidates = [premium, worse, balanced, cheap]

    greedy = GreedyBackend().rank(candidates)
    weighted = WeightedSumBackend(w_quality=0.7, w_trust=0.0, w_cost=0.3, w_latency=0.0)
    pareto = ParetoBackend(weighted).rank(candidates)

    assert greedy[0].model.value == "gemini-2.5-flash-lite"
    assert greedy[0].reason == "quality 0.60 x trust 1.00 / $0.001 a call = 600"
    assert weighted.rank(candidates)[0].model.value == "deepseek-v4-pro"
    assert pareto[-1].model.value == "gemini-2.5-pro"
    assert pareto[-1].reason.startswith("dominated by deepseek-v4-pro;")
    assert all(r.reason.startswith("on the Pareto front") for r in pareto[:-1])


def test_a_slow_model_loses_to_a_fast_one_when_latency_counts():
    slow = profile("gpt-4o", quality=0.9, price=0.02, latency=9000)
    fast = profile("claude-sonnet", quality=0.9, price=0.02, latency=800)
    backend = WeightedSumBackend(w_quality=0, w_trust=0, w_cost=0, w_latency=1)

    assert [r.model.value for r in backend.rank([slow, fast])] == ["claude-sonnet-5", "gpt-4o"]


def test_weights_must_make_sense():
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSumBackend(w_quality=-1)
    with pytest.raises(ValueError, match="not all zero"):
        WeightedSumBackend(0, 0, 0, 0)


def test_failed_calls_lower_a_models_trust_and_greedy_routing_moves_away_from_it():
    catalog = Catalog.load(env={})
    usable = tuple(m for m in catalog.models if m.provider in ("google", "deepseek"))
    profiles = build_default_profiles(catalog)
    router = Router(catalog, usable, backend=GreedyBackend(), profiles=profiles)
    first = router.generation_chain(TaskType.CODE_GEN)[0]

    for _ in range(10):
        profiles[first.key].record_call(1.0, ok=False)

    assert router.generation_chain(TaskType.CODE_GEN)[0] != first
    assert profiles[first.key].success_rate == 0.0


async def routed(fake, llm, backend) -> dict[tuple[str, str | None], list[str]]:
    """One run of the same one-task project; each choice's chain, by (role, task)."""
    decisions = {}

    def note(event):
        if event.kind == "model_selected":
            decision = event.data["decision"]
            chain = [m.value for m in decision.chain]
            decisions.setdefault((decision.role, decision.task_id), chain)

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        orch.emit = note
        if backend is not None:
            orch.set_optimization_backend(backend)
        state = await orch.run_project("[project] add", "add works", tasks=CODE_TASK)
    assert state.status.value == "SUCCESS"
    author = state.results["core"].model_used.value
    assert author == decisions[("generation", "core")][0]  # the choice is the call made
    return decisions


async def test_one_project_is_routed_differently_under_each_backend(fake, llm):
    table = await routed(fake, llm, None)
    greedy = await routed(fake, llm, GreedyBackend())
    weighted = await routed(fake, llm, WeightedSumBackend())
    pareto = await routed(fake, llm, ParetoBackend())

    generation = [r[("generation", "core")] for r in (table, greedy, weighted, pareto)]
    assert [chain[0] for chain in generation] == [
        "kimi-k2.6",  # the routing table's first choice for code
        "gemini-2.5-flash-lite",  # the most quality for the money
        "deepseek-v4-pro",  # the best weighted mix of quality and cost
        "deepseek-v4-pro",  # the same mix, among the models nothing beats outright
    ]
    assert generation[2] != generation[3]  # Pareto puts dominated models last
    # Critics and evaluators are chosen the same way, away from the author's provider.
    for role in ("critic", "evaluator"):
        chains = [r[(role, "core")] for r in (table, greedy, weighted, pareto)]
        assert len({tuple(c) for c in chains}) == 4, role


async def test_the_design_documents_backend_examples_run_and_change_the_routing(fake, llm):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=10.0), client=client, use_cache=False)

        # Switch to Pareto-optimal routing
        orch.set_optimization_backend(ParetoBackend())

        # Or tune weighted routing
        orch.set_optimization_backend(WeightedSumBackend(w_quality=0.5, w_trust=0.3, w_cost=0.2))

        state = await orch.run_project("[project] add", "add works", tasks=CODE_TASK)

    assert state.results["core"].model_used.value == "deepseek-v4-pro"
    assert orch.profiles["deepseek/deepseek-v4-pro"].evaluations >= 1  # it learned as it ran
    assert orch.profiles["deepseek/deepseek-v4-pro"].latency_ms is not None


def test_the_command_line_routes_by_the_backend_asked_for_and_shows_why(fake, llm, tmp_path):
    project = write_file(
        tmp_path / "add.yaml",
        """
        project: "[project] Build an add library"
        criteria: add works
        tasks:
          - id: core
            type: code_generation
            prompt: "[core] Write add(a, b) with tests."
        """,
    )
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli("--file", str(project), "--routing", "greedy", "-v", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    assert "generation for core: gemini-2.5-flash-lite (greedy: quality 0.80" in result.stderr
    assert "gemini-2.5-flash-lite" in result.stdout  # the results table names the author
