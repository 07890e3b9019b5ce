"""Review that is what it says: one verdict is not two, and a model grading itself is named."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import fake_env
from fake_provider import Reply
from scripted_llm import TaskScript
from test_custom_endpoint import MODEL_ID, local_catalog
from test_integration import needs_sandbox
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.run.tasks import ProjectStatus, Task, TaskStatus, TaskType

TASKS = {
    "core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                 ["python_syntax"]),
}  # fmt: skip


def only_the_first_verdict_usable(llm):
    """Every grading request after the first gets an answer that is not a verdict."""
    lock, graded = threading.Lock(), []

    def responder(request):
        if "You grade an answer" in request.prompt_text:
            with lock:
                graded.append(request)
                if len(graded) > 1:
                    return Reply(text="I think it is quite good overall.")
        return llm(request)

    return responder


async def run(fake, **options):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False, **options)
        return await orch.run_project("[project] add", "add works", tasks=TASKS)


async def test_one_usable_verdict_of_two_does_not_complete_a_task(fake, llm):
    llm.scripts["core"] = TaskScript(scores=[0.95])
    fake.responder = only_the_first_verdict_usable(llm)

    state = await run(fake)

    core = state.results["core"]
    assert core.score >= 0.95 and core.status is TaskStatus.DEGRADED
    assert "only one of the two evaluations" in core.reason
    assert "--allow-single-verdict" in core.reason


async def test_a_user_may_allow_one_verdict_to_complete_it(fake, llm):
    llm.scripts["core"] = TaskScript(scores=[0.95])
    fake.responder = only_the_first_verdict_usable(llm)

    state = await run(fake, allow_single_verdict=True)

    assert state.results["core"].status is TaskStatus.COMPLETED


async def test_with_one_model_the_run_says_it_grades_itself(fake, llm, tmp_path):
    events = []
    path = local_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False)
        orch.display(events.append)
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)

    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert len(notices) == 1 and f"one model only ({MODEL_ID})" in notices[0]
    core = state.results["core"]
    assert core.reviewer_model == core.model_used
    assert "evaluated by its own author: no other model was available" in core.notes
    assert "no critique: no model other than its author was available" in core.notes
    assert llm.count("critique") == 0


def two_model_catalog(directory, base_url):
    """The local endpoint with a second model beside the first: two models, three roles."""
    path = local_catalog(directory, base_url)
    second = """
  - id: "qwen2.5:7b"
    provider: local
    alias: qwen-local
    price: {input: 0, output: 0}
    context_window: 131072
    max_output_tokens: 4096
