"""What a user watching a run sees on stderr."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pyte
import pytest
from conftest import clean_environment, fake_env, run_cli

from orchestrator import Budget, Event
from orchestrator.llm.catalog import Catalog
from orchestrator.money.units import usd_to_nanos
from orchestrator.observe.progress import (
    ProgressPrinter,
    display_width,
    format_elapsed,
    results_table,
    text_table,
)
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
)


def feed(printer: ProgressPrinter, budget: Budget) -> None:
    model = Catalog.load(env={}).resolve("kimi")
    printer(Event("run_started", data={"project_id": "p", "budget": budget}))
    printer(Event("decomposed", data={"tasks": 2, "done": 0}))
    printer(Event("call_started", "a", model.value, "generation"))
    budget.charge(usd_to_nanos(0.25), "generation")
    result = TaskResult("a", output="x", score=0.9, status=TaskStatus.COMPLETED, model_used=model)
    printer(Event("task_finished", "a", data={"result": result}))
    printer(Event("task_skipped", "b", data={"reason": "dependency a did not produce output"}))


def test_plain_lines_show_progress_spend_and_what_runs_where():
    stream = io.StringIO()
    budget = Budget(max_usd=2.0, max_time_seconds=60)

    feed(ProgressPrinter(stream=stream), budget)

    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("plan: 2 tasks")
    assert lines[1].endswith("a: generation on kimi-k2.6")
    assert lines[2].startswith("[1/2 | $0.25/$2.00]") and "a completed score 0.90" in lines[2]
    assert lines[3].startswith("[2/2") and "b skipped: dependency a" in lines[3]
    assert "\r" not in stream.getvalue()


class Screen(io.TextIOBase):
    """A terminal the printer writes to: a pyte screen behind a tty's newline translation."""

    def __init__(self, columns: int = 60, rows: int = 40) -> None:
        self.screen = pyte.Screen(columns, rows)
        self._feed = pyte.Stream(self.screen)

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._feed.feed(text.replace("\n", "\r\n"))  # what the tty's ONLCR does
        return len(text)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display if line.strip()]


