"""The sandbox as a user relies on it: model-written code that attacks instead of testing gets
nowhere, the validator reports what really happened, and the run goes on to a truthful status.

Each attack is a whole run from the command line against the HTTP fake provider: the scripted
model answers the code task with a hostile test module, written so that its test PASSES only if
the attack worked. So "the attack failed" shows twice: in its effect (no file appears, no
request reaches the server) and in the verdict (the test failed, and the run says so).
Every attack runs under both isolation paths, bubblewrap and util-linux unshare.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import fake_env, run_cli, write_file
from test_engine import code_task

from orchestrator.code import sandbox, sandbox_command
from orchestrator.code.validators import run_validators
from orchestrator.errors import SandboxError

SECRET = "sk-live-" + uuid.uuid4().hex
VALIDATOR_SECONDS = 3


class Attack:
    """One run of a hostile answer, with what a user's machine looks like around it."""

    def __init__(self, fake, llm, tmp_path: Path, isolation: str) -> None:
        self.fake, self.llm, self.isolation = fake, llm, isolation
        self.home = tmp_path / "home"  # ORCHESTRATOR_HOME: state.db and cache.db
        self.user_home = tmp_path / "user"  # the user's own home directory, with a .env
        self.work = tmp_path / "work"  # where the user runs the command, with a .env
        self.out = tmp_path / "results"
        for directory in (self.home, self.user_home, self.work):
            directory.mkdir(exist_ok=True)
        write_file(self.user_home / ".env", f"OPENAI_API_KEY={SECRET}\n")
        write_file(self.work / ".env", f"ANTHROPIC_API_KEY={SECRET}\n")
        self.tmp_name = f"/tmp/orchestrator-attack-{uuid.uuid4().hex}"

    def run(
        self,
        module: str,
        *flags: str,
        tasks: list[dict] | None = None,
        validator_seconds: float = VALIDATOR_SECONDS,
        env: dict[str, str] | None = None,
    ):
        self.llm.answers["attack"] = module
        project = self.work / "attack.yaml"
        project.write_text(
            json.dumps(
                {
                    "project": "[project] Build an add library",
                    "criteria": "add works and is tested",
                    "tasks": tasks or [code_task("attack")],
                }
            )
        )
        env = {
            **fake_env(self.fake.base_url),
            "OPENAI_API_KEY": SECRET,  # the real key, as a user's environment holds it
            "ORCHESTRATOR_HOME": str(self.home),
            "HOME": str(self.user_home),
            sandbox.SANDBOX_ENV: self.isolation,
            **(env or {}),
        }
        started = time.monotonic()
        result = run_cli(
            "--file", str(project), "--budget", "1", "--output-dir", str(self.out),
            "--validator-timeout", str(validator_seconds), *flags,
            cwd=self.work, env=env,
        )  # fmt: skip
        self.seconds = time.monotonic() - started
        self.stdout, self.stderr = result.stdout, result.stderr
        self.returncode = result.returncode
        self.summary = json.loads((self.out / "summary.json").read_text())
        return self

    def verdict(self, task_id: str = "attack", name: str = "pytest") -> dict:
        [task] = [t for t in self.summary["tasks"] if t["id"] == task_id]
        [verdict] = [v for v in task["result"]["validator_results"] if v["name"] == name]
        return verdict

    def task(self, task_id: str = "attack") -> dict:
        [task] = [t for t in self.summary["tasks"] if t["id"] == task_id]
        return task["result"]

    def assert_failed_truthfully(self, detail_part: str) -> None:
        """The attack's test did not pass, the verdict says why, and the run says so."""
        verdict = self.verdict()
        assert not verdict["passed"], verdict
        assert detail_part in verdict["detail"], verdict["detail"]
        assert self.task()["status"] == "degraded"
        assert self.summary["status"] == "PARTIAL_SUCCESS", self.stderr
        assert self.returncode == 3, self.stderr
        assert self.summary["sandbox"]["isolation"] == self.isolation