"""
    path.write_text(path.read_text() + second)
    return path


async def test_with_two_models_for_three_roles_the_run_says_the_critic_also_grades(
    fake, llm, tmp_path
):
    events = []
    path = two_model_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False)
        orch.display(events.append)
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)

    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert len(notices) == 1
    assert "two models only (" in notices[0] and "for three roles" in notices[0]
    assert MODEL_ID in notices[0] and "qwen2.5:7b" in notices[0]
    assert "the model that critiques an answer also grades it" in notices[0]
    core = state.results["core"]
    # The other model reviewed it: the critic, and the evaluator too, which the notes say.
    assert core.reviewer_model is not None and core.reviewer_model != core.model_used
    critics = {model for role, _, model in llm.roles if role == "critique"}
    graders = {model for role, _, model in llm.roles if role == "grade"}
    assert critics == graders == {core.reviewer_model.id}
    assert (
        f"critiqued and evaluated by the same model ({core.reviewer_model.value}): no third "
        "model was available, so its grade is not independent of its critique"
    ) in core.notes
    assert not any("evaluated by its own author" in note for note in core.notes)


async def test_with_three_models_or_more_no_role_is_said_to_be_shared(fake, llm):
    events = []
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        orch.display(events.append)
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)

    assert not [e for e in events if e.kind == "notice"]
    assert not any("critiqued and evaluated by the same model" in n
                   for n in state.results["core"].notes)  # fmt: skip


async def test_a_tasks_output_schema_is_sent_with_its_generation(fake, llm):
    schema = {
        "type": "object",
        "properties": {"functions": {"type": "array", "items": {"type": "string"}},
                       "version": {"type": "string"}},
        "required": ["functions", "version"],
        "additionalProperties": False,
    }  # fmt: skip
    tasks = {
        "extract": Task("extract", TaskType.DATA_EXTRACT, "[extract] List the functions.", [],
                        ["json_schema"], output_schema=schema),
    }  # fmt: skip
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False)
        state = await orch.run_project("[project] add", "add works", tasks=tasks)

    assert state.results["extract"].status is TaskStatus.COMPLETED
    generation = next(r for r in fake.requests if "[extract]" in r.prompt_text)
    assert generation.schema is not None
    assert set(generation.schema["properties"]) == {"functions", "version"}


def verdict_requests(fake):
    return [r for r in fake.requests if "You grade an answer" in r.prompt_text]


def sent_twice(requests) -> bool:
    """Whether two of ``requests`` were the same bytes to the same route."""
    sent = [(r.path, json.dumps(r.body, sort_keys=True)) for r in requests]
    return len(set(sent)) < len(sent)


async def test_the_two_verdicts_come_from_two_models_of_two_providers(fake, llm):
    llm.scripts["core"] = TaskScript(scores=[0.95])

    state = await run(fake)

    assert state.results["core"].status is TaskStatus.COMPLETED
    first, second = verdict_requests(fake)
    assert first.model != second.model and first.api != second.api
    assert not sent_twice([first, second])


async def run_on_two_models(fake, tmp_path, threshold=0.85):
    """The author and one other model, which is then the only evaluator."""
    path = two_model_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False,
                            quality_threshold=threshold)  # fmt: skip
        return await orch.run_project("[project] add", "add works", tasks=TASKS)


@pytest.mark.parametrize("score", [0.99, 0.6])
async def test_one_evaluator_far_from_the_threshold_gives_one_verdict(fake, llm, tmp_path, score):
    llm.scripts["core"] = TaskScript(scores=[score])

    state = await run_on_two_models(fake, tmp_path)

    core = state.results["core"]
    assert len(verdict_requests(fake)) == core.iterations  # one verdict paid per iteration
    completed = score >= 0.85
    assert (core.status is TaskStatus.COMPLETED) is completed


@pytest.mark.parametrize("score", [0.9, 0.8])
async def test_one_evaluator_close_to_the_threshold_reads_the_answer_twice(
    fake, llm, tmp_path, score
):
    llm.scripts["core"] = TaskScript(scores=[score])

    state = await run_on_two_models(fake, tmp_path)

    core = state.results["core"]
    verdicts = verdict_requests(fake)
    assert len(verdicts) == 2 * core.iterations
    assert len({r.model for r in verdicts}) == 1  # the only evaluator
    assert not sent_twice(verdicts)  # each reading is its own request, paid once each
    assert (core.status is TaskStatus.COMPLETED) is (score >= 0.85)


async def one_model_run(fake, tmp_path, tasks=TASKS, **options):
    path = local_catalog(tmp_path, fake.base_url)
    async with UnifiedClient(catalog_path=path, env={}, retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=1.0), client=client, use_cache=False, **options)
        return await orch.run_project("[project] add", "add works", tasks=tasks)


async def test_a_run_its_one_model_graded_alone_is_not_a_success(fake, llm, tmp_path):
    llm.scripts["core"] = TaskScript(scores=[1.0])

    state = await one_model_run(fake, tmp_path, integration=False)  # no test runs

    assert state.results["core"].status is TaskStatus.COMPLETED
    assert state.results["core"].self_graded
    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    assert state.reason.startswith(
        f"every grade came from the model that wrote the answer ({MODEL_ID})"
    )
    assert "no test ran and passed" in state.reason


@needs_sandbox
async def test_a_test_that_ran_and_passed_is_evidence_enough_for_success(fake, llm, tmp_path):
    # The task's own pytest validator; the tree's integration check counts the same way.
    tested = {"core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                           ["python_syntax", "pytest"])}  # fmt: skip

    state = await one_model_run(fake, tmp_path, tested, integration=False)

    assert state.results["core"].self_graded
    assert state.status is ProjectStatus.SUCCESS


async def test_grades_from_another_model_are_independent_evidence(fake, llm):
    state = await run(fake)

    assert not state.results["core"].self_graded
    assert state.status is ProjectStatus.SUCCESS