class Clock:
    """A clock the test moves: ``now`` seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def still_budget(clock: Clock | None = None) -> Budget:
    """$2 and a minute, on a clock that moves only when the test moves it."""
    return Budget(max_usd=2.0, max_time_seconds=60, clock=clock or Clock())


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "40")
    return Screen(100, 40)


def start(printer: ProgressPrinter, budget: Budget, tasks: int = 3) -> None:
    printer(Event("run_started", data={"project_id": "p", "budget": budget}))
    printer(Event("decomposed", data={"tasks": tasks, "done": 0}))


def call(printer, task, step, model="kimi-k2.6", kind="call_started", **data):
    printer(Event(kind, task, model, step, {"phase": "generation", **data}))


def finished(printer, task_id: str) -> None:
    model = Catalog.load(env={}).resolve("kimi")
    result = TaskResult(
        task_id, output="x", score=0.9, status=TaskStatus.COMPLETED, model_used=model, iterations=1
    )
    printer(Event("task_finished", task_id, data={"result": result}))


def test_a_terminal_shows_one_live_line_per_running_task_redrawn_in_place(terminal):
    printer = ProgressPrinter(stream=terminal)
    start(printer, still_budget())
    call(printer, None, "decomposition")
    printer(Event("decomposed", data={"tasks": 3, "done": 0}))
    call(printer, "a", "generation")
    call(printer, "b", "generation", model="gpt-4o-mini")
    call(printer, "a", "generation", kind="call_finished")
    call(printer, "a", "revision", iteration=2)

    assert terminal.lines()[-3:] == [
        "[0/3 | $0.00/$2.00 | 0s] running 2 tasks:",
        "  a: revision on kimi-k2.6, iteration 2",
        "  b: generation on gpt-4o-mini",
    ]
    assert not any("plan:" in line and "decomposition" in line for line in terminal.lines())

    finished(printer, "a")

    # The finished task's line stays above; its entry leaves the live area.
    assert terminal.lines()[-3:] == [
        "[1/3 | $0.00/$2.00] a completed score 0.90 on kimi-k2.6 ($0.00, 1 iteration)",
        "[1/3 | $0.00/$2.00 | 0s] running 1 task:",
        "  b: generation on gpt-4o-mini",
    ]

    printer.close()

    assert terminal.lines()[-1].startswith("[1/3 | $0.00/$2.00] a completed")
    assert not any("running" in line for line in terminal.lines())


def test_live_lines_fit_a_narrow_terminal_so_the_area_erases_cleanly(monkeypatch):
    monkeypatch.setenv("COLUMNS", "24")
    terminal = Screen(24, 40)
    printer = ProgressPrinter(stream=terminal)
    start(printer, still_budget())
    call(printer, "a_task_with_a_long_name", "evaluation", model="claude-opus-4-7", iteration=3)

    area = terminal.lines()[-2:]
    assert area == ["[0/3 | $0.00/$2.00 | 0…", "  a_task_with_a_long_n…"]  # 23 of 24

    printer.close()

    assert terminal.lines() == ["[0/3 | $0.00/$2.00] plan", ": 3 tasks"]  # wrapped, not torn


def test_a_live_area_taller_than_the_terminal_is_cut_short(monkeypatch):
    monkeypatch.setenv("LINES", "6")
    terminal = Screen(60, 6)
    printer = ProgressPrinter(stream=terminal)
    start(printer, still_budget(), tasks=9)
    for index in range(9):
        call(printer, f"t{index}", "generation")

    assert terminal.lines() == [
        "[0/9 | $0.00/$2.00 | 0s] running 9 tasks:",
        "  t0: generation on kimi-k2.6",
        "  t1: generation on kimi-k2.6",
        "  t2: generation on kimi-k2.6",
        "  ... and 6 more",
    ]
    printer.close()
    assert terminal.lines() == []  # the plan line scrolled up, and the area is gone


def test_an_evaluations_two_verdicts_are_one_line(terminal):
    stream = io.StringIO()
    plain = ProgressPrinter(stream=stream)
    live = ProgressPrinter(stream=terminal)
    for printer in (plain, live):
        start(printer, still_budget())
        call(printer, "a", "evaluation", iteration=1, repeat=1)
        call(printer, "a", "evaluation", iteration=1, repeat=2)

    assert stream.getvalue().count("a: evaluation on kimi-k2.6") == 1
    assert terminal.lines()[-1] == "  a: evaluation x2 on kimi-k2.6"

    for printer in (plain, live):
        call(printer, "a", "evaluation", kind="call_finished")
        call(printer, "a", "evaluation", kind="call_finished")
        call(printer, "a", "evaluation", iteration=1, repeat=3)

    assert "a: evaluation on kimi-k2.6 (a third verdict: the two disagreed)" in stream.getvalue()
    assert terminal.lines()[-1] == "  a: evaluation on kimi-k2.6"


def test_a_revision_is_shown_as_one(terminal):
    stream = io.StringIO()
    printer = ProgressPrinter(stream=stream)
    start(printer, still_budget())
    call(printer, "a", "revision", iteration=2)

    assert stream.getvalue().splitlines()[-1].endswith("a: revision on kimi-k2.6, iteration 2")


def run_in_terminal(args, *, env, cwd, columns=120, rows=80):
    """``python -m orchestrator ARGS`` on a pseudo-terminal, as a user at a terminal runs it:
    its exit code, the screen it leaves, and the bytes it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
    )  # fmt: skip
    os.close(slave)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    written = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            written += data
            stream.feed(data)
    finally:
        os.close(master)
    return process.wait(timeout=10), screen, bytes(written)


def test_at_a_real_terminal_the_live_area_is_gone_before_the_results_table(fake, llm, tmp_path):
    llm.delay = 0.05  # calls overlap, so the live area is drawn and redrawn
    env = {
        **clean_environment(),
        **fake_env(fake.base_url),
        "ORCHESTRATOR_HOME": str(tmp_path / "home"),
    }

    code, screen, written = run_in_terminal(
        ["-p", "[project] Build an add library", "-c", "add works", "--budget", "2"],
        env=env,
        cwd=tmp_path,
        columns=200,  # wide enough that no finished line wraps: a wrapped row is not torn
    )

    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert code == 0, "\n".join(lines)
    assert b"\x1b[J" in written and b"running" in written  # the live area was drawn
    assert not any("running" in line or line.startswith("  ") for line in lines)
    for task_id in ("core", "review", "docs", "summary", "extract"):
        assert sum(f"] {task_id} completed" in line for line in lines) == 1
    header = next(i for i, line in enumerate(lines) if line.startswith("task "))
    assert all(line.startswith("[") for line in lines[:header])  # nothing torn above it
    assert any(line.startswith("status SUCCESS") for line in lines[header:])


