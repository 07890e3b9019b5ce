"""Progress on stderr while a run goes, and the results table at the end."""

from __future__ import annotations

import io
import os
import shutil
import sys
import textwrap
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from orchestrator.code.sandbox import NO_SANDBOX
from orchestrator.money.budget import Budget
from orchestrator.money.units import format_usd
from orchestrator.observe.events import Event, EventKind
from orchestrator.run.tasks import ProjectState, TaskResult, ValidatorResult
from orchestrator.text.visible import visible


@dataclass
class _Activity:
    """What one task (or the planner) is doing now, for the live area."""

    step: str
    model: str
    iteration: int
    calls: int = 1  # in flight: an evaluation asks for two verdicts at once

    def describe(self, who: str) -> str:
        times = f" x{self.calls}" if self.calls > 1 else ""
        state = "" if self.calls else ", done"
        round_ = f", iteration {self.iteration}" if self.iteration > 1 else ""
        return f"{who}: {self.step}{times} on {self.model}{round_}{state}"


class ProgressPrinter:
    """Turns engine events into lines: tasks done / total, what runs on which model, spend.

    On a terminal (``live``, by default when the stream is one) the lines scroll above a live
    area, one line per running task, redrawn in place and cut to the terminal's width; finished
    tasks leave it, and ``close()`` (or leaving the ``with`` block) erases it, before a results
    table or an error is printed. Elsewhere every call is a line of its own.

    The live area's first line shows the run's elapsed time (``1m05s``: the clock its time
    limit counts, a resumed project's earlier runs included); while the area is on the screen
    it is redrawn every ``tick`` seconds by a thread of its own, so the clock moves while a long
    call runs. ``close()`` stops that thread.

    What a model or a test wrote (task ids, reasons, check results) is shown through
    ``visible``: only the live area's own cursor codes reach the terminal as codes.
    """

    def __init__(
        self, budget: Budget | None = None, stream: TextIO | None = None, live: bool | None = None
    ) -> None:
        self.budget = budget
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if live is None else live
        self.total = 0
        self.done = 0
        self.running: dict[str, _Activity] = {}
        self.tick = TICK_SECONDS
        self._drawn = 0  # lines of the live area on the screen now
        self._planned = False  # a resume said the plan's size: DECOMPOSED need not again
        # The events' thread and the clock's write the same lines: one at a time.
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._clock: threading.Thread | None = None

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the clock and erase the live area, leaving the cursor where the next output
        belongs."""
        self._stopped.set()
        clock = self._clock
        if clock is not None and clock is not threading.current_thread():
            clock.join()
        with self._lock:
            self._erase()
            self.stream.flush()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._show(event)

    def _show(self, event: Event) -> None:
        kind = event.kind
        if kind == EventKind.RUN_STARTED:
            self.budget = event.data["budget"]  # a resumed run brings its own, spend carried over
            if event.data.get("resumed"):
                self._resuming(event.data)
        elif kind == EventKind.DECOMPOSED:
            self.running.pop(PLANNER, None)
            self.total = event.data["tasks"]
            self.done = event.data.get("done", 0)
            if self._planned:
                self._redraw()  # the resume's line said it
            else:
                self._line(f"plan: {self.total} tasks")
        elif kind == EventKind.CALL_STARTED:
            self._call_started(event)
        elif kind in (EventKind.CALL_FINISHED, EventKind.CALL_FAILED):
            activity = self.running.get(event.task_id or PLANNER)
            if activity is not None and activity.step == event.role:
                activity.calls = max(0, activity.calls - 1)
            self._redraw()
        elif kind == EventKind.TASK_FINISHED:
            self.done += 1
            self.running.pop(event.task_id or "", None)
            self._line(f"{_finished(event.data['result'])}")
        elif kind == EventKind.TASK_SKIPPED:
            self.done += 1
            self.running.pop(event.task_id or "", None)
            self._line(f"{event.task_id} skipped: {event.data['reason']}")
        elif kind == EventKind.PLAN_SIZE:
            low, high = event.data["guidance"]
            self._line(
                f"note: the plan has {event.data['tasks']} tasks (asked for {low}-{high}); "
                "running it as planned"
            )
        elif kind == EventKind.SANDBOX:
            isolation = event.data["isolation"]
            if isolation == "unavailable":
                self._line(f"warning: code-running validators {NO_SANDBOX}; tasks cannot pass them")
            elif isolation == "none (unsafe)":
                self._line(
                    "WARNING: --unsafe-validators: model-written code runs WITHOUT a sandbox, "
                    "with your files, network and user"
                )
            else:
                self._line(f"validators run model-written code in a {isolation} sandbox")
        elif kind == EventKind.NOTICE:
            self._line(f"note: {event.data['message']}")
        elif kind == EventKind.INTEGRATION:
            self._integration(event.data)
        elif kind == EventKind.BUDGET_WARNING:
            share = event.data["ratio"]
            self._line(f"warning: {event.data['phase']} has used {share:.0%} of the budget")

    def _resuming(self, data: dict[str, Any]) -> None:
        """One line before a resumed project's work: what is done, what is left, what was
        spent of the budget."""
        budget = self.budget or Budget()
        spent = f"{format_usd(budget.spent_usd)} of {format_usd(budget.max_usd)} spent"
        tasks = data.get("tasks")
        if tasks:
            self.total, self.done = tasks, data.get("done", 0)
            self._planned = True
            work = f"{self.done} of {tasks} tasks done, {tasks - self.done} left"
        else:
            work = "no plan yet"
        self._erase()
        self.stream.write(visible(f"resuming {data['project_id']}: {work}, {spent}") + "\n")
        self._draw()
        self.stream.flush()

    def _integration(self, data: dict[str, Any]) -> None:
        verdict = "passed" if data["passed"] else "failed"
        text = f"integration check {data['round']} {verdict}: {data['checks']}"
        if data["revise"]:
            text += f"; asking {', '.join(data['revise'])} to revise"
        self._line(text)

    def _call_started(self, event: Event) -> None:
        who = event.task_id or PLANNER
        step, model = event.role or "call", event.model or "?"
        iteration = int(event.data.get("iteration", 0))
        current = self.running.get(who)
        if current is not None and current.calls and current.step == step:
            # The second verdict of an evaluation, asked beside the first: the same line,
            # naming its model too when it is another one.
            current.calls += 1
            if model not in current.model.split(" and "):
                current.model = f"{current.model} and {model}"
                if not self.interactive:
                    self._line(f"{who}: {step} on {model} (the second verdict)")
            self._redraw()
            return
        self.running[who] = activity = _Activity(step, model, iteration)
        if self.interactive:
            self._redraw()
        else:
            tie_break = (
                " (a third verdict: the two disagreed)" if event.data.get("repeat") == 3 else ""
            )
            self._line(activity.describe(who) + tie_break)

    def _prefix(self, clock: bool = False) -> str:
        budget = self.budget or Budget()
        spent = f"{format_usd(budget.spent_usd)}/{format_usd(budget.max_usd)}"
        elapsed = f" | {format_elapsed(budget.elapsed_seconds)}" if clock else ""
        return f"[{self.done}/{self.total or '?'} | {spent}{elapsed}]"

    def _line(self, text: str) -> None:
        """A line that stays: written above the live area, which is drawn again below it."""
        self._erase()
        self.stream.write(f"{self._prefix()} {visible(text)}\n")
        self._draw()
        self.stream.flush()

    def _redraw(self) -> None:
        if not self.interactive:
            return
        self._erase()
        self._draw()
        self.stream.flush()

    def _draw(self) -> None:
        if not self.interactive or not self.running:
            return
        columns, rows = _terminal_size(self.stream)
        lines = [f"{self._prefix(clock=True)} running {_count(len(self.running), 'task')}:"]
        entries = [f"  {activity.describe(who)}" for who, activity in self.running.items()]
        room = max(1, rows - 2)
        if len(entries) > room:
            hidden = len(entries) - room + 1
            entries = [*entries[: room - 1], f"  ... and {hidden} more"]
        # One column short of the width: a line that fills it would wrap on some terminals,
        # and the area could no longer be erased by counting its lines.
        width = max(10, columns - 1)
        for line in lines + entries:
            # A newline in model text would add a line, too: escaped (``one_line``).
            self.stream.write(_fit(visible(line, one_line=True), width) + "\n")
        self._drawn = 1 + len(entries)
        self._start_clock()

    def _start_clock(self) -> None:
        if self._clock is None and not self._stopped.is_set():
            self._clock = threading.Thread(target=self._keep_time, name="progress", daemon=True)
            self._clock.start()

    def _keep_time(self) -> None:
        """Redraw the live area every ``tick`` seconds while it is on the screen (the next one
        drawn starts the clock again) and until ``close()``, so its clock moves."""
        while not self._stopped.wait(self.tick):
            with self._lock:
                if self._stopped.is_set():
                    return
                if not self._drawn:
                    self._clock = None
                    return
                try:
                    self._redraw()
                except (OSError, ValueError):  # the terminal went away, or the stream closed
                    self._stopped.set()
                    return

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\r\033[{self._drawn}A\033[J")
            self._drawn = 0


PLANNER = "plan"
TICK_SECONDS = 1.0  # how often the live area's clock is redrawn


def format_elapsed(seconds: float) -> str:
    """A duration as a clock shows it: ``42s``, ``1m05s``, ``2h03m09s``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_time(epoch_seconds: float) -> str:
    """A moment as a person reads it, in local time: ``2026-12-07 21:02:25``."""
    return datetime.fromtimestamp(epoch_seconds).strftime("%Y-%m-%d %H:%M:%S")


