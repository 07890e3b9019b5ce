"""Hard validators: deterministic checks of a task's output; one failure forces its score to 0.0.

Model output is untrusted. It never chooses a path outside a fresh temporary directory, a
command to run or a package to install. Generated code runs only here, in a subprocess in its
own session and temporary directory, under a time limit, with credentials removed from its
environment. Nothing here blocks the event loop: subprocesses are asynchronous and CPU or file
work runs in a worker thread.

POSIX only: a timed-out run is stopped by killing its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any
from xml.etree import ElementTree

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from .fences import code_blocks
from .models import ValidatorResult

__all__ = ["KNOWN_VALIDATORS", "code_blocks", "run_validators", "unknown_validators"]

KNOWN_VALIDATORS: frozenset[str] = frozenset(
    {"python_syntax", "pytest", "ruff", "json_schema", "latex", "length"}
)

MIN_LENGTH = 10
MAX_LENGTH = 50_000
DETAIL_LIMIT = 300
OUTPUT_CAP = 64 * 1024  # bytes of a subprocess's output kept: half from the start, half the end

# What the validators treat as Python. Wider than code_blocks' default because models do write
# ```python3, and missing such a block would fail a correct answer.
PYTHON_TAGS = ("python", "py", "python3", "")

_NO_OUTPUTS: Mapping[str, str] = MappingProxyType({})

# Substrings (of the upper-cased name) of environment variables generated code must not see.
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")

# The verdict must not depend on the caller's own pytest options or plugins.
_PYTEST_ENV_UNSET = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")

# A block written under one of these names would replace the test runner itself, letting the
# code under test report whatever it likes.
_RESERVED_MODULES = frozenset(
    {"pytest", "_pytest", "pluggy", "py", "sitecustomize", "usercustomize", "conftest"}
)

_FILE_COMMENT = re.compile(r"^#\s*(?:file|filename)\s*:\s*(?P<name>\S+)\s*$", re.IGNORECASE)
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
_TEST_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+test_", re.MULTILINE)
_PYTEST_SUMMARY = re.compile(
    r"\b(?:passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|no tests ran)\b"
    r".*\bin \d+(?:\.\d+)?s\b"
)
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
) -> list[ValidatorResult]:
    """Run the named validators on ``output``: one result per name, in the same order.

    ``output_schema`` is what ``json_schema`` checks against; ``dependency_outputs`` (task id to
    output) supplies code the ``pytest`` validator writes before this output's own; ``timeout``
    (seconds) limits each validator's subprocess. Unknown names raise ``ValueError``.
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

    checks = {
        "python_syntax": lambda: asyncio.to_thread(_check_syntax, output),
        "length": lambda: _check_length(output),
        "json_schema": lambda: asyncio.to_thread(_check_json, output, output_schema),
        "pytest": lambda: _check_pytest(output, dependency_outputs, timeout),
        "ruff": lambda: _check_ruff(output, timeout),
        "latex": lambda: _check_latex(output, timeout),
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


def _passed(name: str, detail: str = "") -> ValidatorResult:
    return ValidatorResult(name, passed=True, detail=_one_line(detail))


def _failed(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=False, detail=_one_line(detail))


def _skipped(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=True, skipped=True, detail=_one_line(detail))


def _one_line(text: str, limit: int = DETAIL_LIMIT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


# --- in-process checks ------------------------------------------------------------------------


async def _check_length(output: str) -> ValidatorResult:
    length = len(output.strip())
    if length < MIN_LENGTH:
        return _failed("length", f"{length:,} characters; at least {MIN_LENGTH:,} required")
    if length > MAX_LENGTH:
        return _failed("length", f"{length:,} characters; at most {MAX_LENGTH:,} allowed")
    return _passed("length", f"{length:,} characters")


def _check_syntax(output: str) -> ValidatorResult:
    blocks = code_blocks(output, PYTHON_TAGS)
    if not any(block.strip() for block in blocks):
        return _failed("python_syntax", "no Python code found")
    for number, source in enumerate(blocks, start=1):
        problem = _compile_problem(source, number)
        if problem:
            return _failed("python_syntax", problem)
    return _passed("python_syntax", f"{len(blocks)} block(s) compile")


def _compile_problem(source: str, number: int) -> str | None:
    """Why block ``number`` does not compile, or None if it does."""
    try:
        # The output's own SyntaxWarnings are not ours to print; dont_inherit keeps this
        # module's __future__ imports from changing what counts as valid.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, f"<block {number}>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f", line {exc.lineno}" if exc.lineno else ""
        return f"block {number}{where}: {exc.msg}"
    except ValueError as exc:  # e.g. a NUL byte, which 3.11 reports as ValueError
        return f"block {number}: {exc}"
    except (RecursionError, MemoryError):
        return f"block {number}: nested too deeply to compile"
    return None


def _check_json(output: str, schema: dict[str, Any] | None) -> ValidatorResult:
    candidates = code_blocks(output, ("json",)) or code_blocks(output, ("",))
    text = candidates[0] if candidates else output
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return _failed(
            "json_schema", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        )
    except RecursionError:
        return _failed("json_schema", "invalid JSON: nested too deeply")
    if schema is None:
        return _passed("json_schema", "valid JSON; no schema given")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return _failed("json_schema", f"output_schema is not a valid JSON Schema: {exc.message}")
    try:
        errors = list(Draft202012Validator(schema).iter_errors(data))
    except RecursionError:
        return _failed("json_schema", "JSON nested too deeply to validate")
    if not errors:
        return _passed("json_schema", "valid JSON; matches the schema")
    error = best_match(errors)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _failed("json_schema", f"{error.json_path}: {error.message}{more}")


# --- sandboxed subprocesses -------------------------------------------------------------------


@dataclass(frozen=True)
class _Completed:
    returncode: int | None  # None when the run was stopped at its time limit
    output: str  # stdout and stderr interleaved; the middle is dropped beyond OUTPUT_CAP

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.output.splitlines() if line.strip()]


class _CappedOutput:
    """Keeps the first and last ``cap / 2`` bytes: tools put their summary at the end."""

    def __init__(self, cap: int = OUTPUT_CAP) -> None:
        self._half = cap // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = False

    def feed(self, chunk: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._half:
            self._dropped = True
            del self._tail[: len(self._tail) - self._half]

    def text(self) -> str:
        gap = b"\n[... output truncated ...]\n" if self._dropped else b""
        return bytes(self._head + gap + self._tail).decode("utf-8", errors="replace")


def _is_secret(name: str) -> bool:
    upper = name.upper()
    return upper.endswith("_BASE_URL") or any(marker in upper for marker in _SECRET_MARKERS)


def _sandbox_env(workdir: str, unset: Iterable[str] = ()) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not _is_secret(name)}
    for name in unset:
        env.pop(name, None)
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=workdir, PYTHONPATH=workdir)
    return env


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _drain(stream: asyncio.StreamReader, sink: _CappedOutput) -> None:
    while chunk := await stream.read(65536):
        sink.feed(chunk)


