"""The task graph: parsing a task list, checking it, and ordering it for execution.

A task list comes from two places: the decomposition model's answer and a project file's
``tasks:``. Both are checked against ``orchestrator/data/tasks.schema.json`` and then against the
rules a schema cannot express (unique ids, known dependencies and validators, no cycles).
"""

from __future__ import annotations

import copy
import heapq
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.code.validators import KNOWN_VALIDATORS
from orchestrator.errors import ConfigError
from orchestrator.run.tasks import Task, TaskType
from orchestrator.text.schemas import best_match, schema_problem, shipped, shipped_schema
from orchestrator.text.visible import shorten

if TYPE_CHECKING:
    from jsonschema import ValidationError

TASKS_SCHEMA = "tasks.schema.json"

_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Some text that is not all spaces; anchored, as grammar-constrained decoders need.
NOT_BLANK = r"^[\s\S]*\S[\s\S]*$"

# Keywords meaningless to a decoder. Length and count bounds stay: they keep a small model's
# plan bounded on a local server, and cloud vendors get the schema without them
# (``structured.vendor_schema``).
_STRICT_UNSUPPORTED = frozenset({"$schema", "$id", "title", "default", "examples", "uniqueItems"})
# Bounds of a planned task, generous for real plans.
PROMPT_MAX_CHARS = 4000
ACCEPTANCE_MAX_CHARS = 1000
DEPENDENCIES_MAX = 20
PLANNED_TASKS_MAX = 40
PROBLEM_LIMIT = 120  # characters of a problem quoted in an error line


class TaskGraphError(ConfigError):
    """A task list that cannot be run: malformed, inconsistent, or cyclic."""


def task_schema() -> dict[str, Any]:
    """The shipped JSON Schema for a task list (a copy: callers may change it freely)."""
    return copy.deepcopy(shipped_schema(TASKS_SCHEMA))


def decomposition_schema(*, min_tasks: int = 1, max_tasks: int | None = None) -> dict[str, Any]:
    """The task-list schema in the form OpenAI's strict structured output accepts.

    Every object is closed and lists all its properties as required. A property with a default
    (``dependencies``, ``hard_validators``) stays a plain array the model must fill in; one
    without (``acceptance``) becomes nullable. ``output_schema`` is left out: a schema the model
    invents would only check the model against itself. Validator names are an enum so
    constrained decoding cannot produce an unknown one. ``parse_tasks`` accepts the result.
    """
    schema = task_schema()
    task = schema["properties"]["tasks"]["items"]
    fields = task["properties"]
    del fields["output_schema"]
    fields["hard_validators"]["items"]["enum"] = sorted(KNOWN_VALIDATORS)
    fields["hard_validators"]["maxItems"] = len(KNOWN_VALIDATORS)
    fields["prompt"]["maxLength"] = PROMPT_MAX_CHARS
    fields["acceptance"]["maxLength"] = ACCEPTANCE_MAX_CHARS
    fields["dependencies"]["maxItems"] = DEPENDENCIES_MAX
    tasks = schema["properties"]["tasks"]
    tasks["minItems"] = min_tasks
    tasks["maxItems"] = max_tasks if max_tasks is not None else PLANNED_TASKS_MAX
    strict: dict[str, Any] = _strict(schema)  # an object, as the schema it is made from
    return strict


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {k: _strict(v) for k, v in node.items() if k not in _STRICT_UNSUPPORTED}
    if "properties" in node or node.get("type") == "object":
        properties = result.setdefault("properties", {})
        required = set(node.get("required", []))
        for name, prop in properties.items():
            if name not in required and "default" not in node["properties"][name]:
                properties[name] = _nullable(prop)
        result["required"] = list(properties)
        result["additionalProperties"] = False
    return result


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    kind = prop.get("type")
    if isinstance(kind, str):
        return {**prop, "type": [kind, "null"]}
    if isinstance(kind, list):
        return prop if "null" in kind else {**prop, "type": [*kind, "null"]}
    return {"anyOf": [prop, {"type": "null"}]}


def parse_tasks(
    data: Any,
    *,
    origin: str = "task list",
    min_tasks: int = 1,
    max_tasks: int | None = None,
) -> dict[str, Task]:
    """The tasks in ``data`` (``{"tasks": [...]}``, or the bare list), keyed by id, in given order.

    Raises ``TaskGraphError`` with a one-line message starting with ``origin`` when the list does
    not match the schema, repeats an id, names an unknown dependency or validator, depends on
    itself, has a cycle, or has a task count outside ``[min_tasks, max_tasks]``. ``null`` for an
    optional field means the field is absent.
    """
    document = {"tasks": data} if isinstance(data, list) else data
    error = best_match(shipped(TASKS_SCHEMA).iter_errors(document))
    if error is not None:
        raise TaskGraphError(f"{origin}: {describe_schema_error(document, error)}")
    entries: list[dict[str, Any]] = document["tasks"]
    _check_output_schemas(entries, origin)
    _check_dependencies(entries, _unique_ids(entries, origin), origin)
    _check_validators(entries, origin)
    count = len(entries)
    if count < min_tasks or (max_tasks is not None and count > max_tasks):
        raise TaskGraphError(f"{origin}: {count} tasks, expected {_range(min_tasks, max_tasks)}")

    tasks = {entry["id"]: _task(entry) for entry in entries}
    try:
        execution_order(tasks)
    except TaskGraphError as exc:
        raise TaskGraphError(f"{origin}: {exc}") from None
    return tasks