class _Terminal:
    def __repr__(self) -> str:
        return "TERMINAL"


TERMINAL: Any = _Terminal()  # a table's width by default: what ``output_width()`` says


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = shutil.get_terminal_size()
    return size.columns or 80, size.lines or 24


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _finished(result: TaskResult) -> str:
    model = result.model_used.value if result.model_used else "-"
    text = (
        f"{result.task_id} {result.status.value} score {result.score:.2f} on {model} "
        f"({format_usd(result.cost_usd)}, {result.iterations} "
        f"iteration{'' if result.iterations == 1 else 's'})"
    )
    text = f"{text}: {result.reason}" if result.reason else text
    return "; ".join([text, *result.notes])


def results_table(state: ProjectState, width: int | None = TERMINAL) -> str:
    """The table printed at the end of a run, then its status, reason and integration checks;
    what a model or a test wrote in them is shown ``visible``. No line is wider than ``width``
    (by default the terminal's, ``output_width()``): long cells are cut with an ellipsis
    (``text_table``), the lines below the table are wrapped."""
    if width is TERMINAL:
        width = output_width()
    header = ("task", "type", "status", "score", "model", "reviewer", "iter", "cost", "checks")
    rows = [header]
    for task_id in state.execution_order:
        task = state.tasks[task_id]
        result = state.results.get(task_id) or TaskResult(task_id)
        rows.append(
            (
                task_id,
                task.type.value,
                result.status.value,
                f"{result.score:.2f}",
                result.model_used.value if result.model_used else "-",
                result.reviewer_model.value if result.reviewer_model else "-",
                str(result.iterations),
                format_usd(result.cost_usd),
                _checks(result),
            )
        )
    # Narrow, the reviewer, the iterations, the type and the score give way first.
    lines = text_table(rows, width=width, drop=(5, 6, 1, 3))
    budget = state.budget
    footer = [
        f"status {state.status.value}: spent {format_usd(budget.spent_usd)} of "
        f"{format_usd(budget.max_usd)}, "
        f"{budget.elapsed_seconds:.1f}s of {budget.max_time_seconds:.0f}s; "
        f"project {state.project_id}"
    ]
    if state.reason:
        footer.append(f"reason: {state.reason}")
    integration = state.integration
    if integration is not None and integration.rounds:
        verdict = "passed" if integration.passed else "did not pass"
        footer.append(f"integration {verdict}: {integration.rounds[-1].describe()}")
        footer += [f"  {failure.summary}" for failure in integration.rounds[-1].failures[:5]]
    shown = visible("\n".join(footer)).splitlines()
    return "\n".join([*lines, "", *wrapped(shown, width)]) + "\n"


