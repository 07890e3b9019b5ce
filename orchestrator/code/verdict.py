"""The verdict on a set of tests: ``run_tests`` runs them twice in the sandbox, under pytest
(``pytest_channel``) and under the second witness (``witness_runner``), each in its own copy of
the files, and reads the verdict only from what each run streamed on its result channel with its
own key: pytest's outcomes checked against its totals and exit status, then the second run's
agreement with them. The ``pytest`` validator and the project tree's integration both judge
tests here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.code import pytest_channel
from orchestrator.code.sandbox import Completed, Sandbox, scratch_dir
from orchestrator.code.tree_screen import Refused, screen
from orchestrator.run.tasks import ValidatorResult
from orchestrator.text.visible import shorten

__all__ = [
    "DETAIL_LIMIT",
    "SecondRun",
    "TestFailure",
    "TestRun",
    "TestStream",
    "exit_description",
    "failed",
    "noting",
    "passed",
    "pytest_verdict",
    "run_tests",
]

DETAIL_LIMIT = 300
PYTEST_RUNNER = pytest_channel.__file__
# The second witness: runs the tests again without pytest's runner (standard library only),
# with the fixtures of the file beside it, which it loads by its path.
WITNESS_RUNNER = os.path.join(os.path.dirname(PYTEST_RUNNER), "witness_runner.py")
WITNESS_FIXTURES = os.path.join(os.path.dirname(PYTEST_RUNNER), "witness_fixtures.py")
# Bound read-only into the sandbox, each at its own path: all either run needs of ours.
RUNNERS = (PYTEST_RUNNER, WITNESS_RUNNER, WITNESS_FIXTURES)
# Our pytest configuration, written beside the tests under a name no file of theirs can have.
PYTEST_CONFIG = ".verdict.ini"
INTERNAL_ERROR = 3  # pytest's exit status when its own code failed
# pytest's builtin plugins left out of the run: the cache (a run writes nothing it keeps), and
# those that act only on command-line options this runner never passes (--pastebin,
# --setup-only/--setup-show, --setup-plan, --stepwise), so leaving them out changes no verdict
# and no fixture a test may ask for; it saves their import and set-up in every run. Those
# that give tests a fixture (junitxml's record_property, doctest's doctest_namespace, tmpdir,
# caplog, subtests...) or act on every run (warnings, faulthandler, unraisable exceptions) stay.
LEFT_OUT_PLUGINS = ("cacheprovider", "pastebin", "setuponly", "setupplan", "stepwise")


def passed(name: str, detail: str = "") -> ValidatorResult:
    return ValidatorResult(name, passed=True, detail=shorten(detail, DETAIL_LIMIT))


def failed(name: str, detail: str) -> ValidatorResult:
    return ValidatorResult(name, passed=False, detail=shorten(detail, DETAIL_LIMIT))


def exit_description(tool: str, returncode: int) -> str:
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


def noting(result: ValidatorResult, bound: str) -> ValidatorResult:
    """``result`` with the sandbox's bound it met said at the end of its detail, whatever the
    detail's length."""
    if not bound:
        return result
    room = DETAIL_LIMIT - len(bound) - 2
    return failed(result.name, f"{shorten(result.detail, room)}; {bound}")


# --- running the tests twice ------------------------------------------------------------------


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
        return TestRun(failed("pytest", f"refused: {refused[0]}{more}"), refused=refused)
    config = os.path.join(root, PYTEST_CONFIG)
    async with scratch_dir() as again:
        try:
            await asyncio.to_thread(_prepare_runs, root, again, roots, config)
        except OSError as exc:
            return TestRun(failed("pytest", f"could not prepare the tests: {exc}"))
        keys = secrets.token_hex(16).encode(), secrets.token_hex(16).encode()
        done, again_done = await _run_twice(box, (root, again), config, tests, seconds, roots, keys)
    for run in (done, again_done):
        if isinstance(run, OSError):
            return TestRun(failed("pytest", f"could not start the tests: {run}"))
        if isinstance(run, BaseException):
            raise run
    assert isinstance(done, Completed) and isinstance(again_done, Completed)
    return _judge(box, seconds, (done, keys[0]), (again_done, keys[1]))


