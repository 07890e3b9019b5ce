"""A call's fallbacks are bounded: a job every model fails costs a few models, not the catalog."""

from __future__ import annotations

import pytest
from conftest import run_cli, write_file
from fake_provider import Reply
from test_cli_run import cli_env
from test_engine import as_tasks, code_task, prose_task, run

from orchestrator import Budget, ConfigError, Orchestrator
from orchestrator.routing.router import DEFAULT_MAX_FALLBACKS
from orchestrator.run.tasks import ProjectStatus, TaskStatus


def failing(llm, task_id: str, reply: Reply):
    """The scripted LLMs, except that every request about ``task_id`` gets ``reply``."""

    def responder(request):
        if f"[{task_id}]" in request.prompt_text:
            return reply
        return llm(request)

    return responder


def models_asked(fake, task_id: str) -> list[str]:
    """The models asked about ``task_id``, in the order first asked (retries not repeated)."""
    asked = [r.model for r in fake.requests if f"[{task_id}]" in r.prompt_text]
    return list(dict.fromkeys(asked))


async def test_an_answer_always_cut_off_hands_over_once_and_the_task_says_why(fake, llm):
    # Every answer runs into the output limit, its continuations too.
    fake.responder = failing(llm, "essay", Reply(text="Part of an essay, ", truncated=True))

    state = await run(fake, tasks=as_tasks([prose_task("essay")]))

    essay = state.results["essay"]
    first, second = models_asked(fake, "essay")  # the routing choice and one fallback
    assert essay.status is TaskStatus.FAILED
    reason = (
        f"generation: answers cut off by the output limit by {first} and {second}: no further "
        "model asked (a cut-off answer hands over to one other model only)"
    )
    assert essay.reason == reason and reason in essay.notes
    # The cut-off answers were paid for, and every cent of it is the task's.
    assert essay.cost_usd > 0
    assert essay.cost_usd == pytest.approx(state.budget.spent_usd)


async def test_a_task_whose_models_all_fail_asks_its_choice_and_two_fallbacks(fake, llm):
    fake.responder = failing(llm, "calc", Reply(status=500, text="internal error"))

    state = await run(fake, tasks=as_tasks([code_task("calc")]))

    assert len(models_asked(fake, "calc")) == 1 + DEFAULT_MAX_FALLBACKS == 3
    assert state.status is ProjectStatus.SYSTEM_FAILURE  # an outage: resumable
    assert state.results["calc"].interrupted


@pytest.mark.parametrize("fallbacks", [0, 1, 4])
async def test_the_library_takes_the_number_of_fallbacks(fake, llm, fallbacks):
    fake.responder = failing(llm, "calc", Reply(status=500, text="internal error"))

    await run(fake, tasks=as_tasks([code_task("calc")]), max_fallbacks=fallbacks)

    assert len(models_asked(fake, "calc")) == 1 + fallbacks


def test_negative_fallbacks_are_refused_by_the_library():
    with pytest.raises(ConfigError, match="max_fallbacks must be 0 or more"):
        Orchestrator(budget=Budget(max_usd=1.0), max_fallbacks=-1)


PROJECT_FILE = """\
    project: "[project] Build an add library"
    criteria: add works
    budget: 1
    project_id: bounded
    {extra}
    tasks:
      - id: calc
        type: code_generation
        prompt: "[calc] Write add with tests."
        hard_validators: [python_syntax]
"""


def project_file(tmp_path, extra: str = ""):
    return write_file(tmp_path / "project.yaml", PROJECT_FILE.format(extra=extra))


@pytest.mark.parametrize(
    ("field", "flags", "asked"),
    [
        ("max_fallbacks: 0", [], 1),
        ("max_fallbacks: 0", ["--max-fallbacks", "1"], 2),  # the flag wins over the file
        ("", ["--max-fallbacks", "1"], 2),
    ],
)
def test_the_project_file_and_the_flag_set_the_fallbacks(fake, llm, tmp_path, field, flags, asked):
    fake.responder = failing(llm, "calc", Reply(status=500, text="internal error"))

    result = run_cli(
        "--file", str(project_file(tmp_path, field)), *flags,
        cwd=tmp_path, env=cli_env(fake, tmp_path), retry_waits=False,
    )  # fmt: skip

    assert result.returncode == 6, result.stderr  # SYSTEM_FAILURE: the providers failed
    assert len(models_asked(fake, "calc")) == asked


def test_a_resume_keeps_the_fallbacks_the_run_was_started_with(fake, llm, tmp_path):
    fake.responder = failing(llm, "calc", Reply(status=500, text="internal error"))
    env = cli_env(fake, tmp_path)
    started = run_cli("--file", str(project_file(tmp_path)), "--max-fallbacks", "0",
                      cwd=tmp_path, env=env, retry_waits=False)  # fmt: skip
    assert started.returncode == 6, started.stderr
    fake.clear()

    resumed = run_cli("--resume", "bounded", cwd=tmp_path, env=env, retry_waits=False)

    assert resumed.returncode == 6, resumed.stderr
    assert len(models_asked(fake, "calc")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-fallbacks", "-1"], "--max-fallbacks must be 0 or more"),
        (["--max-fallbacks", "two"], "argument --max-fallbacks: invalid int value: 'two'"),
    ],
)
def test_a_bad_number_of_fallbacks_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli("--file", str(project_file(tmp_path)), *args, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().endswith(message) and len(result.stderr.splitlines()) == 1


def test_a_bad_max_fallbacks_field_is_one_line_and_exit_2(tmp_path):
    result = run_cli("--file", str(project_file(tmp_path, "max_fallbacks: -1")), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().endswith("field 'max_fallbacks': must be at least 0 (got -1)")
    assert len(result.stderr.splitlines()) == 1
