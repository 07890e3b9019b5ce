"""The pages: the projects (``/``), one project (``/project/ID``) and one task's answer
(``/project/ID/task/TASK``), each following the store live through a ``live`` twin that answers
204 while nothing changed and the page's new content when something did.

Read-only: any method but GET and HEAD answers 405, and the store is only read. Everything shown
is escaped (Jinja2's autoescape) with its control characters made visible; no key, password or
database URL is ever put on a page."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.money.units import format_usd, nanos_to_usd
from orchestrator.observe.progress import format_time
from orchestrator.settings import DB_URL_ENV
from orchestrator.store.base import is_postgres_url
from orchestrator.store.projects import UnknownProjectError
from orchestrator.store.state import StateManager
from orchestrator.text.visible import shorten, visible
from orchestrator.web.views import Verdict, project_page, project_rows

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
POLL_MILLISECONDS = 500  # how often a page asks whether anything changed: under a second behind
# A project with more tasks shows its table of tasks on a page of its own (``?tasks=all``).
TASK_TABLE_UP_TO = 200
_READ_METHODS = frozenset({"GET", "HEAD"})
# Nothing from elsewhere, no inline script or style: a page that shows model text cannot be made
# to run it.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(
    store: str | Path | None = None,
    *,
    audit_log: str | Path | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The read-only web application over the state store at ``store`` (default: the one runs
    use: ``$ORCHESTRATOR_DB_URL``, else ``$ORCHESTRATOR_HOME/state.db``); ``audit_log``: the
    audit log whose chain each project's page checks; ``allowed_hosts``: the names the page
    answers to (``["*"]``: any), which keeps other sites' pages from reading it through a
    name of theirs pointed at this address."""
    pages = _Pages(store, Path(audit_log) if audit_log else None)
    routes = [
        Route("/", pages.index),
        Route("/live", pages.index_live),
        # A project id from a script may hold a "/": the paths below it are matched first.
        Route("/project/{project_id:path}/live", pages.project_live),
        Route("/project/{project_id:path}/task/{task_id}", pages.task),
        Route("/project/{project_id:path}", pages.project),
        Mount("/static", StaticFiles(packages=[("orchestrator.web", "static")]), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(_ReadOnly),
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"]),
        ],
        lifespan=pages.lifespan,
        exception_handlers={UnknownProjectError: _not_found},
    )


