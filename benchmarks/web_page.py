"""How fast the read-only page (``--serve``) shows a large project, beside a small one.

Builds, through the real ``StateManager`` API, a store holding a finished 1,000-task project (a
layered plan, each task checkpointed with its validators' verdicts and a ~2 KB answer, ~4
journaled calls a task) and a 10-task one built the same way as the baseline; serves it with
``python -m orchestrator --serve 127.0.0.1:0`` as a user does, and prints for both:
  (a) the server: the median time to answer ``/project/ID`` (the whole page), its live twin's
      full fragment, and the twin's 204 when nothing changed, over HTTP from this process; and,
      in-process, how much of the page is reading the store (``views.project_page``);
  (b) Chromium through Playwright: from navigation start to the first paint and to the load
      event (the Navigation and Paint Timing entries), target <= 1 s;
  (c) the same for the table of every task (``?tasks=all``), which a project of more than 200
      tasks shows on a page of its own;
  (d) how far behind an open page follows the store: from a paid call committed to the store to
      the page showing it, target <= 1 s.

    python benchmarks/web_page.py [--tasks 1000] [--calls 4] [--size 2000] [--repeat 15]

Needs the ``web`` extra, Playwright and a Chromium (``chromium`` on the PATH, or --chromium).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright
from resume_startup import code_text, generated_graph

from orchestrator import Catalog
from orchestrator.run.taskgraph import execution_order
from orchestrator.run.tasks import ProjectStatus, TaskResult, TaskStatus, ValidatorResult
from orchestrator.store.state import StateManager
from orchestrator.web.views import project_page

LARGE, SMALL = "large", "small"
TARGET_S = 1.0
PHASES = ("generation", "cross_review", "evaluation", "evaluation")
SERVING = re.compile(r"serving the saved projects at http://([\d.]+):(\d+)/")


def record_of(task_id: str, output: str, model: str, reviewer: str) -> dict[str, Any]:
    """A finished task's checkpoint, with the verdicts a code task's validators give."""
    validators = [
        ValidatorResult("python_syntax", True, detail="3 block(s) compile"),
        ValidatorResult("pytest", True, detail="4 passed in 0.31s"),
        ValidatorResult("ruff", False, detail="E501 line too long (104 > 100) at line 12"),
    ]
    record = TaskResult(
        task_id, output=output, score=0.91, status=TaskStatus.COMPLETED, iterations=2,
        cost_usd=0.008, validator_results=validators, score_history=[0.7, 0.91],
    ).to_record()  # fmt: skip
    return {**record, "model_used": model, "reviewer_model": reviewer}


async def build_project(state: StateManager, project_id: str, args: argparse.Namespace) -> int:
    """A finished project of ``tasks`` tasks, written call by call as a run writes it; its
    journal's rows."""
    rng = random.Random(f"{args.seed}/{project_id}")
    models = [m.key for m in Catalog.load(env={}).models][:12]
    tasks = generated_graph(args.tasks if project_id == LARGE else 10, args.seed)
    order = execution_order(tasks)
    await state.projects.create(
        project_id, description=f"A generated {len(tasks)}-task project",
        criteria="every part works", max_usd=1000.0, max_time_seconds=36000.0, settings={},
    )  # fmt: skip
    await state.projects.save_plan(project_id, tasks, order, 5.0)
    elapsed, calls = 5.0, 0
    for task_id in order:
        for call in range(args.calls):
            elapsed += 0.5
            model = rng.choice(models)
            await state.journal.put(
                project_id, hashlib.sha256(f"{task_id}/{call}".encode()).hexdigest(),
                task_id=task_id, phase=PHASES[call % len(PHASES)], cost_nanos=2_000_000,
                entry={"text": code_text(rng, args.size), "reported_model": model},
                elapsed=elapsed, model=model,
            )  # fmt: skip
            calls += 1
        record = record_of(
            task_id, code_text(rng, args.size), rng.choice(models), rng.choice(models)
        )
        await state.projects.checkpoint(project_id, task_id, record, final=True, elapsed=elapsed)
    await state.projects.finish(project_id, ProjectStatus.SUCCESS, "", elapsed)
    return calls


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Page:
    """GETs over one kept-alive connection, as a browser tab polls."""

    def __init__(self, host: str, port: int) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes, str]:
        self.connection.request("GET", path)
        answer = self.connection.getresponse()
        return answer.status, answer.read(), answer.getheader("X-Mark") or ""


