"""Progress on stderr while a run goes, and the results table at the end."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from .budget import Budget
from .events import Event
from .models import ProjectState, TaskResult, ValidatorResult
from .sandbox import NO_SANDBOX


class ProgressPrinter:
    """Turns engine events into lines: tasks done / total, what runs on which model, spend.

    On a terminal the running-calls line is redrawn in place; elsewhere every event is a line.
    """

    def __init__(self, budget: Budget | None = None, stream: TextIO | None = None) -> None:
        self.budget = budget
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.total = 0
        self.done = 0
        self.running: dict[str, str] = {}
        self._status_shown = False

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == "run_started":
            self.budget = event.data["budget"]  # a resumed run brings its own, spend carried over
        elif kind == "decomposed":
            self.total = event.data["tasks"]
            self.done = event.data.get("done", 0)
            resumed = f", {self.done} already done" if self.done else ""
            self._line(f"plan: {self.total} tasks{resumed}")
        elif kind == "call_started":
            who = event.task_id or "plan"
            self.running[who] = f"{who}:{event.role}@{event.model}"
            if self.interactive:
                self._status()
            else:
                self._line(f"{who}: {event.role} on {event.model}")
        elif kind == "task_finished":
            self.done += 1
            self.running.pop(event.task_id or "", None)
            self._line(f"{_finished(event.data['result'])}")
        elif kind == "task_skipped":
            self.done += 1
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
        elif kind == "budget_warning":
            share = event.data["ratio"]
            self._line(f"warning: {event.data['phase']} has used {share:.0%} of the budget")

    def _prefix(self) -> str:
        budget = self.budget or Budget()
        spent = f"{format_usd(budget.spent_usd)}/{format_usd(budget.max_usd)}"
        return f"[{self.done}/{self.total or '?'} | {spent}]"

    def _line(self, text: str) -> None:
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False
        self.stream.write(f"{self._prefix()} {text}\n")
        self.stream.flush()
        if self.interactive and self.running:
            self._status()

    def _status(self) -> None:
        calls = ", ".join(self.running.values())
        self.stream.write(f"\r\033[K{self._prefix()} running: {calls}"[:200])
        self.stream.flush()
        self._status_shown = True


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
    return "\n".join(lines) + "\n"


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
    right-aligned (numbers)."""
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