def _check_output_schemas(entries: list[dict[str, Any]], origin: str) -> None:
    """Each task's ``output_schema``, where it has one, is a valid JSON Schema."""
    for index, entry in enumerate(entries):
        schema = entry.get("output_schema")
        if schema is not None:
            problem = schema_problem(schema)
            if problem is not None:
                raise TaskGraphError(
                    f"{origin}: {_task_label(entries, index)} field 'output_schema': "
                    f"not a valid JSON Schema ({shorten(problem, PROBLEM_LIMIT)})"
                )


def _unique_ids(entries: list[dict[str, Any]], origin: str) -> dict[str, int]:
    """Each task's index by its id, which no other task has."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        tid = entry["id"]
        if tid in seen:
            raise TaskGraphError(
                f"{origin}: tasks[{index}] ({tid}): duplicate task id, also used by "
                f"tasks[{seen[tid]}]"
            )
        seen[tid] = index
    return seen


def _check_dependencies(entries: list[dict[str, Any]], ids: Mapping[str, int], origin: str) -> None:
    """Every dependency names another task of the list."""
    for entry in entries:
        tid = entry["id"]
        for dep in entry.get("dependencies") or []:
            if dep == tid:
                raise TaskGraphError(f"{origin}: task {tid!r} depends on itself")
            if dep not in ids:
                hint = _did_you_mean(dep, ids)
                raise TaskGraphError(
                    f"{origin}: task {tid!r} depends on unknown task {dep!r}{hint}"
                )


def _check_validators(entries: list[dict[str, Any]], origin: str) -> None:
    """Every hard validator named is one the package knows."""
    known = ", ".join(sorted(KNOWN_VALIDATORS))
    for entry in entries:
        for name in entry.get("hard_validators") or []:
            if name not in KNOWN_VALIDATORS:
                raise TaskGraphError(
                    f"{origin}: task {entry['id']!r} has unknown validator {name!r} "
                    f"(known: {known})"
                )


# Words that say a project asks for code (and so for code and its tests).
_CODE_WORDS = re.compile(
    r"\b(?:python|code|function|functions|class|module|library|script|pytest|tests?|api|cli|"
    r"implement\w*|def)\b|\w+_\w+\(|\w+\(\)",
    re.IGNORECASE,
)
DEFAULT_MODULE = "solution"


def default_plan(description: str, criteria: str, max_tasks: int | None = None) -> dict[str, Task]:
    """A plan that can run without a planner: for a project asking for code, the code in one
    named module and its pytest tests in another (two tasks); for anything else, the whole
    deliverable as one task. Used when every planner's answer was unusable."""
    asked = f"{description}\n\nAcceptance criteria: {criteria}"
    if not _CODE_WORDS.search(f"{description} {criteria}") or max_tasks == 1:
        return {"deliverable": Task("deliverable", TaskType.WRITING, asked, [], [],
                                    acceptance=criteria)}  # fmt: skip
    module = DEFAULT_MODULE
    code = Task(
        "code", TaskType.CODE_GEN,
        f"{asked}\n\nWrite the Python code this asks for, all of it in the module "
        f"{module}.py: name it with the line '# file: {module}.py'.",
        [], ["python_syntax"], acceptance=criteria,
    )  # fmt: skip
    tests = Task(
        "tests", TaskType.CODE_GEN,
        f"{asked}\n\nWrite pytest tests for the module {module}.py (import what they test "
        f"from {module}), checking the acceptance criteria, in the file test_{module}.py: name "
        f"it with the line '# file: test_{module}.py'.",
        ["code"], ["python_syntax", "pytest"], acceptance=criteria,
    )  # fmt: skip
    return {"code": code, "tests": tests}


def _task(entry: Mapping[str, Any]) -> Task:
    return Task(
        id=entry["id"],
        type=TaskType(entry["type"]),
        prompt=entry["prompt"],
        # A repeated name adds nothing and would run a validator twice.
        dependencies=list(dict.fromkeys(entry.get("dependencies") or [])),
        hard_validators=list(dict.fromkeys(entry.get("hard_validators") or [])),
        acceptance=entry.get("acceptance") or None,
        output_schema=entry.get("output_schema"),
    )


def _range(low: int, high: int | None) -> str:
    if high is None:
        return f"at least {low}"
    if low == high:
        return f"exactly {low}"
    return f"between {low} and {high}"


