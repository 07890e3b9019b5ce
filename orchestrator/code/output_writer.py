"""Write a finished run to a directory: one file per task output, the project tree the tasks'
named files make (``assembly``), summary.json and README.md.

Task ids, prompts and outputs come from a model or a user, so none of them becomes part of a
path unchecked: a task file is named from its position in the execution order and its type
only, and a file of the tree goes only where ``assembly.tree_path`` allows, below the tree's
directory, never through a link. Nor do they reach a terminal that shows README.md or
summary.json as codes: their control characters are escaped there (``visible``). The task
files and the tree's files are the answers themselves, written as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.code.assembly import ProjectTree, UnsafePath, assemble, tree_path
from orchestrator.code.sandbox import NO_SANDBOX
from orchestrator.errors import ConfigError
from orchestrator.files import write_atomically
from orchestrator.money.units import format_usd
from orchestrator.run.config import TREE_NAME
from orchestrator.run.tasks import ProjectState, Task, TaskResult, TaskType
from orchestrator.text.fences import PYTHON_TAGS, code_blocks, has_fence
from orchestrator.text.visible import shorten, visible, visible_json

SUMMARY_NAME = "summary.json"
README_NAME = "README.md"
MANIFEST_NAME = ".orchestrator-manifest.json"  # what was written here, with content hashes

_EXTENSIONS = {
    TaskType.CODE_GEN: "py",
    TaskType.DATA_EXTRACT: "json",  # falls back to "md" when the output is not JSON
}

# Exactly the names this module produces, so a re-run can tell its own stale files from the user's.
_TYPE_NAMES = "|".join(re.escape(t.value) for t in TaskType)
_OWN_TASK_FILE = re.compile(rf"task_\d{{3,}}_(?:{_TYPE_NAMES})\.(?:py|md|json)")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class OutputError(ConfigError):
    """The output directory cannot be created or written, or a write would leave it."""


def strip_fences(text: str, languages: Iterable[str] = PYTHON_TAGS) -> str:
    """The bodies of the fenced blocks tagged with one of ``languages``, joined by two blank lines.

    ``""`` stands for an untagged fence. Text with no such block is returned unchanged, so an
    answer a model gave without fences is kept whole.
    """
    if not has_fence(text):
        return text
    bodies = [body.strip("\n") for body in code_blocks(text, tuple(languages))]
    return "\n\n\n".join(bodies) if bodies else text


def write_outputs(
    state: ProjectState,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    tree_name: str = TREE_NAME,
) -> list[Path]:
    """Write every task output, the project tree (in ``directory/tree_name``), summary.json and
    README.md into ``directory``; return the paths.

    A file is replaced (or removed as stale) only if it is still what this tool wrote there, as
    its manifest records; anything else there (a file edited by hand, another tool's) stops the
    write before any change, unless ``overwrite``. Synchronous on purpose: the engine runs it
    with ``asyncio.to_thread``.
    """
    check_tree_name(tree_name)
    root = _prepare(Path(directory))
    order = _ordered_tasks(state)
    tree = assemble(state.tasks, [task.id for _, task in order], state.results)

    planned: dict[str, str] = {}
    files: dict[str, str] = {}
    for index, task in order:
        result = state.results.get(task.id)
        if result is None or not result.output.strip():
            continue
        extension, content = _render(task, result.output)
        name = _filename(index, task, extension)
        planned[name] = content
        files[task.id] = name
    for path, file in tree.files.items():
        planned[f"{tree_name}/{path}"] = file.content
    summary = _summary(state, order, files, tree, tree_name)
    text = json.dumps(_finite(summary), indent=2, ensure_ascii=False, allow_nan=False)
    planned[SUMMARY_NAME] = visible_json(text) + "\n"
    planned[README_NAME] = _readme(state, order, files, tree, tree_name)

    request = request_digest(state.project_description, state.success_criteria)
    owner, asked, ours = _read_manifest(root)
    stale = [n for n in ours if n not in planned and _own_file(n)]
    if not overwrite:
        _refuse_another_project(root, owner, asked, ours, state.project_id, request)
        _refuse_foreign_changes(root, ours, [*planned, *stale], planned)
    written = [_write(root, name, content) for name, content in planned.items()]
    _write(root, MANIFEST_NAME, _manifest(state.project_id, request, planned))
    # Removed only after the new files are in place, so a failed run never loses more than it wrote.
    _remove_stale(root, stale)
    return written


def check_tree_name(name: str) -> None:
    """The tree's directory is one plain name inside the output directory."""
    if not _PLAIN_NAME.fullmatch(name) or name in (SUMMARY_NAME, README_NAME, MANIFEST_NAME):
        raise OutputError(
            f"project tree name {_show(name)!s} must be one plain name (letters, digits, "
            "'_', '.', '-') other than the result files' names"
        )


def _own_file(name: str) -> bool:
    """Whether ``name`` is of a kind this module writes and may remove when stale."""
    return bool(_OWN_TASK_FILE.fullmatch(name)) or "/" in name


def _manifest_name(name: str) -> bool:
    """A name the manifest may hold: a plain file name, or a safe path inside a tree."""
    if _PLAIN_NAME.fullmatch(name):
        return True
    head, _, rest = name.partition("/")
    if not _PLAIN_NAME.fullmatch(head):
        return False
    try:
        return tree_path(rest) == rest
    except UnsafePath:
        return False


def _digest(content: str | bytes) -> str:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


def request_digest(description: str, criteria: str) -> str:
    """What a run was asked, as the manifest keeps it: a run asked the same (the same command
    again, say) is the same project and updates what an earlier one wrote here."""
    return _digest(json.dumps([description, criteria]))


def check_output_dir(
    directory: str | os.PathLike[str], description: str | None, criteria: str | None
) -> None:
    """Before a run pays for anything: ``OutputError`` if its results could not replace what
    ``directory`` holds without ``--overwrite`` (another project's results, or files this tool
    wrote that a person changed since). ``description`` None: a resume, the same project."""
    root = Path(directory)
    owner, asked, ours = _read_manifest(root)
    if description is not None and criteria is not None:
        _refuse_another_project(
            root, owner, asked, ours, None, request_digest(description, criteria)
        )
    _refuse_foreign_changes(root, ours, list(ours), {})


def _manifest(project_id: str, request: str, planned: dict[str, str]) -> str:
    files = {name: _digest(content) for name, content in sorted(planned.items())}
    document = {
        "written_by": "orchestrator",
        "project_id": project_id,
        "request": request,
        "files": files,
    }
    return json.dumps(document, indent=2) + "\n"


def _read_manifest(root: Path) -> tuple[str | None, str | None, dict[str, str]]:
    """Which project this tool last wrote here, what it was asked, and its files by name and
    content hash."""
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, {}
    if not isinstance(files, dict):
        return None, None, {}
    owner, request = data.get("project_id"), data.get("request")
    ours = {str(k): str(v) for k, v in files.items() if _manifest_name(str(k))}
    return (
        str(owner) if owner is not None else None,
        str(request) if request is not None else None,
        ours,
    )


def _refuse_another_project(
    root: Path,
    owner: str | None,
    asked: str | None,
    ours: dict[str, str],
    project_id: str | None,
    request: str,
) -> None:
    """Raise ``OutputError`` if ``root`` holds the results of a project asked something else."""
    if owner is None or owner == project_id or asked == request:
        return
    if any((root / name).exists() for name in ours):
        raise OutputError(
            f"output directory {_show(root)} holds the results of project {owner!r}, which was "
            "asked something else; nothing was written: choose another --output-dir, or pass "
            "--overwrite to replace them"
        )


def _refuse_foreign_changes(
    root: Path, ours: dict[str, str], names: list[str], planned: dict[str, str]
) -> None:
    """Raise ``OutputError`` naming every file that would be replaced or removed although it
    is not (or no longer) what this tool wrote; a file already holding the new content is fine."""
    foreign = []
    for name in names:
        path = _target(root, name)
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            regular = path.is_file() and not path.is_symlink()
            current = _digest(path.read_bytes()) if regular else None
        except OSError:
            current = None
        if current is None or (
            current != ours.get(name) and current != _digest(planned.get(name, ""))
        ):
            foreign.append(name)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputError(
            f"output directory {_show(root)} holds files this tool did not write or that were "
            f"changed since ({shown}); nothing was written: choose another --output-dir, or pass "
            "--overwrite to replace them"
        )


# --- rendering ------------------------------------------------------------------------------


def _parse_json(text: str) -> Any:
    def reject(constant: str) -> Any:
        # NaN and Infinity are not JSON; accepting them would write a file other tools reject.
        raise ValueError(constant)

    return json.loads(text, parse_constant=reject)


def _render(task: Task, output: str) -> tuple[str, str]:
    task_type = TaskType(task.type)
    if task_type is TaskType.CODE_GEN:
        return "py", _with_newline(strip_fences(output))
    if task_type is TaskType.DATA_EXTRACT:
        candidates = [output.strip()]
        if has_fence(output):
            candidates += code_blocks(output, ("json",))[:1]
        for candidate in candidates:
            try:
                data = _parse_json(candidate)
            except ValueError:
                continue
            return "json", json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        return "md", _with_newline(output)
    return _EXTENSIONS.get(task_type, "md"), _with_newline(output)


def _filename(index: int, task: Task, extension: str) -> str:
    if index < 1:
        raise ValueError(f"task index must be 1 or more, got {index}")
    # TaskType() rejects anything but a known type, so the name can only hold safe characters.
    return f"task_{index:03d}_{TaskType(task.type).value}.{extension}"


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _ordered_tasks(state: ProjectState) -> list[tuple[int, Task]]:
    """(1-based index, task) in execution order; tasks missing from the order follow it, so a
    partial state still shows everything it holds. An id in the order without a task keeps its
    number, so the numbering of the others never shifts."""
    tasks = dict(state.tasks)
    seen: set[str] = set()
    ordered: list[tuple[int, Task]] = []
    position = 0
    for task_id in [*state.execution_order, *tasks]:
        if task_id in seen:
            continue
        seen.add(task_id)
        position += 1
        if task_id in tasks:
            ordered.append((position, tasks[task_id]))
    return ordered


# --- summary.json ---------------------------------------------------------------------------


def _summary(
    state: ProjectState,
    order: list[tuple[int, Task]],
    files: dict[str, str],
    tree: ProjectTree,
    tree_name: str,
) -> dict[str, Any]:
    budget = state.budget
    integration = state.integration
    return {
        "project_id": state.project_id,
        "status": state.status.value,
        "description": state.project_description,
        "criteria": state.success_criteria,
        "quality_threshold": state.quality_threshold,
        "reason": state.reason,
        "budget": {
            "max_usd": budget.max_usd,
            "spent_usd": budget.spent_usd,
            "max_time_seconds": budget.max_time_seconds,
            "elapsed_seconds": budget.elapsed_seconds,
            "phase_spent": dict(budget.phase_spent),
        },
        "execution_order": list(state.execution_order),
        "api_health": dict(state.api_health),
        "sandbox": _sandbox(state.sandbox),
        "project_tree": tree.to_dict(tree_name) if tree.files or tree.refused else None,
        "integration": integration.to_dict() if integration is not None else None,
        "tasks": [
            {
                "index": index,
                **task.to_dict(),
                "file": files.get(task.id),
                "result": _result_dict(state.results.get(task.id)),
            }
            for index, task in order
        ],
    }


def _sandbox(isolation: str) -> dict[str, Any] | None:
    """How validators ran model-written code, and what that means, for summary.json."""
    if not isolation:
        return None
    notes = {
        "unavailable": NO_SANDBOX,
        "none (unsafe)": "run without isolation (--unsafe-validators)",
    }
    return {"isolation": isolation, "note": notes.get(isolation, "isolated")}


def _result_dict(result: TaskResult | None) -> dict[str, Any] | None:
    return result.to_dict() if result is not None else None


def _finite(value: Any) -> Any:
    """NaN or infinity (a broken score, say) become null, so summary.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# --- README.md ------------------------------------------------------------------------------

_COLUMNS = (
    "#",
    "Task",
    "Type",
    "Status",
    "Score",
    "Model",
    "Reviewer",
    "Iterations",
    "Cost (USD)",
    "Validators",
    "File",
)
_NONE = "–"
_PROMPT_EXCERPT = 80


def _cell(text: object) -> str:
    """One table cell: a line break or an unescaped ``|`` in model or user text would end the
    row or add a column. Backslashes are escaped first so input ending in ``\\`` cannot turn our
    ``\\|`` back into a bare pipe; control characters are escaped (``visible``) before that."""
    one_line = visible(" ".join(str(text).split()))
    return one_line.replace("\\", "\\\\").replace("|", "\\|") or _NONE


def _line(text: object) -> str:
    """Free text outside the table, kept on one line so it cannot start a heading or a list,
    its control characters escaped (``visible``)."""
    return visible(" ".join(str(text).split())).replace("\\", "\\\\")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _validators(result: TaskResult) -> str:
    if not result.validator_results:
        return _NONE
    parts = []
    for verdict in result.validator_results:
        part = f"{verdict.name} {'✓' if verdict.passed else '✗'}"
        if verdict.skipped:
            part += " (skipped)"
        elif verdict.not_run:
            part += " (not run: no sandbox)"
        parts.append(part)
    return ", ".join(parts)


def _row(index: int, task: Task, result: TaskResult | None, file: str | None) -> list[str]:
    task_text = (
        f"{task.id}: {shorten(task.prompt, _PROMPT_EXCERPT)}" if task.prompt.strip() else task.id
    )
    common = [str(index), _cell(task_text), _cell(TaskType(task.type).value)]
    if result is None:
        return [*common, "not run", *[_NONE] * 6, f"[{file}]({file})" if file else _NONE]
    return [
        *common,
        _cell(result.status.value),
        f"{result.score:.2f}",
        _cell(result.model_used.value if result.model_used else _NONE),
        _cell(result.reviewer_model.value if result.reviewer_model else _NONE),
        str(result.iterations),
        format_usd(result.cost_usd),
        _cell(_validators(result)),
        f"[{file}]({file})" if file else _NONE,
    ]


def _readme(
    state: ProjectState,
    order: list[tuple[int, Task]],
    files: dict[str, str],
    tree: ProjectTree,
    tree_name: str,
) -> str:
    budget = state.budget
    elapsed = _duration(budget.elapsed_seconds)
    share = f" ({budget.spent_usd / budget.max_usd:.0%})" if budget.max_usd > 0 else ""
    lines = [
        f"# Results: {_line(state.project_id) or 'project'}",
        "",
        f"**Status:** {state.status.value}" + (f" — {_line(state.reason)}" if state.reason else ""),
        "",
        f"**Spent:** {format_usd(budget.spent_usd)} of {format_usd(budget.max_usd)}{share}",
        "",
        f"**Elapsed:** {elapsed} of {_duration(budget.max_time_seconds)}",
        "",
        f"**Project:** {_line(state.project_description)}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    notes = []
    for index, task in order:
        result = state.results.get(task.id)
        lines.append("| " + " | ".join(_row(index, task, result, files.get(task.id))) + " |")
        if result is None:
            continue
        for note in ([result.reason] if result.reason else []) + result.notes:
            notes.append(f"- **{index}** ({_line(task.id)}): {_line(note)}")
    lines += _tree_section(state, tree, tree_name)
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", f"Every score, cost and raw output is in [{SUMMARY_NAME}]({SUMMARY_NAME}).", ""]
    return "\n".join(lines)


def _tree_section(state: ProjectState, tree: ProjectTree, tree_name: str) -> list[str]:
    if not tree.files and not tree.refused:
        return []
    lines = ["", "## Project tree", ""]
    if tree.files:
        count = len(tree.files)
        lines.append(f"The tasks' named files, assembled in [{tree_name}/]({tree_name}/) "
                     f"({count} file{'s' if count != 1 else ''}).")  # fmt: skip
    if tree.test_files:
        src = any(path.startswith("src/") for path in tree.files)
        command = "PYTHONPATH=src python -m pytest" if src else "python -m pytest"
        lines += ["", f"Run its tests: `cd {tree_name} && {command}`"]
    integration = state.integration
    if integration is not None and integration.rounds:
        last = integration.rounds[-1]
        verdict = "passed" if integration.passed else "did not pass"
        lines += ["", f"**Integration:** {verdict} — {_line(last.describe())}"]
        if integration.note:
            lines.append(f"({_line(integration.note)})")
    problems = [f"- {_line(c.path)}: kept {_line(c.kept)}'s, not {_line(c.dropped)}'s "
                f"({_line(c.reason)})" for c in tree.conflicts]  # fmt: skip
    problems += [f"- {_line(r.name)} from {_line(r.task_id)}: not placed, {_line(r.reason)}"
                 for r in tree.refused]  # fmt: skip
    problems += [f"- {_line(task_id)}: {n} code block(s) name no file: only in its task file"
                 for task_id, n in tree.unnamed.items()]  # fmt: skip
    if problems:
        lines += ["", "Not in the tree:", "", *problems]
    return lines


# --- the file system ------------------------------------------------------------------------


def _show(path: Path | str) -> str:
    """A path in a one-line message: a name holding a line break is shown quoted and escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _prepare(directory: Path) -> Path:
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"output directory {_show(directory)} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve(strict=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot create output directory {_show(directory)}: {reason}") from None
    if not root.is_dir():
        raise OutputError(f"output directory {_show(directory)} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {_show(directory)} is not writable")
    return root