def wait_gone(marker: str, within: float = 5.0) -> list[int]:
    """Processes (seen from outside) whose command line still holds ``marker`` after a wait."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def module(source: str, name: str = "test_attack.py") -> str:
    """An answer holding one Python file, as a model writes it."""
    return f"```python\n# file: {name}\n{textwrap.dedent(source).strip()}\n```\n"


@pytest.fixture
def attack(fake, llm, tmp_path, isolation) -> Attack:
    return Attack(fake, llm, tmp_path, isolation)


# --- secrets ------------------------------------------------------------------------------------


def test_the_orchestrators_environment_cannot_be_read_through_proc(attack):
    attack.run(
        module(
            f"""
            import os

            def parents():
                pid = os.getpid()
                while pid > 1:
                    with open(f"/proc/{{pid}}/stat") as stat:
                        pid = int(stat.read().rsplit(")", 1)[1].split()[1])
                    yield pid

            def test_steals_keys_command_line_and_directory():
                loot = b""
                pids = [p for p in os.listdir("/proc") if p.isdigit()] + ["1", *map(str, parents())]
                for pid in pids:
                    for part in ("environ", "cmdline"):
                        try:
                            loot += open(f"/proc/{{pid}}/{{part}}", "rb").read()
                        except OSError:
                            pass
                    try:
                        loot += os.readlink(f"/proc/{{pid}}/cwd").encode()
                    except OSError:
                        pass
                assert {SECRET!r}.encode() in loot or {str(attack.work)!r}.encode() in loot
            """
        )
    ).assert_failed_truthfully("1 failed")


def test_dotenv_files_of_the_user_and_the_working_directory_cannot_be_read(attack):
    attack.run(
        module(
            f"""
            def test_reads_dotenv_files():
                loot = ""
                for path in ({str(attack.user_home / ".env")!r}, {str(attack.work / ".env")!r}):
                    try:
                        loot += open(path).read()
                    except OSError:
                        pass
                assert {SECRET!r} in loot
            """
        )
    ).assert_failed_truthfully("1 failed")
    assert attack.verdict()["detail"].endswith("in ''"), "nothing at all was read"


# --- network ------------------------------------------------------------------------------------


def test_the_code_cannot_reach_the_provider_or_anything_else(attack, fake):
    marker = f"exfiltrated-{uuid.uuid4().hex}"
    attack.run(
        module(
            f"""
            import json, urllib.request

            def test_posts_to_the_provider():
                body = json.dumps({{"model": "gpt-4o", "messages": [
                    {{"role": "user", "content": {marker!r}}}]}}).encode()
                request = urllib.request.Request(
                    {fake.base_url + "/v1/chat/completions"!r}, data=body,
                    headers={{"content-type": "application/json"}})
                urllib.request.urlopen(request, timeout=2).read()
            """
        )
    ).assert_failed_truthfully("1 failed")
    stolen = {"role": "user", "content": marker}
    assert not [r for r in fake.requests if r.body.get("messages") == [stolen]]


# --- files --------------------------------------------------------------------------------------


def test_the_code_cannot_write_outside_its_scratch_directory(attack):
    attack.out.mkdir()
    targets = [
        attack.home / "evil.db",
        attack.home / "state.db-evil",
        attack.out / "evil.py",
        attack.work / "evil.py",
    ]
    # /tmp inside is the sandbox's own: writing there works, and nothing appears in the real one.
    private = Path(attack.tmp_name)
    attack.run(
        module(
            f"""
            def write(path):
                try:
                    with open(path, "w") as f:
                        f.write("owned")
                    return True
                except OSError:
                    return False

            def test_writes_everywhere():
                assert write({str(private)!r})
                assert [path for path in {[str(t) for t in targets]!r} if write(path)]
            """
        )
    ).assert_failed_truthfully("1 failed")
    assert [t for t in [*targets, private] if t.exists()] == []


# --- resources ----------------------------------------------------------------------------------


def test_a_fork_bomb_is_contained_and_the_run_goes_on(attack):
    attack.run(
        module(
            """
            import os

            def test_forks_forever():
                while True:
                    try:
                        os.fork()
                    except OSError:
                        pass
            """
        ),
        validator_seconds=1,
    ).assert_failed_truthfully("")
    # Three iterations, each stopped at the validator's limit at worst; nothing left behind.
    assert attack.seconds < 3 * (1 + 5) + 20
    assert wait_gone("test_attack.py") == []


def whole(isolation: str) -> bool:
    """Whether a cgroup bounds the sandbox as a whole on this machine (else: split per process)."""
    return "(cgroup)" in sandbox.Sandbox(isolation).bounds()


def test_allocating_4_gib_fails_inside_the_sandbox_saying_which_limit(attack):
    attack.run(
        module(
            """
            def test_allocates_4_gib():
                block = bytearray(4 * 1024**3)
                block[-1] = 1
                assert block[-1] == 1
            """
        )
    )
    limit = "2048 MiB" if whole(attack.isolation) else "256 MiB per process"
    bound = f"refused by the sandbox: memory limit {limit} reached"
    attack.assert_failed_truthfully(f"MemoryError; {bound}")
    # The task's line says why its answer failed, and so does the summary.
    [line] = [line for line in attack.stderr.splitlines() if "attack degraded" in line]
    assert bound in line
    assert bound in attack.task()["reason"]


def test_starting_more_processes_than_the_sandbox_allows_fails_saying_which_limit(attack):
    attack.run(
        module(
            """
            import os, time

            def test_starts_200_processes():
                for _ in range(200):
                    if os.fork() == 0:
                        time.sleep(30)
                        os._exit(0)
            """
        )
    )
    processes = 128 if whole(attack.isolation) else 8
    attack.assert_failed_truthfully(
        f"Resource temporarily unavailable; refused by the sandbox: process limit {processes} "
        "reached"
    )
    assert attack.seconds < 60
    assert wait_gone("test_attack.py") == []


# A quota of 8 MiB and 300 files, set the way a machine's owner sets it.
SMALL_DISK = {"ORCHESTRATOR_SANDBOX_DISK_MIB": "8", "ORCHESTRATOR_SANDBOX_FILES": "300"}
FILLS = {
    "disk quota 8 MiB": """
        def test_fills_the_disk():
            for n in range(100):
                with open(f"/tmp/part{n}", "wb") as f:
                    f.write(bytes(1024**2))
        """,
    "file quota 300 files": """
        def test_makes_many_files():
            for n in range(1000):
                open(f"empty{n}", "w").close()
        """,
    "file size limit 64 MiB": """
        def test_writes_one_big_file(tmp_path):
            (tmp_path / "big").write_bytes(bytes(100 * 1024**2))
        """,
}


@pytest.mark.parametrize("quota", FILLS, ids=lambda quota: quota.split(" limit")[0])
def test_filling_the_sandboxs_disk_fails_saying_which_quota(attack, quota):
    big_file = "size" in quota  # it needs a disk larger than the file size limit
    attack.run(module(FILLS[quota]), env={} if big_file else SMALL_DISK)

    attack.assert_failed_truthfully(f"refused by the sandbox: {quota} reached")
    errno = "File too large" if big_file else "No space left on device"
    assert errno in attack.verdict()["detail"]


def test_a_bound_only_a_cgroup_or_a_limits_signal_reports_is_named_with_its_figure():
    # Seen only where a cgroup can be made (memory, processes) or where code outruns its CPU
    # seconds on more cores than this machine has: what the sandbox says of each.
    box = sandbox.Sandbox("bubblewrap")
    said = {
        "memory": box.stopped_by(sandbox.Completed(-9, "", exceeded="memory"), 5),
        "processes": box.stopped_by(sandbox.Completed(1, "", exceeded="processes"), 5),
        "cpu": box.stopped_by(sandbox.Completed(-24, ""), 5),
        "cpu, as bubblewrap reports it": box.stopped_by(sandbox.Completed(128 + 24, ""), 5),
        "killed": box.stopped_by(sandbox.Completed(-9, ""), 5),
    }
    assert said == {
        "memory": "stopped by the sandbox: memory limit 2048 MiB reached",
        "processes": "refused by the sandbox: process limit 128 reached",
        "cpu": "stopped by the sandbox: CPU time limit 6s reached",
        "cpu, as bubblewrap reports it": "stopped by the sandbox: CPU time limit 6s reached",
        "killed": "",
    }


QUOTA = sandbox.Limits(disk_bytes=8 * 1024**2, files=200)
FILL_THE_DISK = """
import json, os

