"""``--serve``: where the page listens and to whom it answers, that nothing can be changed
through it, how it stops, and what it says, in one line, when it cannot start or has no such
page. Every test runs the real command."""

from __future__ import annotations

import signal
import socket

import pytest
from conftest import run_cli, sqlite_rows
from served import one_line_error, run_without_web_extra, serving
from test_web_page import save_stopped_project

WRITES = ("POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PATHS = (
    "/", "/live?mark=0", "/project/p", "/project/p/live?mark=0", "/project/p/task/a",
    "/static/live.js", "/project/unknown", "/no/such/page",
)  # fmt: skip


def everything_in(path) -> dict[str, list[tuple]]:
    """Every row of every table of the store."""
    tables = sqlite_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {
        name: sorted(map(repr, sqlite_rows(path, f"SELECT * FROM {name}"))) for (name,) in tables
    }


async def test_nothing_but_get_and_head_is_answered_and_the_store_is_left_as_it_was(isolated_home):
    await save_stopped_project("p")
    state = isolated_home / "state.db"
    rows, data = everything_in(state), state.read_bytes()

    with serving() as server:
        refused = {
            (method, path): server.get(path, method=method) for method in WRITES for path in PATHS
        }
        read = {path: (server.get(path), server.get(path, method="HEAD")) for path in PATHS}

    for (method, path), answer in refused.items():
        assert (answer.status, answer.header("Allow")) == (405, "GET, HEAD"), (method, path)
    for path, (got, head) in read.items():
        assert head.status == got.status and head.text == "", path
    assert [got.status for got, _ in read.values()] == [200] * 6 + [404] * 2
    assert everything_in(state) == rows
    assert state.read_bytes() == data


def test_it_listens_on_this_machine_only_unless_told_and_port_0_picks_a_free_port():
    with serving(address="0") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/" and server.port > 0
        by_name = {
            host: server.get("/", headers={"Host": host}).status
            for host in (
                f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST",
                "attacker.example", f"127.0.0.1.attacker.example:{server.port}",
            )
        }  # fmt: skip

    # A site the browser visits cannot read the page through a name of its own for 127.0.0.1.
    assert by_name == {
        f"127.0.0.1:{server.port}": 200,
        f"localhost:{server.port}": 200,
        "LOCALHOST": 200,
        "attacker.example": 400,
        f"127.0.0.1.attacker.example:{server.port}": 400,
    }


def test_bound_to_the_ipv6_loopback_it_answers_to_its_address_as_browsers_write_it():
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback: {exc}")
    with serving(address="[::1]:0") as server:
        assert server.url == f"http://[::1]:{server.port}/"
        statuses = [
            server.get("/", headers={"Host": host}).status
            for host in (f"[::1]:{server.port}", f"localhost:{server.port}", "attacker.example")
        ]

    assert statuses == [200, 200, 400]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_it_at_once_with_status_0_a_reader_connected(how):
    with serving() as server, socket.create_connection((server.host, server.port)):
        assert server.get("/").status == 200
        # The connection above is open and idle, as a browser keeps one.
        assert server.stop(how) == (0, "", "")


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("notaport", "--serve takes [HOST:]PORT with a port from 0 to 65535, not 'notaport'"),
        ("99999", "--serve takes [HOST:]PORT with a port from 0 to 65535, not '99999'"),
        ("127.0.0.1:", "--serve takes [HOST:]PORT with a port from 0 to 65535, not '127.0.0.1:'"),
        ("[::1:80", "--serve takes [HOST:]PORT with a port from 0 to 65535, not '[::1:80'"),
    ],
)
def test_an_address_that_is_not_one_is_refused_in_one_line(address, says, tmp_path):
    result = run_cli("--serve", address, cwd=tmp_path)

    assert result.returncode == 2
    assert one_line_error(result.stderr) == f"orchestrator: error: {says}"


def test_a_port_in_use_is_refused_in_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("--serve", f"127.0.0.1:{port}", cwd=tmp_path)

    assert result.returncode == 2
    assert one_line_error(result.stderr).startswith(
        f"orchestrator: error: --serve 127.0.0.1:{port}: cannot listen there ("
    )


def test_a_store_that_cannot_be_read_is_refused_in_one_line(isolated_home, tmp_path):
    (isolated_home / "state.db").write_bytes(b"not a database, whatever it was" * 100)

    result = run_cli("--serve", "0", cwd=tmp_path)

    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert f"state file {isolated_home / 'state.db'} is not a valid state database" in line


def test_an_audit_log_that_is_not_there_is_refused_in_one_line(tmp_path):
    result = run_cli("--serve", "0", "--audit-log", "missing.jsonl", cwd=tmp_path)

    assert result.returncode == 2
    assert one_line_error(result.stderr) == (
        "orchestrator: error: --audit-log missing.jsonl: no such file to check"
    )


def test_without_the_web_extra_serve_says_which_extra_to_install():
    result = run_without_web_extra("--serve", "0")

    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "--serve needs the web extra" in line and "pip install 'orchestrator-llm[web]'" in line


async def test_a_page_that_is_not_there_is_one_line_naming_it():
    await save_stopped_project("p")

    with serving() as server:
        project = server.get("/project/nope")
        task = server.get("/project/p/task/nope")

    assert (project.status, project.text) == (404, "unknown project id 'nope'")
    assert (task.status, task.text) == (404, "project p has no task nope")
    assert project.header("Content-Type").startswith("text/plain")