def _checks(result: TaskResult) -> str:
    if not result.validator_results:
        return "-"
    return ",".join(f"{v.name}:{_verdict(v)}" for v in result.validator_results)


def _verdict(result: ValidatorResult) -> str:
    if result.skipped:
        return "skip"
    if result.passed:
        return "ok"
    return "NOT RUN" if result.not_run else "FAIL"


# The narrowest a text column is cut to before whole lines are cut instead.
MIN_COLUMN = 10


def output_width(stream: TextIO | None = None) -> int | None:
    """The width a table printed to ``stream`` (stdout by default) is fitted to: ``$COLUMNS``
    when it is set to a positive number, else the terminal's width when the stream is a
    terminal. Anywhere else (a pipe, a file) None, no limit: what is piped to grep or saved
    keeps every character, and no screen wraps it."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return None


def display_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: two for a wide (East Asian) character, none for
    a combining mark or an invisible format character, one for the rest."""
    return sum(_char_width(char) for char in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, an ellipsis marking the cut."""
    if display_width(text) <= width:
        return text
    room, kept = max(0, width - 1), []
    for char in text:
        room -= _char_width(char)
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + "…"


def _pad(text: str, width: int, right: bool) -> str:
    padding = " " * max(0, width - display_width(text))
    return padding + text if right else text + padding


def text_table(
    rows: Sequence[tuple[str, ...]],
    right: frozenset[int] = frozenset(),
    width: int | None = TERMINAL,
    drop: Sequence[int] = (),
    whole: frozenset[int] = frozenset(),
) -> list[str]:
    """Aligned columns, the first row a header underlined with dashes; ``right`` columns are
    right-aligned (numbers). A cell is shown ``visible`` on one line, so a row stays a row.

    No line is wider than ``width`` columns (by default ``output_width()``: the terminal's, or
    no limit for a pipe or a file; None: no limit). The widest text columns are narrowed first,
    their long cells (reasons, model names) cut with an ellipsis, down to ``MIN_COLUMN``;
    numbers and the ``whole`` columns (names to be typed) are never cut. Where that is not
    enough, the ``drop`` columns are left out in that order, a last line naming them; a table
    that still does not fit has its lines cut."""
    if width is TERMINAL:
        width = output_width()
    rows = [tuple(visible(cell, one_line=True) for cell in row) for row in rows]
    shown = list(range(len(rows[0])))
    dropped: list[int] = []
    while True:
        natural = [max(display_width(row[i]) for row in rows) for i in shown]
        if width is None:
            widths = natural
            break
        widths = _narrowed(natural, width, [i in right or i in whole for i in shown])
        left = [i for i in drop if i in shown]
        if sum(widths) + 2 * (len(widths) - 1) <= width or not left or len(shown) == 1:
            break
        shown.remove(left[0])
        dropped.append(left[0])
    lines = [
        "  ".join(
            _pad(_fit(row[i], w), w, i in right) for i, w in zip(shown, widths, strict=True)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if width is not None:
        lines = [_fit(line, width) for line in lines]
    if dropped:
        note = f"(too narrow to show: {', '.join(rows[0][i] for i in dropped)})"
        lines += wrapped([note], width)
    return lines


def _narrowed(widths: list[int], width: int, uncut: list[bool]) -> list[int]:
    """Column widths that fit ``width`` with their two-space gaps, as far as they can: the
    widest text column loses a column at a time, none below ``MIN_COLUMN`` (or its own width);
    ``uncut`` columns keep theirs."""
    widths = list(widths)
    floors = [w if keep else min(w, MIN_COLUMN) for w, keep in zip(widths, uncut, strict=True)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        cuttable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def wrapped(lines: list[str], width: int | None) -> list[str]:
    """``lines`` of prose (a status, a reason, a footer) broken at spaces to fit ``width``
    columns, the continuations indented; None: as they are."""
    if width is None:
        return list(lines)
    out: list[str] = []
    for line in lines:
        if display_width(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        pieces = textwrap.wrap(
            line, max(width, len(indent) + MIN_COLUMN), subsequent_indent=indent,
            break_on_hyphens=False, drop_whitespace=True,
        )  # fmt: skip
        out += [_fit(piece, width) for piece in pieces]
    return out