def server_figures(page: Page, project_id: str, repeat: int) -> dict[str, float]:
    status, body, _ = page.get(f"/project/{project_id}")
    assert status == 200, status
    live = f"/project/{project_id}/live"
    mark = page.get(live)[2]
    assert page.get(f"{live}?mark={mark}")[0] == 204
    return {
        "page": median_seconds(lambda: page.get(f"/project/{project_id}"), repeat),
        "fragment": median_seconds(lambda: page.get(live), repeat),
        "unchanged": median_seconds(lambda: page.get(f"{live}?mark={mark}"), repeat),
        "kb": len(body) / 1000,
    }


async def reading_seconds(path: Path, project_id: str, repeat: int) -> float:
    """The median time ``views.project_page`` takes to read the project from the store."""
    times = []
    async with StateManager(path) as state:
        for _ in range(repeat):
            started = time.perf_counter()
            await project_page(state, project_id)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


# From navigation start: the page's last byte, its first paint and the end of its load event,
# once the browser has recorded all three (a paint entry can come after the load event).
BROWSER_TIMINGS = """async () => {
    const paint = () => performance.getEntriesByName('first-paint')[0];
    const nav = () => performance.getEntriesByType('navigation')[0];
    while (!paint() || !nav() || !nav().loadEventEnd) {
        await new Promise(resolve => setTimeout(resolve, 10));
    }
    return [nav().responseEnd, paint().startTime, nav().loadEventEnd];
}"""


