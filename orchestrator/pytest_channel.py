"""Runs pytest inside the sandbox and streams each test's outcome to the orchestrator.

Usage (inside the sandbox): ``python -I -B pytest_channel.py FD [pytest arguments...]``.

Each outcome is written to the inherited pipe FD as one JSON line the moment pytest reports it,
so code that runs later (an ``atexit`` hook, ``os._exit``) cannot take it back, and nothing the
code prints on stdout or writes to a file counts. The orchestrator checks that the stream, the
session's totals and the exit status agree. Plugin autoload is off: pytest loads only the
plugins it is told of. This file is copied into the sandbox and runs
there on its own: standard library and pytest only, no import from the orchestrator.
"""

from __future__ import annotations

import json
import os
import sys

MESSAGE_LIMIT = 300
TRACE_LINES = 40  # the end of a failure's traceback: where it failed and why
TRACE_LIMIT = 3000


class Channel:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, **message: object) -> None:
        data = (json.dumps(message, default=str) + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(self._fd, data) :]


def _crash(report) -> str:
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
    return lines[-1].strip()[:MESSAGE_LIMIT] if lines else ""


def _trace(report) -> str:
    """The end of the failure's report, as pytest would print it, trimmed."""
    text = str(getattr(report, "longreprtext", "") or getattr(report, "longrepr", "") or "")
    lines = text.splitlines()[-TRACE_LINES:]
    return "\n".join(lines)[-TRACE_LIMIT:]


class VerdictPlugin:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.channel.send(
                event="collect_error",
                id=report.nodeid,
                message=_crash(report),
                trace=_trace(report),
            )

    def pytest_collection_finish(self, session) -> None:
        self.channel.send(event="collected", count=len(session.items))

    def pytest_runtest_logreport(self, report) -> None:
        self.channel.send(
            event="report",
            id=report.nodeid,
            when=report.when,
            outcome=report.outcome,
            xfail=hasattr(report, "wasxfail"),
            message=_crash(report) if report.failed else "",
            trace=_trace(report) if report.failed else "",
        )

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.channel.send(
            event="finish",
            exitstatus=int(exitstatus),
            collected=session.testscollected,
            failed=session.testsfailed,
        )


def main(argv: list[str]) -> int:
    channel = Channel(int(argv[1]))
    # Only the plugins named on the command line (ours): no installed plugin is loaded, so none
    # can be replaced by a module of the code under test.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import pytest

    return int(pytest.main(argv[2:], plugins=[VerdictPlugin(channel)]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
