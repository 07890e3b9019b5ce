"""Runs pytest inside the sandbox and streams each test's outcome to the orchestrator.

Usage (inside the sandbox): ``python -I -B pytest_channel.py FD [pytest arguments...]``, with
the run's key on standard input.

Each outcome is written to the inherited pipe FD as one JSON line the moment pytest reports it,
so code that runs later (an ``atexit`` hook, ``os._exit``) cannot take it back, and nothing the
code prints on stdout or writes to a file counts. Every line starts with the run's key, read
from standard input (to its end) before any code under test is imported: the code inherits the
pipe and could write to it, but a line without the key is not the runner's. The orchestrator
checks that the stream, the session's totals and the exit status agree. Plugin autoload is off:
pytest loads only the plugins it is told of. This file is copied into the sandbox and runs there
on its own: standard library and pytest only, no import from the orchestrator.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pytest is imported only once the key is read (``main``)
    import pytest

MESSAGE_LIMIT = 300
TRACE_LINES = 40  # the end of a failure's traceback: where it failed and why
TRACE_LIMIT = 3000


def read_key() -> bytes:
    """The run's key: all of standard input, read before the code under test is imported."""
    key = b""
    while chunk := os.read(0, 4096):
        key += chunk
    return key.strip()


class Channel:
    def __init__(self, fd: int, key: bytes) -> None:
        self._fd = fd
        self._key = key

    def send(self, **message: object) -> None:
        line = json.dumps(message, default=str) + "\n"
        data = self._key + b" " + line.encode("utf-8", "replace")
        while data:
            data = data[os.write(self._fd, data) :]


def _crash(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The short reason a report failed: the assertion or exception line."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        # "assert [1] == [2]" first, then pytest's explanation of the difference.
        lines = [line for line in message.splitlines() if line.strip()]
        return lines[0].strip()[:MESSAGE_LIMIT] if lines else ""
    lines = [
        line for line in str(getattr(report, "longrepr", "") or "").splitlines() if line.strip()
    ]
    # A file that failed to collect: pytest's last line, less its "E" margin.
    last = lines[-1].strip() if lines else ""
    return (last[2:].strip() if last.startswith("E ") else last)[:MESSAGE_LIMIT]


def _room() -> list[int] | None:
    """[bytes, files] still free where the tests write (the sandbox's tmpfs) as a test fails:
    whether a write refused for lack of space met the size or the file quota."""
    try:
        found = os.statvfs(".")
    except OSError:
        return None
    return [found.f_bavail * found.f_frsize, found.f_favail]


def _trace(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The end of the failure's report, as pytest would print it, trimmed."""
    text = str(getattr(report, "longreprtext", "") or getattr(report, "longrepr", "") or "")
    lines = text.splitlines()[-TRACE_LINES:]
    return "\n".join(lines)[-TRACE_LIMIT:]


class VerdictPlugin:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.channel.send(
                event="collect_error",
                id=report.nodeid,
                message=_crash(report),
                trace=_trace(report),
            )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.channel.send(event="collected", count=len(session.items))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.channel.send(
            event="report",
            id=report.nodeid,
            when=report.when,
            outcome=report.outcome,
            xfail=hasattr(report, "wasxfail"),
            message=_crash(report) if report.failed else "",
            trace=_trace(report) if report.failed else "",
            room=_room() if report.failed else None,
        )

    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int | pytest.ExitCode
    ) -> None:
        self.channel.send(
            event="finish",
            exitstatus=int(exitstatus),
            collected=session.testscollected,
            failed=session.testsfailed,
        )


def main(argv: list[str]) -> int:
    channel = Channel(int(argv[1]), read_key())
    # Only the plugins named on the command line (ours): no installed plugin is loaded, so none
    # can be replaced by a module of the code under test.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import pytest

    return int(pytest.main(argv[2:], plugins=[VerdictPlugin(channel)]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
