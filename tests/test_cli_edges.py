"""Rough edges a new user meets first: versions, odd ids and numbers, closed pipes, small sums."""

from __future__ import annotations

import asyncio
import builtins
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import TERMINAL_CONTROLS, clean_environment, fake_env, run_cli, write_file

import orchestrator
from orchestrator import Budget, ConfigError, Orchestrator
from orchestrator.money.units import format_usd, usd_to_nanos
from orchestrator.observe.progress import results_table
from orchestrator.run.tasks import ProjectState, ProjectStatus
from orchestrator.store.state import StateManager


def test_version_is_printed_and_importable(tmp_path):
    result = run_cli("--version", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"orchestrator {orchestrator.__version__}"
    assert orchestrator.__version__[0].isdigit()


def test_the_package_is_marked_as_typed():
    assert resources.files("orchestrator").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    "project_id", ["two\nlines", "bell\x1b[31mred", "../escape", "_underscore_first", "x" * 65, ""]
)
def test_an_unsafe_project_id_on_the_command_line_is_refused_like_in_a_file(tmp_path, project_id):
    result = run_cli(
        "-p", "p", "-c", "c", "--project-id", project_id, cwd=tmp_path,
        env={"OPENAI_API_KEY": "test"},
    )  # fmt: skip

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "\x1b" not in result.stderr
    assert "project id" in result.stderr and "not valid" in result.stderr


def test_an_error_line_quoting_escape_codes_shows_them_as_text(tmp_path):
    blocker = write_file(tmp_path / "a file", "not a directory")
    hostile = f"{blocker}/out\x1b]0;pwned\x07\x1b[2J\u202e"

    result = run_cli("-p", "p", "-c", "c", "--output-dir", hostile, cwd=tmp_path)

    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert not TERMINAL_CONTROLS.search(result.stderr)
    assert r"out\x1b]0;pwned\x07\x1b[2J\u202e cannot be written" in result.stderr


async def test_an_unsafe_project_id_is_refused_by_the_python_api_before_anything_runs():
    with pytest.raises(ConfigError, match="not valid"):
        await Orchestrator(use_state=False, use_cache=False).run_project("p", "c", "../up")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+309"])
@pytest.mark.parametrize("field", ["budget", "time", "quality_threshold"])
def test_a_number_that_is_not_finite_in_a_project_file_is_a_one_line_error(tmp_path, field, value):
    project = write_file(tmp_path / "p.yaml", f"project: p\ncriteria: c\n{field}: {value}\n")

    result = run_cli("--file", str(project), cwd=tmp_path, env={"OPENAI_API_KEY": "test"})

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert field in result.stderr


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_a_closed_pipe_ends_the_listing_quietly(tmp_path, unbuffered):
    async def save_projects() -> None:
        async with StateManager() as store:
            for n in range(3):
                await store.projects.create(
                    f"p{n}", description="d", criteria="c", max_usd=1.0, max_time_seconds=60,
                    settings={},
                )  # fmt: skip

    asyncio.run(save_projects())
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head -1`) is already gone
    try:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "--list-projects"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
            # Buffered, the listing meets the closed pipe only when it is flushed at the end.
            env={**clean_environment(), "PYTHONUNBUFFERED": unbuffered}, cwd=tmp_path,
        )  # fmt: skip
    finally:
        os.close(write_end)

    assert "Traceback" not in result.stderr
    assert result.stderr == ""
    assert result.returncode == 0


@pytest.mark.parametrize(
    ("value", "shown"),
    [(8, "$8.00"), (0.28, "$0.28"), (0.004, "$0.004"), (0.00004, "$0.00004"), (0.1, "$0.10"),
     (1234.5, "$1,234.50"), (0, "$0.00")],
)  # fmt: skip
def test_dollars_are_shown_with_enough_digits_to_be_true(value, shown):
    assert format_usd(value) == shown


def test_a_small_budget_is_shown_as_it_is_in_the_results():
    state = ProjectState("p", "d", "c", Budget(max_usd=0.005), status=ProjectStatus.SUCCESS)
    state.budget.charge(usd_to_nanos(0.0042), "generation")

    assert "spent $0.0042 of $0.005" in results_table(state)


def test_v_shows_this_tools_decisions_and_vv_the_libraries_too(fake, llm, tmp_path):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    args = ("-p", "[project] Build an add library", "-c", "add works", "--no-cache")

    once = run_cli(*args, "-v", "--project-id", "once", cwd=tmp_path, env=env)
    twice = run_cli(*args, "-vv", "--project-id", "twice", cwd=tmp_path, env=env)

    assert once.returncode == twice.returncode == 0, once.stderr
    for decision in ("(table: routing table choice 1)", "reserved $", "settled $", "paid $"):
        assert decision in once.stderr, decision
    libraries = ("DEBUG httpx", "DEBUG openai", "DEBUG anthropic", "DEBUG google")
    assert not any(line.startswith(libraries) for line in once.stderr.splitlines())
    assert any(line.startswith(libraries) for line in twice.stderr.splitlines())


def test_every_class_the_readme_and_the_docs_name_is_importable_from_the_package():
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    names = set(re.findall(r"`([A-Z][a-z][A-Za-z]*)(?:\(|`)", text))
    assert {"Orchestrator", "StateManager", "UnknownProjectError"} <= names
    missing = [n for n in sorted(names) if not hasattr(orchestrator, n)]
    assert [n for n in missing if not hasattr(builtins, n)] == []  # ValueError is Python's
