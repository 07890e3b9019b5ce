"""Hard validators: deterministic checks of a task's output; one failure forces its score to 0.0.

Model output is untrusted. It never chooses a path outside a fresh scratch directory, a command
to run or a package to install. The validators that execute it (``pytest``, and ``latex``: TeX
is a programming language) run it only through ``sandbox``; with no sandbox available they do
not run it and say so. Nothing here blocks the event loop: subprocesses are asynchronous and CPU
or file work runs in a worker thread. The tests the ``pytest`` validator writes are run and
judged by ``verdict.run_tests``, as the project tree's are.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from orchestrator.code.sandbox import NO_SANDBOX, Sandbox, choose, run_tool, scratch_dir
from orchestrator.code.tree_screen import RUNNER_MODULES
from orchestrator.code.verdict import (
    DETAIL_LIMIT,
    exit_description,
    failed,
    noting,
    passed,
    run_tests,
)
from orchestrator.run.tasks import ValidatorResult
from orchestrator.text.fences import PYTHON_TAGS, code_blocks
from orchestrator.text.schemas import best_match, schema_problem, validator
from orchestrator.text.visible import shorten

__all__ = ["KNOWN_VALIDATORS", "code_blocks", "run_validators", "unknown_validators"]

KNOWN_VALIDATORS: frozenset[str] = frozenset(
    {"python_syntax", "pytest", "ruff", "json_schema", "latex", "length"}
)

MIN_LENGTH = 10
MAX_LENGTH = 50_000
# The validators that execute model output, and so need a sandbox.
EXECUTING_VALIDATORS: frozenset[str] = frozenset({"pytest", "latex"})
_NO_OUTPUTS: Mapping[str, str] = MappingProxyType({})

_FILE_COMMENT = re.compile(r"^#\s*(?:file|filename)\s*:\s*(?P<name>\S+)\s*$", re.IGNORECASE)
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
_TEST_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+test_", re.MULTILINE)
_RUFF_DIAGNOSTIC = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$")
_RUFF_BLOCK_FILE = re.compile(r"^block_(?P<n>\d+)\.py$")

# warnings.catch_warnings mutates process-wide state; serialising our own uses keeps two
# concurrent syntax checks from restoring each other's filters and silencing warnings for good.
_WARNINGS_LOCK = threading.Lock()


def unknown_validators(names: Iterable[str]) -> list[str]:
    """The names that are not known validators, in the order given."""
    return [name for name in names if name not in KNOWN_VALIDATORS]


def _python_blocks(text: str) -> list[str]:
    return [block for block in code_blocks(text, PYTHON_TAGS) if block.strip()]


async def run_validators(
    names: Sequence[str],
    output: str,
    *,
    output_schema: dict[str, Any] | None = None,
    dependency_outputs: Mapping[str, str] = _NO_OUTPUTS,
    timeout: float = 60.0,  # noqa: ASYNC109 - a limit per subprocess, not for the whole call
    unsafe_validators: bool = False,
) -> list[ValidatorResult]:
    """Run the named validators on ``output``: one result per name, in the same order.

    ``output_schema`` is what ``json_schema`` checks against; ``dependency_outputs`` (task id to
    output) supplies code the ``pytest`` validator writes before this output's own; ``timeout``
    (seconds) limits each validator's subprocess. Code is executed only in the sandbox that
    ``sandbox.detect()`` finds; without one, the executing validators report ``not_run``, or
    with ``unsafe_validators`` run it unisolated. Unknown names raise ``ValueError``.
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of validator names, not one string")
    unknown = unknown_validators(names)
    if unknown:
        raise ValueError(
            f"unknown validator(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KNOWN_VALIDATORS))}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")

    box: Sandbox | None = None
    if EXECUTING_VALIDATORS.intersection(names):
        box = await choose(unsafe_allowed=unsafe_validators)
    checks = {
        "python_syntax": lambda: asyncio.to_thread(_check_syntax, output),
        "length": lambda: _check_length(output),
        "json_schema": lambda: asyncio.to_thread(_check_json, output, output_schema),
        "pytest": lambda: _check_pytest(output, dependency_outputs, timeout, box),
        "ruff": lambda: _check_ruff(output, timeout),
        "latex": lambda: _check_latex(output, timeout, box),
    }
    tasks = [asyncio.create_task(checks[name]()) for name in names]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # gather leaves the other checks running when one raises; stop them, so that no
        # subprocess outlives the call.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _skipped(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=True, skipped=True, detail=shorten(detail, DETAIL_LIMIT))


# --- in-process checks ------------------------------------------------------------------------


