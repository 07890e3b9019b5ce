"""Hard validators: deterministic checks of a task's output; one failure forces its score to 0.0.

Model output is untrusted. It never chooses a path outside a fresh scratch directory, a command
to run or a package to install. The validators that execute it (``pytest``, and ``latex``: TeX
is a programming language) run it only through ``sandbox``; with no sandbox available they do
not run it and say so. Nothing here blocks the event loop: subprocesses are asynchronous and CPU
or file work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from orchestrator.code import pytest_channel
from orchestrator.code.sandbox import (
    NO_SANDBOX,
    Completed,
    Sandbox,
    choose,
    run_tool,
    scratch_dir,
)
from orchestrator.code.tree_screen import RUNNER_MODULES, Refused, screen
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
DETAIL_LIMIT = 300
# The validators that execute model output, and so need a sandbox.
EXECUTING_VALIDATORS: frozenset[str] = frozenset({"pytest", "latex"})
PYTEST_RUNNER = pytest_channel.__file__
# The second witness: runs the tests again without pytest's runner (standard library only).
WITNESS_RUNNER = os.path.join(os.path.dirname(PYTEST_RUNNER), "witness_runner.py")

_NO_OUTPUTS: Mapping[str, str] = MappingProxyType({})
# Our pytest configuration, written beside the tests under a name no file of theirs can have.
PYTEST_CONFIG = ".verdict.ini"
INTERNAL_ERROR = 3  # pytest's exit status when its own code failed

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


def _passed(name: str, detail: str = "") -> ValidatorResult:
    return ValidatorResult(name, passed=True, detail=shorten(detail, DETAIL_LIMIT))


def _failed(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=False, detail=shorten(detail, DETAIL_LIMIT))


def _skipped(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=True, skipped=True, detail=shorten(detail, DETAIL_LIMIT))


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
        problem = compile_problem(source, f"block {number}")
        if problem:
            return _failed("python_syntax", problem)
    return _passed("python_syntax", f"{len(blocks)} block(s) compile")


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
        return _failed(
            "json_schema", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        )
    except RecursionError:
        return _failed("json_schema", "invalid JSON: nested too deeply")
    if schema is None:
        return _passed("json_schema", "valid JSON; no schema given")
    problem = schema_problem(schema)
    if problem is not None:
        return _failed("json_schema", f"output_schema is not a valid JSON Schema: {problem}")
    try:
        errors = list(validator(schema).iter_errors(data))
    except RecursionError:
        return _failed("json_schema", "JSON nested too deeply to validate")
    error = best_match(errors)  # None only when there are none
    if error is None:
        return _passed("json_schema", "valid JSON; matches the schema")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _failed("json_schema", f"{error.json_path}: {error.message}{more}")


# --- subprocesses -----------------------------------------------------------------------------


def _write(root: str, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = Path(root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8", errors="replace")


def _exit_description(tool: str, returncode: int) -> str:
    if returncode < 0:
        return f"{tool} was killed by {_signal_name(-returncode)}"
    if 128 < returncode < 128 + signal.NSIG:
        # The sandbox's first process reports its child's death by a signal as a shell does.
        return f"{tool} was killed by {_signal_name(returncode - 128)} (exit status {returncode})"
    return f"{tool} exited with status {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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
        return _failed("pytest", "pytest is not installed")
    dependency_blocks = [b for text in dependency_outputs.values() for b in _python_blocks(text)]
    own_blocks = _python_blocks(output)
    if not any(_has_tests(block) for block in own_blocks + dependency_blocks):
        return _failed("pytest", "no tests found")
    if box is None:
        return _not_run("pytest")
    async with scratch_dir() as root:
        try:
            files, tests = await asyncio.to_thread(
                _prepare_pytest, root, dependency_blocks, own_blocks
            )
        except OSError as exc:
            return _failed("pytest", f"could not write the code: {exc}")
        if not tests:
            return _failed("pytest", "no tests found")
        return (await run_tests(box, root, files, tests, seconds)).result


@dataclass(frozen=True)
class TestRun:
    """The verdict on a set of tests, with what it rests on."""

    __test__ = False

    result: ValidatorResult
    failures: list[TestFailure] = field(default_factory=list)  # as pytest reported them
    refused: list[Refused] = field(default_factory=list)  # the screen's: nothing ran
    timed_out: bool = False
    bound: str = ""  # the sandbox's bound the run met, if one did (in result's detail too)


async def run_tests(
    box: Sandbox,
    root: str,
    files: Mapping[str, str],
    tests: Sequence[str],
    seconds: float,
    *,
    roots: Sequence[str] = ("",),
) -> TestRun:
    """Judge ``tests`` (paths relative to ``root``, where ``files`` are written; ``roots``: the
    directories under it the code imports from): the one way both the ``pytest`` validator and
    the project tree's integration launch and judge pytest.

    The files are screened first (``tree_screen``): a refusal fails the run and nothing runs.
    pytest then runs in ``box`` under our configuration alone: no conftest files, no cache,
    no plugin but our channel (``pytest_channel`` turns plugin autoload off), the verdict read
    only from the outcomes it streams, checked against its totals and exit status. Each run
    gets a key of its own on its standard input, and only lines carrying it count: the code
    under test inherits the result channel, but not the key. A failure that met one of the
    sandbox's bounds says which (``Sandbox.stopped_by``, ``Sandbox.refused_by``).
    """
    refused = await asyncio.to_thread(screen, files, roots)
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return TestRun(_failed("pytest", f"refused: {refused[0]}{more}"), refused=refused)
    config = os.path.join(root, PYTEST_CONFIG)
    async with scratch_dir() as again:
        try:
            await asyncio.to_thread(_prepare_runs, root, again, roots, config)
        except OSError as exc:
            return TestRun(_failed("pytest", f"could not prepare the tests: {exc}"))
        argv = [sys.executable, "-I", "-B", PYTEST_RUNNER, "{channel}", "-q", "-p"]
        argv += ["no:cacheprovider", "--color=no", "--noconftest", "-c", config]
        argv += ["--rootdir", root, *tests]
        paths = json.dumps([os.path.join(again, r) if r else again for r in roots])
        second = [sys.executable, "-I", "-B", WITNESS_RUNNER, "{channel}", paths, *tests]
        runners = [PYTEST_RUNNER, WITNESS_RUNNER]
        key, again_key = secrets.token_hex(16).encode(), secrets.token_hex(16).encode()
        # Both at once, each in its own copy of the files: what one run writes, the other
        # never sees. Run from the root, so that tracebacks name the files as the tree does.
        done, again_done = await asyncio.gather(
            box.run(argv, root, seconds=seconds, channel=True, read_only=runners, stdin=key),
            box.run(
                second, again, seconds=seconds, channel=True, read_only=runners, stdin=again_key
            ),
            return_exceptions=True,
        )
    for run in (done, again_done):
        if isinstance(run, OSError):
            return TestRun(_failed("pytest", f"could not start the tests: {run}"))
        if isinstance(run, BaseException):
            raise run
    assert isinstance(done, Completed) and isinstance(again_done, Completed)
    if done.timed_out:
        return TestRun(_failed("pytest", f"timed out after {seconds:g}s"), timed_out=True)
    stream = TestStream.parse(done.channel, key)
    verdict = pytest_verdict(done, key)
    if not verdict.passed:
        bound = _bound(box, done, seconds, stream.failures, verdict.detail)
        return TestRun(_noting(verdict, bound), stream.failures, bound=bound)
    if again_done.timed_out:
        detail = f"the second run of the tests timed out after {seconds:g}s"
        return TestRun(_failed("pytest", detail), timed_out=True)
    witness = SecondRun.parse(again_done.channel, again_key)
    problem, failures = witness.disagreement(stream, again_done)
    if problem:
        result = _failed("pytest", f"test results inconsistent: {problem}")
        bound = _bound(box, again_done, seconds, failures, problem)
        return TestRun(_noting(result, bound), failures, bound=bound)
    if not witness.confirmed:
        why = f": {witness.unwitnessed[0]}" if witness.unwitnessed else ""
        detail = f"{verdict.detail}, but no passing test could be run a second time{why}"
        return TestRun(_failed("pytest", detail))
    return TestRun(_passed("pytest", f"{verdict.detail} ({witness.confirmed} run twice)"))


def _bound(
    box: Sandbox, done: Completed, seconds: float, failures: Sequence[TestFailure], said: str
) -> str:
    """Which of the sandbox's bounds the failing run ``done`` met, as ``Sandbox.stopped_by``
    and ``Sandbox.refused_by`` say it, or "". ``said``: the verdict, which names what stopped
    a run outside any test (its last words, pytest's internal error)."""
    found = box.stopped_by(done, seconds)
    for failure in failures:
        found = found or box.refused_by(failure.message, failure.trace, failure.room)
    return found or box.refused_by(said)


def _noting(result: ValidatorResult, bound: str) -> ValidatorResult:
    """``result`` with the sandbox's bound it met said at the end of its detail, whatever the
    detail's length."""
    if not bound:
        return result
    room = DETAIL_LIMIT - len(bound) - 2
    return _failed(result.name, f"{shorten(result.detail, room)}; {bound}")


def _prepare_runs(root: str, again: str, roots: Sequence[str], config: str) -> None:
    """Our pytest configuration beside the files, and a copy of them for the second run."""
    paths = " ".join(os.path.join(root, r) if r else root for r in roots)
    Path(config).write_text(f"[pytest]\npythonpath = {paths}\n", encoding="utf-8")
    shutil.copytree(root, again, dirs_exist_ok=True, symlinks=True)


@dataclass
class SecondRun:
    """What the second witness streamed: each test's outcome, and whether it finished."""

    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> its message
    finished: bool = False
    garbled: str = ""
    confirmed: int = 0  # tests both runs passed, counted by ``disagreement``
    unwitnessed: list[str] = field(default_factory=list)  # "id: why", in order

    @classmethod
    def parse(cls, data: bytes, key: bytes) -> SecondRun:
        run = cls()
        for line in data.splitlines():
            message = _keyed(line, key)
            if message is _UNKEYED:
                run.garbled = f"the second run's channel {NOT_THE_RUNNERS}"
                break
            if not isinstance(message, dict) or run.finished:
                run.garbled = "the second run's channel holds something else than its results"
                break
            if message.get("event") == "finish":
                run.finished = True
            elif message.get("event") == "test" and message.get("outcome") in (
                "passed",
                "failed",
                "unwitnessed",
            ):
                test = str(message.get("id"))
                if test in run.outcomes and message["outcome"] != "failed":
                    continue  # a test (or a scope's teardown) failing once stays failed
                run.outcomes[test] = message
                if message["outcome"] == "unwitnessed":
                    run.unwitnessed.append(f"{test}: {message.get('message')}")
            else:
                run.garbled = "a malformed message from the second run"
                break
        return run

    def disagreement(self, stream: TestStream, done: Completed) -> tuple[str, list[TestFailure]]:
        """Why the second run contradicts pytest's passing verdict (and the tests it failed),
        or "" when every test it ran agrees; counts the tests both passed."""
        if self.garbled:
            return self.garbled, []
        if not self.finished:
            last = (done.lines or ["no output"])[-1]
            what = _exit_description("the second run", done.returncode or 0)
            return f"the second run of the tests stopped before it finished ({what}: {last})", []
        # pytest's outcome per test, its parameter sets taken together: the worst of theirs.
        first: dict[str, str] = {}
        for test, outcome in stream.outcomes.items():
            base = test.split("[", 1)[0]
            if first.get(base) != "failed" and (outcome != "skipped" or base not in first):
                first[base] = outcome
        failures, problems = [], []
        for test, message in self.outcomes.items():
            outcome = message["outcome"]
            if outcome == "failed":
                said = "passed" if first.get(test) == "passed" else "did not report failing"
                problems.append(f"pytest {said} {test}; a second run failed it")
                failures.append(TestFailure.of(message, "call"))
            elif outcome == "passed" and test not in first:
                problems.append(f"a second run passed {test}, which pytest did not report")
            elif outcome == "passed" and first[test] == "passed":
                self.confirmed += 1
        if not problems:
            return "", []
        first_failure = failures[0].message if failures else ""
        return (
            "; ".join(problems[:1]) + (f" - {first_failure}" if first_failure else ""),
            failures,
        )


NOT_THE_RUNNERS = "lacks the run's key: something else than the runner wrote it"
_UNKEYED = object()


def _keyed(line: bytes, key: bytes) -> object:
    """The message of a channel line that starts with the run's ``key`` (None if it is not
    JSON), or ``_UNKEYED``."""
    given, _, rest = line.partition(b" ")
    if not secrets.compare_digest(given, key):
        return _UNKEYED
    try:
        return json.loads(rest.decode("utf-8", "replace"))
    except ValueError:
        return None


@dataclass(frozen=True)
class TestFailure:
    """One failing test (or a file that failed to collect), as pytest reported it."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    test: str
    when: str  # collection, setup, call or teardown
    message: str
    trace: str
    room: tuple[int, int] | None = None  # [bytes, files] free on the sandbox's disk as it failed

    @classmethod
    def of(cls, message: dict[str, Any], when: str) -> TestFailure:
        room = message.get("room")
        if not (isinstance(room, list) and len(room) == 2 and all(type(n) is int for n in room)):
            room = None
        return cls(
            str(message.get("id") or ""),
            when,
            str(message.get("message") or "failed"),
            str(message.get("trace") or ""),
            (room[0], room[1]) if room else None,
        )


@dataclass
class TestStream:
    """What pytest streamed: outcomes per test, collection errors and its closing totals."""

    __test__ = False

    collected: int | None = None
    finish: dict[str, Any] | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # passed / failed / skipped
    failed_reports: int = 0
    problems: list[str] = field(default_factory=list)  # "FAILED id - message", in order
    failures: list[TestFailure] = field(default_factory=list)  # the same, with their traces
    garbled: str = ""

    @classmethod
    def parse(cls, data: bytes, key: bytes) -> TestStream:
        stream = cls()
        for number, line in enumerate(data.splitlines(), start=1):
            if stream.garbled:
                break
            message = _keyed(line, key)
            if message is _UNKEYED:
                stream.garbled = f"line {number} of the result channel {NOT_THE_RUNNERS}"
            elif not isinstance(message, dict):
                stream.garbled = f"line {number} of the result channel is not a message"
            elif stream.finish is not None:
                stream.garbled = "messages after the session finished"
            else:
                stream._take(message)
        return stream

    def _take(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "collected" and isinstance(message.get("count"), int):
            self.collected = message["count"]
        elif event == "collect_error":
            self.failed_reports += 1  # pytest's totals count a file that failed to collect
            self.problems.append(f"ERROR collecting {message.get('id')} - {message.get('message')}")
            self.failures.append(TestFailure.of(message, "collection"))
        elif event == "report":
            self._report(message)
        elif event == "finish" and all(
            isinstance(message.get(k), int) for k in ("exitstatus", "collected", "failed")
        ):
            self.finish = message
        else:
            self.garbled = f"unexpected message {str(event)[:40]!r}"

    def _report(self, message: dict[str, Any]) -> None:
        test, when, outcome = message.get("id"), message.get("when"), message.get("outcome")
        if not isinstance(test, str) or outcome not in ("passed", "failed", "skipped"):
            self.garbled = "a malformed test report"
            return
        xfail = bool(message.get("xfail"))
        if outcome == "failed" and not xfail:
            self.failed_reports += 1
            self.outcomes[test] = "failed"
            label = "FAILED" if when == "call" else f"ERROR at {when} of"
            self.problems.append(f"{label} {test} - {message.get('message') or 'failed'}")
            self.failures.append(TestFailure.of(message, str(when)))
        elif self.outcomes.get(test) != "failed":
            if when == "call":
                # An expected failure (or an unexpected pass) is not a passing test.
                self.outcomes[test] = "skipped" if xfail else outcome
            elif outcome == "skipped" or test not in self.outcomes:
                self.outcomes[test] = "skipped" if outcome == "skipped" else "pending"

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    def contradiction(self, returncode: int) -> str:
        """Why the stream, the session's totals and the exit status disagree, or ""."""
        if self.garbled:
            return self.garbled
        if self.finish is None:
            if returncode == 0:
                return "pytest exited with status 0 before reporting its results"
            return ""  # stopped (killed, crashed): reported as such, not as a contradiction
        status = self.finish["exitstatus"]
        if status != returncode:
            return f"pytest's session ended with status {status} but it exited with {returncode}"
        if self.finish["failed"] != self.failed_reports:
            return (
                f"{self.failed_reports} failure(s) streamed, "
                f"{self.finish['failed']} in the session's totals"
            )
        if status == 0 and (self.problems or self.count("pending")):
            return "exit status 0 with failing or unfinished tests"
        if status == 0 and self.collected != len(self.outcomes):
            return f"{self.collected} test(s) collected, {len(self.outcomes)} reported"
        return ""


def pytest_verdict(done: Completed, key: bytes) -> ValidatorResult:
    returncode = done.returncode or 0
    stream = TestStream.parse(done.channel, key)
    contradiction = stream.contradiction(returncode)
    if contradiction:
        return _failed("pytest", f"test results inconsistent: {contradiction}")
    passed = stream.count("passed")
    counts = ", ".join(
        f"{n} {outcome}"
        for outcome in ("failed", "passed", "skipped")
        if (n := stream.count(outcome))
    )
    if stream.finish is None:
        # Stopped before its totals: killed by a limit, or crashed.
        last = stream.problems[0] if stream.problems else (done.lines or ["no output"])[-1]
        parts = (_exit_description("pytest", returncode), counts, last)
        return _failed("pytest", "; ".join(p for p in parts if p))
    if stream.problems:
        return _failed("pytest", "; ".join(p for p in (counts, stream.problems[0]) if p))
    if stream.finish["exitstatus"] == INTERNAL_ERROR:
        said = [line for line in done.lines if line.startswith("INTERNALERROR>")]
        last = said[-1].removeprefix("INTERNALERROR>").strip() if said else "no output"
        return _failed(
            "pytest", "; ".join(p for p in (counts, f"pytest's internal error: {last}") if p)
        )
    if returncode != 0 or not stream.outcomes:
        return _failed("pytest", counts or "no tests ran")
    if passed < 1:
        return _failed("pytest", f"no test passed ({counts})")
    return _passed("pytest", counts)


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
        return _failed("ruff", "no Python code found")
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


async def _check_latex(output: str, seconds: float, box: Sandbox | None) -> ValidatorResult:
    pdflatex = _find_pdflatex()
    if pdflatex is None:
        return _skipped("latex", "pdflatex is not installed")
    candidates = code_blocks(output, ("latex", "tex")) or code_blocks(output, ("",))
    if not candidates or not candidates[0].strip():
        return _failed("latex", "no LaTeX found")
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
            return _failed("latex", f"could not run pdflatex: {exc}")
    if done.timed_out:
        return _failed("latex", f"timed out after {seconds:g}s")
    if done.returncode == 0:
        return _passed("latex", "compiles")
    error = next((line for line in done.lines if line.startswith("!")), "")
    result = _failed("latex", error or _exit_description("pdflatex", done.returncode or 0))
    return _noting(result, box.stopped_by(done, seconds))