async def _run_sandboxed(
    argv: Sequence[str], workdir: str, *, seconds: float, unset: Iterable[str] = ()
) -> _Completed:
    """Run ``argv`` in ``workdir`` with a scrubbed environment; stop its process group at
    ``seconds`` or on cancellation. Raises OSError if the program cannot be started."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        env=_sandbox_env(workdir, unset),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    sink = _CappedOutput()
    reader = asyncio.create_task(_drain(proc.stdout, sink))
    timed_out = False
    try:
        async with asyncio.timeout(seconds):
            # Shielded so that a timeout leaves the reader to collect what is still in the pipe.
            await asyncio.shield(reader)
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        # Also after a normal exit: anything the code started in the background shares the
        # group and must not outlive the check.
        _kill_group(proc.pid)
        await proc.wait()
        # A process that left our session can hold the pipe open forever; stop waiting for it.
        await asyncio.wait({reader}, timeout=1.0)
        reader.cancel()
    return _Completed(None if timed_out else proc.returncode, sink.text())


def _make_tempdir() -> tuple[tempfile.TemporaryDirectory[str], str]:
    tmp = tempfile.TemporaryDirectory(prefix="orchestrator-validate-", ignore_cleanup_errors=True)
    # Resolved, so that containment checks compare like with like (/tmp may be a symlink).
    return tmp, os.path.realpath(tmp.name)


@contextlib.asynccontextmanager
async def _workdir() -> AsyncIterator[str]:
    tmp, path = await asyncio.to_thread(_make_tempdir)
    try:
        yield path
    finally:
        await asyncio.to_thread(tmp.cleanup)


def _write(root: str, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = Path(root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8", errors="replace")


def _exit_description(tool: str, returncode: int) -> str:
    if returncode < 0:
        return f"{tool} was killed by signal {-returncode}"
    return f"{tool} exited with status {returncode}"


# --- pytest -----------------------------------------------------------------------------------


def _pytest_installed() -> bool:
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
    if path.parts[0].removesuffix(".py") in _RESERVED_MODULES:
        return None
    target = Path(root, *path.parts).resolve()
    if not target.is_relative_to(root) or target == Path(root):
        return None
    return path.as_posix()


def _compiles(source: str) -> bool:
    return _compile_problem(source, 0) is None


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


def _prepare_pytest(root: str, dependency_blocks: list[str], own_blocks: list[str]) -> list[str]:
    """Write the blocks and an empty pytest.ini under ``root``; return the test files."""
    files = _plan_files(root, dependency_blocks, own_blocks)
    tests = [name for name, source in files.items() if _has_tests(source)]
    if tests:
        # Makes root the rootdir, so no pytest.ini, pyproject.toml or conftest.py above the
        # temporary directory can change how the tests run.
        Path(root, "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        _write(root, files)
    return tests


def _junit_counts(report: Path) -> dict[str, int] | None:
    """Tests run, and how they ended, from pytest's JUnit XML report (None if absent)."""
    try:
        root = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for name in totals:
            totals[name] += int(suite.get(name, "0") or 0)
    failed = totals["failures"] + totals["errors"] + totals["skipped"]
    return {**totals, "passed": totals["tests"] - failed}