def _target(root: Path, name: str) -> Path:
    """Where ``name`` (a file name, or a tree path ``tree/a/b.py``) is written under ``root``:
    never outside it, never through a link or over a directory."""
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise OutputError(f"refusing to write {_show(name)}: not a relative path")
    if os.altsep and os.altsep in name:
        raise OutputError(f"refusing to write {_show(name)}: not a relative path")
    directory = root
    for part in parts[:-1]:
        directory = directory / part
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            raise OutputError(
                f"refusing to write {_show(name)}: {_show(directory)} is a link or a file, "
                "not a directory"
            )
    path = directory / parts[-1]
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"refusing to write {_show(path)}: it is a directory")
    if not path.absolute().is_relative_to(root):
        raise OutputError(f"refusing to write {_show(path)}: outside {_show(root)}")
    return path


def _write(root: Path, name: str, content: str) -> Path:
    path = _target(root, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path = _target(root, name)  # no link appeared where a directory was just made
        write_atomically(path, content)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write {_show(path)}: {reason}") from None
    return path


def _remove_stale(root: Path, stale: list[str]) -> None:
    """Files this writer left on an earlier run that this run did not write (fewer tasks, a
    file gone from the tree, extraction now .md instead of .json), so the directory matches
    summary.json. Only files the manifest says this module wrote are touched; a tree directory
    they leave empty goes too."""
    for name in stale:
        entry = _target(root, name)
        if entry.is_symlink() or entry.is_file():
            try:
                entry.unlink()
            except OSError as error:
                reason = error.strerror or type(error).__name__
                raise OutputError(f"cannot remove stale {_show(entry)}: {reason}") from None
        parent = entry.parent
        while parent != root and parent.is_dir() and not parent.is_symlink():
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
