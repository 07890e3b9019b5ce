"""The integration phase: the assembled tree's checks run together, failures sent back.

After the task graph, the tree (``assembly``) is written to a fresh scratch directory and
checked: every Python file compiles, its imports resolve (to the tree, the standard library or
what the user's environment already has: nothing is ever installed from model output), ``ruff``
finds no errors when it is installed, and the tree's tests pass under ``pytest`` in the sandbox
with the tree on the import path. When a check fails, each task that wrote a file involved is
sent the failures as a revision request (paid from the reserve partition, journaled), and the
checks run again, for at most ``max_rounds`` rounds.

A round's report, with the exact request each task is sent, is saved before any revision is
asked for, and each revised task is checkpointed with the round it answered: a run killed
during integration resumes the same round with the same requests, which the journal answers,
so nothing is paid twice.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.code.assembly import ProjectTree, assemble
from orchestrator.code.sandbox import NO_SANDBOX, Sandbox, run_tool, scratch_dir
from orchestrator.code.validators import compile_problem, find_ruff, pytest_installed
from orchestrator.code.verdict import run_tests
from orchestrator.run.config import DEFAULT_ROUNDS
from orchestrator.run.tasks import ProjectState, TaskStatus

INTEGRATION_PHASE = "reserve"  # the budget partition integration revisions are paid from
# Errors, not style: syntax errors, broken comparisons and statements, undefined names.
RUFF_RULES = "E9,F63,F7,F82"
MAX_FAILURES = 20  # per check, in the report
DETAIL_LIMIT = 1500  # characters of one failure's traceback in a revision request
FILE_EXCERPT = 4000  # characters of another task's file shown in a revision request
REQUEST_LIMIT = 16000  # characters of one revision request

_RUFF_LINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$")
_NAMED_MODULE = re.compile(r"(?:No module named|cannot import name '[\w.]+' from) '([\w.]+)'")
_GUARDS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


@dataclass(frozen=True)
class Check:
    """One check of the tree: compile, imports, ruff or pytest."""

    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False  # the tool is not installed: it neither passes nor fails the tree
    not_run: bool = False  # it could not run (no sandbox): the tree is not shown to pass

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "skipped": self.skipped,
            "not_run": self.not_run,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(**{k: data[k] for k in ("name", "passed", "detail", "skipped", "not_run")})


@dataclass(frozen=True)
class Failure:
    """One thing a check found, with the tree files it involves."""

    check: str
    summary: str  # one line
    detail: str = ""  # a trimmed traceback, where there is one
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "summary": self.summary,
            "detail": self.detail,
            "files": list(self.files),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(data["check"], data["summary"], data.get("detail", ""), tuple(data["files"]))


@dataclass
class Round:
    """One run of the checks, and the revision requests it led to (task id -> request)."""

    number: int
    tree_digest: str
    checks: list[Check]
    failures: list[Failure] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # modules nobody has: never installed
    requests: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed or check.skipped for check in self.checks)

    def describe(self) -> str:
        """The checks in one line: ``pytest: 1 failed, 2 passed; compile: ok``."""
        parts = []
        for check in self.checks:
            state = "ok" if check.passed else "not run" if check.not_run else "FAILED"
            state = "skipped" if check.skipped else state
            parts.append(f"{check.name}: {state}" + (f" ({check.detail})" if check.detail else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "passed": self.passed,
            "tree_sha256": self.tree_digest,
            "checks": [check.to_dict() for check in self.checks],
            "failures": [failure.to_dict() for failure in self.failures],
            "missing_dependencies": list(self.missing),
            "revision_requests": dict(self.requests),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Round:
        return cls(
            number=int(data["round"]),
            tree_digest=str(data["tree_sha256"]),
            checks=[Check.from_dict(c) for c in data["checks"]],
            failures=[Failure.from_dict(f) for f in data["failures"]],
            missing=list(data.get("missing_dependencies", [])),
            requests=dict(data.get("revision_requests", {})),
        )


@dataclass
class Integration:
    """The integration of one project: its rounds so far, and whether it is over."""

    max_rounds: int = DEFAULT_ROUNDS
    rounds: list[Round] = field(default_factory=list)
    finished: bool = False
    note: str = ""  # why revisions were not asked for, when they were not

    @property
    def passed(self) -> bool:
        return self.finished and bool(self.rounds) and self.rounds[-1].passed

    @property
    def revision_rounds(self) -> int:
        return sum(1 for r in self.rounds if r.requests)

    def reason(self) -> str:
        """Why the tree does not pass, in one line (empty when it does)."""
        if self.passed or not self.rounds:
            return ""
        last = self.rounds[-1]
        failing = [c for c in last.checks if not (c.passed or c.skipped)]
        shown = "; ".join(
            f"{c.name} {'not run' if c.not_run else 'failed'}"
            + (f" ({c.detail})" if c.detail else "")
            for c in failing
        )
        rounds = self.revision_rounds
        after = f" after {rounds} revision round{'s' if rounds != 1 else ''}" if rounds else ""
        return f"integration: {shown}{after}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_rounds": self.max_rounds,
            "finished": self.finished,
            "passed": self.passed,
            "note": self.note,
            "rounds": [r.to_dict() for r in self.rounds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Integration:
        return cls(
            max_rounds=int(data["max_rounds"]),
            rounds=[Round.from_dict(r) for r in data["rounds"]],
            finished=bool(data["finished"]),
            note=str(data.get("note", "")),
        )


# --- the checks ---------------------------------------------------------------------------------


async def check_tree(
    tree: ProjectTree, number: int, *, box: Sandbox | None, seconds: float
) -> Round:
    """Run every check on ``tree`` in a fresh scratch directory; ``box`` runs its tests."""
    # The tree is the scratch directory itself: the only place its tests may write.
    async with scratch_dir() as root:
        await asyncio.to_thread(_write_tree, root, tree)
        compiled, compile_failures = await asyncio.to_thread(_compile_all, tree)
        imports, import_failures, missing = await asyncio.to_thread(_imports, tree)
        checks = [compiled, imports]
        failures = compile_failures + import_failures
        ruff, ruff_failures = await _ruff(root, tree, seconds)
        checks.append(ruff)
        failures += ruff_failures
        if tree.test_files:
            tests, test_failures, absent = await _pytest(root, tree, box, seconds)
            checks.append(tests)
            failures += test_failures
            missing += [m for m in absent if m not in missing]
    return Round(number, tree.digest(), checks, failures, missing)


def _write_tree(root: str, tree: ProjectTree) -> None:
    for path, file in tree.files.items():
        target = Path(root, *path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.content, encoding="utf-8")


def _compile_all(tree: ProjectTree) -> tuple[Check, list[Failure]]:
    failures = []
    for path in tree.python_files:
        problem = compile_problem(tree.files[path].content, path)
        if problem is not None:
            failures.append(Failure("compile", problem, files=(path,)))
    count = len(tree.python_files)
    if failures:
        return Check("compile", False, f"{len(failures)} of {count} files"), failures
    return Check("compile", True, f"{count} files"), []


def _imports(tree: ProjectTree) -> tuple[Check, list[Failure], list[str]]:
    """Every unguarded import must resolve to the tree, the standard library or an installed
    package; nothing is installed to make one resolve."""
    local = _anywhere_names(tree)
    importers: dict[str, list[str]] = {}
    for path in tree.python_files:
        try:
            modules = _unguarded_imports(ast.parse(tree.files[path].content))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # the compile check reports it
        for module in sorted(modules):
            if module not in local and not _installed(module):
                importers.setdefault(module, []).append(path)
    failures = [
        Failure(
            "imports",
            f"{module} is not installed (imported by {', '.join(paths)}); packages are never "
            "installed from model output",
            files=tuple(paths),
        )
        for module, paths in sorted(importers.items())
    ]
    missing = sorted(importers)
    if missing:
        return Check("imports", False, f"missing: {', '.join(missing)}"), failures, missing
    return Check("imports", True), [], []


def _anywhere_names(tree: ProjectTree) -> set[str]:
    """Every name the tree may make importable: its modules and packages at its roots, and
    what a test may import from beside itself (pytest puts its directory on the path): every
    Python file's stem and every directory's name."""
    names = set()
    for path in tree.files:
        parts = path.split("/")
        names.update(parts[:-1])
        if parts[-1].endswith((".py", ".pyi")):
            names.add(parts[-1].rsplit(".", 1)[0])
    return names


def _unguarded_imports(syntax: ast.AST) -> set[str]:
    """Top-level names of the absolute imports not under ``try: ... except ImportError`` or
    ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST, guarded: bool) -> None:
        child: ast.AST
        if isinstance(node, ast.Try | ast.TryStar):
            catches = any(_catches_import_error(handler) for handler in node.handlers)
            for child in node.body:
                visit(child, guarded or catches)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, guarded)
            return
        if not guarded:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(syntax, False)
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name | ast.Attribute) and ast.unparse(n).split(".")[-1] in _GUARDS
               for n in names)  # fmt: skip


