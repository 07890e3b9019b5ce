"""Hooks: the design's lifecycle callbacks, sync or async, never able to break or stall a run."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time

import pytest
from conftest import fake_env
from scripted_llm import TaskScript
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.observe.events import EventKind
from orchestrator.observe.hooks import EventType
from orchestrator.run.tasks import ProjectStatus, Task, TaskType

TASKS = {
    "core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                 ["python_syntax"]),
}  # fmt: skip


async def run(fake, orch_hooks, *, budget=10.0, hook_seconds=None):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=budget), client=client, use_cache=False)
        if hook_seconds is not None:
            orch.hooks.timeout = hook_seconds
        orch_hooks(orch)
        started = time.monotonic()
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)
        return state, time.monotonic() - started


async def test_the_design_documents_hooks_run_with_the_arguments_it_shows(fake, llm, capsys):
    llm.scripts["core"] = TaskScript(scores=[0.9], broken_versions={0, 1})  # fails validation
    llm.bill_max_output = True  # so the cheap budget crosses a phase's share

    def hooks(orch):
        orch.add_hook(EventType.TASK_COMPLETED, lambda task_id, result, **_:
            print(f"[{task_id}] score={result.score:.3f}"))  # fmt: skip

        orch.add_hook(EventType.BUDGET_WARNING, lambda phase, ratio, **_:
            print(f"WARNING: {phase} at {ratio:.0%} of budget"))  # fmt: skip

        orch.add_hook(EventType.VALIDATION_FAILED, lambda task_id, model, **_:
            print(f"Validator failed for {task_id} using {model}"))  # fmt: skip

    state, _ = await run(fake, hooks, budget=0.08)

    printed = capsys.readouterr().out.splitlines()
    assert f"[core] score={state.results['core'].score:.3f}" in printed
    # Each failing answer was the work of a model that wrote core's code.
    failed = [line for line in printed if line.startswith("Validator failed for core using ")]
    writers = {m for role, t, m in llm.roles if t == "core" and role in ("generate", "revise")}
    assert failed and {line.rsplit(" ", 1)[1] for line in failed} <= writers
    # A phase's share of the budget crossed (which one depends on who revised what).
    assert any(re.fullmatch(r"WARNING: \w+ at \d+% of budget", line) for line in printed)


async def test_async_hooks_are_awaited_and_model_choices_reach_them(fake, llm):
    chosen = []

    async def on_selected(task_id, model, role, decision, **_):
        await asyncio.sleep(0)
        chosen.append((role, task_id, model, decision.backend))

    state, _ = await run(fake, lambda orch: orch.add_hook(EventType.MODEL_SELECTED, on_selected))

    assert state.status is ProjectStatus.SUCCESS
    author = state.results["core"].model_used.value
    assert ("generation", "core", author, "table") in chosen
    assert {role for role, *_ in chosen} >= {"generation", "critic", "evaluator"}


def test_the_design_documents_hook_names_are_members_of_the_one_event_vocabulary():
    assert EventType is EventKind
    assert EventType.TASK_COMPLETED is EventKind.TASK_FINISHED  # the design's name for it
    for name in ("TASK_STARTED", "VALIDATION_FAILED", "BUDGET_WARNING", "MODEL_SELECTED"):
        assert EventType[name] is EventKind[name]


async def test_a_hook_fires_whether_named_by_member_by_its_string_or_by_the_designs_string(
    fake, llm
):
    heard = []

    def hooks(orch):
        for name in (EventType.TASK_COMPLETED, "task_completed", "task_finished"):
            orch.add_hook(name, lambda task_id, status, _name=name, **_:
                heard.append((_name, task_id, status)))  # fmt: skip
        orch.add_hook("task_started", lambda task_id, **_: heard.append(("started", task_id)))

    state, _ = await run(fake, hooks)

    status = state.results["core"].status
    assert sorted(heard, key=str) == sorted(
        [("started", "core"), (EventType.TASK_COMPLETED, "core", status),
         ("task_completed", "core", status), ("task_finished", "core", status)], key=str,
    )  # fmt: skip


def test_a_misspelt_hook_name_is_an_error_when_the_hook_is_added():
    orch = Orchestrator(budget=Budget(max_usd=1.0), use_cache=False, use_state=False)

    with pytest.raises(ValueError, match="did you mean 'task_finished'"):
        orch.add_hook("task_finshed", lambda **_: None)


async def test_a_hook_can_follow_any_kind_of_event_with_its_task_model_role_and_data(fake, llm):
    calls = []

    def hooks(orch):
        orch.add_hook(EventKind.CALL_FINISHED, lambda task_id, model, role, phase, cost_usd, **_:
            calls.append((task_id, model, role, phase, cost_usd)))  # fmt: skip
        orch.add_hook("run_finished", lambda status, **_: calls.append(("run", status)))

    state, _ = await run(fake, hooks)

    author = state.results["core"].model_used.value
    assert any(call[:4] == ("core", author, "generation", "generation") for call in calls)
    assert all(call[4] > 0 for call in calls if call[0] == "core")
    assert ("run", ProjectStatus.SUCCESS.value) in calls


async def test_hooks_that_raise_or_hang_are_logged_once_and_never_hold_up_the_run(
    fake, llm, caplog
):
    caplog.set_level(logging.WARNING, logger="orchestrator.observe.hooks")
    released = threading.Event()

    def raising(**_):
        raise RuntimeError("dashboard down")

    def hanging(**_):
        released.wait(30)  # a sync hook stuck on I/O

    async def sleeping(**_):
        await asyncio.sleep(30)

    def hooks(orch):
        for callback in (raising, hanging, sleeping):
            orch.add_hook(EventType.MODEL_SELECTED, callback)
            orch.add_hook(EventType.TASK_COMPLETED, callback)

    try:
        state, seconds = await run(fake, hooks, hook_seconds=0.3)
    finally:
        released.set()

    assert state.status is ProjectStatus.SUCCESS
    assert seconds < 5  # time-boxed: not the 30 s the hooks would take
    messages = [r.getMessage() for r in caplog.records]
    for name, what in (("raising", "raised RuntimeError: dashboard down"),
                       ("hanging", "did not return within 0.3 s"),
                       ("sleeping", "did not return within 0.3 s")):  # fmt: skip
        about = [m for m in messages if m.startswith(f"hook {name} ")]
        assert len(about) == 1 and what in about[0], about


async def test_the_on_event_stream_still_sees_every_event_beside_the_hooks(fake, llm):
    kinds = []
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=5.0), client=client, use_cache=False,
            on_event=lambda event: kinds.append(event.kind),
        )  # fmt: skip
        orch.add_hook(EventType.TASK_STARTED, lambda task_id, **_: kinds.append("hook"))
        await orch.run_project("[project] add", "add works", tasks=TASKS)

    assert "task_started" in kinds and "task_finished" in kinds and "hook" in kinds


async def test_an_on_event_handler_that_hangs_is_logged_once_and_never_stalls_the_run(
    fake, llm, caplog
):
    release = threading.Event()
    seen = []

    def hangs_on_the_first_task(event):
        seen.append(event.kind)
        if event.kind == "task_started":
            release.wait(30)  # a dashboard that stopped answering

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=5.0), client=client, use_cache=False,
            on_event=hangs_on_the_first_task,
        )  # fmt: skip
        orch.hooks.timeout = 0.3
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            state = await orch.run_project("[project] add", "add works", tasks=TASKS)
        took = time.monotonic() - started
    release.set()

    assert state.status is ProjectStatus.SUCCESS
    assert took < 5
    assert seen[:2] == ["run_started", "decomposed"]  # in order, up to the one it hung on
    hung = [r for r in caplog.records if "has not returned within 0.3 s" in r.getMessage()]
    assert len(hung) == 1


async def test_a_hook_that_exits_is_logged_once_like_one_that_raises_and_the_run_goes_on(
    fake, llm, caplog
):
    caplog.set_level(logging.WARNING, logger="orchestrator.observe.hooks")

    def exits(**_):
        sys.exit(3)  # a script's habit, inside a hook

    async def async_exits(**_):
        raise SystemExit(4)

    def interrupts(**_):
        raise KeyboardInterrupt  # raised by the hook in its own thread: no Ctrl-C of the user's

    def hooks(orch):
        for callback in (exits, async_exits, interrupts):
            orch.add_hook(EventType.MODEL_SELECTED, callback)

    state, _ = await run(fake, hooks)

    assert state.status is ProjectStatus.SUCCESS
    messages = [r.getMessage() for r in caplog.records]
    for name, what in (("exits", "raised SystemExit: 3"), ("async_exits", "raised SystemExit: 4"),
                       ("interrupts", "raised KeyboardInterrupt")):  # fmt: skip
        about = [m for m in messages if m.startswith(f"hook {name} ")]
        assert len(about) == 1 and what in about[0], about


async def test_an_async_hook_that_ignores_its_cancellation_cannot_stall_the_end_of_a_run(
    fake, llm, caplog
):
    caplog.set_level(logging.WARNING, logger="orchestrator.observe.hooks")

    async def stubborn(**_):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)  # swallows the time box's cancellation and waits on

    state, seconds = await run(
        fake, lambda orch: orch.add_hook(EventType.TASK_COMPLETED, stubborn), hook_seconds=0.3
    )

    assert state.status is ProjectStatus.SUCCESS
    assert seconds < 5  # the time box and a short grace, not the 30 s it asks for
    about = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hook stubborn ")]
    assert len(about) == 1 and "did not stop when cancelled" in about[0]
