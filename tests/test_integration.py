"""The output is a working project: the tasks' named files in one tree, its checks run together in
the sandbox, and failures sent back to the tasks that wrote the files.

Every run here goes over HTTP: the real SDKs, the fake provider, and scripted models whose
answers name their files as the generation prompt asks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    TERMINAL_CONTROLS,
    NoWait,
    fake_env,
    run_cli,
    sqlite_rows,
    start_process,
)
from scripted_llm import ScriptedLLM

from orchestrator import Budget, Orchestrator, RetryPolicy, UnifiedClient
from orchestrator.code.output_writer import write_outputs
from orchestrator.code.sandbox import detect
from orchestrator.money.units import nanos_to_usd
from orchestrator.run.tasks import ProjectStatus, Task, TaskType
from orchestrator.store.state import StateManager

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, clock=NoWait())

needs_sandbox = pytest.mark.skipif(
    asyncio.run(detect()) is None, reason="no sandbox (bubblewrap) here"
)


def files(*pairs: tuple[str, str]) -> str:
    """An answer naming each file on its block's first line, as the generation prompt asks."""
    return "\n\n".join(
        f"```python\n# file: {path}\n{textwrap.dedent(body).strip()}\n```" for path, body in pairs
    )


BUCKET = """
    class TokenBucket:
        def __init__(self, capacity):
            self.capacity = capacity
            self.tokens = capacity

        def take(self):
            if self.tokens {op} 0:
                return False
            self.tokens -= 1
            return True
"""
LIBRARY = files(
    ("ratelimit/__init__.py", "from .bucket import TokenBucket\n\n__all__ = ['TokenBucket']"),
    ("ratelimit/bucket.py", BUCKET.format(op="<=")),
)
# Lets one take too many: only the other task's tests can tell.
BUGGY_LIBRARY = files(
    ("ratelimit/__init__.py", "from .bucket import TokenBucket\n\n__all__ = ['TokenBucket']"),
    ("ratelimit/bucket.py", BUCKET.format(op="<")),
)
TESTS = files(
    (
        "tests/test_bucket.py",
        """
        from ratelimit import TokenBucket


        def test_takes_until_empty():
            bucket = TokenBucket(2)
            assert [bucket.take() for _ in range(3)] == [True, True, False]
        """,
    )
)


def rate_limiter_project(directory: Path) -> Path:
    """A project file: the library, then its tests (depending on it), no revision round."""
    project = directory / "rl.yaml"
    project.write_text(
        "project: '[project] A rate-limiter library with tests'\ncriteria: it works\n"
        "integration_rounds: 0\ntasks:\n"
        "  - {id: lib, type: code_generation, prompt: '[lib] Write the library.',"
        " hard_validators: [python_syntax]}\n"
        "  - {id: tests, type: code_generation, prompt: '[tests] Write its tests.',"
        " dependencies: [lib], hard_validators: [python_syntax]}\n"
    )
    return project


def task(task_id: str, *deps: str, validators=("python_syntax",), kind=TaskType.CODE_GEN) -> Task:
    return Task(task_id, kind, f"[{task_id}] Write part of a rate limiter.", list(deps),
                list(validators))  # fmt: skip


def library_and_tests(*, tests_depend: bool = False) -> dict[str, Task]:
    """A library task and a tests task; each passes its own validators alone."""
    return {
        "lib": task("lib"),
        "tests": task("tests", *(["lib"] if tests_depend else [])),
    }


async def run(fake, tasks, tmp_path, *, rounds=2, budget=None, integration=True, state=True):
    store = StateManager(tmp_path / "state.db") if state else None
    try:
        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST, timeout=10) as client:
            orchestrator = Orchestrator(
                budget=budget or Budget(max_usd=5.0, max_time_seconds=120),
                client=client,
                state_manager=store,
                use_cache=False,
                use_state=state,
                quality_threshold=0.8,
                validator_timeout=30,
                integration=integration,
                integration_rounds=rounds,
            )
            events = []
            orchestrator.display(events.append)
            state_ = await orchestrator.run_project(
                "[project] A rate-limiter library with tests", "it works", "rl", tasks=tasks
            )
            return state_, events
    finally:
        if store is not None:
            await store.aclose()