def _installed(module: str) -> bool:
    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


async def _ruff(root: str, tree: ProjectTree, seconds: float) -> tuple[Check, list[Failure]]:
    ruff = find_ruff()
    if ruff is None:
        return Check("ruff", False, "ruff is not installed", skipped=True), []
    if not tree.python_files:
        return Check("ruff", True), []
    argv = [ruff, "check", "--no-cache", "--isolated", "--select", RUFF_RULES, "--quiet"]
    argv += ["--output-format", "concise", *tree.python_files]
    try:
        # ruff reads the code without running it: no sandbox needed.
        done = await run_tool(argv, root, seconds=seconds)
    except OSError as exc:
        return Check("ruff", False, f"could not run ruff: {exc}"), []
    if done.timed_out:
        return Check("ruff", False, f"timed out after {seconds:g}s"), []
    if done.returncode == 0:
        return Check("ruff", True), []
    failures = []
    for line in done.lines:
        match = _RUFF_LINE.match(line)
        if match and match["file"] in tree.files:
            summary = f"{match['file']}, line {match['line']}: {match['message']}"
            failures.append(Failure("ruff", summary, files=(match["file"],)))
    if not failures:
        first = done.lines[0] if done.lines else "no output"
        return Check("ruff", False, f"ruff exited with status {done.returncode}: {first}"), []
    count = f"{len(failures)} error{'s' if len(failures) != 1 else ''}"
    return Check("ruff", False, count), failures[:MAX_FAILURES]


