"""The real CLI end to end over HTTP: what a user waits for besides the models themselves.

Runs ``python -m orchestrator`` as a user does, with the real vendor SDKs talking HTTP to the
fake provider (every provider keyed, so every SDK is in play), and prints:
  (a) a fresh run of a generated 30-task graph (a project file with its own tasks) at 200 ms a
      call: time to the first provider call, makespan (process start to exit) over the critical
      path (``CALLS_IN_SEQUENCE_PER_TASK`` calls a task, depth layers), target <= 1.3; and how
      long the process took to exit after its last line;
  (b) ``--resume`` of an interrupted 1,000-task project: time from process start to its first
      provider call, target < 0.5 s;
  (c) a run with ``--time 2`` whose calls take 5 s: how long after the limit the process ends
      (calls in flight are cancelled at the deadline), target within about a second.

    python benchmarks/cli_end_to_end.py [--tasks 30] [--latency 0.2] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from engine_overhead import CALLS_IN_SEQUENCE_PER_TASK, generated_graph  # noqa: E402
from fake_provider import FakeProvider, RecordedRequest, Reply  # noqa: E402
from graph_shape import critical_path_length, width  # noqa: E402
from resume_startup import PROJECT_ID, build_state  # noqa: E402

MAKESPAN_TARGET = 1.3
FIRST_CALL_TARGET_S = 0.5


VERDICT = json.dumps({"score": 0.95, "reasoning": "meets the criteria"})
ANSWER = "A complete answer to the task, long enough to pass a length check."


def responder(latency: float) -> Callable[[RecordedRequest], Reply]:
    def answer(request: RecordedRequest) -> Reply:
        return Reply(VERDICT if request.wants_json else ANSWER, delay=latency)

    return answer


def environment(base_url: str, home: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.endswith("_API_KEY") and not name.startswith("ORCHESTRATOR_")
        and not name.endswith("_BASE_URL")
    }  # fmt: skip
    env.update(
        {
            "ORCHESTRATOR_HOME": str(home),
            "OPENAI_API_KEY": "x", "OPENAI_BASE_URL": f"{base_url}/v1",
            "ANTHROPIC_API_KEY": "x", "ANTHROPIC_BASE_URL": base_url,
            "GEMINI_API_KEY": "x", "GOOGLE_GEMINI_BASE_URL": base_url,
            "MOONSHOT_API_KEY": "x", "MOONSHOT_BASE_URL": f"{base_url}/v1",
            "DEEPSEEK_API_KEY": "x", "DEEPSEEK_BASE_URL": base_url,
        }
    )  # fmt: skip
    return env


class Watched:
    """A CLI process with the wall-clock time of every line it writes and of its exit."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._readers = [
            threading.Thread(target=self._read, args=(pipe,), daemon=True)
            for pipe in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()
        self.exited = 0.0

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append((time.time(), line.rstrip("\n")))

    def wait(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout)
        self.exited = time.time()
        for reader in self._readers:
            reader.join()
        return code


def fresh_run(args: argparse.Namespace, fake: FakeProvider, work: Path) -> dict[str, float]:
    tasks = generated_graph(args.tasks, args.seed)
    project = {
        "project": "A generated benchmark project",
        "criteria": "every part is complete",
        "budget": 100,
        "time": 600,
        "concurrency": args.concurrency,
        "tasks": [task.to_dict() for task in tasks.values()],
    }
    path = work / "project.json"
    path.write_text(json.dumps(project))
    fake.requests.clear()
    env = environment(fake.base_url, work / "home")
    run = Watched(["--file", str(path), "--no-cache"], env, work)
    code = run.wait()
    if code != 0:
        sys.exit(f"the run failed ({code}):\n" + "\n".join(line for _, line in run.lines[-10:]))
    first = min(r.received_at for r in fake.requests)
    critical = critical_path_length(tasks) * CALLS_IN_SEQUENCE_PER_TASK * args.latency
    return {
        "first_call": first - run.started,
        "makespan": run.exited - run.started,
        "critical": critical,
        "exit_after_last_line": run.exited - max(t for t, _ in run.lines),
        "calls": len(fake.requests),
        "width": width(tasks),
        "depth": critical_path_length(tasks),
    }


def resumed_first_calls(args: argparse.Namespace, fake: FakeProvider, work: Path) -> list[float]:
    """Each run resumes its own copy of one interrupted project's state."""
    saved = work / "saved.db"
    settings = argparse.Namespace(tasks=1000, calls=5, size=1500, seed=args.seed)
    asyncio.run(build_state(saved, settings))
    firsts = []
    for index in range(args.repeat):
        home = work / f"home{index}"
        home.mkdir()
        shutil.copy(saved, home / "state.db")
        fake.requests.clear()
        run = Watched(
            ["--resume", PROJECT_ID, "--no-cache"], environment(fake.base_url, home), work
        )
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline and run.process.poll() is None:
            time.sleep(0.002)
        firsts.append(fake.requests[0].received_at - run.started if fake.requests else math.nan)
        run.process.send_signal(signal.SIGINT)
        run.wait()
    return firsts


def deadline_overshoot(fake: FakeProvider, work: Path, limit: float = 2.0) -> float:
    fake.responder = lambda request: Reply(ANSWER, delay=5)
    run = Watched(
        ["-p", "x", "-c", "y", "--time", str(limit)], environment(fake.base_url, work), work
    )
    code = run.wait()
    if code != 5:
        sys.exit(f"expected TIMEOUT (exit 5), got {code}")
    return run.exited - run.started - limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.responder = responder(args.latency)
        runs = []
        for index in range(args.repeat):
            work = Path(tmp) / f"run{index}"
            work.mkdir()
            runs.append(fresh_run(args, fake, work))
        ratios = [r["makespan"] / r["critical"] for r in runs]
        last = runs[-1]
        print(
            f"graph: {args.tasks} tasks, width {last['width']}, depth {last['depth']:.0f}; "
            f"{last['calls']} calls at {args.latency * 1000:.0f} ms, concurrency {args.concurrency}"
        )
        first_call = statistics.median(r["first_call"] for r in runs)
        ratio = statistics.median(ratios)
        print(f"(a) time to first provider call: median {first_call:.3f} s over {len(runs)} runs")
        print(
            f"    makespan {statistics.median(r['makespan'] for r in runs):.2f} s over critical "
            f"path {last['critical']:.2f} s: median {ratio:.3f}x, worst {max(ratios):.3f}x "
            f"(target <= {MAKESPAN_TARGET}x; {ratio / MAKESPAN_TARGET:.2f} of it)"
        )
        print(
            "    exit after the last line: median "
            f"{statistics.median(r['exit_after_last_line'] for r in runs) * 1000:.0f} ms"
        )
        work = Path(tmp) / "resume"
        work.mkdir()
        firsts = resumed_first_calls(args, fake, work)
        first = statistics.median(firsts)
        print(
            f"(b) resumed 1,000-task project, first provider call after {first:.3f} s median, "
            f"{max(firsts):.3f} s worst (target < {FIRST_CALL_TARGET_S} s; "
            f"{first / FIRST_CALL_TARGET_S:.2f} of it)"
        )
        work = Path(tmp) / "deadline"
        work.mkdir()
        over = deadline_overshoot(fake, work)
        print(f"(c) --time 2 with 5 s calls: the process ended {over:.2f} s after the limit")


if __name__ == "__main__":
    main()
