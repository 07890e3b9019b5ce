"""The tests' command lines run as forks of a server that has imported the vendor SDKs
(``cli_forks.py``): what a test sees of a command is what it sees of a fresh
``python -m orchestrator``."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import fake_env, run_cli


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