async def _check_length(output: str) -> ValidatorResult:
    length = len(output.strip())
    if length < MIN_LENGTH:
        return failed("length", f"{length:,} characters; at least {MIN_LENGTH:,} required")
    if length > MAX_LENGTH:
        return failed("length", f"{length:,} characters; at most {MAX_LENGTH:,} allowed")
    return passed("length", f"{length:,} characters")


def _check_syntax(output: str) -> ValidatorResult:
    blocks = code_blocks(output, PYTHON_TAGS)
    if not any(block.strip() for block in blocks):
        return failed("python_syntax", "no Python code found")
    for number, source in enumerate(blocks, start=1):
        problem = compile_problem(source, f"block {number}")
        if problem:
            return failed("python_syntax", problem)
    return passed("python_syntax", f"{len(blocks)} block(s) compile")


def compile_problem(source: str, label: str) -> str | None:
    """Why ``source`` (called ``label`` in the message) does not compile, or None if it does.
    Compiling runs none of it."""
    try:
        # The output's own SyntaxWarnings are not ours to print; dont_inherit keeps this
        # module's __future__ imports from changing what counts as valid.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, f"<{label}>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f", line {exc.lineno}" if exc.lineno else ""
        return f"{label}{where}: {exc.msg}"
    except ValueError as exc:  # e.g. a NUL byte, which 3.11 reports as ValueError
        return f"{label}: {exc}"
    except (RecursionError, MemoryError):
        return f"{label}: nested too deeply to compile"
    return None


def _check_json(output: str, schema: dict[str, Any] | None) -> ValidatorResult:
    candidates = code_blocks(output, ("json",)) or code_blocks(output, ("",))
    text = candidates[0] if candidates else output
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return failed(
            "json_schema", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        )
    except RecursionError:
        return failed("json_schema", "invalid JSON: nested too deeply")
    if schema is None:
        return passed("json_schema", "valid JSON; no schema given")
    problem = schema_problem(schema)
    if problem is not None:
        return failed("json_schema", f"output_schema is not a valid JSON Schema: {problem}")
    try:
        errors = list(validator(schema).iter_errors(data))
    except RecursionError:
        return failed("json_schema", "JSON nested too deeply to validate")
    error = best_match(errors)  # None only when there are none
    if error is None:
        return passed("json_schema", "valid JSON; matches the schema")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return failed("json_schema", f"{error.json_path}: {error.message}{more}")


# --- subprocesses -----------------------------------------------------------------------------


