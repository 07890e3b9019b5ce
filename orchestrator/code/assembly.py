"""The project tree: the files that completed tasks named, assembled into one directory's worth.

A code answer names each file on the first line of its fenced block (``# file: pkg/mod.py``); a
documentation answer names itself on its first line (``<!-- file: README.md -->``). Names are
model output, so each is checked before it means anything: relative, normalised, of a known
text kind, never hidden, never above the tree, never one that would change how the tree's tests
are judged (``conftest.py``, a module named like ``pytest`` or the standard library's ``json``).
Two tasks naming one path are settled by one rule: the later task (in execution order) revises
the earlier one's file only if it depends on that task, which showed it the file; otherwise
the earlier file stays and the clash is reported as a conflict.
A path naming a placed file or directory in other case (``Calc.py`` beside ``calc.py``,
``PKG/`` beside ``pkg/``) would be that one on macOS and Windows: it is always a conflict, the
earlier file staying.

Nothing here touches the disk: ``output_writer`` writes the tree and ``integration`` checks it.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from orchestrator.code.tree_screen import RUNNER_MODULES
from orchestrator.run.tasks import Task, TaskResult, TaskStatus, TaskType
from orchestrator.text.fences import PYTHON_TAGS, fenced_blocks, has_fence
from orchestrator.text.visible import shorten, visible

MAX_PATH = 200
MAX_DEPTH = 8

CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".md", ".rst", ".txt", ".toml", ".cfg", ".ini", ".json", ".yaml", ".yml"}
    | {".csv", ".sql", ".html", ".css", ".js", ".ts"}
)
DOCUMENT_SUFFIXES = frozenset({".md", ".rst", ".txt"})
PLAIN_NAMES = frozenset({"LICENSE", "NOTICE"})  # files that have no suffix by convention
DOCUMENT_TYPES = frozenset(
    {TaskType.WRITING, TaskType.SUMMARIZE, TaskType.REASONING, TaskType.CODE_REVIEW}
)

# A module of the tree on the import path under one of these names would replace the test
# runner's own (so the code under test could report what it likes) or a standard module.
_SHADOWED = RUNNER_MODULES | frozenset(sys.stdlib_module_names)
_IMPORT_ROOTS = ("", "src/")  # where the tree's modules are importable from
_INITS = ("__init__.py", "__init__.pyi")

_MARKER = re.compile(
    r"^\s*(?:#|//|<!--)\s*(?:file|filename)\s*:\s*(?P<name>[^\s>]+?)\s*(?:-->)?\s*$",
    re.IGNORECASE,
)
_SAFE = re.compile(r"[A-Za-z0-9_./-]+")
_TEST_FILE = re.compile(r"(?:^|/)(?:test_[^/]*|[^/]*_test)\.py$")


class UnsafePath(ValueError):
    """A file name a model gave that the tree does not take; the message says why."""


def tree_path(name: str) -> str:
    """``name`` as a safe relative path inside the tree, or ``UnsafePath`` saying why not."""
    name = name.strip().strip("`'\"")
    if not name:
        raise UnsafePath("an empty name")
    if len(name) > MAX_PATH:
        raise UnsafePath(f"longer than {MAX_PATH} characters")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or "\\" in name:
        raise UnsafePath("an absolute path")
    if not _SAFE.fullmatch(name):
        raise UnsafePath("characters other than letters, digits, '_', '.', '/' and '-'")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UnsafePath("it leaves the project directory ('..')")
    if not parts or any(part.startswith(".") for part in parts):
        raise UnsafePath("a hidden name (one starting with '.')")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"deeper than {MAX_DEPTH} directories")
    if "__pycache__" in parts:
        raise UnsafePath("a __pycache__ directory")
    path = PurePosixPath(*parts)
    if path.suffix not in CODE_SUFFIXES and path.name not in PLAIN_NAMES:
        raise UnsafePath(f"not a text file of a known kind ({path.suffix or 'no suffix'})")
    if path.name == "conftest.py":
        raise UnsafePath("conftest.py is reserved: it would change how the tests are judged")
    module = _shadowed_module(path.as_posix())
    if module is not None:
        what = "the test runner's" if module in RUNNER_MODULES else "a standard-library"
        raise UnsafePath(f"it would hide {what} module {module!r}: choose another name")
    return path.as_posix()


def _shadowed_module(path: str) -> str | None:
    """The runner's or standard module ``path`` would be imported instead of, if any. A
    directory without ``__init__.py`` hides no regular package, so only a package's
    ``__init__`` or a module file counts (any file under a runner module's name does)."""
    for root in _IMPORT_ROOTS:
        if root and not path.startswith(root):
            continue
        head, _, tail = path[len(root) :].partition("/")
        if tail and (head in RUNNER_MODULES or (head in _SHADOWED and tail in _INITS)):
            return head
        if not tail and head.endswith((".py", ".pyi")) and head.rsplit(".", 1)[0] in _SHADOWED:
            return head.rsplit(".", 1)[0]
    return None


def is_test_file(path: str) -> bool:
    return _TEST_FILE.search(path) is not None


@dataclass(frozen=True)
class NamedFile:
    path: str
    content: str


@dataclass(frozen=True)
class Refusal:
    """A file a task named that the tree does not take."""

    task_id: str
    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"task": self.task_id, "name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class Conflict:
    """Two tasks named one path and neither revises the other: the earlier file stays."""

    path: str
    kept: str  # the task whose file is in the tree
    dropped: str  # the task whose file is not
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "kept": self.kept,
            "dropped": self.dropped,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TreeFile:
    path: str
    content: str
    task_id: str  # the task that wrote the version in the tree
    revises: str | None = None  # the earlier task whose file it replaced

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """What one answer names: its files, the names refused, and its code blocks naming none."""

    files: tuple[NamedFile, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (name as given, why)
    unnamed: int = 0


def named_files(task_type: TaskType, output: str) -> Answer:
    """The files ``output`` (an answer to a task of ``task_type``) names, checked."""
    if task_type is TaskType.CODE_GEN:
        blocks = fenced_blocks(output) if has_fence(output) else [("", output)]
        return _collect(blocks, CODE_SUFFIXES | PLAIN_NAMES, count_unnamed=True)
    if task_type in DOCUMENT_TYPES:
        blocks = [("", output)]
        whole = fenced_blocks(output)
        if len(whole) == 1 and not _marker(output)[0] and _only_block(output):
            blocks = whole  # the whole answer fenced as one Markdown block
        return _collect(blocks, DOCUMENT_SUFFIXES, count_unnamed=False)
    return Answer()


def as_block(file: NamedFile) -> str:
    """``file`` as a code answer names it: a fenced block whose first line is its name."""
    suffix = PurePosixPath(file.path).suffix.lstrip(".")
    tag = "python" if suffix == "py" else suffix or "text"
    fence = "````" if "```" in file.content else "```"
    return f"{fence}{tag}\n# file: {file.path}\n{file.content.rstrip(chr(10))}\n{fence}"


def _only_block(text: str) -> bool:
    stripped = text.strip()
    return stripped.startswith(("```", "~~~")) and stripped.endswith(("```", "~~~"))


def _collect(
    blocks: Iterable[tuple[str, str]], kinds: frozenset[str], count_unnamed: bool
) -> Answer:
    files: list[NamedFile] = []
    refused: list[tuple[str, str]] = []
    unnamed = 0
    for tag, body in blocks:
        name, content = _marker(body)
        if name is None:
            unnamed += count_unnamed and tag in PYTHON_TAGS and bool(body.strip())
            continue
        try:
            path = tree_path(name)
        except UnsafePath as exc:
            refused.append((_shown(name), str(exc)))
            continue
        suffix = PurePosixPath(path).suffix
        if suffix not in kinds and PurePosixPath(path).name not in kinds:
            kinds_shown = ", ".join(sorted(k for k in kinds if k.startswith(".")))
            refused.append((path, f"this kind of answer may name only {kinds_shown} files"))
            continue
        files.append(NamedFile(path, content))
    return Answer(tuple(files), tuple(refused), unnamed)


def _marker(text: str) -> tuple[str | None, str]:
    """The name a text's first non-blank line gives, and the text without that line."""
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        match = _MARKER.match(line)
        if match is None:
            return None, text
        rest = "".join(lines[index + 1 :]).lstrip("\n")
        return match["name"], rest if rest.endswith("\n") or not rest else rest + "\n"
    return None, text


def _shown(name: str) -> str:
    return shorten(visible(name, one_line=True), 80)


@dataclass
class ProjectTree:
    """The assembled files by path, and what did not make it in, with why."""

    files: dict[str, TreeFile] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    unnamed: dict[str, int] = field(default_factory=dict)  # task id -> code blocks naming none

    @property
    def python_files(self) -> list[str]:
        return [path for path in self.files if path.endswith(".py")]

    @property
    def test_files(self) -> list[str]:
        return [path for path in self.python_files if is_test_file(path)]

    def writer(self, path: str) -> str | None:
        found = self.files.get(path)
        return found.task_id if found is not None else None

    def module_path(self, module: str) -> str | None:
        """The tree file a dotted module name is imported from, if the tree has it."""
        relative = module.replace(".", "/")
        for root in _IMPORT_ROOTS:
            for candidate in (f"{root}{relative}.py", f"{root}{relative}/__init__.py"):
                if candidate in self.files:
                    return candidate
        return None

    def digest(self) -> str:
        """One hash of every path and content: whether two trees are the same tree."""
        hasher = hashlib.sha256()
        for path in sorted(self.files):
            hasher.update(path.encode() + b"\0" + self.files[path].sha256.encode() + b"\n")
        return hasher.hexdigest()

    def manifest(self) -> list[dict[str, Any]]:
        return [
            {
                "path": path,
                "task": file.task_id,
                "sha256": file.sha256,
                "bytes": len(file.content.encode("utf-8")),
                **({"revises": file.revises} if file.revises else {}),
            }
            for path, file in sorted(self.files.items())
        ]

    def to_dict(self, directory: str) -> dict[str, Any]:
        return {
            "directory": directory,
            "files": self.manifest(),
            "conflicts": [c.to_dict() for c in self.conflicts],
            "refused": [r.to_dict() for r in self.refused],
            "unnamed_code_blocks": dict(self.unnamed),
        }


def assemble(
    tasks: Mapping[str, Task], order: Iterable[str], results: Mapping[str, TaskResult]
) -> ProjectTree:
    """The tree of every completed task's named files, in execution order (see the module)."""
    tree = ProjectTree()
    for task_id in order:
        task, result = tasks.get(task_id), results.get(task_id)
        if task is None or result is None or result.status is not TaskStatus.COMPLETED:
            continue
        answer = named_files(TaskType(task.type), result.output)
        tree.refused += [Refusal(task_id, name, why) for name, why in answer.refused]
        if answer.unnamed:
            tree.unnamed[task_id] = answer.unnamed
        own = {named.path: named.content for named in answer.files}  # a later block wins
        for path, content in own.items():
            _place(tree, task, path, content)
    return tree


def _place(tree: ProjectTree, task: Task, path: str, content: str) -> None:
    existing = tree.files.get(path)
    if existing is None:
        spelled = _case_clash(tree, path)
        if spelled is not None:
            other, mine, theirs = spelled
            where = "" if theirs == other.path else f" (in {other.path})"
            reason = (
                f"{mine} and {theirs}{where} of task {other.task_id} differ only in case: "
                "one path on macOS and Windows"
            )
            tree.conflicts.append(Conflict(path, other.task_id, task.id, reason))
            return
        blocker = _file_or_directory_clash(tree, path)
        if blocker is not None:
            reason = (
                f"{blocker.path} of task {blocker.task_id} is a file where the other is a directory"
            )
            tree.conflicts.append(Conflict(path, blocker.task_id, task.id, reason))
            return
        tree.files[path] = TreeFile(path, content, task.id)
    elif existing.content == content:
        return  # the same file twice is no clash
    elif existing.task_id in task.dependencies:
        tree.files[path] = TreeFile(path, content, task.id, revises=existing.task_id)
    else:
        reason = f"{task.id} does not depend on {existing.task_id}, so it never saw that file"
        tree.conflicts.append(Conflict(path, existing.task_id, task.id, reason))


def _file_or_directory_clash(tree: ProjectTree, path: str) -> TreeFile | None:
    parents = {p.as_posix() for p in PurePosixPath(path).parents if p.as_posix() != "."}
    for other in tree.files.values():
        if other.path in parents or other.path.startswith(path + "/"):
            return other
    return None


def _case_clash(tree: ProjectTree, path: str) -> tuple[TreeFile, str, str] | None:
    """A placed file whose path spells the same file or directory as ``path`` in other case,
    with the two spellings (``Calc.py`` and ``calc.py``, or ``PKG`` and ``pkg``)."""
    parts = path.split("/")
    for other in tree.files.values():
        theirs = other.path.split("/")
        for depth, (mine, their) in enumerate(zip(parts, theirs, strict=False)):
            if mine == their:
                continue
            if mine.casefold() == their.casefold():
                return other, "/".join(parts[: depth + 1]), "/".join(theirs[: depth + 1])
            break
    return None