def scripted(fake, answers, integration_answers=None) -> ScriptedLLM:
    llm = ScriptedLLM(plan=[], answers=answers, integration_answers=integration_answers or {})
    fake.responder = llm
    return llm


@needs_sandbox
async def test_a_library_and_its_tests_from_two_tasks_are_one_tree_whose_tests_pass(fake, tmp_path):
    scripted(fake, {"lib": LIBRARY, "tests": TESTS})

    state, events = await run(fake, library_and_tests(tests_depend=True), tmp_path)

    assert state.status is ProjectStatus.SUCCESS, state.reason
    integration = state.integration
    assert integration.passed and len(integration.rounds) == 1
    checks = {c.name: c for c in integration.rounds[0].checks}
    assert checks["pytest"].passed and "1 passed" in checks["pytest"].detail
    assert checks["compile"].passed and checks["imports"].passed
    assert any(e.kind == "integration" and e.data["passed"] for e in events)

    out = tmp_path / "out"
    write_outputs(state, out)
    tree = out / "project"
    written = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    assert written == ["ratelimit/__init__.py", "ratelimit/bucket.py", "tests/test_bucket.py"]
    summary = json.loads((out / "summary.json").read_text())
    manifest = {f["path"]: f for f in summary["project_tree"]["files"]}
    assert manifest["ratelimit/bucket.py"]["task"] == "lib"
    assert manifest["tests/test_bucket.py"]["task"] == "tests"
    import hashlib

    for path, entry in manifest.items():
        assert entry["sha256"] == hashlib.sha256((tree / path).read_bytes()).hexdigest()
    # What the README tells the user to run works as written.
    readme = (out / "README.md").read_text()
    assert "cd project && python -m pytest" in readme
    done = subprocess.run(  # noqa: ASYNC221 - the test's own check, after the run
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tree, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@needs_sandbox
async def test_a_failing_integration_is_sent_back_and_one_revision_round_fixes_it(fake, tmp_path):
    llm = scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS}, {"lib": LIBRARY})

    state, events = await run(fake, library_and_tests(), tmp_path)

    assert state.status is ProjectStatus.SUCCESS, state.reason
    first, second = state.integration.rounds
    assert not first.passed and second.passed
    failure = next(f for f in first.failures if f.check == "pytest")
    assert "tests/test_bucket.py::test_takes_until_empty" in failure.summary
    # The failing test implicates the code it imports, though no frame of it failed.
    assert set(failure.files) >= {"tests/test_bucket.py", "ratelimit/bucket.py"}
    assert set(first.requests) == {"lib", "tests"}
    request = first.requests["lib"]
    assert "test_takes_until_empty" in request and "assert" in request
    assert "tests/test_bucket.py" in request  # the other task's file, as it stands
    assert llm.count("integrate", "lib") == 1 and llm.count("integrate", "tests") == 1
    lib = state.results["lib"]
    assert "bucket.py" in lib.output and "tokens <= 0" in lib.output
    assert lib.integration_round == 1
    assert any("integration round 1: revised" in note for note in lib.notes)
    # Paid from the reserve partition, and counted in the task's cost.
    assert state.budget.phase_spent["reserve"] > 0
    assert [e.data["round"] for e in events if e.kind == "integration"] == [1, 2]


@needs_sandbox
async def test_a_revision_sending_only_the_changed_file_keeps_the_others(fake, tmp_path):
    only_the_fix = files(("ratelimit/bucket.py", BUCKET.format(op="<=")))
    scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS}, {"lib": only_the_fix})

    state, _ = await run(fake, library_and_tests(), tmp_path)

    assert state.status is ProjectStatus.SUCCESS, state.reason
    lib = state.results["lib"]
    assert "# file: ratelimit/__init__.py" in lib.output and "tokens <= 0" in lib.output
    assert any("1 file(s) it left out kept as they were" in note for note in lib.notes)


