"""Adaptive routing learns how hard each kind of task is from every model's answers: once code
answers keep failing, a model never asked for code starts lower at code than its catalog quality
said, at that kind of task only, and each choice says by how much."""

from __future__ import annotations

import json

import pytest
from test_adaptive_routing import candidate, judge

from orchestrator import Catalog
from orchestrator.routing.backends import MIN_PASS_RATE, AdaptiveBackend, Candidate, type_offset
from orchestrator.routing.policy import Policy, PolicyEngine
from orchestrator.routing.profiles import build_default_profiles
from orchestrator.routing.router import Decision, Router
from orchestrator.routing.screen import ConstraintPlanner
from orchestrator.run.tasks import TaskType

CODE, SUMMARY = TaskType.CODE_GEN, TaskType.SUMMARIZE
SMALL = ("gpt-6-luna", "gpt-4o-mini", "deepseek-flash", "claude-haiku")


def at(c: Candidate, task_type: TaskType) -> Candidate:
    return Candidate(c.profile, c.cost_usd, task_type=task_type)


def figures_of(name: str, candidates: list[Candidate], seed: int = 1) -> dict[str, float]:
    ranked = AdaptiveBackend(seed=seed).rank(candidates)
    return dict(next(r for r in ranked if r.model.value.startswith(name)).figures)


def test_a_model_never_asked_for_code_starts_lower_there_once_others_code_keeps_failing():
    tried = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for c in tried:
        judge(c, CODE, True, False, False)  # each passes one answer of three
    untried = candidate("gemini-flash-lite", quality=0.8, cost=0.001)

    code = figures_of("gemini", [*tried, untried])
    summary = figures_of("gemini", [at(c, SUMMARY) for c in (*tried, untried)])

    assert code["type_offset"] < -0.1
    assert code["prior"] == pytest.approx(0.8 + code["type_offset"])
    assert code["mean"] < 0.8 - 0.1  # what it is ranked on, untried
    # Summaries have shown nothing yet: its prior there is the catalog's.
    assert (summary["prior"], summary["type_offset"], summary["mean"]) == (0.8, 0.0, 0.8)


def test_answers_that_pass_more_often_than_the_catalog_said_raise_the_others_priors():
    tried = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for c in tried:
        judge(c, SUMMARY, True, True, True)
    untried = candidate("gemini-flash-lite", quality=0.8, cost=0.001)

    summary = figures_of("gemini", [at(c, SUMMARY) for c in (*tried, untried)])

    assert summary["type_offset"] > 0.05 and summary["prior"] > 0.85


def test_with_no_answer_of_the_type_judged_the_ranking_is_the_catalog_priors_alone():
    models = [
        candidate(name, quality=q, cost=cost)
        for name, q, cost in [("gpt-6-luna", 0.8, 0.001), ("gpt-4o", 0.9, 0.01),
                              ("claude-haiku", 0.8, 0.004), ("deepseek-pro", 0.9, 0.006)]
    ]  # fmt: skip
    judge(models[0], SUMMARY, False, False)  # another type's answers say nothing of code

    for seed in range(20):
        learning = AdaptiveBackend(seed=seed).rank(models)
        catalog_alone = AdaptiveBackend(seed=seed, learns_types=False).rank(models)
        assert learning == catalog_alone
    assert all(r.figures["type_offset"] == 0.0 for r in learning)
    assert "(prior 0.80): mean 0.80" in next(
        r.reason for r in learning if r.model == models[0].model
    )


def test_a_models_own_answers_move_its_posterior_not_its_prior():
    alone = candidate("gpt-6-luna", quality=0.8, cost=0.001)
    judge(alone, CODE, False, False, False)

    figures = figures_of("gpt-6-luna", [alone])

    assert (figures["prior"], figures["type_offset"]) == (0.8, 0.0)
    assert figures["mean"] == pytest.approx(3.2 / 7)  # the catalog's prior, then three failures


def test_one_model_failing_everything_moves_the_type_no_further_than_a_few_failures_would():
    def offset(failures_by_model: list[int]) -> float:
        others = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
        for c, failures in zip(others, failures_by_model, strict=False):
            judge(c, CODE, *[False] * failures)
        untried = candidate("gemini-flash-lite", quality=0.8, cost=0.001)
        return type_offset(untried.profile, CODE.value, [c.profile for c in others])[0]

    # A broken deployment is not a hard task type: a thousand failures of one model say little
    # more of the type than four, and less than four models failing once each.
    assert 1.5 * offset([4]) < offset([1000]) < offset([4]) < 0
    assert offset([1, 1, 1, 1]) < offset([1000])