def write(path, size):
    try:
        with open(path, "wb") as f:
            f.write(bytes(size))
        return True
    except OSError as exc:
        return exc.strerror

facts = {"big": write("big", 16 * 1024**2), "tmp": write("/tmp/big", 16 * 1024**2)}
os.remove("big")
os.remove("/tmp/big")
made = 0
for n in range(1000):
    if write(f"f{n}", 0) is not True:
        break
    made += 1
facts["files"] = made
print(json.dumps(facts))
"""


async def test_writing_past_the_disk_quota_fails_inside_and_the_host_is_untouched(isolation):
    box = sandbox.Sandbox(isolation, limits=QUOTA)
    async with sandbox.scratch_dir() as workdir:
        await asyncio.to_thread(write_file, Path(workdir, "given.py"), "x = 1\n")
        done = await box.run([sys.executable, "-I", "-S", "-c", FILL_THE_DISK], workdir, seconds=20)
        # What the code wrote stayed in its tmpfs: the directory outside holds what it was given.
        assert os.listdir(workdir) == ["given.py"]
    facts = json.loads(done.lines[-1])
    assert facts["big"] == facts["tmp"] == "No space left on device", done.output
    # The scratch directory and /tmp share one quota of 200 files, a few of them taken.
    assert 150 < facts["files"] < 200


# Three children each try to hold 7/16 of the bound: two fit, three do not.
BOUND = 128 * 1024**2
HOLD_TOGETHER = """
import json, os, select, sys

