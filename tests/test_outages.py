"""Outages are outages, not bad answers: a run whose providers go away stops, resumable, says
which providers failed and why, and continues once they are back, paying for nothing twice."""

from __future__ import annotations

import threading
import time

from conftest import fake_env, run_cli
from fake_provider import Reply
from scripted_llm import ScriptedLLM
from test_engine import as_tasks, code_task, prose_task
from test_resume import orchestrate, start
from test_resume import resume as resume_project

from orchestrator.run.tasks import ProjectStatus, TaskStatus
from orchestrator.store.state import StateManager

PLAN = [code_task("core"), prose_task("docs", "core"), prose_task("notes")]


class Outage:
    """The scripted LLMs, until the vendor goes down (every request 503) and comes back."""

    def __init__(self, llm: ScriptedLLM, fail_after: int) -> None:
        self.llm, self.fail_after = llm, fail_after
        self.down = False
        self.answered = 0
        self._lock = threading.Lock()

    def __call__(self, request):
        with self._lock:
            if self.answered >= self.fail_after:
                self.down = True
            if self.down:
                return Reply(status=503, text="the service is unavailable")
            self.answered += 1
        return self.llm(request)


async def run(fake, *, resume: bool = False):
    if resume:
        return await orchestrate(fake, resume_project)
    return await orchestrate(fake, start, tasks=as_tasks(PLAN))


async def answered_journal() -> dict[str, int]:
    async with StateManager() as store:
        rows = await store._store.run("SELECT key, cost_nanos FROM journal WHERE entry IS NOT NULL")
    return dict(rows)


async def test_a_provider_going_away_mid_run_stops_it_resumably_and_names_the_providers(fake, llm):
    llm.plan = PLAN
    outage = Outage(llm, fail_after=4)  # core's draft, critique and revision get through
    fake.responder = outage

    stopped = await run(fake)

    assert stopped.status is ProjectStatus.SYSTEM_FAILURE
    assert stopped.reason.startswith("providers unavailable: ")
    assert "503" in stopped.reason
    for result in stopped.results.values():
        assert "plateaued" not in result.reason  # nothing was judged on a missing verdict
        assert result.interrupted, result
    assert stopped.results["core"].output  # what was paid for is kept
    assert not all(stopped.api_health.values())  # the outage shows in api_health
    answered = await answered_journal()

    outage.down, outage.fail_after = False, 10**9  # the vendor is back
    resumed = await run(fake, resume=True)

    assert resumed.status is ProjectStatus.SUCCESS, resumed.reason
    assert all(r.status is TaskStatus.COMPLETED for r in resumed.results.values())
    after = await answered_journal()
    assert {key: after.get(key, cost) for key, cost in answered.items()} == answered


def test_every_vendor_down_ends_system_failure_exit_6_with_one_line_naming_them(
    fake, llm, tmp_path
):
    llm.plan = PLAN
    fake.responder = Outage(llm, fail_after=0)
    env = {**fake_env(fake.base_url, ("openai", "anthropic"))}

    result = run_cli(
        "-p", "[project] p", "-c", "c", "--budget", "1", cwd=tmp_path, env=env, retry_waits=False
    )

    assert result.returncode == 6, result.stderr
    [reason] = [line for line in result.stdout.splitlines() if line.startswith("reason: ")]
    assert "providers unavailable" in reason
    assert "openai (" in reason and "503" in reason
    assert "status SYSTEM_FAILURE" in result.stdout


def test_call_timeout_bounds_every_attempt_and_the_run_says_the_calls_timed_out(fake, tmp_path):
    # Every answer would take a minute: without the limit the run would still be waiting.
    fake.responder = lambda request: Reply(text="late", delay=60)
    env = fake_env(fake.base_url, ("openai",))

    started = time.monotonic()
    result = run_cli(
        "-p", "[project] p", "-c", "c", "--budget", "1", "--call-timeout", "0.2",
        cwd=tmp_path, env=env, timeout=45, retry_waits=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    assert result.returncode == 6, result.stderr  # SYSTEM_FAILURE: an outage, not bad answers
    [reason] = [line for line in result.stdout.splitlines() if line.startswith("reason: ")]
    assert "providers unavailable: openai (" in reason and "timed out" in reason
    assert elapsed < 30
