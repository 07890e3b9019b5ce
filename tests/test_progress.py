"""What a user watching a run sees on stderr."""

from __future__ import annotations

import io

from orchestrator import Budget, Event
from orchestrator.catalog import Catalog
from orchestrator.models import TaskResult, TaskStatus
from orchestrator.progress import ProgressPrinter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(printer: ProgressPrinter, budget: Budget) -> None:
    model = Catalog.load(env={}).resolve("kimi")
    printer(Event("run_started", data={"project_id": "p", "budget": budget}))
    printer(Event("decomposed", data={"tasks": 2, "done": 0}))
    printer(Event("call_started", "a", model.value, "generation"))
    budget.charge(0.25, "generation")
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


def test_a_terminal_gets_a_running_line_redrawn_in_place():
    stream = Terminal()
    budget = Budget(max_usd=2.0, max_time_seconds=60)

    feed(ProgressPrinter(stream=stream), budget)

    text = stream.getvalue()
    assert "\r\033[K" in text and "running: a:generation@kimi-k2.6" in text
    assert "a: generation on kimi-k2.6\n" not in text  # calls are not logged line by line