async def _pytest(
    root: str, tree: ProjectTree, box: Sandbox | None, seconds: float
) -> tuple[Check, list[Failure], list[str]]:
    if not pytest_installed():
        return Check("pytest", False, "pytest is not installed", not_run=True), [], []
    if box is None:
        return Check("pytest", False, NO_SANDBOX, not_run=True), [], []
    roots = ["", *(["src"] if any(p.startswith("src/") for p in tree.files) else [])]
    # Our configuration, not the tree's: a pytest.ini or pyproject.toml the models wrote
    # cannot load plugins or change how the tests are collected and judged.
    python = {path: tree.files[path].content for path in tree.python_files}
    run = await run_tests(box, root, python, tree.test_files, seconds, roots=roots)
    if run.refused:
        refusals = [Failure("pytest", f"refused: {r}", files=(r.path,)) for r in run.refused]
        return Check("pytest", False, run.result.detail), refusals[:MAX_FAILURES], []
    if run.timed_out:
        failure = Failure("pytest", f"the tests {run.result.detail}", files=tuple(tree.test_files))
        return Check("pytest", False, run.result.detail), [failure], []
    verdict = run.result
    prefix = root + "/"
    failures, missing = [], []
    local = _anywhere_names(tree)
    for failed in run.failures[:MAX_FAILURES]:
        message = failed.message.replace(prefix, "")
        trace = failed.trace.replace(prefix, "")
        label = "ERROR collecting" if failed.when == "collection" else "FAILED"
        if failed.when not in ("collection", "call"):
            label = f"ERROR at {failed.when} of"
        test = failed.test.replace(prefix, "")
        # A file that failed to collect implicates itself, not the code it imports (unless
        # named): an import of a missing package is the importer's to fix.
        collected = failed.when != "collection"
        files = _involved(tree, test, f"{message}\n{trace}", follow_imports=collected)
        for module in _NAMED_MODULE.findall(f"{message}\n{trace}"):
            top = module.split(".")[0]
            if "No module named" in message and top not in local and top not in missing:
                missing.append(top)
        # The sandbox's bound a test met goes back with it: the code must fit the sandbox.
        bound = box.refused_by(failed.message, failed.trace, failed.room)
        summary = f"{label} {test} - {message}" + (f"; {bound}" if bound else "")
        failures.append(Failure("pytest", summary, trace[-DETAIL_LIMIT:], files))
    if run.bound and failures and not any(run.bound in f.summary for f in failures):
        failures[0] = replace(failures[0], summary=f"{failures[0].summary}; {run.bound}")
    if not verdict.passed and not failures:
        detail = verdict.detail.replace(prefix, "")
        failures.append(Failure("pytest", detail, files=tuple(tree.test_files)))
    return Check("pytest", verdict.passed, verdict.detail.replace(prefix, "")), failures, missing


