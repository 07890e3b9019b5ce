"""Watching a run from the command line: metrics files, the audit log, and its verification."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

from conftest import run_cli, start_process
from prometheus_client.parser import text_string_to_metric_families
from test_cli_run import CRITERIA, PROJECT, cli_env

from orchestrator.observe.audit import record_hash


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def audit_calls(path):
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r for r in lines if r["kind"] == "call"]


def test_a_killed_run_keeps_its_audit_trail_and_the_resume_extends_it(fake, llm, tmp_path):
    audit, metrics = tmp_path / "audit.jsonl", tmp_path / "orchestrator.prom"
    env = cli_env(fake, tmp_path)
    llm.delay = 0.3
    watch = ["--audit-log", str(audit), "--metrics-out", str(metrics)]
    process = start_process(
        [sys.executable, "-m", "orchestrator", "-p", PROJECT, "-c", CRITERIA,
         "--project-id", "watched", *watch],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: len(audit_calls(audit)) >= 2)
    process.kill()
    process.communicate(timeout=10)

    verified = run_cli("--verify-audit", str(audit), cwd=tmp_path, env=env)
    assert verified.returncode == 0, verified.stderr
    assert "chain intact" in verified.stdout

    llm.delay = 0.0
    resumed = run_cli("--resume", "watched", *watch, cwd=tmp_path, env=env)

    assert resumed.returncode == 0, resumed.stderr
    assert run_cli("--verify-audit", str(audit), cwd=tmp_path, env=env).returncode == 0
    head = audit.read_text().splitlines()[-1]
    assert json.loads(head)["hash"] in resumed.stderr  # the head to keep elsewhere
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    assert families["orchestrator_run_status"].samples[0].labels["status"] == "SUCCESS"
    assert families["orchestrator_model_calls"].samples

    tampered = audit.read_text().splitlines()
    del tampered[1]
    audit.write_text("\n".join(tampered) + "\n")
    broken = run_cli("--verify-audit", str(audit), cwd=tmp_path, env=env)
    assert broken.returncode == 1
    assert "line 2: breaks the chain" in broken.stderr and broken.stderr.count("\n") == 1


def printed_head(stderr: str) -> str:
    found = re.search(r"records added; head ([0-9a-f]{64})$", stderr, re.MULTILINE)
    assert found, stderr
    return found.group(1)


def test_an_interrupted_run_prints_its_audit_head_and_the_head_catches_a_cut_or_rewritten_end(
    fake, llm, tmp_path
):
    audit = tmp_path / "audit.jsonl"
    env = cli_env(fake, tmp_path)
    llm.delay = 5
    process = start_process(
        [sys.executable, "-m", "orchestrator", "-p", PROJECT, "-c", CRITERIA,
         "--audit-log", str(audit)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: fake.count() >= 1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == 130, stderr
    head = printed_head(stderr)
    kept = run_cli("--verify-audit", str(audit), "--audit-head", head, cwd=tmp_path, env=env)
    assert kept.returncode == 0, kept.stderr

    lines = audit.read_text().splitlines()
    audit.write_text("\n".join(lines[:-1]) + "\n")  # the last record deleted
    assert run_cli("--verify-audit", str(audit), cwd=tmp_path, env=env).returncode == 0
    cut = run_cli("--verify-audit", str(audit), "--audit-head", head, cwd=tmp_path, env=env)
    assert cut.returncode == 1 and cut.stderr.count("\n") == 1
    assert f"not at the head {head}" in cut.stderr

    last = json.loads(lines[-1])
    last["data"] = {**last["data"], "outcome": "answered"}
    last["hash"] = record_hash(last)  # edited, its hash made to match
    audit.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    rewritten = run_cli("--verify-audit", str(audit), "--audit-head", head, cwd=tmp_path, env=env)
    assert rewritten.returncode == 1 and "not at the head" in rewritten.stderr


def test_verify_audit_tells_a_write_cut_off_by_a_kill_from_tampering(tmp_path):
    from orchestrator.observe.audit import AuditLog

    audit = tmp_path / "audit.jsonl"
    log = AuditLog(audit)
    log.record("call", {"model": "m"})
    log.close()
    with audit.open("a") as handle:
        handle.write('{"data":{"mod')  # kill -9 in the middle of the next record

    cut = run_cli("--verify-audit", str(audit), "--audit-head", log.head, cwd=tmp_path)

    assert cut.returncode == 0, cut.stderr  # the chain up to it is intact
    assert "1 records, chain intact" in cut.stdout
    assert "last record incomplete (a write cut off)" in cut.stdout
    alone = run_cli("--audit-head", log.head, cwd=tmp_path)
    assert alone.returncode == 2 and "--audit-head goes with --verify-audit" in alone.stderr


def test_the_console_table_follows_the_results(fake, llm, tmp_path):
    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--metrics-out", "-", cwd=tmp_path,
        env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    results, _, table = result.stdout.partition("validator fails")
    assert "status SUCCESS" in results
    assert "run " in table and "SUCCESS" in table


def test_a_metrics_file_of_unknown_kind_is_refused_before_any_call(fake, tmp_path):
    result = run_cli(
        "-p", PROJECT, "-c", CRITERIA, "--metrics-out", "metrics.txt", cwd=tmp_path,
        env=cli_env(fake, tmp_path),
    )  # fmt: skip

    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert ".prom or .json" in result.stderr
    assert fake.count() == 0
