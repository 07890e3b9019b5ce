"""The read-only page (``--serve``) as a user sees it over HTTP: what it shows of the saved
projects, that it shows model text as text and no secret, and that it follows the store.

Every test starts a real server process over the store the runs wrote, and reads its answers."""

from __future__ import annotations

import html
import json
import os
import re
import socket
from pathlib import Path

import pytest
from conftest import fake_env, run_cli, sqlite_rows
from served import mark_of, records, serving, table
from test_integration import (
    BUGGY_LIBRARY,
    LIBRARY,
    TESTS,
    library_and_tests,
    needs_sandbox,
    scripted,
)
from test_integration import run as run_integrated
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.money.caps import BudgetHierarchy
from orchestrator.money.units import format_usd
from orchestrator.observe.audit import AuditLog
from orchestrator.run.tasks import (
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
    ValidatorResult,
)
from orchestrator.store.state import StateManager

PROJECT = "[project] Build an add library"
CRITERIA = "add works and is tested"
HOSTILE = '<script>alert(1)</script> "><img src=x onerror=alert(1)> \x1b[31mred \u202eevil'
# What the hostile text must look like on a page: as text, its controls escaped.
HOSTILE_SHOWN = (
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&lt;img src=x onerror=alert(1)&gt;",
    "\\x1b[31mred",
    "\\u202eevil",
)
# Three tasks in a chain, as a plan saved by a run that was then stopped.
PLAN = {
    "a": Task("a", TaskType.CODE_GEN, "[a] Write add.", [], ["python_syntax"]),
    "b": Task("b", TaskType.WRITING, "[b] Document add.", ["a"], ["length"]),
    "c": Task("c", TaskType.SUMMARIZE, "[c] Summarise.", ["b"], []),
}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, isolated_home, monkeypatch) -> str:
    """Where the runs keep their projects and the page reads them: the home's SQLite file, or a
    PostgreSQL database ($ORCHESTRATOR_DB_URL, as a team shares one)."""
    if request.param == "sqlite":
        return str(isolated_home / "state.db")
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("ORCHESTRATOR_DB_URL", url)
    return url


async def run(fake, description=PROJECT, *, project_id="web", team=None, job_id=None, **options):
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0), client=client, use_cache=False, **options
        )
        return await orchestrator.run_project(
            description, CRITERIA, project_id=project_id, team=team, job_id=job_id
        )


def finished(task_id: str, output: str = "def add(a, b):\n    return a + b\n") -> dict:
    result = TaskResult(
        task_id,
        output=output,
        score=0.9,
        status=TaskStatus.COMPLETED,
        iterations=1,
        validator_results=[ValidatorResult("length", True, detail="30 characters")],
    )
    return result.to_record()


async def save_stopped_project(
    project_id: str = "p", *, owner: str | None = None, description: str = PROJECT
) -> None:
    """A project as a run left it when stopped mid-way: ``a`` finished, ``b`` called (its
    answer not final), ``c`` never started; held by ``owner`` when given."""
    async with StateManager() as state:
        await state.projects.create(
            project_id, description=description, criteria=CRITERIA, max_usd=2.0,
            max_time_seconds=600.0, settings={},
        )  # fmt: skip
        await state.projects.save_plan(project_id, PLAN, list(PLAN), 1.0)
        if owner is not None:
            assert await state.holders.claim(project_id, owner, 600.0) is None
        for key, task_id in (("a1", "a"), ("a2", "a"), ("b1", "b")):
            await paid_call(state, project_id, key, task_id)
        await state.projects.checkpoint(project_id, "a", finished("a"), final=True, elapsed=2.0)
        await state.projects.checkpoint(project_id, "b", finished("b"), final=False, elapsed=3.0)


async def paid_call(state: StateManager, project_id: str, key: str, task_id: str) -> None:
    await state.journal.put(
        project_id, key, task_id=task_id, phase="generation", cost_nanos=1_000_000,
        entry={"text": "answer", "reported_model": "gpt-4o"}, elapsed=1.0, model="openai/gpt-4o",
    )  # fmt: skip


def task_states(page: str) -> dict[str, str]:
    return {row["task"]: row["state"] for row in records(page, "tasks")}


def verdicts(record: dict) -> str:
    def outcome(v: dict) -> str:
        if v["not_run"]:
            return "not run"
        return "skipped" if v["skipped"] else "passed" if v["passed"] else "failed"

    return " ".join(f"{v['name']}: {outcome(v)}" for v in record["validator_results"])