def test_an_evaluations_two_verdicts_from_two_models_are_one_line_naming_both(terminal):
    stream = io.StringIO()
    plain = ProgressPrinter(stream=stream)
    live = ProgressPrinter(stream=terminal)
    for printer in (plain, live):
        start(printer, still_budget())
        call(printer, "a", "evaluation", iteration=1, repeat=1)
        call(printer, "a", "evaluation", model="claude-opus-5", iteration=1, repeat=2)

    assert terminal.lines()[-1] == "  a: evaluation x2 on kimi-k2.6 and claude-opus-5"
    assert "a: evaluation on kimi-k2.6\n" in stream.getvalue()
    assert "a: evaluation on claude-opus-5 (the second verdict)\n" in stream.getvalue()


def test_a_failing_tests_escape_codes_are_shown_as_text_and_the_live_area_still_works(terminal):
    printer = ProgressPrinter(stream=terminal)
    start(printer, still_budget())
    call(printer, "a", "generation")
    hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[32mOK\x1b[0m\r\u202eok"
    printer(Event("integration", data={"round": 1, "passed": False, "checks": hostile,
                                       "revise": []}))  # fmt: skip

    assert terminal.screen.title == ""  # the terminal was not retitled
    assert terminal.lines()[-3:] == [
        "[0/3 | $0.00/$2.00] integration check 1 failed: "
        r"\x1b]0;pwned\x07\x1b[2J\x1b[32mOK\x1b[0m\r\u202eok",
        "[0/3 | $0.00/$2.00 | 0s] running 1 task:",
        "  a: generation on kimi-k2.6",
    ]


# -- the live area's clock ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (65, "1m05s"), (600, "10m00s"), (3600 + 185, "1h03m05s")],
)
def test_elapsed_time_is_shown_as_a_clock(seconds, shown):
    assert format_elapsed(seconds) == shown


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.01)


def test_the_live_line_shows_the_elapsed_time_and_it_moves_while_a_call_runs(terminal):
    clock = Clock()
    with ProgressPrinter(stream=terminal) as printer:
        printer.tick = 0.01
        start(printer, still_budget(clock))
        call(printer, "a", "generation")
        assert terminal.lines()[-2] == "[0/3 | $0.00/$2.00 | 0s] running 1 task:"

        clock.now += 65  # no event: the call is still running

        wait_for(lambda: terminal.lines()[-2] == "[0/3 | $0.00/$2.00 | 1m05s] running 1 task:")
        assert terminal.lines()[-1] == "  a: generation on kimi-k2.6"

    assert terminal.lines() == ["[0/3 | $0.00/$2.00] plan: 3 tasks"]  # erased, and it stays so
    clock.now += 60
    time.sleep(0.05)
    assert terminal.lines() == ["[0/3 | $0.00/$2.00] plan: 3 tasks"]


def test_lines_that_stay_and_plain_lines_carry_no_clock():
    stream = io.StringIO()
    clock = Clock()
    printer = ProgressPrinter(stream=stream)
    start(printer, still_budget(clock))
    clock.now += 65
    call(printer, "a", "generation")

    assert stream.getvalue().splitlines()[-1] == "[0/3 | $0.00/$2.00] a: generation on kimi-k2.6"


# -- a resume ------------------------------------------------------------------------------------
def resumed(printer: ProgressPrinter, budget: Budget, tasks: int | None, done: int) -> None:
    printer(Event("run_started", data={"project_id": "1a2b3c", "budget": budget, "resumed": True,
                                       "tasks": tasks, "done": done}))  # fmt: skip


def test_a_resume_says_in_one_line_what_is_done_left_and_spent():
    stream = io.StringIO()
    budget = still_budget()
    budget.charge(usd_to_nanos(0.0123), "generation")
    printer = ProgressPrinter(stream=stream)

    resumed(printer, budget, tasks=5, done=3)
    printer(Event("decomposed", data={"tasks": 5, "done": 3}))
    call(printer, "d", "generation")

    assert stream.getvalue().splitlines() == [
        "resuming 1a2b3c: 3 of 5 tasks done, 2 left, $0.0123 of $2.00 spent",
        "[3/5 | $0.0123/$2.00] d: generation on kimi-k2.6",
    ]


def test_a_resume_before_any_plan_says_so_and_the_plan_follows():
    stream = io.StringIO()
    printer = ProgressPrinter(stream=stream)

    resumed(printer, still_budget(), tasks=None, done=0)
    printer(Event("decomposed", data={"tasks": 4, "done": 0}))

    assert stream.getvalue().splitlines() == [
        "resuming 1a2b3c: no plan yet, $0.00 of $2.00 spent",
        "[0/4 | $0.00/$2.00] plan: 4 tasks",
    ]