def _did_you_mean(name: str, choices: Sequence[str] | Mapping[str, Any]) -> str:
    import difflib  # for a mistake only

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def execution_order(tasks: Mapping[str, Task]) -> list[str]:
    """Task ids in an order where every task follows its dependencies (Kahn's algorithm).

    Of the tasks ready at any point, the one given first goes first, so the order is
    deterministic and stays close to the order the tasks were written in. A cycle raises
    ``TaskGraphError`` naming it; arrows point from a task to one that depends on it.
    """
    ids = list(tasks)
    position = {tid: i for i, tid in enumerate(ids)}
    deps = _dependencies(tasks)
    dependents: dict[str, list[str]] = {tid: [] for tid in ids}
    for tid in ids:
        for dep in deps[tid]:
            dependents[dep].append(tid)
    waiting = {tid: len(deps[tid]) for tid in ids}
    ready = [position[tid] for tid in ids if waiting[tid] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        tid = ids[heapq.heappop(ready)]
        order.append(tid)
        for child in dependents[tid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    if len(order) < len(ids):
        stuck = {tid for tid in ids if waiting[tid] > 0}
        cycle = _find_cycle(ids, deps, stuck, position)
        raise TaskGraphError(f"task graph has a cycle: {' -> '.join([*cycle, cycle[0]])}")
    return order


def _dependencies(tasks: Mapping[str, Task]) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for tid, task in tasks.items():
        deps[tid] = list(dict.fromkeys(task.dependencies))
        for dep in deps[tid]:
            if dep not in tasks:
                raise TaskGraphError(
                    f"task {tid!r} depends on unknown task {dep!r}{_did_you_mean(dep, tasks)}"
                )
    return deps


def _find_cycle(
    ids: list[str], deps: dict[str, list[str]], stuck: set[str], position: dict[str, int]
) -> list[str]:
    # Every task Kahn could not emit waits on another such task, so following waits from any of
    # them must come back to a task already visited: that loop is a cycle.
    start = next(tid for tid in ids if tid in stuck)
    visited: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in visited:
        visited[node] = len(path)
        path.append(node)
        node = next(dep for dep in deps[node] if dep in stuck)
    loop = path[visited[node] :][::-1]  # from "depends on" to execution direction
    first = min(range(len(loop)), key=lambda i: position[loop[i]])
    return loop[first:] + loop[:first]


def _task_label(entries: Any, index: int) -> str:
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    tid = entry.get("id") if isinstance(entry, dict) else None
    return f"tasks[{index}] ({tid})" if isinstance(tid, str) and tid else f"tasks[{index}]"


def _field_path(parts: Sequence[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_schema_error(document: Any, error: ValidationError) -> str:
    """Where ``error`` is (a task by index and id, then the field) and what is wrong, one line."""
    path = list(error.absolute_path)
    if len(path) >= 2 and path[0] == "tasks" and isinstance(path[1], int):
        where = _task_label(document.get("tasks"), path[1])
        rest = path[2:]
        location = f"{where} field '{_field_path(rest)}'" if rest else where
    elif path:
        location = f"field '{_field_path(path)}'"
    else:
        location = "top level"
    return f"{location}: {explain_schema_error(error)}"


_TYPE_NAMES = {
    "string": "text",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (date, datetime)):
        return "a date"
    return type(value).__name__


def _short(value: Any) -> str:
    return shorten(repr(value), 60)


def explain_schema_error(error: ValidationError) -> str:
    """What a ``jsonschema`` error means, in one line, without the location."""
    keyword, expected, value = error.validator, error.validator_value, error.instance
    # validator_value is typed "Any | Unset" (a hand-made error has none): each branch checks
    # that it has the shape its keyword gives it.
    if keyword == "required" and isinstance(value, dict) and isinstance(expected, list):
        missing = [name for name in expected if name not in value]
        return f"missing field {missing[0]!r}" if missing else shorten(error.message, PROBLEM_LIMIT)
    if keyword == "additionalProperties" and isinstance(value, dict):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = list(schema.get("properties", {}))
        extra = [name for name in value if name not in allowed]
        if extra:
            return f"unknown field {extra[0]!r}{_did_you_mean(str(extra[0]), allowed)}"
    if keyword == "type" and isinstance(expected, str | list):
        kinds = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
        return f"expected {wanted}, got {_kind_of(value)}"
    if keyword == "enum" and isinstance(expected, list):
        choices = ", ".join(str(c) for c in expected)
        return f"{_short(value)} is not one of: {choices}"
    if keyword == "pattern" and expected == _ID_PATTERN:
        return (
            f"{_short(value)} is not a valid id (letters, digits, '_', '.', '-', at most 64, "
            "starting with a letter or digit)"
        )
    if (keyword == "minLength" and expected == 1) or (
        keyword == "pattern" and expected in (r"\S", NOT_BLANK)
    ):
        return "must not be empty"
    if keyword == "minItems" and expected == 1:
        return "must not be empty"
    if keyword == "exclusiveMinimum":
        return f"must be greater than {expected} (got {_short(value)})"
    if keyword == "minimum":
        return f"must be at least {expected} (got {_short(value)})"
    if keyword == "maximum":
        return f"must be at most {expected} (got {_short(value)})"
    return shorten(error.message, PROBLEM_LIMIT)