async def test_a_finished_run_is_listed_and_its_page_shows_every_task_and_paid_call(
    fake, llm, store
):
    await run(fake)
    async with StateManager() as state:
        saved = await state.projects.load("web")
    journal = sqlite_rows(store, "SELECT task_id, phase FROM journal WHERE project_id = 'web'")

    with serving() as server:
        listed = records(server.page("/"), "projects")
        page = server.page("/project/web")
        core = server.page("/project/web/task/core")

    assert [{**row, "last update": "..."} for row in listed] == [
        {"id": "web", "status": "SUCCESS", "last update": "...", "tasks done": "5 / 5",
         "spent / budget": f"{format_usd(saved.spent_usd)} / $5.00", "run by": ""}
    ]  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", listed[0]["last update"])
    assert "<h2>Tasks: 5 of 5 done</h2>" in page
    assert records(page, "tasks") == [
        {
            "task": task_id,
            "type": saved.tasks[task_id].type.value,
            "state": result["status"],
            "model": result["model_used"],
            "reviewer": result["reviewer_model"],
            "score": f"{result['score']:.2f}",
            "iterations": str(result["iterations"]),
            "cost": format_usd(result["cost_usd"]),
            "validators": verdicts(result),
            "depends on": ", ".join(saved.tasks[task_id].dependencies),
        }
        for task_id, result in ((t, saved.results[t]) for t in saved.execution_order)
    ]
    # The graph: a box per task in its state, an arrow per dependency.
    boxes = re.findall(r'<g class="node ([\w-]+)" data-task="([\w.-]+)">', page)
    assert sorted(boxes) == sorted((r["status"], t) for t, r in saved.results.items())
    arrows = sum(len(task.dependencies) for task in saved.tasks.values())
    assert page.count('<path class="edge"') == arrows
    # Every paid call the journal holds, and what the project paid against its budget.
    assert f"<h2>Paid calls: {len(journal)}</h2>" in page
    calls = records(page, "calls")
    assert sorted((c["task"], c["phase"]) for c in calls) == sorted(journal)
    assert table(page, "caps")[1][:4] == ["project", format_usd(saved.spent_usd), "$0.00", "$5.00"]
    shown_store = "PostgreSQL" if store.startswith("postgresql://") else f"SQLite {store}"
    assert f'<span class="store">{shown_store}</span>' in page
    # A task's own page: what it was asked and its answer.
    assert saved.tasks["core"].prompt in html.unescape(core)
    assert saved.results["core"]["output"] in html.unescape(core)


async def test_model_text_is_shown_as_text_never_as_markup_or_terminal_codes(fake, llm):
    llm.answers["docs"] = f"v0@docs {HOSTILE}"
    await run(fake, f"[project] {HOSTILE}")
    # A project id is any string to the library: a run's page links to it all the same.
    hostile_id = 'x"><img src=x onerror=alert(2)>'
    await save_stopped_project(hostile_id, description=HOSTILE)

    with serving() as server:
        listed = server.page("/")
        project = server.page("/project/web")
        fragment = server.page("/project/web/live")
        docs = server.page("/project/web/task/docs")
        link = re.search(r'<a href="(/project/x[^"]+)">', listed)
        assert link is not None
        hostile_project = server.page(link.group(1))

    for page in (listed, project, fragment, docs, hostile_project):
        assert page.count("<script") == (0 if page is fragment else 1)  # the page's own only
        assert "alert(1)</script>" not in page and "<img" not in page
        assert "\x1b" not in page and "\u202e" not in page
    for page in (project, fragment, docs, hostile_project):
        for shown in HOSTILE_SHOWN:
            assert shown in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in listed
    assert "&lt;img src=x onerror=alert(2)&gt;" in hostile_project


async def test_no_key_password_or_database_url_is_ever_on_a_page(store, monkeypatch):
    password = "hunter2-not-for-pages"
    if store.startswith("postgresql://"):
        import psycopg

        with_password = re.sub(r"://([^:@/]+)(:[^@]*)?@", rf"://\1:{password}@", store)
        try:  # a server that asks for no password takes one all the same
            psycopg.connect(with_password, connect_timeout=5).close()
            store = with_password
        except psycopg.OperationalError:
            pass  # then the URL and the database's name, at least
        monkeypatch.setenv("ORCHESTRATOR_DB_URL", store)
    await save_stopped_project(description=HOSTILE)
    keys = {"OPENAI_API_KEY": "sk-test-secret-openai", "ANTHROPIC_API_KEY": "sk-ant-secret"}
    secrets = [*keys.values(), password]
    if store.startswith("postgresql://"):
        database = store.rsplit("/", 1)[1]
        secrets += [store, store.split("@", 1)[1], database]

    with serving(env=keys) as server:
        answers = [
            server.get(path)
            for path in ("/", "/live", "/project/p", "/project/p/live", "/project/p/task/a",
                         "/project/unknown", "/project/p/task/unknown", "/static/live.js")
        ]  # fmt: skip
    assert [a.status for a in answers] == [200, 200, 200, 200, 200, 404, 404, 200]
    for answer in answers:
        for secret in secrets:
            assert secret not in answer.text
            assert all(secret not in value for value in answer.headers.values())
    shown = "PostgreSQL" if store.startswith("postgresql://") else f"SQLite {store}"
    assert f'<span class="store">{shown}</span>' in answers[0].text


