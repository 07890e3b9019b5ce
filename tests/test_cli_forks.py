"""The tests' command lines run as forks of a server that has imported the vendor SDKs
(``cli_forks.py``): what a test sees of a command is what it sees of a fresh
``python -m orchestrator``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import fake_env, run_cli, start_process


def seen(result: subprocess.CompletedProcess[str]) -> tuple[object, ...]:
    return result.args, result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--version"], id="an-answer"),
        pytest.param(["--list-models"], id="a-table"),
        pytest.param(["-p", "x"], id="a-usage-error"),
        pytest.param(["-p", "x", "-c", "y", "--budget", "-1"], id="a-bad-value"),
    ],
)
@pytest.mark.parametrize("retry_waits", [True, False], ids=["waiting", "not-waiting"])
def test_a_forked_command_answers_exactly_as_a_fresh_interpreter_does(tmp_path, args, retry_waits):
    forked = run_cli(*args, cwd=tmp_path, retry_waits=retry_waits)
    fresh = run_cli(*args, cwd=tmp_path, retry_waits=retry_waits, fresh_interpreter=True)

    assert seen(forked) == seen(fresh)


def test_a_forked_run_reads_its_own_environment_and_directory(fake, llm, tmp_path):
    env = {**fake_env(fake.base_url, ("openai",)), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    result = run_cli("-p", "[project] Build an add library", "-c", "add works", "--budget", "2",
                     "--output-dir", "out", cwd=tmp_path, env=env)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").is_dir()
    assert fake.requests and {r.api for r in fake.requests} == {"openai"}  # its only key


def test_a_forked_command_past_its_timeout_is_killed_and_reported_as_subprocess_does(
    fake, llm, tmp_path
):
    llm.delay = 30
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    run_cli("--version", cwd=tmp_path)  # the server is up: only the command is timed
    started = time.monotonic()

    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        run_cli("-p", "p", "-c", "c", cwd=tmp_path, env=env, timeout=2)

    assert time.monotonic() - started < 15
    assert timed_out.value.timeout == 2


SCRIPT = """
import os, sys
print("ready", sys.argv[1:], os.getcwd() == sys.argv[1], flush=True)
line = sys.stdin.readline()
print("got", line.strip(), file=sys.stderr)
sys.exit(int(line))
"""


def test_a_started_script_is_driven_as_a_popen_is_through_its_pipes(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = start_process(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, text=True, **pipes
    )

    assert process.stdout.readline() == f"ready [{str(tmp_path)!r}] True\n"
    assert process.poll() is None
    out, err = process.communicate("7\n", timeout=30)
    assert (process.returncode, out, err) == (7, "", "got 7\n")


def test_a_started_command_that_is_signalled_ends_as_a_popen_reports_it(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    process = start_process(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    process.stdout.readline()

    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == -signal.SIGTERM
    assert type(process) is not subprocess.Popen  # forked, not started afresh