size = int(sys.argv[1])
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
kids, facts = [], {"held": 0, "failed": []}
for _ in range(3):
    try:
        pid = os.fork()
    except OSError as exc:
        facts["failed"].append(f"fork: {exc.strerror}")
        break
    if pid == 0:
        try:
            block = bytearray(size)
            for i in range(0, size, 4096):
                block[i] = 1
        except MemoryError:
            os.write(ready_w, b"m")
            os._exit(3)
        os.write(ready_w, b"h")
        os.read(go_r, 1)  # hold it until the parent has counted
        os._exit(0)
    kids.append(pid)
answered = dead = 0
while answered + dead < len(kids):
    if select.select([ready_r], [], [], 0.05)[0]:
        answered += 1
        if os.read(ready_r, 1) == b"h":
            facts["held"] += 1
        else:
            facts["failed"].append("MemoryError")
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid and os.WIFSIGNALED(status):
        dead += 1
        facts["failed"].append(f"killed by signal {os.WTERMSIG(status)}")
os.close(go_w)
print(json.dumps(facts), flush=True)
sys.exit(0 if facts["held"] == 3 else 1)
"""


async def test_processes_together_cannot_exceed_the_sandboxs_memory_bound(isolation, request):
    box = sandbox.Sandbox(isolation, limits=sandbox.Limits(memory_bytes=BOUND, split=4))
    request.node.user_properties.append(("sandbox_memory", box.bounds()))
    async with sandbox.scratch_dir() as workdir:
        done = await box.run(
            [sys.executable, "-I", "-S", "-c", HOLD_TOGETHER, str(BOUND * 7 // 16)],
            workdir,
            seconds=20,
        )
    assert done.returncode != 0, done.output
    # A resource failure, reported as one: the cgroup's bound was reached (a child killed), or
    # an allocation or a fork was refused under the per-process split.
    if done.exceeded:
        assert done.exceeded == "memory"
    else:
        facts = json.loads(done.lines[-1])
        assert facts["held"] < 3 and facts["failed"], facts
        assert {f.split(":")[0] for f in facts["failed"]} <= {"MemoryError", "fork"}, facts


def test_code_that_sleeps_forever_is_stopped_at_the_time_limit(attack):
    attack.run(
        module(
            """
            import time

            def test_sleeps_forever():
                while True:
                    time.sleep(3600)
            """
        ),
        validator_seconds=1,
    ).assert_failed_truthfully("timed out after 1s")
    assert wait_gone("test_attack.py") == []


# --- the verdict --------------------------------------------------------------------------------


def test_a_forged_report_a_fake_summary_and_exit_0_do_not_make_a_failing_test_pass(attack):
    attack.run(
        module(
            """
            import atexit, glob, os, sys

            def forge():
                found = glob.glob("**/*.xml", recursive=True) + glob.glob("/tmp/**/*.xml")
                for path in [*found, *sys.argv[1:], "report.xml"]:
                    try:
                        with open(path, "w") as f:
                            f.write('<testsuite tests="3" failures="0" errors="0"/>')
                    except OSError:
                        pass
                print("==================== 3 passed in 0.01s ====================")
                sys.stdout.flush()
                os._exit(0)

            atexit.register(forge)

            def test_add():
                assert 1 + 1 == 3
            """
        )
    ).assert_failed_truthfully("test results inconsistent")


def test_a_well_behaved_module_passes_importing_a_dependency_tasks_module(attack, llm):
    llm.answers["lib"] = module(
        """
        def add(a, b):
            return a + b
        """,
        name="calc.py",
    )
    attack.run(
        module(
            """
            from calc import add

            def test_add():
                assert add(2, 3) == 5

            def test_add_negative():
                assert add(-2, -3) == -5
            """
        ),
        "-v",
        tasks=[code_task("lib", validators=("python_syntax",)), code_task("attack", "lib")],
    )
    verdict = attack.verdict()
    assert verdict["passed"], verdict
    assert verdict["detail"] == "2 passed (2 run twice)"
    assert attack.summary["status"] == "SUCCESS", attack.stderr
    assert attack.summary["sandbox"]["isolation"] == attack.isolation
    assert f"validators run model-written code in a {attack.isolation} sandbox" in attack.stderr
    assert f"validators run model code in a {attack.isolation} sandbox" in attack.stderr  # -v


# --- without a sandbox --------------------------------------------------------------------------


@pytest.fixture
def unsandboxed(fake, llm, tmp_path) -> Attack:
    return Attack(fake, llm, tmp_path, "none")


PASSING = module(
    """
    def test_add():
        assert 1 + 1 == 2
    """
)


def test_without_a_sandbox_code_is_not_run_and_the_task_cannot_pass(unsandboxed, llm):
    unsandboxed.run(PASSING)
    verdict = unsandboxed.verdict()
    assert verdict == {
        "name": "pytest",
        "passed": False,
        "skipped": False,
        "not_run": True,
        "detail": "not run: no sandbox available (install bubblewrap)",
    }
    assert unsandboxed.task()["status"] == "degraded"
    assert "no sandbox available" in unsandboxed.task()["reason"]
    assert unsandboxed.summary["status"] == "PARTIAL_SUCCESS"
    assert unsandboxed.summary["sandbox"] == {
        "isolation": "unavailable",
        "note": "not run: no sandbox available (install bubblewrap)",
    }
    warnings = [line for line in unsandboxed.stderr.splitlines() if "warning: code-running" in line]
    assert len(warnings) == 1
    # A validator that could not run is no fault to revise: a good score ends the loop at once.
    assert unsandboxed.task()["iterations"] == 1


def test_unsafe_validators_run_the_code_unisolated_and_say_so_loudly(unsandboxed):
    unsandboxed.run(PASSING, "--unsafe-validators")
    assert unsandboxed.verdict()["passed"]
    assert unsandboxed.summary["status"] == "SUCCESS"
    assert unsandboxed.summary["sandbox"]["isolation"] == "none (unsafe)"
    warnings = [line for line in unsandboxed.stderr.splitlines() if "WITHOUT a sandbox" in line]
    assert len(warnings) == 1


# --- detection ----------------------------------------------------------------------------------


async def test_detection_names_the_isolation_it_found_and_remembers_it(monkeypatch, isolation):
    monkeypatch.setenv(sandbox.SANDBOX_ENV, isolation)
    found = await sandbox.detect()
    assert found is not None and found.isolation == isolation
    assert await sandbox.detect() is found


@pytest.fixture
def fresh_detection(monkeypatch):
    """Detection as a new process does it: nothing probed yet."""
    monkeypatch.setattr(sandbox, "_detected", {})
    monkeypatch.setattr(sandbox, "_problems", {})
    monkeypatch.delenv(sandbox.SANDBOX_ENV, raising=False)


async def test_bubblewrap_that_this_machine_has_but_that_fails_is_an_error_not_a_fallback(
    monkeypatch, fresh_detection
):
    if sandbox.machine_lacks("bubblewrap"):
        pytest.skip(f"this machine lacks bubblewrap: {sandbox.machine_lacks('bubblewrap')}")
    # Our bubblewrap command line broken, as a bad change would break it.
    isolation = sandbox_command._bwrap_isolation

    def broken(**kw):
        return [*isolation(**kw), "--bogus"]

    monkeypatch.setattr(sandbox_command, "_bwrap_isolation", broken)
    with pytest.raises(SandboxError, match="the bubblewrap sandbox fails to start, though"):
        await sandbox.detect()
    with pytest.raises(SandboxError):
        await run_validators(["pytest"], PASSING)


async def test_without_bubblewrap_the_unshare_sandbox_is_used(
    monkeypatch, tmp_path, fresh_detection
):
    if sandbox.machine_lacks("unshare"):
        pytest.skip(f"this machine lacks unshare: {sandbox.machine_lacks('unshare')}")
    tools = tmp_path / "bin"  # what a machine without bubblewrap has on its PATH
    tools.mkdir()
    for tool in ("unshare", "prlimit", "setpriv"):
        (tools / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tools))
    found = await sandbox.detect()
    assert found is not None and found.isolation == "unshare"


async def test_asking_for_no_sandbox_finds_none(monkeypatch):
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "none")
    assert await sandbox.detect() is None
    [result] = await run_validators(["pytest"], PASSING)
    assert result.not_run and not result.passed


async def test_each_run_starts_in_a_fresh_scratch_directory_that_is_removed(isolation):
    box = sandbox.Sandbox(isolation)
    seen = []
    for _ in range(2):
        async with sandbox.scratch_dir() as workdir:
            done = await box.run(
                ["/bin/sh", "-c", "ls -A; touch left-behind; pwd"], workdir, seconds=20
            )
            seen.append((done.lines, workdir))
        assert not await asyncio.to_thread(os.path.exists, workdir)
    assert [lines[:-1] for lines, _ in seen] == [[], []]
    assert seen[0][0][-1] == seen[0][1]
    assert seen[0][1] != seen[1][1]


async def test_a_scratch_directory_outside_tmp_works_as_one_inside(isolation, monkeypatch):
    """TMPDIR elsewhere (/var/tmp, a home directory): the code runs there the same way."""
    elsewhere = tempfile.mkdtemp(prefix="orchestrator-test-", dir="/var/tmp")
    monkeypatch.setattr(tempfile, "tempdir", elsewhere)
    try:
        async with sandbox.scratch_dir() as workdir:
            assert not workdir.startswith("/tmp/")
            done = await sandbox.Sandbox(isolation).run(
                ["/bin/sh", "-c", "touch made-here && pwd"], workdir, seconds=20
            )
            assert (done.returncode, done.lines[-1:]) == (0, [workdir])
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


# --- as an unprivileged user ---------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
UNPRIVILEGED_RUN = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])  # the checkout: the sandbox's modules load only the stdlib
from orchestrator.code import sandbox
PROBE = '''
import json, os, socket
facts = {"pids": len([p for p in os.listdir("/proc") if p.isdigit()]), "env": sorted(os.environ)}
for name, path in (("root", "/escape"), ("tmp", "/tmp/inside"), ("work", "inside")):
    try:
        open(path, "w").close()
        facts[name] = True
    except OSError:
        facts[name] = False
try:
    socket.create_connection(("10.0.0.1", 80), timeout=1)
    facts["network"] = True
except OSError:
    facts["network"] = False
print(json.dumps(facts))
'''
async def main():
    async with sandbox.scratch_dir() as workdir:
        done = await sandbox.Sandbox(sys.argv[2]).run(
            [sys.executable, "-I", "-S", "-c", PROBE], workdir, seconds=20)
        print(done.returncode, done.lines[-1] if done.lines else "")
asyncio.run(main())
"""


