"""Progress on stderr while a run goes, and the results table at the end."""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

from .budget import Budget
from .events import Event
from .models import ProjectState, TaskResult, ValidatorResult
from .sandbox import NO_SANDBOX
from .visible import visible


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
        self._drawn = 0  # lines of the live area on the screen now

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Erase the live area, leaving the cursor where the next output belongs."""
        self._erase()
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == "run_started":
            self.budget = event.data["budget"]  # a resumed run brings its own, spend carried over
        elif kind == "decomposed":
            self.running.pop(PLANNER, None)
            self.total = event.data["tasks"]
            self.done = event.data.get("done", 0)
            resumed = f", {self.done} already done" if self.done else ""
            self._line(f"plan: {self.total} tasks{resumed}")
        elif kind == "call_started":
            self._call_started(event)
        elif kind in ("call_finished", "call_failed"):
            activity = self.running.get(event.task_id or PLANNER)
            if activity is not None and activity.step == event.role:
                activity.calls = max(0, activity.calls - 1)
            self._redraw()
        elif kind == "task_finished":
            self.done += 1
            self.running.pop(event.task_id or "", None)
            self._line(f"{_finished(event.data['result'])}")
        elif kind == "task_skipped":
            self.done += 1
            self.running.pop(event.task_id or "", None)
            self._line(f"{event.task_id} skipped: {event.data['reason']}")
        elif kind == "plan_size":
            low, high = event.data["guidance"]
            self._line(
                f"note: the plan has {event.data['tasks']} tasks (asked for {low}-{high}); "
                "running it as planned"
            )
        elif kind == "sandbox":
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
        elif kind == "notice":
            self._line(f"note: {event.data['message']}")
        elif kind == "integration":
            self._integration(event.data)
        elif kind == "budget_warning":
            share = event.data["ratio"]
            self._line(f"warning: {event.data['phase']} has used {share:.0%} of the budget")

    def _integration(self, data: dict) -> None:
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

    def _prefix(self) -> str:
        budget = self.budget or Budget()
        spent = f"{format_usd(budget.spent_usd)}/{format_usd(budget.max_usd)}"
        return f"[{self.done}/{self.total or '?'} | {spent}]"

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
        lines = [f"{self._prefix()} running {_count(len(self.running), 'task')}:"]
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

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\r\033[{self._drawn}A\033[J")
            self._drawn = 0


PLANNER = "plan"


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = shutil.get_terminal_size()
    return size.columns or 80, size.lines or 24


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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


def results_table(state: ProjectState) -> str:
    """The table printed at the end of a run, then its status, reason and integration checks;
    what a model or a test wrote in them is shown ``visible``."""
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
    lines = text_table(rows)
    budget = state.budget
    lines.append("")
    lines.append(
        f"status {state.status.value}: spent {format_usd(budget.spent_usd)} of "
        f"{format_usd(budget.max_usd)}, "
        f"{budget.elapsed_seconds:.1f}s of {budget.max_time_seconds:.0f}s; "
        f"project {state.project_id}"
    )
    if state.reason:
        lines.append(f"reason: {state.reason}")
    integration = state.integration
    if integration is not None and integration.rounds:
        verdict = "passed" if integration.passed else "did not pass"
        lines.append(f"integration {verdict}: {integration.rounds[-1].describe()}")
        lines += [f"  {failure.summary}" for failure in integration.rounds[-1].failures[:5]]
    return visible("\n".join(lines)) + "\n"


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


def format_usd(value: float) -> str:
    """Dollars with enough digits to be true: ``$8.00``, ``$0.28``, ``$0.004``, ``$0.00004``."""
    if not math.isfinite(value):
        return f"${value}"
    if value == 0:
        return "$0.00"
    magnitude = abs(value)
    # About three significant digits below a dollar, cents above.
    decimals = 2 if magnitude >= 1 else min(8, 2 - math.floor(math.log10(magnitude)))
    text = f"{value:,.{decimals}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"${whole}.{fraction}"


def text_table(rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
    """Aligned columns, the first row a header underlined with dashes; ``right`` columns are
    right-aligned (numbers). A cell is shown ``visible`` on one line, so a row stays a row."""
    rows = [tuple(visible(cell, one_line=True) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