@needs_sandbox
async def test_a_revision_naming_no_file_is_not_taken(fake, tmp_path):
    scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS}, {"lib": "I fixed the bucket."})

    state, _ = await run(fake, library_and_tests(), tmp_path, rounds=1)

    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    lib = state.results["lib"]
    assert lib.output == BUGGY_LIBRARY
    assert any("the revision named none of its files; kept the earlier" in n for n in lib.notes)


@needs_sandbox
async def test_a_tree_still_failing_after_its_rounds_is_a_partial_success_saying_why(
    fake, tmp_path
):
    llm = scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS})

    state, _ = await run(fake, library_and_tests(), tmp_path, rounds=1)

    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    assert state.reason.startswith("integration: pytest failed")
    assert "after 1 revision round" in state.reason
    assert len(state.integration.rounds) == 2 and state.integration.finished
    assert llm.count("integrate") == 2  # one round: each task asked once


async def test_no_integration_keeps_the_task_statuses_alone(fake, tmp_path):
    llm = scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS})

    state, _ = await run(fake, library_and_tests(), tmp_path, integration=False)

    assert state.status is ProjectStatus.SUCCESS
    assert state.integration is None
    assert llm.count("integrate") == 0


@needs_sandbox
async def test_a_test_importing_a_package_that_is_not_installed_is_a_missing_dependency(
    fake, tmp_path
):
    needs_requests = files(
        (
            "tests/test_bucket.py",
            """
            import notinstalled_pkg_xyz
            from ratelimit import TokenBucket


            def test_takes_until_empty():
                assert TokenBucket(1).take()
            """,
        )
    )
    scripted(fake, {"lib": LIBRARY, "tests": needs_requests})

    state, _ = await run(fake, library_and_tests(), tmp_path, rounds=1)

    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    first = state.integration.rounds[0]
    assert first.missing == ["notinstalled_pkg_xyz"]
    imports = next(c for c in first.checks if c.name == "imports")
    assert not imports.passed and "notinstalled_pkg_xyz" in imports.detail
    assert "never installed" in first.requests["tests"]
    assert "lib" not in first.requests  # nothing of the library's is involved
    assert importlib.util.find_spec("notinstalled_pkg_xyz") is None  # nothing was installed


async def test_names_that_would_escape_or_subvert_the_tree_are_refused_and_reported(fake, tmp_path):
    hostile = files(
        ("../escape.py", "X = 1"),
        ("/tmp/absolute_escape.py", "X = 1"),
        (".github/workflows/run.yml", "on: push"),
        ("conftest.py", "import os"),
        ("pytest.py", "X = 1"),
        ("safe/module.py", "X = 1"),
    )
    scripted(fake, {"lib": hostile})

    state, _ = await run(fake, {"lib": task("lib")}, tmp_path)

    out = tmp_path / "out"
    write_outputs(state, out)
    tree = out / "project"
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == [
        "safe/module.py"
    ]
    assert not (tmp_path / "escape.py").exists() and not (out / "escape.py").exists()
    assert not __import__("os").path.exists("/tmp/absolute_escape.py")
    summary = json.loads((out / "summary.json").read_text())
    refused = {r["name"]: r["reason"] for r in summary["project_tree"]["refused"]}
    assert set(refused) == {
        "../escape.py", "/tmp/absolute_escape.py", ".github/workflows/run.yml", "conftest.py",
        "pytest.py",
    }  # fmt: skip
    assert "leaves the project directory" in refused["../escape.py"]
    assert "absolute" in refused["/tmp/absolute_escape.py"]
    assert "reserved" in refused["conftest.py"]
    assert "test runner" in refused["pytest.py"]
    assert "not placed" in (out / "README.md").read_text()