class _Pages:
    def __init__(self, store: str | Path | None, audit_log: Path | None) -> None:
        self.store = store
        self.audit_log = audit_log
        self.state: StateManager | None = None
        # A connection to read the workers' queue, once one is needed.
        self.queue: psycopg.AsyncConnection[Any] | None = None
        self.templates = Environment(
            loader=PackageLoader("orchestrator.web"),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            usd=format_usd, nanos_usd=_nanos_usd, text=visible, line=_one_line, when=format_time
        )
        self.templates.globals.update(poll_ms=POLL_MILLISECONDS)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.state = StateManager(self.store)
        await self.state.open()
        self.templates.globals["store"] = _store_name(self.state.path)
        try:
            yield
        finally:
            await self.state.aclose()
            if self.queue is not None:
                await self.queue.close()

    @property
    def _state(self) -> StateManager:
        assert self.state is not None, "the application's lifespan opens the store"
        return self.state

    async def index(self, request: Request) -> Response:
        return await self._page("index.html", "/live", self._index_mark, self._index_context)

    async def index_live(self, request: Request) -> Response:
        return await self._live(request, "_projects.html", self._index_mark, self._index_context)

    async def project(self, request: Request) -> Response:
        project_id = request.path_params["project_id"]
        every_task = request.query_params.get("tasks") == "all"
        live_url = f"/project/{quote(project_id, safe='')}/live"
        return await self._page(
            "project.html",
            live_url + ("?tasks=all" if every_task else ""),
            lambda: self._project_mark(project_id),
            lambda: self._project_context(project_id, every_task),
        )

    async def project_live(self, request: Request) -> Response:
        project_id = request.path_params["project_id"]
        every_task = request.query_params.get("tasks") == "all"
        return await self._live(
            request,
            "_project.html",
            lambda: self._project_mark(project_id),
            lambda: self._project_context(project_id, every_task),
        )

    async def task(self, request: Request) -> Response:
        project_id = request.path_params["project_id"]
        task_id = request.path_params["task_id"]
        saved = await self._state.projects.load(project_id)
        if saved.tasks is None or task_id not in saved.tasks:
            return _not_found_text(f"project {project_id} has no task {task_id}")
        result = saved.results.get(task_id)
        html = self.templates.get_template("task.html").render(
            project=saved,
            task=saved.tasks[task_id],
            result=result,
            verdicts=[Verdict.of(v) for v in (result or {}).get("validator_results", [])],
            final=task_id in saved.final_tasks,
        )
        return HTMLResponse(html, headers=_HEADERS)

    # --- what each page shows, and the mark that says it changed -----------------------------

    async def _index_context(self) -> dict[str, Any]:
        return {"projects": await project_rows(self._state, await self._queued())}

    async def _index_mark(self) -> str:
        # What moves the list without a write to the store: a holder's process ending, a
        # worker taking a queued project.
        holders = await self._state.holders.live()
        mark = await self._state.projects.progress_mark()
        return _digest((mark, sorted(holders.items()), sorted(await self._queued())))

    async def _project_context(self, project_id: str, every_task: bool) -> dict[str, Any]:
        page = await project_page(self._state, project_id, self.audit_log, await self._queued())
        return {"page": page, "task_table": every_task or len(page.tasks) <= TASK_TABLE_UP_TO}

    async def _project_mark(self, project_id: str) -> str:
        mark = await self._state.projects.progress_mark(project_id)
        if mark[1] == 0:
            raise UnknownProjectError(project_id)
        queued = project_id in await self._queued()
        return _digest((mark, await self._state.holders.held(project_id), queued))

    async def _queued(self) -> set[str]:
        """The projects waiting in the workers' queue: only a PostgreSQL store has one. Read
        on one connection kept for the purpose, not one a look."""
        url = self.store if self.store is not None else os.environ.get(DB_URL_ENV)
        if url is None or not is_postgres_url(url):
            return set()
        import psycopg  # the distributed extra, which a PostgreSQL store needs

        from orchestrator.jobs.workers import waiting_for_a_worker

        try:
            if self.queue is None or self.queue.closed:
                self.queue = await psycopg.AsyncConnection.connect(str(url), autocommit=True)
            return await waiting_for_a_worker(self.queue)
        except psycopg.Error as exc:  # the page still shows what the store holds
            log.warning("cannot read the workers' queue: %s", str(exc).splitlines()[0])
            return set()

    # --- rendering ----------------------------------------------------------------------------

    async def _page(
        self,
        template: str,
        live_url: str,
        mark_of: Callable[[], Awaitable[str]],
        context: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Response:
        # The mark is read first: a change that lands while the page is read shows on the next
        # look rather than never.
        mark = await mark_of()
        html = self.templates.get_template(template).render(
            live_url=live_url, mark=mark, **await context()
        )
        return HTMLResponse(html, headers=_HEADERS)

    async def _live(
        self,
        request: Request,
        fragment: str,
        mark_of: Callable[[], Awaitable[str]],
        context: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Response:
        mark = await mark_of()
        if request.query_params.get("mark") == mark:
            return Response(status_code=204, headers=_HEADERS)
        html = self.templates.get_template(fragment).render(**await context())
        return HTMLResponse(html, headers={**_HEADERS, "X-Mark": mark})


class _ReadOnly:
    """Only GET and HEAD reach the pages: anything else answers 405, whatever its path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _READ_METHODS:
            response = PlainTextResponse(
                "method not allowed: this page only shows the store",
                status_code=405,
                headers={"Allow": "GET, HEAD"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _not_found_text(str(exc).partition(":")[0])


def _not_found_text(message: str) -> Response:
    return PlainTextResponse(visible(message), status_code=404, headers=_HEADERS)


def _digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _store_name(path: Path | str) -> str:
    """Which store the page reads, without a database URL (it may carry a password)."""
    return "PostgreSQL" if is_postgres_url(str(path)) else f"SQLite {path}"


def _one_line(text: str, limit: int = 160) -> str:
    return shorten(visible(text, one_line=True), limit)


def _nanos_usd(nanos: int) -> str:
    return format_usd(nanos_to_usd(nanos))