async def test_a_killed_run_says_no_run_holds_it_and_how_to_resume_it():
    dead = 2**22 + 12345  # past the largest pid Linux gives: a process that cannot be alive
    await save_stopped_project("alive", owner=f"{socket.gethostname()}:{os.getpid()}:alive")
    await save_stopped_project("killed", owner=f"{socket.gethostname()}:{dead}:dead")

    with serving() as server:
        listed = records(server.page("/"), "projects")
        killed = server.page("/project/killed")
        alive = server.page("/project/alive")

    # The one a run holds is listed first, before the newer killed one.
    assert [(row["id"], row["status"]) for row in listed] == [
        ("alive", "RUNNING running now"),
        ("killed", "RUNNING no run holds it"),
    ]
    assert "no run holds it: resume with --resume killed" in killed
    assert task_states(killed) == {"a": "completed", "b": "interrupted", "c": "not run"}
    assert "running now" in alive and "--resume" not in alive
    assert task_states(alive) == {"a": "completed", "b": "running", "c": "waiting"}


async def test_spend_is_shown_against_the_project_job_team_and_organisation_caps(fake, llm):
    caps = BudgetHierarchy(org_max_usd=20.0, team_budgets={"eng": 8.0}, job_budgets={"j1": 6.0})
    await run(fake, project_id="first", team="eng", job_id="j1", budget_hierarchy=caps)
    await run(fake, project_id="other", team="ops")  # the organisation's only
    async with StateManager() as state:
        first = (await state.projects.load("first")).spent_usd
        other = (await state.projects.load("other")).spent_usd

    with serving() as server:
        rows = table(server.page("/project/first"), "caps")[1:]

    assert [row[:4] for row in rows] == [
        ["project", format_usd(first), "$0.00", "$5.00"],
        ["job j1", format_usd(first), "$0.00", "$6.00"],
        ["team eng", format_usd(first), "$0.00", "$8.00"],
        ["organisation", format_usd(first + other), "$0.00", "$20.00"],
    ]


async def test_the_live_twin_answers_nothing_until_the_store_changes_then_the_new_content():
    await save_stopped_project("p")

    with serving() as server:
        page = server.page("/project/p")
        mark = mark_of(page)
        index_mark = mark_of(server.page("/"))
        unchanged = [server.get(f"/project/p/live?mark={mark}") for _ in range(2)]
        unchanged.append(server.get(f"/live?mark={index_mark}"))
        async with StateManager() as state:
            await paid_call(state, "p", "b2", "b")
            await state.projects.checkpoint("p", "b", finished("b"), final=True, elapsed=4.0)
        changed = server.get(f"/project/p/live?mark={mark}")
        new_mark = changed.header("X-Mark")
        again = server.get(f"/project/p/live?mark={new_mark}")
        await save_stopped_project("q")
        listed = server.get(f"/live?mark={index_mark}")

    assert [(a.status, a.text, a.header("X-Mark")) for a in unchanged] == [(204, "", None)] * 3
    assert "<h2>Paid calls: 3</h2>" in page and task_states(page)["b"] == "interrupted"
    assert changed.status == 200 and new_mark not in (None, mark)
    assert "<html" not in changed.text  # the page's changing part only
    assert "<h2>Paid calls: 4</h2>" in changed.text
    assert task_states(changed.text)["b"] == "completed"
    assert (again.status, again.text) == (204, "")
    assert listed.status == 200
    assert [row["id"] for row in records(listed.text, "projects")] == ["q", "p"]


async def test_the_audit_logs_chain_is_checked_and_a_tampered_line_named(fake, llm, tmp_path):
    log = tmp_path / "audit.jsonl"
    await run(fake, audit_log=AuditLog(log))
    lines = log.read_text().splitlines()
    own = sum(json.loads(line)["project_id"] == "web" for line in lines)

    with serving("--audit-log", str(log)) as server:
        intact = server.page("/project/web")
    tampered = json.loads(lines[2])
    tampered["data"]["tampered"] = True
    lines[2] = json.dumps(tampered)
    log.write_text("\n".join(lines) + "\n")
    with serving("--audit-log", str(log)) as server:
        broken = server.page("/project/web")

    assert own > 0
    assert f"{len(lines)} records, chain intact" in intact
    assert f"; {own} records of this project</p>" in intact
    assert re.search(rf'<p class="audit broken">{re.escape(str(log))}: line 3: [^<]+</p>', broken)