def _involved(
    tree: ProjectTree, test: str, text: str, *, follow_imports: bool = True
) -> tuple[str, ...]:
    """The tree files a failure involves: its test's file and the tree modules that file
    imports (the code under test, which a failed assertion implicates without a frame in its
    traceback), files the traceback names, and modules it names (``cannot import name 'x'
    from 'pkg.mod'``)."""
    found: list[str] = []

    def add(path: str | None) -> None:
        if path is not None and path not in found:
            found.append(path)

    test_file = test.split("::")[0]
    if test_file in tree.files:
        add(test_file)
        for path in _imported_files(tree, test_file, follow_packages=True) * follow_imports:
            add(path)
    for path in tree.files:
        if re.search(rf"(?<![\w./-]){re.escape(path)}(?![\w/-])", text):
            add(path)
    for module in _NAMED_MODULE.findall(text):
        add(tree.module_path(module))
    return tuple(found)


def _imported_files(tree: ProjectTree, path: str, *, follow_packages: bool) -> list[str]:
    """The tree files ``path`` imports; with ``follow_packages``, also those a package's
    ``__init__`` it imports re-exports from."""
    try:
        syntax = ast.parse(tree.files[path].content)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    package = path.rsplit("/", 1)[0].replace("/", ".") if "/" in path else ""
    for root in ("src.",):
        package = package.removeprefix(root)
    found: list[str] = []
    for node in ast.walk(syntax):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".") if package else []
                parent = parent[: len(parent) - (node.level - 1)] if node.level > 1 else parent
                base = ".".join([*parent, base] if base else parent)
            modules = [f"{base}.{alias.name}" for alias in node.names if base] + [base]
        for module in modules:
            target = _nearest_module(tree, module)
            if target is not None and target != path and target not in found:
                found.append(target)
    if follow_packages:
        for target in list(found):
            if target.endswith("__init__.py"):
                found += [p for p in _imported_files(tree, target, follow_packages=False)
                          if p not in found]  # fmt: skip
    return found


def _nearest_module(tree: ProjectTree, module: str) -> str | None:
    parts = module.split(".")
    while parts and parts[0]:
        path = tree.module_path(".".join(parts))
        if path is not None:
            return path
        parts.pop()
    return None


# --- revision requests ------------------------------------------------------------------------


def revision_requests(tree: ProjectTree, report: Round) -> dict[str, str]:
    """For each task that wrote a file a failure involves, the request it is sent: those
    failures, the tree's layout and the other tasks' involved files as they stand."""
    by_task: dict[str, list[Failure]] = {}
    test_writers = sorted({w for p in tree.test_files if (w := tree.writer(p)) is not None})
    for failure in report.failures:
        writers = sorted({w for p in failure.files if (w := tree.writer(p)) is not None})
        for writer in writers or test_writers:
            by_task.setdefault(writer, []).append(failure)
    return {
        task_id: _request(tree, report, task_id, failures) for task_id, failures in by_task.items()
    }


