"""Project files as a user writes them: the shipped examples, every field, and every mistake."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import ALIAS_BOMB, DEEP_LIST, run_cli, write_file

from orchestrator.cli.project_file import ProjectFileError, ProjectSpec, load_project_file
from orchestrator.errors import ConfigError
from orchestrator.run.taskgraph import execution_order, parse_tasks
from orchestrator.run.tasks import TaskType

PROJECTS = Path(__file__).parents[1] / "projects"

MINIMAL = """\
project: Build a thing.
criteria: It works.
"""


def write(directory: Path, text: str | bytes, name: str = "project.yaml") -> Path:
    return write_file(directory / name, text)


def load_error(path: Path) -> str:
    with pytest.raises(ProjectFileError) as info:
        load_project_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"project file {path}: ")
    return message


# The shipped examples


@pytest.mark.parametrize("name", ["example_simple", "example_full", "symplectic_engine"])
def test_every_example_project_loads(name):
    spec = load_project_file(PROJECTS / f"{name}.yaml")
    assert spec.description.strip() and spec.criteria.strip()
    assert spec.budget is not None and spec.budget > 0


def test_example_simple_is_minimal():
    raw = yaml.safe_load((PROJECTS / "example_simple.yaml").read_text(encoding="utf-8"))
    assert set(raw) == {"project", "criteria", "budget"}


def test_example_full_sets_every_field():
    raw = yaml.safe_load((PROJECTS / "example_full.yaml").read_text(encoding="utf-8"))
    schema = json.loads(
        resources.files("orchestrator").joinpath("data/project.schema.json").read_text()
    )
    aliases = {"description", "success_criteria"}
    assert set(raw) == set(schema["properties"]) - aliases
    spec = load_project_file(PROJECTS / "example_full.yaml")
    assert all(value is not None for value in vars(spec).values())
    assert spec.output_dir == str((PROJECTS / "../results/rate_limiter").resolve())


def test_example_full_tasks_validate():
    spec = load_project_file(PROJECTS / "example_full.yaml")
    assert spec.tasks is not None and 3 <= len(spec.tasks) <= 4
    assert any(task.dependencies for task in spec.tasks.values())
    assert any(task.hard_validators for task in spec.tasks.values())
    order = execution_order(spec.tasks)
    assert order[0] == "design"
    # What loads round-trips through the task-list schema unchanged.
    again = parse_tasks({"tasks": [task.to_dict() for task in spec.tasks.values()]})
    assert again == spec.tasks


def test_symplectic_engine_leaves_decomposition_to_the_orchestrator():
    spec = load_project_file(PROJECTS / "symplectic_engine.yaml")
    assert spec.tasks is None
    for word in ("Verlet", "leapfrog", "Yoshida", "N-body", "Hamiltonian", "energy"):
        assert word in spec.description
    assert "energy error" in spec.criteria


# Reading fields


def test_minimal_file_leaves_every_limit_unset(tmp_path):
    spec = load_project_file(write(tmp_path, MINIMAL))
    assert spec == ProjectSpec(description="Build a thing.", criteria="It works.")


def test_python_api_names_are_accepted(tmp_path):
    path = write(tmp_path, "description: Build a thing.\nsuccess_criteria: It works.\n")
    spec = load_project_file(path)
    assert (spec.description, spec.criteria) == ("Build a thing.", "It works.")


def test_numbers_are_normalised(tmp_path):
    path = write(
        tmp_path,
        MINIMAL + "budget: 3\ntime: 90.5\nconcurrency: 2\nquality_threshold: 1\n",
    )
    spec = load_project_file(path)
    assert spec.budget == 3.0 and isinstance(spec.budget, float)
    assert spec.time == 90.5
    assert spec.concurrency == 2 and isinstance(spec.concurrency, int)
    assert spec.quality_threshold == 1.0


def test_relative_output_dir_is_relative_to_the_file_not_the_working_directory(tmp_path):
    nested = tmp_path / "specs"
    nested.mkdir()
    path = write(nested, MINIMAL + "output_dir: out/run1\n")
    assert load_project_file(path).output_dir == str(nested / "out" / "run1")
    absolute = tmp_path / "elsewhere"
    path = write(nested, MINIMAL + f"output_dir: {absolute}\n")
    assert load_project_file(path).output_dir == str(absolute)


def test_tasks_in_the_file_are_parsed(tmp_path):
    path = write(
        tmp_path,
        MINIMAL
        + "tasks:\n"
        + "  - {id: plan, type: complex_reasoning, prompt: Plan.}\n"
        + "  - {id: code, type: code_generation, prompt: Code., dependencies: [plan]}\n",
    )
    tasks = load_project_file(path).tasks
    assert tasks is not None and list(tasks) == ["plan", "code"]
    assert tasks["code"].type is TaskType.CODE_GEN


# Mistakes


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.yaml")
    assert "no such file" in message


def test_a_directory_is_not_a_file(tmp_path):
    assert "cannot be read" in load_error(tmp_path)


def test_not_utf8(tmp_path):
    path = write(tmp_path, "project: caf\xe9\ncriteria: ok\n".encode("latin-1"))
    assert "not UTF-8" in load_error(path)


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "project: a\ncriteria: b\nbudget: [1, 2\n")
    message = load_error(path)
    assert "not valid YAML at line" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(MINIMAL + f"tasks: {ALIAS_BOMB}\n", "refused at line 3: more than 100000 "
                     "values once its aliases are expanded", id="alias-bomb"),
        pytest.param(MINIMAL + f"tasks: {DEEP_LIST}\n", "nest", id="nested-50000-deep"),
        pytest.param(MINIMAL + "#" * 1024 * 1024, "refused: larger than 1 MiB", id="too-large"),
    ],
)  # fmt: skip
def test_a_file_too_big_to_read_is_one_line_from_the_command_line_at_once(tmp_path, text, expected):
    path = write(tmp_path, text)

    # A file that never finished loading would time out; an unbounded one raised RecursionError.
    result = run_cli("--file", str(path), cwd=tmp_path, env={"OPENAI_API_KEY": "test"}, timeout=20)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"orchestrator: error: project file {path}: ")
    assert expected in line


def test_a_repeated_key_is_an_error_not_a_silent_override(tmp_path):
    path = write(tmp_path, MINIMAL + "budget: 1\nbudget: 100\n")
    message = load_error(path)
    assert "line 4" in message and "duplicate key 'budget' (first given at line 3)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty; expected a mapping"),
        ("- project: a\n", "expected a mapping with 'project' and 'criteria', got a list"),
        ("just words\n", "expected a mapping with 'project' and 'criteria', got a str"),
    ],
)
def test_not_a_mapping(tmp_path, text, expected):
    assert expected in load_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("criteria: ok\n", "missing field 'project' (or 'description')"),
        ("project: ok\n", "missing field 'criteria' (or 'success_criteria')"),
        ("project: ''\ncriteria: ok\n", "field 'project': must not be empty"),
        ("project:\ncriteria: ok\n", "field 'project': expected text, got null"),
        ("project: a\ndescription: b\ncriteria: ok\n", "field 'project' and field 'description'"),
        (MINIMAL + "budget: lots\n", "field 'budget': expected a number, got text"),
        (MINIMAL + "budget: true\n", "field 'budget': expected a number, got true/false"),
        (MINIMAL + "budget: 0\n", "field 'budget': must be greater than 0 (got 0)"),
        (MINIMAL + "budget: -2.5\n", "field 'budget': must be greater than 0 (got -2.5)"),
        (MINIMAL + "time: 0\n", "field 'time': must be greater than 0 (got 0)"),
        (MINIMAL + "time: -60\n", "field 'time': must be greater than 0"),
        (MINIMAL + "quality_threshold: 1.5\n", "field 'quality_threshold': must be at most 1"),
        (MINIMAL + "quality_threshold: -0.1\n", "field 'quality_threshold': must be at least 0"),
        (MINIMAL + "concurrency: 0\n", "field 'concurrency': must be at least 1 (got 0)"),
        (MINIMAL + "concurrency: 1.5\n", "field 'concurrency': expected a whole number"),
        (MINIMAL + "project_id: 2026-01-01\n", "field 'project_id': expected text, got a date"),
        (MINIMAL + "project_id: my run\n", "field 'project_id': 'my run' is not a valid id"),
        (MINIMAL + "output_dir: ''\n", "field 'output_dir': must not be empty"),
        (MINIMAL + "budjet: 5\n", "unknown field 'budjet' (did you mean 'budget'?)"),
        (MINIMAL + "tasks: {plan: x}\n", "field 'tasks': expected a list, got a mapping"),
    ],
)
def test_field_errors_name_the_file_and_the_field(tmp_path, text, expected):
    assert expected in load_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ("[]", "field 'tasks': must not be empty"),
        ("[{id: a, type: code_generation}]", "tasks[0] (a): missing field 'prompt'"),
        ("[{id: a, type: coding, prompt: x}]", "tasks[0] (a) field 'type': 'coding' is not one"),
        (
            "[{id: a, type: code_generation, prompt: x, dependencies: [b]}]",
            "task 'a' depends on unknown task 'b'",
        ),
        (
            "[{id: a, type: code_generation, prompt: x, hard_validators: [mypy]}]",
            "task 'a' has unknown validator 'mypy'",
        ),
        (
            "[{id: a, type: code_generation, prompt: x, dependencies: [b]},"
            " {id: b, type: code_generation, prompt: y, dependencies: [a]}]",
            "task graph has a cycle: a -> b -> a",
        ),
    ],
)
def test_task_errors_name_the_file_and_the_task(tmp_path, tasks, expected):
    path = write(tmp_path, MINIMAL + f"tasks: {tasks}\n")
    assert expected in load_error(path)


def test_project_file_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        load_project_file(tmp_path / "missing.yaml")