async def test_a_large_projects_table_of_tasks_is_a_page_of_its_own():
    tasks = {
        f"t{n}": Task(f"t{n}", TaskType.SUMMARIZE, f"[t{n}] Summarise.", []) for n in range(201)
    }
    async with StateManager() as state:
        await state.projects.create(
            "big", description=PROJECT, criteria=CRITERIA, max_usd=2.0, max_time_seconds=600.0,
            settings={},
        )  # fmt: skip
        await state.projects.save_plan("big", tasks, list(tasks), 1.0)
        for task_id in ("t0", "t1"):
            await state.projects.checkpoint(
                "big", task_id, finished(task_id), final=True, elapsed=2.0
            )

    with serving() as server:
        page = server.page("/project/big")
        every_task = server.page("/project/big?tasks=all")
        fragment = server.get("/project/big/live?tasks=all").text  # no mark: all of it

    assert 'class="tasks"' not in page and 'href="?tasks=all"' in page
    assert "completed 2" in html.unescape(page) and "not run 199" in html.unescape(page)
    assert page.count('class="node ') == 201  # the graph stays
    for shown in (every_task, fragment):
        assert len(records(shown, "tasks")) == 201
    assert 'data-live="/project/big/live?tasks=all"' in every_task


async def test_a_project_id_with_a_slash_from_a_script_has_its_pages_all_the_same():
    await save_stopped_project("team/nightly build")

    with serving() as server:
        link = re.search(r'<a href="(/project/team[^"]+)">', server.page("/"))
        assert link is not None
        page = server.page(html.unescape(link.group(1)))
        live = server.get(html.unescape(re.search(r'data-live="([^"]+)"', page).group(1)))
        task_link = re.search(r'<a href="(/project/team[^"]+/task/a)">', page)
        assert task_link is not None
        task = server.page(html.unescape(task_link.group(1)))

    assert "team/nightly build" in page and task_states(page)["a"] == "completed"
    assert live.status == 200 and "team/nightly build" in live.text
    assert "[a] Write add." in task


@needs_sandbox
async def test_the_integration_rounds_show_what_failed_and_who_was_asked_to_revise(fake):
    scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS}, {"lib": LIBRARY})
    home = Path(os.environ["ORCHESTRATOR_HOME"])  # the store the page reads
    state, _ = await run_integrated(fake, library_and_tests(), home)
    assert [r.passed for r in state.integration.rounds] == [False, True]

    with serving() as server:
        page = html.unescape(server.page("/project/rl"))

    rounds = re.findall(r"<li><strong>round (\d): (\w+)</strong>", page)
    assert rounds == [("1", "failed"), ("2", "passed")]
    assert "pytest: failed" in page and "pytest: passed" in page
    assert "tests/test_bucket.py::test_takes_until_empty" in page
    assert "revision asked of lib, tests" in page


async def test_a_project_waiting_for_a_worker_says_so_rather_than_how_to_resume_it(
    fake, postgres_url, monkeypatch, tmp_path
):
    monkeypatch.setenv("ORCHESTRATOR_DB_URL", postgres_url)  # the store the page reads
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_DB_URL": postgres_url}
    submitted = run_cli("--submit", "-p", PROJECT, "-c", CRITERIA, "--project-id", "queued",
                        cwd=tmp_path, env=env)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr

    with serving() as server:
        listed = {row["id"]: row["status"] for row in records(server.page("/"), "projects")}
        queued = server.page("/project/queued")

    assert listed == {"queued": "RUNNING waiting for a worker"}
    assert "waiting for a worker" in queued and "--resume" not in queued


async def test_a_run_that_ran_out_of_money_shows_its_status_its_reason_and_what_it_did(fake, llm):
    llm.bill_max_output = True  # every answer as long as its limit allows: money runs out
    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
        orchestrator = Orchestrator(budget=Budget(max_usd=0.02), client=client, use_cache=False)
        state = await orchestrator.run_project(PROJECT, CRITERIA, project_id="poor")
    assert state.status is ProjectStatus.BUDGET_EXHAUSTED
    # Why it stopped, how far it got and how to go on, in one line.
    assert state.reason.startswith("the budget of $0.02 cannot pay for the next call")
    assert state.reason.endswith("resume with --resume poor (and a larger --budget)")

    with serving() as server:
        page = html.unescape(server.page("/project/poor"))

    assert '<span class="status budget_exhausted">BUDGET_EXHAUSTED</span>' in page
    assert f'<p class="reason">{state.reason}</p>' in page
    assert "no run holds it" not in page and "running now" not in page
    # Stopped by the budget, every task runs again on a resume: each says so, and why.
    shown = task_states(page)
    assert set(shown) == set(state.results) and all(r.interrupted for r in state.results.values())
    for task_id, result in state.results.items():
        assert shown[task_id] == f"interrupted{result.reason}"  # the state, then why
