"""The page as a user reaches it: a real ``python -m orchestrator --serve`` process, asked over
HTTP, and the tables of what it answers read as rows of text."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser

from conftest import PROJECT_ROOT, clean_environment

SERVING = re.compile(
    r"serving the saved projects at (http://(\S+):(\d+)/) \(read-only; Ctrl-C stops\)\n"
)
MARK = re.compile(r'data-mark="([0-9a-f]+)"')


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # by lower-case name
    text: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Served:
    """A running server: ``url`` as it printed it, and the requests made to it."""

    url: str
    host: str
    port: int
    process: subprocess.Popen[str]
    stopped: tuple[int, str, str] | None = None

    def get(self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read().decode("utf-8")
            named = {name.lower(): value for name, value in response.getheaders()}
            return Answer(response.status, named, body)
        finally:
            connection.close()

    def stop(self, how: signal.Signals = signal.SIGINT) -> tuple[int, str, str]:
        """Stop it (Ctrl-C unless told) and wait for it: its exit status and what it said after
        its first line."""
        if self.stopped is None:
            self.process.send_signal(how)
            out, err = self.process.communicate(timeout=15)
            self.stopped = (self.process.returncode, out, err)
        return self.stopped

    def page(self, path: str) -> str:
        """A page that must be there: its HTML."""
        answer = self.get(path)
        assert answer.status == 200, (path, answer.status, answer.text)
        return answer.text


def server_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """What a user's server runs with: no key of the developer's, the test's home, the test's
    database when it set one, and ``env``."""
    chosen = {
        name: os.environ[name]
        for name in ("ORCHESTRATOR_HOME", "ORCHESTRATOR_DB_URL")
        if name in os.environ
    }
    return {**clean_environment(), **chosen, **(env or {})}


@contextmanager
def serving(
    *args: str, address: str = "127.0.0.1:0", env: dict[str, str] | None = None
) -> Iterator[Served]:
    """``python -m orchestrator --serve ADDRESS ARGS`` until the block ends, then Ctrl-C, which
    must stop it at once with exit status 0 and nothing but its first line said."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--serve", address, *args],
        cwd=os.getcwd(),
        env=server_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    first = process.stderr.readline()
    started = SERVING.fullmatch(first)
    if started is None:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the server did not start: {first}{err}{out}")
    url, host, port = started.groups()
    server = Served(url, host.strip("[]"), int(port), process)
    try:
        yield server
    finally:
        stopped = server.stop()
    assert stopped == (0, "", "")


def one_line_error(stderr: str) -> str:
    """The one line a refused command says (never a traceback)."""
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("orchestrator: error: "), stderr
    return stderr.strip()


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._rows is not None:
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(html: str, name: str) -> list[list[str]]:
    """The rows of the page's table of class ``name`` (its heading first), each cell's text."""
    parser = _Tables()
    parser.feed(html)
    assert name in parser.tables, f"no table {name!r} on the page"
    return parser.tables[name]


def records(html: str, name: str) -> list[dict[str, str]]:
    """The table's rows as heading -> cell."""
    heading, *rows = table(html, name)
    return [dict(zip(heading, row, strict=True)) for row in rows]


def mark_of(html: str) -> str:
    found = MARK.search(html)
    assert found is not None, "the page names no mark to follow"
    return found.group(1)


def run_without_web_extra(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line in an environment where Starlette cannot be imported."""
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from orchestrator.cli.app import main\n"
        f"sys.exit(main({list(args)!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=server_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