def _write(root: str, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = Path(root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8", errors="replace")


def _not_run(name: str) -> ValidatorResult:
    return ValidatorResult(name, passed=False, not_run=True, detail=NO_SANDBOX)


# --- pytest -----------------------------------------------------------------------------------


def pytest_installed() -> bool:
    return importlib.util.find_spec("pytest") is not None


def _has_tests(source: str) -> bool:
    return _TEST_DEF.search(source) is not None


def _declared_path(source: str, root: str) -> str | None:
    """The relative path a block's ``# file: name.py`` first line asks for, if it is safe."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    match = _FILE_COMMENT.match(first)
    if match is None:
        return None
    name = match["name"].strip("`'\"")
    if len(name) > 200 or not _SAFE_PATH.fullmatch(name) or not name.endswith(".py"):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.name == ".py":
        return None
    if path.parts[0].removesuffix(".py") in RUNNER_MODULES:
        return None
    target = Path(root, *path.parts).resolve()
    if not target.is_relative_to(root) or target == Path(root):
        return None
    return path.as_posix()


def _compiles(source: str) -> bool:
    return compile_problem(source, "block 0") is None


def _plan_files(root: str, dependency_blocks: list[str], own_blocks: list[str]) -> dict[str, str]:
    """Relative path -> source for every block; a later block replaces an earlier one."""
    # A dependency that is prose (a design, a review) arrives as one unfenced "block"; writing
    # it would take the solution.py name from the real code, so only code that compiles counts.
    blocks = [block for block in dependency_blocks if _compiles(block)] + own_blocks
    files: dict[str, str] = {}
    tests = modules = 0
    for source in blocks:
        name = _declared_path(source, root)
        if name is None and _has_tests(source):
            tests += 1
            name = f"test_generated_{tests}.py"
        elif name is None:
            modules += 1
            name = "solution.py" if modules == 1 else f"module_{modules}.py"
        files.pop(name, None)
        files[name] = source
    return files


def _prepare_pytest(
    root: str, dependency_blocks: list[str], own_blocks: list[str]
) -> tuple[dict[str, str], list[str]]:
    """Write the blocks under ``root``; return every file written and the test files."""
    files = _plan_files(root, dependency_blocks, own_blocks)
    tests = [name for name, source in files.items() if _has_tests(source)]
    if tests:
        _write(root, files)
    return files, tests


async def _check_pytest(
    output: str, dependency_outputs: Mapping[str, str], seconds: float, box: Sandbox | None
) -> ValidatorResult:
    if not pytest_installed():
        return failed("pytest", "pytest is not installed")
    dependency_blocks = [b for text in dependency_outputs.values() for b in _python_blocks(text)]
    own_blocks = _python_blocks(output)
    if not any(_has_tests(block) for block in own_blocks + dependency_blocks):
        return failed("pytest", "no tests found")
    if box is None:
        return _not_run("pytest")
    async with scratch_dir() as root:
        try:
            files, tests = await asyncio.to_thread(
                _prepare_pytest, root, dependency_blocks, own_blocks
            )
        except OSError as exc:
            return failed("pytest", f"could not write the code: {exc}")
        if not tests:
            return failed("pytest", "no tests found")
        return (await run_tests(box, root, files, tests, seconds)).result


# --- ruff -------------------------------------------------------------------------------------


def find_ruff() -> str | None:
    found = shutil.which("ruff")
    if found:
        return found
    # A virtualenv's tools sit beside its interpreter even when the venv is not activated.
    sibling = Path(sys.executable).parent / "ruff"
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def _ruff_problem(line: str) -> str:
    match = _RUFF_DIAGNOSTIC.match(line)
    if match is None:
        return line
    block = _RUFF_BLOCK_FILE.match(match["file"])
    where = f"block {block['n']}" if block else match["file"]
    message = match["message"].replace("[*] ", "", 1)
    return f"{where}, line {match['line']}, column {match['col']}: {message}"


async def _check_ruff(output: str, seconds: float) -> ValidatorResult:
    ruff = find_ruff()
    if ruff is None:
        return _skipped("ruff", "ruff is not installed")
    blocks = code_blocks(output, PYTHON_TAGS)
    if not any(block.strip() for block in blocks):
        return failed("ruff", "no Python code found")
    # Numbered like python_syntax's blocks, so both name the same block the same way.
    files = {f"block_{n}.py": source for n, source in enumerate(blocks, start=1)}
    argv = [ruff, "check", "--no-cache", "--isolated", "--select", "E,F", "--ignore", "E501"]
    argv += ["--quiet"]
    argv += ["--output-format", "concise", *files]
    async with scratch_dir() as root:
        try:
            await asyncio.to_thread(_write, root, files)
            # ruff reads the code without running it: no sandbox needed.
            done = await run_tool(argv, root, seconds=seconds)
        except OSError as exc:
            return failed("ruff", f"could not run ruff: {exc}")
    if done.timed_out:
        return failed("ruff", f"timed out after {seconds:g}s")
    if done.returncode == 0:
        return passed("ruff", "no problems")
    problems = [line for line in done.lines if _RUFF_DIAGNOSTIC.match(line)]
    if done.returncode == 1 and problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        return failed("ruff", f"{_ruff_problem(problems[0])} ({count})")
    first = done.lines[0] if done.lines else "no output"
    return failed("ruff", f"{exit_description('ruff', done.returncode or 0)}: {first}")


# --- latex ------------------------------------------------------------------------------------


def _find_pdflatex() -> str | None:
    return shutil.which("pdflatex")


async def _check_latex(output: str, seconds: float, box: Sandbox | None) -> ValidatorResult:
    pdflatex = _find_pdflatex()
    if pdflatex is None:
        return _skipped("latex", "pdflatex is not installed")
    candidates = code_blocks(output, ("latex", "tex")) or code_blocks(output, ("",))
    if not candidates or not candidates[0].strip():
        return failed("latex", "no LaTeX found")
    # TeX is a programming language that can read any file it can see: it runs sandboxed.
    if box is None:
        return _not_run("latex")
    argv = [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"]
    async with scratch_dir() as root:
        try:
            await asyncio.to_thread(_write, root, {"doc.tex": candidates[0]})
            tool_dir = os.path.dirname(pdflatex)
            done = await box.run(argv, root, seconds=seconds, read_only=[tool_dir])
        except OSError as exc:
            return failed("latex", f"could not run pdflatex: {exc}")
    if done.timed_out:
        return failed("latex", f"timed out after {seconds:g}s")
    if done.returncode == 0:
        return passed("latex", "compiles")
    error = next((line for line in done.lines if line.startswith("!")), "")
    result = failed("latex", error or exit_description("pdflatex", done.returncode or 0))
    return noting(result, box.stopped_by(done, seconds))
