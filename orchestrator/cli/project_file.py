"""Project files: a run described in YAML (``--file``), checked before anything is spent.

The file is validated against ``orchestrator/data/project.schema.json``; a ``tasks:`` list is
validated as a task graph, and giving one skips decomposition.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError
from orchestrator.run.taskgraph import TaskGraphError, describe_schema_error, parse_tasks
from orchestrator.run.tasks import Task
from orchestrator.text.schemas import best_match, shipped, shipped_schema
from orchestrator.user_files import SafeLoader, load_yaml, read_user_file

# Each field may be spelled the way the CLI flag is or the way the Python API is.
_ALIASES = {"project": "description", "criteria": "success_criteria"}


class ProjectFileError(ConfigError):
    """A project file is missing, unreadable, or has an invalid field."""


@dataclass
class ProjectSpec:
    description: str
    criteria: str
    budget: float | None = None  # USD
    time: float | None = None  # seconds
    project_id: str | None = None
    concurrency: int | None = None
    quality_threshold: float | None = None  # 0..1
    output_dir: str | None = None
    tasks: dict[str, Task] | None = None  # given directly -> decomposition is skipped
    tree_name: str | None = None
    integration: bool | None = None
    integration_rounds: int | None = None
    max_fallbacks: int | None = None
    routing: str | None = None  # a name of ``orchestrator.routing.backends.BACKENDS``


def load_project_file(path: str | os.PathLike[str]) -> ProjectSpec:
    """The project described by the YAML file at ``path``; ``ProjectFileError`` if it is invalid.

    Unset limits stay ``None`` so the caller can apply its own defaults or command-line flags.
    """
    file = Path(path)
    origin = f"project file {file}"
    document = _read(file, origin)
    error = best_match(shipped("project.schema.json").iter_errors(document))
    if error is not None:
        raise ProjectFileError(f"{origin}: {describe_schema_error(document, error)}")
    description = _one_of(document, "project", origin)
    criteria = _one_of(document, "criteria", origin)

    tasks = None
    if "tasks" in document:
        try:
            tasks = parse_tasks({"tasks": document["tasks"]}, origin=origin)
        except TaskGraphError as exc:
            raise ProjectFileError(str(exc)) from exc

    output_dir = document.get("output_dir")
    if output_dir is not None:
        # Relative to the file, not the shell's directory, so a project file means the same
        # thing wherever it is run from.
        output_dir = str((file.parent / Path(output_dir).expanduser()).resolve())

    def number(name: str) -> float | None:
        if name not in document:
            return None
        value = float(document[name])
        if not math.isfinite(value):
            # YAML's .inf and .nan (and 1e309, which is infinity) pass a "greater than 0" check.
            raise ProjectFileError(f"{origin}: field '{name}' must be a finite number, not {value}")
        return value

    return ProjectSpec(
        description=description,
        criteria=criteria,
        budget=number("budget"),
        time=number("time"),
        project_id=document.get("project_id"),
        concurrency=int(document["concurrency"]) if "concurrency" in document else None,
        quality_threshold=number("quality_threshold"),
        output_dir=output_dir,
        tasks=tasks,
        tree_name=document.get("tree_name"),
        integration=document.get("integration"),
        integration_rounds=document.get("integration_rounds"),
        max_fallbacks=document.get("max_fallbacks"),
        routing=document.get("routing"),
    )


def check_project_id(project_id: str) -> None:
    """Raise ``ConfigError`` unless ``project_id`` is a safe id, as a project file must give it:
    it is printed, stored and used in commands, so no newline, escape code or path."""
    pattern = shipped_schema("project.schema.json")["properties"]["project_id"]["pattern"]
    if not isinstance(project_id, str) or re.fullmatch(pattern, project_id) is None:
        raise ConfigError(
            f"project id {project_id!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _read(file: Path, origin: str) -> dict[str, Any]:
    text = read_user_file(file, origin, ProjectFileError)
    document = load_yaml(text, origin, ProjectFileError, _StrictLoader)
    if document is None:
        raise ProjectFileError(f"{origin}: empty; expected a mapping with 'project' and 'criteria'")
    if not isinstance(document, dict):
        raise ProjectFileError(
            f"{origin}: expected a mapping with 'project' and 'criteria', got a "
            f"{type(document).__name__}"
        )
    return document


def _one_of(document: dict[str, Any], name: str, origin: str) -> str:
    alias = _ALIASES[name]
    if name in document and alias in document:
        raise ProjectFileError(
            f"{origin}: field '{name}' and field '{alias}' are the same; keep one"
        )
    value: str | None = document.get(name, document.get(alias))  # the schema says a string
    if value is None:
        raise ProjectFileError(f"{origin}: missing field '{name}' (or '{alias}')")
    return value


class _StrictLoader(SafeLoader):
    """The bounded SafeLoader, rejecting a repeated key instead of silently keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[str, int] = {}
    for key_node, _ in node.value:
        # Merge keys ('<<') may legitimately be overridden, so only plain scalar keys count.
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
            continue
        key = key_node.value
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given at line {first_line[key]})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