# -- tables fit the terminal ---------------------------------------------------------------------
def widest(text: str) -> int:
    return max(display_width(line) for line in text.splitlines())


LONG_REASON = "the tests failed: " + "expected 3, got 4; " * 12


def a_finished_state() -> ProjectState:
    tasks = {
        "parse_the_configuration_file_and_validate_it": Task(
            "parse_the_configuration_file_and_validate_it", TaskType.CODE_GEN, "p"
        ),
        "docs": Task("docs", TaskType.WRITING, "d"),
    }
    state = ProjectState("p1", "d", "c", Budget(max_usd=2.0), status=ProjectStatus.PARTIAL_SUCCESS,
                         reason=LONG_REASON, tasks=tasks, execution_order=list(tasks))  # fmt: skip
    model = Catalog.load(env={}).resolve("gemini-3.1-pro-preview")
    for task_id in tasks:
        state.results[task_id] = TaskResult(
            task_id, output="x", score=0.5, status=TaskStatus.FAILED, model_used=model,
            reviewer_model=model, reason=LONG_REASON,
        )  # fmt: skip
    return state


@pytest.mark.parametrize("columns", [60, 200])
def test_the_results_table_fits_the_terminal(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))

    text = results_table(a_finished_state())

    assert widest(text) <= columns
    assert "status PARTIAL_SUCCESS" in text
    reason = " ".join(line.strip() for line in text.split("reason: ", 1)[1].splitlines())
    assert reason == LONG_REASON.strip()  # wrapped, not cut
    if columns == 200:
        assert "parse_the_configuration_file_and_validate_it" in text  # room: nothing is cut
        assert "…" not in text
    else:
        assert re.search(r"^parse_the_\w+…  ", text, re.M)  # the long id is cut, its column kept
        assert "(too narrow to show: reviewer, iter, type)" in text


def test_a_table_printed_to_a_pipe_is_not_cut(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)

    text = results_table(a_finished_state())  # stdout is not a terminal here

    assert "…" not in text
    assert LONG_REASON.strip() in text


def test_a_narrow_table_cuts_the_widest_text_first_keeps_numbers_and_drops_what_it_may():
    rows = [("name", "price", "note"), ("a" * 30, "1,234.5", "b" * 40), ("short", "7", "ok")]

    wide = text_table(rows, right=frozenset({1}), width=None)
    narrow = text_table(rows, right=frozenset({1}), width=40)
    narrower = text_table(rows, right=frozenset({1}), width=25, drop=(2,))

    assert wide[2] == "a" * 30 + "  1,234.5  " + "b" * 40
    assert narrow[2] == "a" * 13 + "…" + "  1,234.5  " + "b" * 14 + "…"  # as wide as they can
    assert max(display_width(line) for line in narrow) <= 40
    assert narrower[0].split() == ["name", "price"]
    assert narrower[-2:] == ["(too narrow to show:", "  note)"]  # wrapped to the width
    assert narrower[2] == "a" * 15 + "…" + "  1,234.5"


def test_wide_characters_count_as_two_columns():
    rows = [("task", "reason"), ("t", "数据格式错误" * 5)]

    lines = text_table(rows, width=30)

    assert display_width("数据") == 4
    assert all(display_width(line) <= 30 for line in lines)
    assert lines[2].endswith("…")


@pytest.mark.parametrize("columns", [60, 200])
def test_list_models_fits_the_terminal(tmp_path, columns):
    result = run_cli("--list-models", cwd=tmp_path, env={"COLUMNS": str(columns)})

    assert result.returncode == 0, result.stderr
    assert widest(result.stdout) <= columns
    header = result.stdout.splitlines()[0].split()
    assert "usable" in header and "id" in header  # what a user needs most stays
    assert "gemini-3.1-pro-preview" in result.stdout  # a model id is never cut
    if columns == 200:
        assert header == ["alias", "model", "id", "provider", "in", "out", "cached", "context",
                          "json", "usable"]  # fmt: skip
        assert "too narrow" not in result.stdout


def test_a_run_at_a_narrow_terminal_prints_a_results_table_that_fits(fake, llm, tmp_path):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home"), "COLUMNS": "60"}
    result = run_cli(
        "-p", "[project] Build an add library", "-c", "add works", "--budget", "2",
        "--no-integration", cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert widest(result.stdout) <= 60
    assert "status SUCCESS" in result.stdout