def test_an_unprivileged_user_gets_the_same_isolation(isolation):
    """The code path for a normal user (no stage as root, no switch to nobody), run as nobody."""
    if os.geteuid() != 0:
        pytest.skip("this run is already unprivileged: every other test covers it")
    module_path = Path(sandbox.__file__).resolve()
    checkout = module_path.parents[2]
    modules = [*module_path.parent.glob("*.py"), checkout / "orchestrator" / "__init__.py"]
    if not os.path.exists(SYSTEM_PYTHON) or not all(
        p.stat().st_mode & 0o005 for p in [*modules, *module_path.parents]
    ):
        pytest.skip("no system Python, or the checkout is not readable by other users")
    uid, gid = sandbox_command.nobody()
    result = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
         SYSTEM_PYTHON, "-I", "-c", UNPRIVILEGED_RUN, str(checkout), isolation],
        capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    status, _, facts = result.stdout.strip().partition(" ")
    assert status == "0", result.stdout + result.stderr
    assert json.loads(facts) == {
        "pids": 1 if isolation == "unshare" else 2,  # bubblewrap keeps its own init as pid 1
        "env": ["HOME", "LANG", "LC_ALL", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8",
                "TMPDIR"],
        "root": False,
        "tmp": True,
        "work": True,
        "network": False,
    }  # fmt: skip


async def test_the_code_inherits_no_file_descriptor_but_stdio_and_the_result_channel(isolation):
    listing = "import os, sys; print(sys.argv[1], *os.listdir('/proc/self/fd'))"
    async with sandbox.scratch_dir() as workdir:
        done = await sandbox.Sandbox(isolation).run(
            [sys.executable, "-I", "-S", "-c", listing, "{channel}"],
            workdir,
            seconds=20,
            channel=True,
        )
    channel, *fds = done.lines[-1].split()
    # The listing itself holds one descriptor open while it reads the directory.
    assert len(set(fds) - {"0", "1", "2", channel}) == 1, done.output
