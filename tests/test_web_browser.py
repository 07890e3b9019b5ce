"""The page over the store, in a real browser: Debian's Chromium driven by Playwright, watching a
project run over the fake provider. Screenshots go to ``.test-artifacts/web/``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import clean_environment, fake_env
from fake_provider import RecordedRequest, Reply
from scripted_llm import ScriptedLLM
from test_resume import FAST

from orchestrator import Budget, Orchestrator, UnifiedClient
from orchestrator.money.units import format_usd
from orchestrator.run.tasks import Task, TaskResult, TaskStatus, TaskType
from orchestrator.store.state import StateManager

playwright = pytest.importorskip("playwright.async_api", reason="needs the dev extra")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
SCREENSHOTS = Path(__file__).resolve().parent.parent / ".test-artifacts" / "web"
WAIT_MS = 30_000  # for the page to show what the store already holds: far more than it needs
HOSTILE = 'An add library <img src=x onerror="alert(1)"> <script>alert(2)</script>'


class HeldTask:
    """Holds every call about one task until released, so the test decides when it finishes."""

    def __init__(self, llm: ScriptedLLM, task_id: str) -> None:
        self.llm = llm
        self.marker = f"[{task_id}]"
        self.released = threading.Event()

    def __call__(self, request: RecordedRequest) -> Reply:
        if self.marker in request.prompt_text:
            self.released.wait(timeout=60)
        return self.llm(request)


@pytest.fixture
def page_server() -> Iterator[str]:
    """``python -m orchestrator --serve 127.0.0.1:0`` over the test's home; its URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--serve", "127.0.0.1:0"],
        env=clean_environment(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    first_line = server.stderr.readline()
    assert "serving the saved projects at http://127.0.0.1:" in first_line, first_line
    try:
        yield first_line.split(" at ", 1)[1].split()[0].rstrip("/")
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0


async def test_a_running_projects_page_follows_it_as_its_tasks_finish(fake, page_server):
    llm = ScriptedLLM()
    held = HeldTask(llm, "summary")
    fake.responder = held
    dialogs: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await page.goto(page_server + "/")
        await page.get_by_text("No saved projects").wait_for(timeout=WAIT_MS)
        # Set on the page now: still there later only if the page was updated, not reloaded.
        await page.evaluate("window.loadedOnce = true")

        async with UnifiedClient(env=fake_env(fake.base_url), retry=FAST) as client:
            orch = Orchestrator(budget=Budget(max_usd=2.0), client=client, use_cache=False)
            run = asyncio.create_task(orch.run_project(HOSTILE, "add works"))
            try:
                link = page.locator("table.projects a").first
                await link.wait_for(timeout=WAIT_MS)
                row = page.locator("table.projects tbody tr").first
                await shown(row, "running now")
                assert await page.evaluate("window.loadedOnce") is True
                await page.screenshot(path=SCREENSHOTS / "projects-running.png")

                await link.click()
                await shown(page.locator("#task-core td.state"), "completed")
                await page.evaluate("window.loadedOnce = true")
                # Everything but the held task finishes while the page is open.
                for task_id in ("review", "docs", "extract"):
                    await shown(page.locator(f"#task-{task_id} td.state"), "completed")
                summary = page.locator("#task-summary td.state")
                assert (await summary.inner_text()).split(":")[0] in ("waiting", "in flight")
                assert await page.locator("h1 .badge").inner_text() == "running now"
                assert await page.locator("svg g.node.completed").count() == 4
                await page.screenshot(path=SCREENSHOTS / "project-running.png")
            finally:
                held.released.set()
            state = await run

        await shown(page.locator("h1 .status"), state.status.value)
        await shown(summary, "completed")
        assert await page.evaluate("window.loadedOnce") is True
        assert await page.locator("h1 .badge").count() == 0  # no run holds it any more
        assert await page.locator("svg g.node.completed").count() == 5
        assert await page.locator("svg path.edge").count() == 5  # one per dependency
        spent = await page.locator("table.caps tbody tr").first.inner_text()
        assert format_usd(state.budget.spent_usd) in spent
        calls = await page.locator("table.calls tbody tr").count()
        assert calls == await _journal_rows(state.project_id)
        # Each names the model it went to, though the finished tasks' answers are dropped.
        models = await page.locator("table.calls tbody td:nth-child(4)").all_inner_texts()
        assert len(models) == calls and all("/" in model for model in models)
        # The model's and the user's text is shown as text: nothing in it ran.
        await page.locator("details.brief summary").click()
        assert HOSTILE in await page.locator("details.brief pre").first.inner_text()
        await page.screenshot(path=SCREENSHOTS / "project-finished.png", full_page=True)
        await browser.close()
    assert dialogs == []


async def shown(where: playwright.Locator, text: str) -> None:
    """Wait until ``text`` shows in ``where``, as the page updates itself."""
    await where.get_by_text(text).wait_for(timeout=WAIT_MS)


async def _journal_rows(project_id: str) -> int:
    async with StateManager() as store:
        _, total = await store.journal.latest(project_id, 1)
    return total


async def test_the_table_of_every_task_of_a_large_project_follows_it_too(page_server):
    tasks = {
        f"t{n}": Task(f"t{n}", TaskType.SUMMARIZE, f"[t{n}] Summarise.", []) for n in range(201)
    }
    async with StateManager() as store:
        await store.projects.create(
            "big", description="A large project", criteria="each summary reads well",
            max_usd=2.0, max_time_seconds=600.0, settings={},
        )  # fmt: skip
        await store.projects.save_plan("big", tasks, list(tasks), 1.0)
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page()
        await page.goto(page_server + "/project/big")
        await page.get_by_text("the table of all 201 tasks").click()
        await shown(page.locator("#task-t7 td.state"), "not run")
        await page.evaluate("window.loadedOnce = true")

        done = TaskResult("t7", output="A summary.", score=0.9, status=TaskStatus.COMPLETED)
        async with StateManager() as store:
            await store.projects.checkpoint("big", "t7", done.to_record(), final=True, elapsed=2.0)

        await shown(page.locator("#task-t7 td.state"), "completed")
        assert await page.evaluate("window.loadedOnce") is True
        assert page.url.endswith("/project/big?tasks=all")
        await browser.close()