def _request(tree: ProjectTree, report: Round, task_id: str, failures: list[Failure]) -> str:
    lines = ["The project's files, as assembled (path: the task that wrote it):"]
    lines += [
        f"- {path}: {'you' if f.task_id == task_id else f.task_id}"
        for path, f in sorted(tree.files.items())
    ]
    lines += ["", "What failed:"]
    for failure in failures:
        lines.append(f"- [{failure.check}] {failure.summary}")
        if failure.detail:
            lines += ["```", failure.detail[-DETAIL_LIMIT:].rstrip("\n"), "```"]
    if report.missing:
        lines += ["", f"Not installed, and never installed for you: {', '.join(report.missing)}. "
                  "Use the standard library instead."]  # fmt: skip
    for refusal in tree.refused:
        if refusal.task_id == task_id:
            lines.append(f"- your file {refusal.name!r} was not placed: {refusal.reason}")
    for conflict in tree.conflicts:
        if conflict.dropped == task_id:
            lines.append(f"- your {conflict.path} was not placed: {conflict.reason}")
    others = sorted({p for f in failures for p in f.files if tree.writer(p) not in (None, task_id)})
    if others:
        lines += ["", "Other tasks' files involved, as they stand:"]
        for path in others:
            content = tree.files[path].content
            shown = (
                content if len(content) <= FILE_EXCERPT else content[:FILE_EXCERPT] + "\n[...]\n"
            )
            lines += [f"```\n# file: {path}\n{shown.rstrip(chr(10))}\n```"]
    text = "\n".join(lines)
    return text if len(text) <= REQUEST_LIMIT else text[: REQUEST_LIMIT - 20] + "\n[... cut ...]"


# --- the phase --------------------------------------------------------------------------------

Reviser = Callable[[str, str, int], Coroutine[Any, Any, None]]  # run as a task


@dataclass
class IntegrationPhase:
    """Checks, then revision rounds, until the tree passes or the rounds run out.

    ``revise(task_id, request, round)`` asks one task for a revision and checkpoints it with
    ``integration_round = round`` (or leaves it unmarked when the run must stop: budget,
    outage); ``save`` persists the record; ``stopped`` says the run must stop now.
    """

    state: ProjectState
    max_rounds: int
    box: Callable[[], Awaitable[Sandbox | None]]
    seconds: float
    revise: Reviser
    save: Callable[[Integration], Awaitable[None]]
    stopped: Callable[[], bool]
    on_round: Callable[[Round, Integration], None] = lambda report, record: None

    async def run(self) -> Integration | None:
        state = self.state
        record = state.integration or Integration(max_rounds=self.max_rounds)
        record.max_rounds = self.max_rounds
        state.integration = record
        while not record.finished:
            current = record.rounds[-1] if record.rounds else None
            if current is not None and not self._answered(current):
                await self._revise(current)
                if self.stopped() or not self._answered(current):
                    return record  # budget, clock or an outage: a resume asks again
                continue
            tree = assemble(state.tasks, state.execution_order, state.results)
            if not tree.python_files and not record.rounds:
                state.integration = None  # nothing to integrate: no Python in the tree
                return None
            box = await self.box() if tree.test_files else None
            report = await check_tree(tree, len(record.rounds) + 1, box=box, seconds=self.seconds)
            if not report.passed and report.number <= record.max_rounds:
                if self._all_completed():
                    report.requests = revision_requests(tree, report)
                else:
                    record.note = "no revision asked for: not every task completed"
            record.rounds.append(report)
            record.finished = report.passed or not report.requests
            await self.save(record)
            self.on_round(report, record)
        return record

    def _answered(self, report: Round) -> bool:
        results = self.state.results
        return all(
            results[task_id].integration_round >= report.number
            for task_id in report.requests
            if task_id in results
        )

    def _all_completed(self) -> bool:
        results = self.state.results
        return all(
            results.get(t) is not None and results[t].status is TaskStatus.COMPLETED
            for t in self.state.execution_order
        )

    async def _revise(self, report: Round) -> None:
        results = self.state.results
        pending = [
            (task_id, request)
            for task_id, request in report.requests.items()
            if task_id in results and results[task_id].integration_round < report.number
        ]
        async with asyncio.TaskGroup() as group:
            for task_id, request in pending:
                group.create_task(self.revise(task_id, request, report.number))