async def test_two_unrelated_tasks_writing_one_file_is_a_conflict_and_a_dependent_revises_it(
    fake, tmp_path
):
    scripted(
        fake,
        {
            "first": files(("util.py", "WHO = 'first'")),
            "other": files(("util.py", "WHO = 'other'")),
            "later": files(("util.py", "WHO = 'later'"), ("app.py", "from util import WHO")),
        },
    )
    tasks = {"first": task("first"), "other": task("other"), "later": task("later", "first")}

    state, _ = await run(fake, tasks, tmp_path)

    out = tmp_path / "out"
    write_outputs(state, out)
    assert (out / "project" / "util.py").read_text() == "WHO = 'later'\n"
    summary = json.loads((out / "summary.json").read_text())
    tree = summary["project_tree"]
    entry = next(f for f in tree["files"] if f["path"] == "util.py")
    assert entry["task"] == "later" and entry["revises"] == "first"
    assert tree["conflicts"] == [
        {
            "path": "util.py",
            "kept": "first",
            "dropped": "other",
            "reason": "other does not depend on first, so it never saw that file",
        }
    ]


async def test_a_documentation_task_that_names_its_file_lands_in_the_tree(fake, tmp_path):
    readme = "<!-- file: README.md -->\n# ratelimit\n\nA token bucket: " + "it limits. " * 3
    scripted(fake, {"lib": LIBRARY, "readme": readme})
    tasks = {
        "lib": task("lib"),
        "readme": task("readme", "lib", validators=("length",), kind=TaskType.WRITING),
    }

    state, _ = await run(fake, tasks, tmp_path)

    out = tmp_path / "out"
    write_outputs(state, out)
    assert (out / "project" / "README.md").read_text().startswith("# ratelimit\n")
    assert (out / "project" / "ratelimit" / "bucket.py").is_file()


async def test_without_a_sandbox_the_trees_tests_are_not_run_and_it_is_no_success(
    fake, tmp_path, monkeypatch
):
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX", "none")
    llm = scripted(fake, {"lib": LIBRARY, "tests": TESTS})

    state, _ = await run(fake, library_and_tests(tests_depend=True), tmp_path)

    assert state.status is ProjectStatus.PARTIAL_SUCCESS
    assert "pytest not run" in state.reason
    (only,) = state.integration.rounds
    tests = next(c for c in only.checks if c.name == "pytest")
    assert tests.not_run and not tests.passed
    assert only.requests == {} and llm.count("integrate") == 0  # no revision can fix that


@needs_sandbox
async def test_money_running_out_during_integration_stops_resumably_and_resume_finishes_it(
    fake, tmp_path
):
    llm = scripted(fake, {"lib": BUGGY_LIBRARY, "tests": TESTS}, {"lib": LIBRARY})
    store = StateManager(tmp_path / "state.db")
    budget = None

    def run_out_after_the_first_check(event):
        nonlocal budget
        if event.kind == "run_started":
            budget = event.data["budget"]
        elif event.kind == "integration" and event.data["round"] == 1:
            budget.max_usd = budget.spent_usd  # nothing left for the revisions

    async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST, timeout=10) as client:
        orchestrator = Orchestrator(
            budget=Budget(max_usd=5.0, max_time_seconds=120), client=client, state_manager=store,
            use_cache=False, quality_threshold=0.8, validator_timeout=30,
        )  # fmt: skip
        orchestrator.display(run_out_after_the_first_check)
        stopped = await orchestrator.run_project(
            "[project] A rate-limiter library with tests", "it works", "rl",
            tasks=library_and_tests(),
        )  # fmt: skip
        assert stopped.status is ProjectStatus.BUDGET_EXHAUSTED
        assert llm.count("integrate") == 0  # refused before anything was sent
        assert len(stopped.integration.rounds) == 1 and not stopped.integration.finished

        resumed = await Orchestrator(client=client, state_manager=store, use_cache=False).resume(
            "rl", max_usd=5.0
        )
    await store.aclose()

    assert resumed.status is ProjectStatus.SUCCESS, resumed.reason
    assert [r.passed for r in resumed.integration.rounds] == [False, True]
    assert llm.count("integrate", "lib") == 1 and llm.count("integrate", "tests") == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--integration-rounds", "-1"], "--integration-rounds must be 0 or more"),
        (["--tree-name", "../elsewhere"], "--tree-name"),
        (["--no-integration", "--integration-rounds", "1"], "contradict"),
    ],
)
def test_bad_integration_flags_are_one_line_errors(tmp_path, flags, message):
    result = run_cli("-p", "x", "-c", "y", *flags, cwd=tmp_path)

    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


