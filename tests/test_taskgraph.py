"""The task graph as the engine relies on it: parsing, checking, ordering and sizing task lists."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from orchestrator.code.validators import KNOWN_VALIDATORS
from orchestrator.llm.providers.openai_compat import is_strict_compatible
from orchestrator.run.taskgraph import (
    TaskGraphError,
    decomposition_schema,
    default_plan,
    execution_order,
    parse_tasks,
    task_schema,
)
from orchestrator.run.tasks import Task, TaskType
from orchestrator.text.structured import VENDOR_UNSUPPORTED, vendor_schema


def entry(tid: str, *deps: str, **fields: Any) -> dict[str, Any]:
    """One task as the decomposition model or a project file writes it."""
    return {
        "id": tid,
        "type": fields.pop("type", "code_generation"),
        "prompt": fields.pop("prompt", f"Do {tid}."),
        "dependencies": list(deps),
        **fields,
    }


def graph(*specs: tuple[str, ...]) -> dict[str, Task]:
    """Tasks built directly, bypassing parse_tasks, so graph functions see any shape."""
    return {
        tid: Task(id=tid, type=TaskType.CODE_GEN, prompt=tid, dependencies=list(deps))
        for tid, *deps in specs
    }


def graph_error(data: Any, **kwargs: Any) -> str:
    with pytest.raises(TaskGraphError) as info:
        parse_tasks(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


DIAMOND = graph(("a",), ("b", "a"), ("c", "a"), ("d", "b", "c"))


# Parsing


def test_a_valid_list_parses_into_tasks_in_the_given_order():
    tasks = parse_tasks(
        {
            "tasks": [
                entry("design", type="complex_reasoning", acceptance="Names every endpoint."),
                entry("build", "design", hard_validators=["python_syntax", "ruff"]),
                entry(
                    "spec",
                    "build",
                    type="data_extraction",
                    hard_validators=["json_schema"],
                    output_schema={"type": "object", "required": ["name"]},
                ),
            ]
        }
    )
    assert list(tasks) == ["design", "build", "spec"]
    design, build, spec = tasks.values()
    assert design.type is TaskType.REASONING
    assert design.acceptance == "Names every endpoint."
    assert design.dependencies == [] and design.hard_validators == []
    assert build.dependencies == ["design"]
    assert build.hard_validators == ["python_syntax", "ruff"]
    assert build.acceptance is None and build.output_schema is None
    assert spec.output_schema == {"type": "object", "required": ["name"]}


def test_optional_fields_may_be_left_out_and_a_bare_list_is_accepted():
    tasks = parse_tasks([{"id": "only", "type": "summarization", "prompt": "Summarise."}])
    only = tasks["only"]
    assert (only.dependencies, only.hard_validators) == ([], [])
    assert only.to_dict() == {
        "id": "only",
        "type": "summarization",
        "prompt": "Summarise.",
        "dependencies": [],
        "hard_validators": [],
    }


def test_repeated_dependencies_and_validators_are_kept_once():
    tasks = parse_tasks(
        [entry("a"), entry("b", "a", "a", hard_validators=["ruff", "python_syntax", "ruff"])]
    )
    assert tasks["b"].dependencies == ["a"]
    assert tasks["b"].hard_validators == ["ruff", "python_syntax"]


def test_unknown_dependency_names_the_task_and_the_missing_id():
    message = graph_error([entry("a"), entry("b", "a", "desing")])
    assert message.startswith("task list: ")
    assert "'b'" in message and "'desing'" in message


def test_duplicate_id_names_the_id_and_both_positions():
    message = graph_error([entry("a"), entry("b"), entry("a")])
    assert "duplicate" in message and "tasks[2] (a)" in message and "tasks[0]" in message


def test_self_dependency_is_rejected():
    message = graph_error([entry("a", "a")])
    assert "'a' depends on itself" in message


def test_a_cycle_is_rejected_when_parsing_and_named_with_the_origin():
    message = graph_error(
        [entry("a", "c"), entry("b", "a"), entry("c", "b")], origin="decomposition answer"
    )
    assert message == "decomposition answer: task graph has a cycle: a -> b -> c -> a"


def test_unknown_validator_names_the_task_the_validator_and_the_known_ones():
    message = graph_error([entry("a", hard_validators=["python_syntax", "mypy"])])
    assert "'a'" in message and "'mypy'" in message
    for known in KNOWN_VALIDATORS:
        assert known in message


def test_unknown_type_names_the_task_and_the_field():
    message = graph_error([entry("a"), entry("b", type="coding")])
    assert "tasks[1] (b) field 'type'" in message
    assert "'coding'" in message and "code_generation" in message


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ({"id": "a", "type": "code_generation"}, "tasks[0] (a): missing field 'prompt'"),
        (entry("a", prompt="   "), "tasks[0] (a) field 'prompt': must not be empty"),
        (entry("a", prompt=42), "tasks[0] (a) field 'prompt': expected text, got a whole number"),
        ({"type": "code_generation", "prompt": "x"}, "tasks[0]: missing field 'id'"),
        (entry("a b"), "tasks[0] (a b) field 'id': 'a b' is not a valid id"),
        (entry("a", promt="typo"), "tasks[0] (a): unknown field 'promt' (did you mean 'prompt'?)"),
        (entry("a", dependencies="b"), "tasks[0] (a) field 'dependencies': expected a list"),
        (entry("a", hard_validators=[1]), "tasks[0] (a) field 'hard_validators[0]': expected text"),
        (entry("a", output_schema=[]), "tasks[0] (a) field 'output_schema': expected a mapping"),
        (entry("a", output_schema={"type": "nope"}), "field 'output_schema': not a valid JSON"),
    ],
)
def test_malformed_tasks_name_the_task_and_the_field(task, expected):
    assert expected in graph_error([task])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"tasks": []}, "field 'tasks': must not be empty"),
        ({}, "top level: missing field 'tasks'"),
        ({"tasks": [entry("a")], "plan": "x"}, "top level: unknown field 'plan'"),
        ("not json", "top level: expected a mapping, got text"),
    ],
)
def test_malformed_lists_say_what_is_wrong(data, expected):
    assert expected in graph_error(data)


def test_task_count_limits():
    def chain(n: int) -> list[dict[str, Any]]:
        return [entry(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in range(n)]

    assert len(parse_tasks(chain(5), min_tasks=5, max_tasks=15)) == 5
    assert len(parse_tasks(chain(15), min_tasks=5, max_tasks=15)) == 15
    assert "4 tasks, expected between 5 and 15" in graph_error(chain(4), min_tasks=5, max_tasks=15)
    assert "16 tasks, expected between 5 and 15" in graph_error(
        chain(16), min_tasks=5, max_tasks=15
    )
    assert "1 tasks, expected at least 2" in graph_error(chain(1), min_tasks=2)


# Schemas


def test_task_schema_is_a_valid_schema_and_a_private_copy():
    schema = task_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    schema["properties"].clear()
    assert task_schema()["properties"]["tasks"]["minItems"] == 1


def _objects(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for item in node:
            found += _objects(item)
    return found


def _keywords(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = set(node) - {"properties"}
        inner = [_keywords(v) for k, v in node.items() if k != "properties"]
        inner += [_keywords(v) for v in node.get("properties", {}).values()]
        return own.union(*inner)
    if isinstance(node, list):
        return set().union(*(_keywords(item) for item in node))
    return set()


def test_decomposition_schema_is_strict_compatible():
    schema = decomposition_schema(min_tasks=5, max_tasks=15)
    jsonschema.Draft202012Validator.check_schema(schema)
    objects = _objects(schema)
    assert len(objects) == 2  # the root and a task
    for node in objects:
        assert node["additionalProperties"] is False
        assert sorted(node["required"]) == sorted(node["properties"])
    assert is_strict_compatible(schema)
    task = schema["properties"]["tasks"]["items"]
    assert "output_schema" not in task["properties"]
    assert task["properties"]["acceptance"]["type"] == ["string", "null"]
    assert task["properties"]["dependencies"]["type"] == "array"
    assert sorted(task["properties"]["hard_validators"]["items"]["enum"]) == sorted(
        KNOWN_VALIDATORS
    )
    assert (
        schema["properties"]["tasks"]["minItems"],
        schema["properties"]["tasks"]["maxItems"],
    ) == (
        5,
        15,
    )
    assert not _keywords(schema) & {"default", "$schema", "title"}
    # Bounds stay, for a local server's constrained decoding; cloud vendors get the schema
    # without the keywords their strict modes reject.
    assert task["properties"]["prompt"]["maxLength"] and task["properties"]["prompt"]["pattern"]
    assert is_strict_compatible(vendor_schema(schema))
    assert not _keywords(vendor_schema(schema)) & VENDOR_UNSUPPORTED


def test_an_answer_valid_under_the_decomposition_schema_parses():
    answer = {
        "tasks": [
            {
                "id": "plan",
                "type": "complex_reasoning",
                "prompt": "Plan it.",
                "dependencies": [],
                "hard_validators": [],
                "acceptance": None,
            },
            {
                "id": "code",
                "type": "code_generation",
                "prompt": "Write it.",
                "dependencies": ["plan"],
                "hard_validators": ["python_syntax"],
                "acceptance": "Imports cleanly.",
            },
        ]
    }
    jsonschema.validate(answer, decomposition_schema())
    tasks = parse_tasks(answer, origin="decomposition answer")
    assert tasks["plan"].acceptance is None
    assert tasks["code"].acceptance == "Imports cleanly."
    assert execution_order(tasks) == ["plan", "code"]


def test_the_decomposition_schema_keeps_models_from_inventing_fields():
    answer = {"tasks": [{**entry("a", hard_validators=[], acceptance=None), "output_schema": {}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(answer, decomposition_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"tasks": [entry("a", hard_validators=["mypy"], acceptance=None)]},
            decomposition_schema(),
        )


# Ordering


def test_execution_order_respects_dependencies():
    tasks = graph(("tests", "impl"), ("impl", "design"), ("docs", "impl"), ("design",))
    order = execution_order(tasks)
    assert sorted(order) == sorted(tasks)
    for tid, task in tasks.items():
        for dep in task.dependencies:
            assert order.index(dep) < order.index(tid)
    assert order == ["design", "impl", "tests", "docs"]


def test_ready_tasks_keep_their_original_order():
    assert execution_order(graph(("c",), ("a",), ("b",))) == ["c", "a", "b"]
    tasks = graph(("z",), ("y", "z"), ("x",), ("w", "x"))
    assert execution_order(tasks) == ["z", "y", "x", "w"]
    assert all(execution_order(tasks) == ["z", "y", "x", "w"] for _ in range(5))


def test_diamond():
    assert execution_order(DIAMOND) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("specs", "cycle"),
    [
        ((("a", "b"), ("b", "a")), "a -> b -> a"),
        ((("a", "c"), ("b", "a"), ("c", "b")), "a -> b -> c -> a"),
        ((("a", "a"),), "a -> a"),
        # Tasks hanging off the cycle are not part of it.
        (
            (("root",), ("x", "root", "z"), ("y", "x"), ("z", "y"), ("leaf", "z")),
            "x -> y -> z -> x",
        ),
    ],
)
def test_a_cycle_is_named(specs, cycle):
    with pytest.raises(TaskGraphError) as info:
        execution_order(graph(*specs))
    assert str(info.value) == f"task graph has a cycle: {cycle}"


def test_graph_functions_reject_unknown_dependencies():
    with pytest.raises(TaskGraphError, match="'b' depends on unknown task 'q'"):
        execution_order(graph(("a",), ("b", "q")))


def test_the_plan_run_without_a_planner_is_the_code_and_its_tests_in_named_files():
    plan = default_plan("Write is_palindrome(s)", "pytest passes")

    assert execution_order(plan) == ["code", "tests"]
    assert "# file: solution.py" in plan["code"].prompt
    assert "# file: test_solution.py" in plan["tests"].prompt
    assert plan["tests"].hard_validators == ["python_syntax", "pytest"]
    assert all(task.acceptance == "pytest passes" for task in plan.values())


def test_the_plan_run_without_a_planner_for_prose_is_one_task():
    plan = default_plan("A poem about autumn leaves", "four stanzas, rhymed")

    assert [(t.id, t.type) for t in plan.values()] == [("deliverable", TaskType.WRITING)]
    assert "four stanzas" in plan["deliverable"].prompt


def test_the_plan_run_without_a_planner_keeps_a_one_task_limit():
    assert list(default_plan("Write add(a, b) in Python", "works", max_tasks=1)) == ["deliverable"]