async def _run_twice(
    box: Sandbox,
    workdirs: tuple[str, str],
    config: str,
    tests: Sequence[str],
    seconds: float,
    roots: Sequence[str],
    keys: tuple[bytes, bytes],
) -> tuple[Completed | BaseException, Completed | BaseException]:
    """pytest in the first of ``workdirs``, the second witness in the second (a copy of it),
    each with its key on its standard input; what each run returned or raised."""
    root, again = workdirs
    argv = [sys.executable, "-I", "-B", PYTEST_RUNNER, "{channel}", "-q"]
    for plugin in LEFT_OUT_PLUGINS:
        argv += ["-p", f"no:{plugin}"]
    argv += ["--color=no", "--noconftest", "-c", config]
    argv += ["--rootdir", root, *tests]
    paths = json.dumps([os.path.join(again, r) if r else again for r in roots])
    second = [sys.executable, "-I", "-B", WITNESS_RUNNER, "{channel}", paths, *tests]
    key, again_key = keys
    # Both at once, each in its own copy of the files: what one run writes, the other
    # never sees. Run from the root, so that tracebacks name the files as the tree does.
    return await asyncio.gather(
        box.run(argv, root, seconds=seconds, channel=True, read_only=RUNNERS, stdin=key),
        box.run(second, again, seconds=seconds, channel=True, read_only=RUNNERS, stdin=again_key),
        return_exceptions=True,
    )


def _judge(
    box: Sandbox, seconds: float, first: tuple[Completed, bytes], second: tuple[Completed, bytes]
) -> TestRun:
    """The verdict on pytest's run and the second witness's, each with its key: pytest's own,
    then whether the second run agrees with it."""
    (done, key), (again_done, again_key) = first, second
    if done.timed_out:
        return TestRun(failed("pytest", f"timed out after {seconds:g}s"), timed_out=True)
    stream = TestStream.parse(done.channel, key)
    verdict = pytest_verdict(done, key)
    if not verdict.passed:
        bound = _bound(box, done, seconds, stream.failures, verdict.detail)
        return TestRun(noting(verdict, bound), stream.failures, bound=bound)
    if again_done.timed_out:
        detail = f"the second run of the tests timed out after {seconds:g}s"
        return TestRun(failed("pytest", detail), timed_out=True)
    witness = SecondRun.parse(again_done.channel, again_key)
    problem, failures = witness.disagreement(stream, again_done)
    if problem:
        result = failed("pytest", f"test results inconsistent: {problem}")
        bound = _bound(box, again_done, seconds, failures, problem)
        return TestRun(noting(result, bound), failures, bound=bound)
    if not witness.confirmed:
        why = f": {witness.unwitnessed[0]}" if witness.unwitnessed else ""
        detail = f"{verdict.detail}, but no passing test could be run a second time{why}"
        return TestRun(failed("pytest", detail))
    return TestRun(passed("pytest", f"{verdict.detail} ({witness.confirmed} run twice)"))


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


def _prepare_runs(root: str, again: str, roots: Sequence[str], config: str) -> None:
    """Our pytest configuration beside the files, and a copy of them for the second run."""
    paths = " ".join(os.path.join(root, r) if r else root for r in roots)
    Path(config).write_text(f"[pytest]\npythonpath = {paths}\n", encoding="utf-8")
    shutil.copytree(root, again, dirs_exist_ok=True, symlinks=True)


# --- reading what the runs streamed -----------------------------------------------------------


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
            what = exit_description("the second run", done.returncode or 0)
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
        return failed("pytest", f"test results inconsistent: {contradiction}")
    passing = stream.count("passed")
    counts = ", ".join(
        f"{n} {outcome}"
        for outcome in ("failed", "passed", "skipped")
        if (n := stream.count(outcome))
    )
    if stream.finish is None:
        # Stopped before its totals: killed by a limit, or crashed.
        last = stream.problems[0] if stream.problems else (done.lines or ["no output"])[-1]
        parts = (exit_description("pytest", returncode), counts, last)
        return failed("pytest", "; ".join(p for p in parts if p))
    if stream.problems:
        return failed("pytest", "; ".join(p for p in (counts, stream.problems[0]) if p))
    if stream.finish["exitstatus"] == INTERNAL_ERROR:
        said = [line for line in done.lines if line.startswith("INTERNALERROR>")]
        last = said[-1].removeprefix("INTERNALERROR>").strip() if said else "no output"
        return failed(
            "pytest", "; ".join(p for p in (counts, f"pytest's internal error: {last}") if p)
        )
    if returncode != 0 or not stream.outcomes:
        return failed("pytest", counts or "no tests ran")
    if passing < 1:
        return failed("pytest", f"no test passed ({counts})")
    return passed("pytest", counts)
