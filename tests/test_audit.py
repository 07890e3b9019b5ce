"""The audit log: every model choice and every call of a run, hash-chained, with no secret in it."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import eventually, fake_env
from fake_provider import Reply
from scripted_llm import TaskScript
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.errors import ConfigError
from orchestrator.observe.audit import AuditLog, verify
from orchestrator.observe.hooks import EventType
from orchestrator.run.tasks import ProjectStatus, Task, TaskType

TASKS = {
    "core": Task("core", TaskType.CODE_GEN, "[core] Write add(a, b) with tests.", [],
                 ["python_syntax"]),
}  # fmt: skip


async def run(fake, audit, *, env=None, project_id=None, use_cache=False, **orch_options):
    async with UnifiedClient(env=env or fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=5.0),
            client=client,
            use_cache=use_cache,
            audit_log=audit,
            **orch_options,
        )
        state = await orch.run_project("[project] add", "add works", project_id, tasks=TASKS)
        return orch, state


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_choice_and_every_paid_call_is_recorded_as_the_run_goes(fake, llm, tmp_path):
    path = tmp_path / "audit.jsonl"

    _, state = await run(fake, AuditLog(path))

    written = records(path)
    calls = [r["data"] for r in written if r["kind"] == "call"]
    decisions = [r["data"] for r in written if r["kind"] == "decision"]
    assert len(calls) == fake.count()  # one record per vendor call, none missed
    assert sum(c["settled_usd"] for c in calls) == pytest.approx(state.budget.spent_usd)
    assert all(c["outcome"] == "answered" and c["source"] == "paid" for c in calls)
    assert all(c["reserved_usd"] >= c["settled_usd"] > 0 for c in calls)
    assert {c["phase"] for c in calls} >= {"generation", "evaluation"}
    author = state.results["core"].model_used
    generation = next(d for d in decisions if d["role"] == "generation")
    assert generation["chosen"] == author.key
    assert generation["candidates"][0]["model"] == author.key
    assert all(c["reason"] for c in generation["candidates"])
    assert {r["project_id"] for r in written} == {state.project_id}
    check = verify(path)
    assert check.ok and check.records == len(written)


async def test_policy_verdicts_are_recorded_with_their_reasons(fake, llm, tmp_path):
    from orchestrator.routing.policy import Policy

    audit = AuditLog()
    await run(fake, audit, policies=[Policy("no_kimi", blocked_providers=["kimi"])])

    decisions = [r.data for r in audit.records if r.kind == "decision"]
    excluded = [e for d in decisions for e in d["excluded"]]
    assert excluded and all(e["model"].startswith("kimi/") for e in excluded)
    assert all("no_kimi" in e["reason"] for e in excluded)
    # The design's example: an in-memory log written out at the end.
    written = audit.flush_jsonl(tmp_path / "audit.jsonl")
    assert verify(written).records == len(audit.records)


async def test_an_interrupted_run_and_its_resume_make_one_chain_replays_included(
    fake, llm, tmp_path
):
    path = tmp_path / "audit.jsonl"
    llm.scripts["core"] = TaskScript(scores=[0.5, 0.95])
    llm.delay = 0.05

    async def audited(action):
        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
            orch = Orchestrator(client=client, use_cache=False, audit_log=AuditLog(path))
            return await action(orch)

    def start(orch):
        return orch.run_project("[project] add", "add works", "p1", tasks=TASKS)

    run_ = asyncio.create_task(audited(start))
    await eventually(lambda: llm.count("critique", "core") >= 1)
    run_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run_
    stopped = len(records(path))
    assert "cancelled" in {r["data"].get("outcome") for r in records(path)}  # the call in flight

    state = await audited(lambda orch: orch.resume("p1"))

    assert state.status is ProjectStatus.SUCCESS
    calls = [r["data"] for r in records(path)[stopped:] if r["kind"] == "call"]
    replayed = [c for c in calls if c["source"] == "journal"]
    assert replayed and all(c["settled_usd"] == 0 for c in replayed)
    assert verify(path).ok  # one chain across both processes' records


async def test_cache_hits_are_recorded_as_such(fake, llm, tmp_path):
    await run(fake, None, use_cache=True)
    audit = AuditLog()

    await run(fake, audit, use_cache=True)

    calls = [r.data for r in audit.records if r.kind == "call"]
    assert calls and {c["source"] for c in calls} == {"cache"}


def chain(tmp_path, count=5):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for n in range(count):
        log.record("call", {"n": n, "model": "m"}, project_id="p", task_id=f"t{n}")
    log.close()
    return path, path.read_text().splitlines(), log.head


def test_a_deleted_reordered_or_edited_line_is_detected(tmp_path):
    _, lines, head = chain(tmp_path)
    assert verify(lines).ok and verify(lines, head=head).ok

    deleted = lines[:2] + lines[3:]
    moved = [lines[0], lines[2], lines[1], *lines[3:]]
    edited = [*lines[:3], lines[3].replace('"n":3', '"n":4'), lines[4]]
    first_gone = lines[1:]

    assert verify(deleted).line == 3 and "missing or moved" in verify(deleted).problem
    assert verify(moved).line == 2
    assert verify(edited).line == 4 and "edited" in verify(edited).problem
    assert verify(first_gone).line == 1
    assert not verify(["not json"]).ok
    # Lines cut from the end leave a valid shorter chain: the head kept elsewhere catches it.
    assert verify(lines[:-1]).ok and not verify(lines[:-1], head=head).ok


def cut_off(path):
    """The file as a process killed in the middle of writing a record leaves it."""
    with path.open("a") as handle:
        handle.write('{"data":{"n":5},"hash":"3f5')
    return path


def test_a_last_line_cut_off_in_mid_write_is_an_incomplete_write_not_tampering(tmp_path):
    path, _, head = chain(tmp_path, 3)

    check = verify(cut_off(path))

    assert check.ok and check.records == 3 and check.incomplete
    assert "last record incomplete (a write cut off)" in check.describe(path)
    assert verify(path, head=head).ok  # the chain before it is whole


def test_a_log_appending_to_a_file_cut_off_in_mid_write_drops_the_cut_line_and_goes_on(
    tmp_path, caplog
):
    path, _, _ = chain(tmp_path, 3)
    cut_off(path)

    log = AuditLog(path)  # a resumed run's log
    log.record("call", {"n": 3})
    log.close()

    check = verify(path)
    assert check.ok and check.records == 4 and not check.incomplete
    assert check.head == log.head
    assert [r.getMessage() for r in caplog.records if "last record incomplete" in r.getMessage()]


def test_a_whole_record_missing_only_its_newline_is_kept_and_the_chain_goes_on(tmp_path):
    path, lines, _ = chain(tmp_path, 2)
    path.write_text("\n".join(lines))  # killed after the record, before its newline

    log = AuditLog(path)
    log.record("call", {"n": 2})
    log.close()

    check = verify(path)
    assert check.ok and check.records == 3 and check.head == log.head


def test_a_damaged_line_that_was_written_whole_still_refuses_an_append(tmp_path):
    path, _, _ = chain(tmp_path, 2)
    with path.open("a") as handle:
        handle.write("edited by hand\n")

    with pytest.raises(ConfigError, match="ends in a damaged line"):
        AuditLog(path)
    assert not verify(path).ok


def test_a_log_continues_the_chain_of_the_file_it_appends_to(tmp_path):
    path, _, _ = chain(tmp_path, 2)
    log = AuditLog(path)
    log.record("call", {"n": 2})
    log.close()

    check = verify(path)
    assert check.ok and check.records == 3 and check.head == log.head


async def test_no_api_key_reaches_a_record_a_hook_an_event_or_a_metric(fake, llm, tmp_path):
    keys = {name: f"sk-fake-{name.lower()}-0123456789abcdef" for name in
            ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MOONSHOT_API_KEY",
             "DEEPSEEK_API_KEY")}  # fmt: skip
    env = {**fake_env(fake.base_url), **keys}
    author = "kimi-k2.6"
    # The vendor's error message quotes the key it was sent, as a 401 page often does.
    fake.script(author, Reply(status=400, text=f"bad request from {keys['MOONSHOT_API_KEY']}"))
    llm.scripts["core"] = TaskScript(scores=[0.9], broken_versions={1})
    seen: list[str] = []
    path = tmp_path / "audit.jsonl"

    async with UnifiedClient(env=env, retry=FAST) as client:
        orch = Orchestrator(
            budget=Budget(max_usd=5.0),
            client=client,
            use_cache=False,
            audit_log=AuditLog(path),
            on_event=lambda event: seen.append(repr(event)),
        )
        for event_type in EventType:
            orch.add_hook(event_type, lambda **payload: seen.append(repr(payload)))
        state = await orch.run_project("[project] add", "add works", tasks=TASKS)
        metrics = json.dumps(orch.export_metrics().to_dict())

    assert state.status is ProjectStatus.SUCCESS
    audit = path.read_text()
    assert "[redacted]" in audit  # the failed call is recorded, without the key
    everything = "\n".join([audit, metrics, *seen, state.results["core"].output])
    for key in keys.values():
        assert key not in everything


async def test_a_decision_records_the_models_past_its_fallbacks_as_never_asked(fake, llm, tmp_path):
    path = tmp_path / "audit.jsonl"

    await run(fake, AuditLog(path), max_fallbacks=1)

    decisions = [r["data"] for r in records(path) if r["kind"] == "decision"]
    generation = next(d for d in decisions if d["role"] == "generation")
    asked = [c["model"] for c in generation["candidates"]]
    asked += [h["model"] for h in generation["held_back"]]
    assert len(asked) == 2  # the choice and its one fallback
    assert generation["beyond_fallbacks"]  # the rest of the catalog, never asked
    assert not set(asked) & set(generation["beyond_fallbacks"])


async def test_two_projects_at_once_on_one_orchestrator_are_audited_apart(fake, llm, tmp_path):
    path = tmp_path / "audit.jsonl"
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orch = Orchestrator(budget=Budget(max_usd=5.0), client=client, use_cache=False,
                            audit_log=AuditLog(path))  # fmt: skip
        first, second = await asyncio.gather(
            orch.run_project("[project] add", "add works", "first", tasks=TASKS),
            orch.run_project("[project] add", "add works", "second", tasks=TASKS),
        )

    written = records(path)
    assert {r["project_id"] for r in written} == {"first", "second"}
    roles = {}
    for state in (first, second):
        mine = [r for r in written if r["project_id"] == state.project_id]
        decisions = [r["data"] for r in mine if r["kind"] == "decision"]
        assert state.results["core"].model_used.key in {d["chosen"] for d in decisions}
        roles[state.project_id] = sorted(d["role"] for d in decisions)
    # The same task, the same choices: each project's own, none recorded under the other's id.
    assert roles["first"] == roles["second"]