def _pytest_detail(lines: list[str]) -> str:
    summary = next(
        (line.strip("= ") for line in reversed(lines) if _PYTEST_SUMMARY.search(line)), ""
    )
    first_problem = next((line for line in lines if line.startswith(("FAILED ", "ERROR "))), "")
    return "; ".join(part for part in (summary, first_problem) if part)


async def _check_pytest(
    output: str, dependency_outputs: Mapping[str, str], seconds: float
) -> ValidatorResult:
    if not _pytest_installed():
        return _failed("pytest", "pytest is not installed")
    dependency_blocks = [b for text in dependency_outputs.values() for b in _python_blocks(text)]
    own_blocks = _python_blocks(output)
    async with _workdir() as root:
        try:
            tests = await asyncio.to_thread(_prepare_pytest, root, dependency_blocks, own_blocks)
        except OSError as exc:
            return _failed("pytest", f"could not write the code: {exc}")
        if not tests:
            return _failed("pytest", "no tests found")
        # The report lives outside the code's directory, and conftest hooks are off, so the
        # verdict is pytest's own count rather than anything the code under test prints.
        with tempfile.TemporaryDirectory(prefix="orchestrator-report-") as report_dir:
            report = Path(report_dir, "report.xml")
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            argv += ["--color=no", "--noconftest", f"--junitxml={report}"]
            try:
                done = await _run_sandboxed(
                    [*argv, *tests], root, seconds=seconds, unset=_PYTEST_ENV_UNSET
                )
            except OSError as exc:
                return _failed("pytest", f"could not start pytest: {exc}")
            counts = await asyncio.to_thread(_junit_counts, report)
    if done.timed_out:
        return _failed("pytest", f"timed out after {seconds:g}s")
    detail = _pytest_detail(done.lines)
    if done.returncode == 0:
        if counts is None:
            return _failed("pytest", "pytest reported no results")
        if counts["passed"] < 1:
            return _failed("pytest", f"no test passed ({detail or 'nothing ran'})")
        return _passed("pytest", detail)
    if not detail:
        last = done.lines[-1] if done.lines else "no output"
        detail = f"{_exit_description('pytest', done.returncode or 0)}: {last}"
    return _failed("pytest", detail)


# --- ruff -------------------------------------------------------------------------------------


def _find_ruff() -> str | None:
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
    ruff = _find_ruff()
    if ruff is None:
        return _skipped("ruff", "ruff is not installed")
    blocks = code_blocks(output, PYTHON_TAGS)
    if not any(block.strip() for block in blocks):
        return _failed("ruff", "no Python code found")
    # Numbered like python_syntax's blocks, so both name the same block the same way.
    files = {f"block_{n}.py": source for n, source in enumerate(blocks, start=1)}
    argv = [ruff, "check", "--no-cache", "--isolated", "--select", "E,F", "--ignore", "E501"]
    argv += ["--quiet"]
    argv += ["--output-format", "concise", *files]
    async with _workdir() as root:
        try:
            await asyncio.to_thread(_write, root, files)
            done = await _run_sandboxed(argv, root, seconds=seconds)
        except OSError as exc:
            return _failed("ruff", f"could not run ruff: {exc}")
    if done.timed_out:
        return _failed("ruff", f"timed out after {seconds:g}s")
    if done.returncode == 0:
        return _passed("ruff", "no problems")
    problems = [line for line in done.lines if _RUFF_DIAGNOSTIC.match(line)]
    if done.returncode == 1 and problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        return _failed("ruff", f"{_ruff_problem(problems[0])} ({count})")
    first = done.lines[0] if done.lines else "no output"
    return _failed("ruff", f"{_exit_description('ruff', done.returncode or 0)}: {first}")


# --- latex ------------------------------------------------------------------------------------


def _find_pdflatex() -> str | None:
    return shutil.which("pdflatex")


async def _check_latex(output: str, seconds: float) -> ValidatorResult:
    pdflatex = _find_pdflatex()
    if pdflatex is None:
        return _skipped("latex", "pdflatex is not installed")
    candidates = code_blocks(output, ("latex", "tex")) or code_blocks(output, ("",))
    if not candidates or not candidates[0].strip():
        return _failed("latex", "no LaTeX found")
    argv = [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"]
    async with _workdir() as root:
        try:
            await asyncio.to_thread(_write, root, {"doc.tex": candidates[0]})
            done = await _run_sandboxed(argv, root, seconds=seconds)
        except OSError as exc:
            return _failed("latex", f"could not run pdflatex: {exc}")
    if done.timed_out:
        return _failed("latex", f"timed out after {seconds:g}s")
    if done.returncode == 0:
        return _passed("latex", "compiles")
    error = next((line for line in done.lines if line.startswith("!")), "")
    return _failed("latex", error or _exit_description("pdflatex", done.returncode or 0))