def browser_figures(chromium: str, url: str, repeat: int) -> dict[str, float]:
    """Medians over fresh tabs: the last byte of the page, its first paint and its load event,
    each from navigation start."""
    runs: list[list[float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            for _ in range(repeat):
                tab = browser.new_page()
                tab.goto(url, wait_until="load")
                runs.append([ms / 1000 for ms in tab.evaluate(BROWSER_TIMINGS)])
                tab.close()
        finally:
            browser.close()
    return {
        name: statistics.median(run[index] for run in runs)
        for index, name in enumerate(("received", "first paint", "load"))
    }


# Set when the page's live region next changes, by the browser's clock (this machine's).
WATCH_CHANGE = """() => {
    window.changedAt = null;
    new MutationObserver(() => { window.changedAt ??= Date.now(); })
        .observe(document.getElementById("live"), {childList: true, subtree: true});
}"""


def follow_lag(chromium: str, url: str, store: Path, project_id: str, repeat: int) -> float:
    """The median time from a paid call committed to the store to the open page showing it.
    Each call is written just after the page changed, so just after one of its looks: close to
    the worst case, a whole interval between looks."""
    lags: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page()
            tab.goto(url, wait_until="load")
            for n in range(repeat):
                tab.evaluate(WATCH_CHANGE)
                committed = _paid_call(store, project_id, n)
                tab.wait_for_function("() => window.changedAt !== null", timeout=30_000)
                lags.append(tab.evaluate("window.changedAt") / 1000 - committed)
        finally:
            browser.close()
    return statistics.median(lags)


def _paid_call(store: Path, project_id: str, n: int) -> float:
    """Journal one more paid call of the project, as a run does; when it was committed."""

    async def write() -> float:
        async with StateManager(store) as state:
            await state.journal.put(
                project_id, f"followed-{n}", task_id="t0000", phase="generation",
                cost_nanos=1_000_000, entry=None, elapsed=9.0, model="openai/gpt-4o",
            )  # fmt: skip
            return time.time()

    # The browser's driver runs its own loop in this thread: the write gets one of its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, write()).result()


def start_server(home: Path) -> tuple[subprocess.Popen[str], str, int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--serve", "127.0.0.1:0"],
        env={**os.environ, "ORCHESTRATOR_HOME": str(home)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    started = SERVING.match(server.stderr.readline())
    if started is None:
        server.kill()
        raise SystemExit(f"the server did not start: {server.communicate()[1]}")
    return server, started.group(1), int(started.group(2))


def row(name: str, small: float, large: float, unit: str = "ms", target: str = "") -> str:
    scale = 1000 if unit == "ms" else 1
    return f"  {name:<44} {small * scale:>10.1f} {large * scale:>10.1f} {unit:<3} {target}"


async def build_store(path: Path, args: argparse.Namespace) -> dict[str, int]:
    """Both projects in the store at ``path``: each one's journaled calls."""
    async with StateManager(path) as state:
        return {p: await build_project(state, p, args) for p in (SMALL, LARGE)}


async def build_and_read(
    path: Path, args: argparse.Namespace
) -> tuple[dict[str, int], dict[str, float]]:
    """The store built (each project's journaled calls), and how long reading each project
    for its page takes."""
    calls = await build_store(path, args)
    return calls, {p: await reading_seconds(path, p, args.repeat) for p in calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=4, help="journaled calls per task")
    parser.add_argument("--size", type=int, default=2000, help="bytes per answer and output")
    parser.add_argument("--repeat", type=int, default=15, help="GETs per figure")
    parser.add_argument("--loads", type=int, default=5, help="browser loads per figure")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium: install Debian's chromium or pass --chromium PATH")

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        started = time.perf_counter()
        calls, reading = asyncio.run(build_and_read(home / "state.db", args))
        print(
            f"store: a {args.tasks}-task project ({calls[LARGE]} journaled calls, {args.size} B "
            f"answers and outputs) and a 10-task one ({calls[SMALL]}), built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        server, host, port = start_server(home)
        try:
            page = Page(host, port)
            served = {p: server_figures(page, p, args.repeat) for p in (SMALL, LARGE)}
            shown = {
                p: browser_figures(args.chromium, f"http://{host}:{port}/project/{p}", args.loads)
                for p in (SMALL, LARGE)
            }
            lags = {
                p: follow_lag(
                    args.chromium, f"http://{host}:{port}/project/{p}", home / "state.db", p,
                    args.loads,
                )
                for p in (SMALL, LARGE)
            }  # fmt: skip
            # A project of more than 200 tasks has its table of tasks on a page of its own.
            tables = {
                p: browser_figures(
                    args.chromium, f"http://{host}:{port}/project/{p}?tasks=all", args.loads
                )
                for p in (SMALL, LARGE)
            }
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)

    small, large = served[SMALL], served[LARGE]
    target = f"target <= {TARGET_S:.0f} s"
    heading = f"median over {args.repeat} GETs, {args.loads} loads"
    print(f"  {heading:<44} {'10 tasks':>10} {f'{args.tasks} tasks':>10}")
    print(row("(a) GET /project/ID, the whole page", small["page"], large["page"], target=target))
    print(row("    of which reading the store (in-process)", reading[SMALL], reading[LARGE]))
    print(row("    its live twin, the full fragment", small["fragment"], large["fragment"]))
    print(row("    its live twin, nothing changed (204)", small["unchanged"], large["unchanged"]))
    print(row("    the page's size", small["kb"], large["kb"], unit="KB"))
    small, large = shown[SMALL], shown[LARGE]
    print(row("(b) Chromium: last byte received", small["received"], large["received"]))
    print(row("    first paint", small["first paint"], large["first paint"], target=target))
    print(row("    load event", small["load"], large["load"], target=target))
    small, large = tables[SMALL], tables[LARGE]
    print(row("(c) the table of every task (?tasks=all): load", small["load"], large["load"]))
    print(row("(d) a paid call journaled, shown on the page", lags[SMALL], lags[LARGE],
              target="target <= 1 s"))  # fmt: skip


if __name__ == "__main__":
    main()
