"""One vocabulary of events: every kind the engine emits is an ``EventKind`` member, a misspelt
kind is an error where the event is made, and the progress display, the hooks, the metrics and
the audit log all follow a real run's events."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
from conftest import fake_env
from fake_provider import Reply
from test_resume import FAST

import orchestrator
from orchestrator import Budget, Event, EventKind, Orchestrator, UnifiedClient
from orchestrator.observe.audit import AuditLog
from orchestrator.observe.hooks import HookRegistry
from orchestrator.observe.metrics import JSONExporter
from orchestrator.observe.progress import ProgressPrinter
from orchestrator.routing.router import Decision
from orchestrator.run.tasks import (
    ProjectStatus,
    TaskResult,
    TaskStatus,
    TaskType,
    ValidatorResult,
)

PACKAGE = Path(orchestrator.__file__).parent
DEFAULT_PLAN = ("[project] Build an add library", "add works and is tested")


def test_a_misspelt_kind_is_an_error_when_the_event_is_made():
    with pytest.raises(ValueError, match="unknown event kind 'task_finshed'; did you mean "
                                         "'task_finished'"):  # fmt: skip
        Event("task_finshed", "core")


def test_a_kind_given_as_its_string_is_made_the_member_and_still_equals_the_string():
    event = Event("task_finished", "core")

    assert event.kind is EventKind.TASK_FINISHED
    assert event.kind == "task_finished"  # a handler written against the strings still matches


def emitted_kinds() -> dict[EventKind, list[str]]:
    """Every ``Event(kind, ...)`` the package makes, by kind, with where: the kind given as a
    string or as ``EventKind.NAME``."""
    found: dict[EventKind, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id != "Event":
                continue
            given = (
                node.args[0]
                if node.args
                else next(k.value for k in node.keywords if k.arg == "kind")
            )
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            if isinstance(given, ast.Constant) and isinstance(given.value, str):
                try:
                    kind = EventKind(given.value)
                except ValueError as exc:  # a misspelling, named with where it is
                    raise AssertionError(f"{where}: {exc}") from None
            elif isinstance(given, ast.Attribute) and ast.unparse(given.value) == "EventKind":
                kind = EventKind[given.attr]
            else:
                raise AssertionError(f"{where}: an event kind that is not written out")
            found.setdefault(kind, []).append(where)
    return found


def test_every_kind_the_package_emits_is_a_member_and_every_member_is_emitted():
    found = emitted_kinds()

    assert set(found) == set(EventKind)  # no kind left out of the enum, none it lists unused


async def test_every_event_of_a_run_is_a_member_and_every_consumer_follows_them(
    fake, llm, tmp_path
):
    author = "kimi-k2.6"
    fake.script(author, Reply(status=400, text="bad request"))  # a call fails: the next model
    llm.bill_max_output = True  # so the budget crosses a phase's warning share
    events: list[Event] = []
    hooked: list[tuple[EventKind, dict]] = []
    metrics = tmp_path / "metrics.json"
    audit = AuditLog()

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=0.5), client=client, use_cache=False,
            on_event=events.append, audit_log=audit, min_tasks=2,
        )  # fmt: skip
        for kind in EventKind:
            orch.add_hook(kind, lambda _kind=kind, **kwargs: hooked.append((_kind, kwargs)))
        orch.set_metrics_exporter(JSONExporter(metrics))
        state = await orch.run_project(*DEFAULT_PLAN)

    assert state.status is ProjectStatus.SUCCESS
    kinds = [event.kind for event in events]
    assert all(type(kind) is EventKind for kind in kinds)
    assert set(kinds) >= {
        EventKind.RUN_STARTED, EventKind.MODEL_SELECTED, EventKind.CALL_STARTED,
        EventKind.CALL_FINISHED, EventKind.CALL_FAILED, EventKind.DECOMPOSED,
        EventKind.TASK_STARTED, EventKind.BUDGET_WARNING, EventKind.TASK_FINISHED,
        EventKind.INTEGRATION, EventKind.RUN_FINISHED,
    }  # fmt: skip

    # Hooks: one on every kind hears every event, in the kinds the run emitted.
    assert sorted(kind for kind, _ in hooked) == sorted(kinds)
    for kind, kwargs in hooked:
        if kind is EventKind.CALL_FAILED:
            assert {"task_id", "model", "role", "phase", "error"} <= set(kwargs)

    # Progress: every event of the run is shown (or passed over) without a failure.
    shown = io.StringIO()
    with ProgressPrinter(stream=shown, live=False) as printer:
        for event in events:
            printer(event)
    lines = shown.getvalue().splitlines()
    tasks = len(state.tasks)
    assert any(line.endswith(f"] plan: {tasks} tasks") for line in lines)
    assert any("] warning: " in line and "of the budget" in line for line in lines)
    assert lines[-1].startswith(f"[{tasks}/{tasks} ")

    # Metrics: the file exporter followed the run to its end.
    exported = json.loads(metrics.read_text())["run"]
    assert exported["tasks"]["completed"] == tasks

    # Audit: a decision record for every model choice.
    decisions = [r for r in audit.records if r.kind == "decision"]
    assert len(decisions) == kinds.count(EventKind.MODEL_SELECTED)


def one_of_each() -> list[tuple[Event, str | None]]:
    """An event of every kind, with the fields its ``EventKind`` entry documents, and the line
    the progress display shows for it (None: none, it only updates what is on the screen)."""
    model = "kimi-k2.6"
    call = {"phase": "generation", "iteration": 1, "repeat": 0}
    result = TaskResult("a", output="x", score=0.9, status=TaskStatus.COMPLETED, iterations=1)
    decision = Decision("generation", TaskType.CODE_GEN, "a", "table", ())
    K = EventKind
    return [
        (Event(K.RUN_STARTED, data={"project_id": "p", "budget": Budget(max_usd=2.0)}), None),
        (Event(K.ALREADY_FINISHED, data={"status": "success"}), None),
        (Event(K.DECOMPOSED, data={"tasks": 2, "done": 0}), "plan: 2 tasks"),
        (Event(K.PLAN_SIZE, data={"tasks": 2, "guidance": (3, 7)}),
         "note: the plan has 2 tasks (asked for 3-7); running it as planned"),
        (Event(K.SANDBOX, data={"isolation": "bubblewrap"}),
         "validators run model-written code in a bubblewrap sandbox"),
        (Event(K.NOTICE, data={"message": "one model plays every role"}),
         "note: one model plays every role"),
        (Event(K.MODEL_SELECTED, "a", model, "generation",
               {"decision": decision, "backend": "table"}), None),
        (Event(K.TASK_STARTED, "a"), None),
        (Event(K.CALL_STARTED, "a", model, "generation", call), f"a: generation on {model}"),
        (Event(K.CALL_FAILED, "a", model, "generation", {**call, "error": "HTTP 400"}), None),
        (Event(K.CALL_FINISHED, "a", model, "generation",
               {**call, "cost_usd": 0.01, "cached": False, "replayed": False, "notes": []}),
         None),
        (Event(K.VALIDATION_FAILED, "a", model, data={
            "validators": [ValidatorResult("pytest", False, detail="1 failed")],
            "iteration": 1}), None),
        (Event(K.BUDGET_WARNING, data={"phase": "generation", "ratio": 0.8}),
         "warning: generation has used 80% of the budget"),
        (Event(K.TASK_FINISHED, "a", data={"result": result}), "a completed score 0.90"),
        (Event(K.TASK_SKIPPED, "b", data={"reason": "dependency a did not produce output"}),
         "b skipped: dependency a did not produce output"),
        (Event(K.INTEGRATION, data={"round": 1, "passed": True, "checks": "pytest: ok",
                                    "revise": [], "finished": True}),
         "integration check 1 passed: pytest: ok"),
        (Event(K.RUN_FINISHED, data={"status": "success"}), None),
    ]  # fmt: skip


def test_the_progress_display_takes_every_kind_and_shows_the_ones_a_user_reads():
    samples = one_of_each()
    assert {event.kind for event, _ in samples} == set(EventKind)
    stream = io.StringIO()

    with ProgressPrinter(stream=stream, live=False) as printer:
        for event, shown in samples:
            before = len(stream.getvalue())
            printer(event)
            written = stream.getvalue()[before:]
            if shown is None:
                assert written == "", event.kind
            else:
                assert shown in written and written.count("\n") == 1, (event.kind, written)


async def test_a_hook_takes_every_kind_the_design_s_with_its_arguments_the_rest_with_the_data():
    samples = one_of_each()
    heard: dict[EventKind, dict] = {}
    hooks = HookRegistry(timeout=5)
    for kind in EventKind:
        hooks.add(kind, lambda _kind=kind, **kwargs: heard.setdefault(_kind, kwargs))

    for event, _ in samples:
        hooks.dispatch(event)
    await hooks.drain()

    assert set(heard) == set(EventKind)
    assert set(heard[EventKind.TASK_STARTED]) == {"task_id"}
    assert set(heard[EventKind.TASK_COMPLETED]) == {"task_id", "result", "status"}
    assert heard[EventKind.TASK_COMPLETED]["status"] is TaskStatus.COMPLETED
    assert set(heard[EventKind.VALIDATION_FAILED]) == {"task_id", "model", "validators",
                                                       "iteration"}  # fmt: skip
    assert set(heard[EventKind.BUDGET_WARNING]) == {"phase", "ratio"}
    assert set(heard[EventKind.MODEL_SELECTED]) == {"task_id", "model", "role", "backend",
                                                    "decision"}  # fmt: skip
    designed = {EventKind.TASK_STARTED, EventKind.TASK_FINISHED, EventKind.VALIDATION_FAILED,
                EventKind.BUDGET_WARNING, EventKind.MODEL_SELECTED}  # fmt: skip
    for event, _ in samples:
        if event.kind not in designed:
            expected = {"task_id", "model", "role", *event.data}
            assert set(heard[event.kind]) == expected, event.kind