def test_failures_of_smaller_models_move_a_larger_models_prior_less():
    tried = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for c in tried:
        judge(c, CODE, False, False)
    small = candidate("gemini-flash-lite", quality=0.8, cost=0.001)
    large = candidate("gpt-4o", quality=0.9, cost=0.01)
    pool = [c.profile for c in tried]

    small_offset, _ = type_offset(small.profile, CODE.value, pool)
    large_offset, _ = type_offset(large.profile, CODE.value, pool)

    assert small_offset < large_offset < 0
    assert large_offset > small_offset / 4


def test_what_a_type_has_shown_is_restored_with_the_profiles_of_an_earlier_run():
    tried = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for c in tried:
        judge(c, CODE, True, False, False)
    restored = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for before, after in zip(tried, restored, strict=True):
        after.profile.restore(json.loads(json.dumps(before.profile.to_record())))
    untried = candidate("gemini-flash-lite", quality=0.8, cost=0.001).profile

    learned = type_offset(untried, CODE.value, [c.profile for c in tried])
    assert type_offset(untried, CODE.value, [c.profile for c in restored]) == learned


def routed(policies: list[Policy]) -> tuple[Decision, set[str]]:
    """A router's choice of a code author after every small model's code failed, and the keys of
    the models whose code failed."""
    catalog = Catalog.load(env={})
    profiles = build_default_profiles(catalog)
    failed = {catalog.resolve(name).key for name in SMALL}
    for key in failed:
        for _ in range(3):
            profiles[key].judged(CODE.value, False, by_checks=True)
    usable = tuple(m for m in catalog.models if m.key not in failed)
    decisions: list[Decision] = []
    router = Router(catalog, usable, backend=AdaptiveBackend(seed=3), profiles=profiles,
                    on_decision=decisions.append,
                    planner=ConstraintPlanner(PolicyEngine(policies)))  # fmt: skip
    router.generation_chain(CODE, "core")
    return decisions[0], failed


def test_each_choice_shows_the_offset_learned_for_its_type_in_its_figures_reason_and_audit():
    decision, _ = routed([])

    record = decision.to_record()
    first = record["candidates"][0]
    assert first["figures"]["type_offset"] < 0
    assert first["figures"]["type_answers"] > 0
    assert "as other models' code_generation went" in first["reason"]
    assert "as other models' code_generation went" in decision.explain()


def test_models_no_policy_allows_still_show_how_hard_a_type_is_and_are_never_chosen():
    # The models whose code failed are not usable and blocked: their record still counts.
    blocked = Policy("no-small", allowed_models=["gpt-4o", "gemini-flash-lite"])

    decision, failed = routed([blocked])

    chosen = {r.model.value for r in decision.ranked}
    assert chosen <= {"gpt-4o", "gemini-2.5-flash-lite"}
    assert not failed & {r.model.key for r in decision.ranked}
    lite = next(r for r in decision.ranked if r.model.value == "gemini-2.5-flash-lite")
    assert lite.figures["type_offset"] < -0.1


def test_a_hard_type_lowers_a_models_mean_but_only_its_own_answers_put_it_last():
    tried = [candidate(name, quality=0.8, cost=0.001) for name in SMALL]
    for c in tried:
        judge(c, CODE, *[False] * 6)
    unlucky = candidate("gemini-flash-lite", quality=0.8, cost=0.001)
    judge(unlucky, CODE, True, False, False, False, False)  # one of five: it might be luck

    ranked = AdaptiveBackend(seed=4).rank([*tried, unlucky])

    # Its mean is well under half, but on its own answers it may still be the cheap model that
    # does code well: it goes after every model likelier to pass only once they say so.
    (mine,) = [r for r in ranked if r.model == unlucky.model]
    assert mine.figures["mean"] < 0.35 and mine.figures["upper"] >= MIN_PASS_RATE
    assert "likely under" not in mine.reason
    assert ranked[0] == mine
    assert all("likely under" in r.reason for r in ranked[1:])