@needs_sandbox
def test_kill_9_during_integration_then_resume_finishes_it_paying_for_nothing_twice(fake, tmp_path):
    project = tmp_path / "rl.yaml"
    project.write_text(
        "project: '[project] A rate-limiter library with tests'\ncriteria: it works\ntasks:\n"
        "  - {id: lib, type: code_generation, prompt: '[lib] Write the library.',"
        " hard_validators: [python_syntax]}\n"
        "  - {id: tests, type: code_generation, prompt: '[tests] Write its tests.',"
        " hard_validators: [python_syntax]}\n"
    )
    home = tmp_path / "home"
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(home)}
    answers = {"lib": BUGGY_LIBRARY, "tests": TESTS}
    held = HeldIntegration(
        ScriptedLLM(plan=[], answers=answers, integration_answers={"lib": LIBRARY})
    )
    fake.responder = held
    command = [sys.executable, "-m", "orchestrator", "--file", str(project), "--project-id",
               "rl", "--no-cache", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    process = start_process(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The round's report is saved, lib's revision answered and checkpointed, and tests'
        # revision request is in flight, unanswered: then the process is killed outright.
        deadline = time.monotonic() + 90
        while not (held.fired.is_set() and lib_revised(home)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "integration never reached its revisions"
            time.sleep(0.02)
        process.kill()
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    before = fake.count()
    resumed = ScriptedLLM(plan=[], answers=answers, integration_answers={"lib": LIBRARY})
    fake.responder = resumed

    result = run_cli("--resume", "rl", cwd=tmp_path, env=env, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "status SUCCESS" in result.stdout
    # Only the request that was in flight is sent again; lib's answered revision is not.
    assert [(r, t) for r, t, _ in resumed.roles] == [("integrate", "tests")]
    assert len(fake.requests) - before == 1
    journal = sqlite_rows(
        home / "state.db", "SELECT task_id, key FROM journal WHERE phase = 'reserve'"
    )
    answered = sorted(task for task, key in journal if not key.endswith("#unanswered"))
    assert answered == ["lib", "tests"]  # each revision's answer paid once
    # The request killed in flight may have been billed: its hold was charged in full.
    assert [task for task, key in journal if key.endswith("#unanswered")] == ["tests"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    total = sqlite_rows(home / "state.db", "SELECT SUM(cost_nanos) FROM journal")[0][0]
    assert summary["budget"]["spent_usd"] == nanos_to_usd(total)
    rounds = summary["integration"]["rounds"]
    assert [r["passed"] for r in rounds] == [False, True]
    assert (tmp_path / "out" / "project" / "ratelimit" / "bucket.py").read_text().count("<= 0")


class HeldIntegration:
    """Plays every model, holding the tests task's integration revision request unanswered."""

    def __init__(self, llm: ScriptedLLM) -> None:
        self.llm = llm
        self.fired = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request):
        with self._lock:  # one at a time, so the role the script noted last is this request's
            reply = self.llm(request)
            role, task_id, _ = self.llm.roles[-1]
        if (role, task_id) == ("integrate", "tests") and not self.fired.is_set():
            self.fired.set()
            return dataclasses.replace(reply, delay=120)
        return reply


def lib_revised(home) -> bool:
    return saved(home).get("lib", {}).get("integration_round") == 1


def saved(home) -> dict[str, dict]:
    async def read() -> dict[str, dict]:
        async with StateManager(home / "state.db") as store:
            try:
                return (await store.projects.load("rl")).results
            except Exception:
                return {}

    if not (home / "state.db").exists():
        return {"lib": {}}
    return asyncio.run(read()) or {"lib": {}}


def test_a_project_file_names_the_tree_and_its_rounds(fake, tmp_path):
    scripted(fake, {"lib": LIBRARY, "tests": TESTS})
    project = tmp_path / "rl.yaml"
    project.write_text(
        "project: '[project] A rate-limiter library with tests'\ncriteria: it works\n"
        "output_dir: out\ntree_name: ratelimiter\nintegration_rounds: 0\ntasks:\n"
        "  - {id: lib, type: code_generation, prompt: '[lib] Write the library.',"
        " hard_validators: [python_syntax]}\n"
        "  - {id: tests, type: code_generation, prompt: '[tests] Write its tests.',"
        " dependencies: [lib], hard_validators: [python_syntax]}\n"
    )

    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    result = run_cli("--file", str(project), "--no-cache", cwd=tmp_path, env=env)

    assert result.returncode in (0, 3), result.stderr
    assert (tmp_path / "out" / "ratelimiter" / "ratelimit" / "bucket.py").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["project_tree"]["directory"] == "ratelimiter"
    assert summary["integration"]["max_rounds"] == 0


def test_files_two_tasks_name_differing_only_in_case_are_a_conflict_from_the_command_line(
    fake, tmp_path
):
    scripted(
        fake,
        {
            "first": files(("calc.py", "WHO = 'first'"), ("pkg/Util.py", "U = 1")),
            "other": files(("Calc.py", "WHO = 'other'"), ("PKG/util.py", "U = 2"),
                           ("app.py", "from calc import WHO")),
        },
    )  # fmt: skip
    project = tmp_path / "calc.yaml"
    project.write_text(
        "project: '[project] A calculator'\ncriteria: it works\noutput_dir: out\n"
        "integration: false\ntasks:\n"
        "  - {id: first, type: code_generation, prompt: '[first] Write calc.',"
        " hard_validators: [python_syntax]}\n"
        "  - {id: other, type: code_generation, prompt: '[other] Write the app.',"
        " hard_validators: [python_syntax]}\n"
    )
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli("--file", str(project), "--no-cache", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    tree = tmp_path / "out" / "project"
    placed = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    assert placed == ["app.py", "calc.py", "pkg/Util.py"]
    assert (tree / "calc.py").read_text() == "WHO = 'first'\n"
    conflicts = json.loads((tmp_path / "out" / "summary.json").read_text())["project_tree"][
        "conflicts"
    ]
    assert [(c["path"], c["kept"], c["dropped"]) for c in conflicts] == [
        ("Calc.py", "first", "other"),
        ("PKG/util.py", "first", "other"),
    ]
    assert all("differ only in case" in c["reason"] for c in conflicts)
    assert "Calc.py" in (tmp_path / "out" / "README.md").read_text()


# What a hostile test prints when it fails: it retitles the terminal, clears it, paints a fake
# green status over the real one, moves the cursor with a one-byte CSI, and reverses the line.
TERMINAL_TRICKS = (
    r"\x1b]0;pwned\x07\x1b[2J\x1b[32mstatus SUCCESS\x1b[0m\x08\x08\x9b2K\x7f"
    r"\u202eSSECCUS sutats\u202c\u2066\x00\x1f\rstatus SUCCESS"
)


@needs_sandbox
def test_a_failing_tests_escape_codes_are_shown_as_text_never_sent_to_the_terminal(fake, tmp_path):
    hostile_test = files(
        (
            "tests/test_bucket.py",
            f"""
            from ratelimit import TokenBucket


            def test_takes_until_empty():
                assert TokenBucket(1).take() is None, "{TERMINAL_TRICKS}"
            """,
        )
    )
    scripted(fake, {"lib": LIBRARY, "tests": hostile_test})
    project = rate_limiter_project(tmp_path)
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}

    result = run_cli(
        "--file", str(project), "--no-cache", "--output-dir", str(tmp_path / "out"),
        cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip

    out = tmp_path / "out"
    shown = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "README.md": (out / "README.md").read_text(encoding="utf-8"),
        "summary.json": (out / "summary.json").read_text(encoding="utf-8"),
    }
    for name, text in shown.items():
        assert not TERMINAL_CONTROLS.search(text), f"{name}: {text!r}"
    # The real status is printed, and the test's message is there to read, escaped.
    assert result.returncode == 3, result.stderr
    assert "status PARTIAL_SUCCESS" in result.stdout
    assert r"\x1b]0;pwned\x07" in result.stdout and r"\u202e" in result.stdout
    assert r"\x1b[32mstatus SUCCESS" in shown["README.md"]
    # summary.json keeps the message itself: the same text once parsed.
    summary = json.loads(shown["summary.json"])
    (failure,) = summary["integration"]["rounds"][0]["failures"]
    assert "\x1b]0;pwned\x07" in failure["summary"] and "\u202e" in failure["summary"]
    # The tree's files are the model's, byte for byte.
    written = (out / "project" / "tests" / "test_bucket.py").read_text(encoding="utf-8")
    assert TERMINAL_TRICKS in written


# What a tree's test may try against the sandbox's bounds: (its body, the environment, what the
# failure says). Three children holding 1 GiB each are past the whole sandbox's 2 GiB, though
# each is within what one process alone was once allowed.
QUOTA_ROUTES = {
    "disk": (
        """
        with open("ballast.bin", "wb") as ballast:
            for _ in range(16):
                ballast.write(os.urandom(1024 * 1024))
        """,
        {"ORCHESTRATOR_SANDBOX_DISK_MIB": "8"},
        "No space left on device",
    ),
    "memory": (
        """
        import subprocess
        import sys

        hold = "b = bytearray(1024**3); import time; time.sleep(2)"
        children = [subprocess.Popen([sys.executable, "-c", hold]) for _ in range(3)]
        codes = [child.wait() for child in children]
        assert codes == [0, 0, 0], f"the children ended {codes}"
        """,
        {},
        "the children ended",
    ),
}


@needs_sandbox
@pytest.mark.parametrize("route", sorted(QUOTA_ROUTES))
def test_a_tree_going_past_a_sandbox_quota_fails_there_and_the_host_is_untouched(
    fake, tmp_path, route
):
    body, limits, said = QUOTA_ROUTES[route]
    hog = files(
        (
            "tests/test_bucket.py",
            "import os\n\nfrom ratelimit import TokenBucket\n\n\ndef test_takes_after_a_lot():\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "    ")
            + "\n    assert TokenBucket(1).take() is not None\n",
        )
    )
    scripted(fake, {"lib": LIBRARY, "tests": hog})
    project = rate_limiter_project(tmp_path)
    env = {
        **fake_env(fake.base_url),
        "ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "host-tmp"),
        **limits,
    }
    (tmp_path / "host-tmp").mkdir()

    result = run_cli(
        "--file", str(project), "--no-cache", "--output-dir", str(tmp_path / "out"),
        cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip

    assert result.returncode == 3, result.stderr
    assert "status PARTIAL_SUCCESS" in result.stdout
    assert said in result.stdout or "killed" in result.stdout, result.stdout
    left = [p for p in (tmp_path / "host-tmp").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in left) < 1024 * 1024, left


def test_a_sandbox_limit_that_is_not_a_number_is_one_line_before_anything_runs(fake, tmp_path):
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_SANDBOX_DISK_MIB": "lots"}

    result = run_cli("-p", "[project] p", "-c", "c", cwd=tmp_path, env=env)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "orchestrator: error: ORCHESTRATOR_SANDBOX_DISK_MIB='lots': not a whole number above zero"
    )
    assert fake.count() == 0
