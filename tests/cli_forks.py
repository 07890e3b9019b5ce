"""Command lines for the tests, forked from a server that has already imported the vendor SDKs.

Why: the end-to-end tests start ``python -m orchestrator`` some 250 times a run, and a fresh
interpreter spends most of its CPU importing the vendor SDKs (``anthropic`` about 1.2 CPU-s,
``openai`` and ``google.genai`` about 0.45 each), which every run over the fake provider uses: on
two cores that was most of the suite's time. So each test process starts, on its first command,
one server (``python tests/cli_forks.py``) that imports those third-party modules and nothing of
ours, and each command is a fork of it that then becomes ``python -m orchestrator`` as closely as
a fork can:

- its stdin (``/dev/null``), stdout and stderr (the caller's pipes, passed over the socket) are
  fds 0, 1 and 2, made into ``sys.stdin``/``stdout``/``stderr`` as a fresh interpreter makes them;
- its working directory, its whole environment, ``sys.argv``, and ``sys.path[0]`` (the working
  directory, as ``-m`` puts it) are the command's;
- Python's default signal handlers (Ctrl-C raises ``KeyboardInterrupt``);
- everything of ``orchestrator`` is imported in the child, under the child's own environment;
- the module runs at the top level of this script, so the ending is the interpreter's own: the
  exit status of ``SystemExit``, an uncaught exception's traceback and status 1, ``atexit``
  handlers, waiting for non-daemon threads, flushing stdout.

A command whose environment changes how an interpreter starts (a ``PYTHON*`` variable, the locale)
runs in a fresh interpreter, as does a test's that asks for one (``fresh_interpreter=True``: what a
run imports, how it starts), and every command where there is no ``fork`` or fd passing.

The server is single-threaded (it forks): it waits in ``select`` for a command, for a child's end
(a SIGCHLD wakes it) and for its stdin to close, which is the test process ending or dying.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import runpy
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli_without_waits import stop_waiting

# The third-party modules a run imports that are worth importing once: nothing of ours.
PRELOADED = (
    "anthropic", "openai", "openai.resources.chat", "google.genai", "httpx2", "httpcore2",
    "pydantic", "yaml", "jsonschema", "aiosqlite", "dotenv",
)  # fmt: skip
# Variables read as an interpreter starts, which a fork of another interpreter cannot apply.
STARTUP_LOCALE = ("LANG", "LC_ALL", "LC_CTYPE")
_LENGTH = struct.Struct("!I")
_READY = b"ready\n"


# --- the tests' side --------------------------------------------------------------------------


class ForkServer:
    """One server process for this test process, and the commands run as forks of it."""

    def __init__(self, process: subprocess.Popen[bytes], path: str, env: dict[str, str]) -> None:
        self.process, self.path, self.env = process, path, env

    @classmethod
    def start(cls, env: dict[str, str]) -> ForkServer | None:
        """The server, ready for commands, or None where it cannot run (it says why on stderr)."""
        if not (hasattr(os, "fork") and hasattr(socket, "send_fds")):
            return None
        path = os.path.join(tempfile.mkdtemp(prefix="cli-forks-"), "socket")
        process = subprocess.Popen(
            [sys.executable, __file__, path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=os.path.dirname(path),
        )  # fmt: skip
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(60) and process.stdout.readline() == _READY
        if not ready:
            process.kill()
            process.wait()
            return None
        return cls(process, path, env)

    def starts_alike(self, env: dict[str, str]) -> bool:
        """Whether an interpreter started with ``env`` would start as the server did."""
        names = {*env, *self.env} - {"PYTHONUNBUFFERED"}  # a fork makes its streams so itself
        startup = [n for n in names if n.startswith("PYTHON") or n in STARTUP_LOCALE]
        return all(env.get(name) == self.env.get(name) for name in startup)

    def run(
        self, args: list[str], cli_args: Sequence[str], *, cwd: Path, env: dict[str, str],
        timeout: float, retry_waits: bool,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``python -m orchestrator CLI_ARGS`` forked, reported as ``subprocess.run`` reports
        ``args`` run with ``capture_output=True, text=True, timeout=TIMEOUT``."""
        process = self.spawn(
            args, cli_args, None, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, retry_waits=retry_waits,
        )  # fmt: skip
        return completed(process, timeout)

    def spawn(
        self, args: list[str], command_args: Sequence[str], script: str | None, *, cwd: Path,
        env: dict[str, str], stdin: Any, stdout: Any, stderr: Any, text: bool,
        retry_waits: bool = True,
    ) -> ForkedProcess:  # fmt: skip
        """``args`` (``python -m orchestrator ARGS`` or ``python SCRIPT ARGS``) forked, as a
        process the caller drives like ``subprocess.Popen``: pipes, signals, waiting."""
        ours: list[int | None] = []  # the caller's ends of its pipes, by stream
        theirs: list[int] = []  # the child's fds 0, 1 and 2
        for index, wanted in enumerate((stdin, stdout, stderr)):
            if wanted == subprocess.PIPE:
                read, write = os.pipe()
                ours.append(write if index == 0 else read)
                theirs.append(read if index == 0 else write)
            else:
                ours.append(None)
                if wanted == subprocess.DEVNULL or (index == 0 and wanted is None):
                    theirs.append(os.open(os.devnull, os.O_RDWR))
                else:  # inherited: this process's own stream
                    theirs.append(os.dup(index if wanted is None else wanted.fileno()))
        request = {"args": list(command_args), "script": script, "cwd": str(cwd), "env": env,
                   "retry_waits": retry_waits}  # fmt: skip
        try:
            connection = self._send(request, theirs)
        except OSError:
            for fd in ours:
                if fd is not None:
                    os.close(fd)
            raise
        return ForkedProcess(args, connection, ours, text)

    def _send(self, request: dict[str, Any], fds: list[int]) -> socket.socket:
        """A command and its stdio fds (closed here) to the server: the caller's connection."""
        data = json.dumps(request).encode()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self.path)
            socket.send_fds(connection, [_LENGTH.pack(len(data))], fds)
            connection.sendall(data)
        except OSError:
            connection.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return connection

    def close(self) -> None:
        """End the server: its stdin closing is its signal."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)  # if it could not


class ForkedProcess:
    """A forked command with the part of ``subprocess.Popen``'s interface the tests use: its
    pid, its pipes, signals, ``poll``, ``wait`` and ``communicate``. Its exit status comes from
    the server (its parent), in ``subprocess``'s terms (negative for a signal)."""

    def __init__(
        self, args: list[str], connection: socket.socket, pipes: list[int | None], text: bool
    ) -> None:
        self.args, self.connection = args, connection
        self.returncode: int | None = None
        self.stdin, self.stdout, self.stderr = (
            None if fd is None else _pipe_end(fd, writes=index == 0, text=text)
            for index, fd in enumerate(pipes)
        )
        self._said = bytearray()
        self._readers: dict[str, threading.Thread] = {}
        self._read: dict[str, Any] = {}
        self.pid = int(self._line(timeout=60, index=0))

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.connection], [], [], 0)[0]:
            self._status(timeout=10)  # the server writes its status line at once
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._status(timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass  # it has just ended

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """As ``Popen.communicate``: ``input`` written and stdin closed, the output read to its
        end and the exit awaited; past ``timeout``, ``TimeoutExpired`` and a later call goes on
        where this one stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                reader = threading.Thread(target=self._drain, args=(name, stream), daemon=True)
                self._readers[name] = reader
                reader.start()
        for reader in self._readers.values():
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._read.get("stdout"), self._read.get("stderr")

    def _drain(self, name: str, stream: Any) -> None:
        self._read[name] = stream.read()
        stream.close()

    def _status(self, timeout: float | None) -> None:
        self.returncode = int(self._line(timeout, index=1))
        self.connection.close()

    def _line(self, timeout: float | None, index: int) -> bytes:
        """The server's ``index``-th line about the command (0: its pid, 1: its status)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._said.count(b"\n") <= index:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and not (
                left > 0 and select.select([self.connection], [], [], left)[0]
            ):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            data = self.connection.recv(64)
            if not data:
                raise ConnectionError(f"the fork server ended before the command: {self._said!r}")
            self._said += data
        return bytes(self._said).splitlines()[index]


def _pipe_end(fd: int, *, writes: bool, text: bool) -> Any:
    """The caller's end of a pipe as ``subprocess.Popen`` makes it: buffered bytes, or text
    written through (stdin) or read with universal newlines."""
    raw = open(fd, "wb" if writes else "rb")
    if not text:
        return raw
    return io.TextIOWrapper(raw, write_through=writes)


def popen(
    args: list[str], *, cwd: Path, env: dict[str, str], server_env: dict[str, str],
    stdin: Any = None, stdout: Any = None, stderr: Any = None, text: bool = False,
) -> ForkedProcess | subprocess.Popen[Any]:  # fmt: skip
    """``subprocess.Popen(args, ...)`` for ``python -m orchestrator ARGS`` and ``python
    SCRIPT.py ARGS``: forked from this test process's server where it can be, as ``forked``."""
    module = args[1:3] == ["-m", "orchestrator"]
    script = args[1] if len(args) > 1 and args[1].endswith(".py") else None
    server = _the_server(server_env) if args[0] == sys.executable and (module or script) else None
    if server is None or not server.starts_alike(env):
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text
        )
    rest = args[3:] if module else args[2:]
    return server.spawn(args, rest, script, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                        stderr=stderr, text=text)  # fmt: skip


def completed(process: Any, timeout: float) -> subprocess.CompletedProcess[str]:
    """What ``subprocess.run(..., capture_output=True, text=True, timeout=TIMEOUT)`` reports of
    a started ``process`` (forked or not): its output and exit status, or ``TimeoutExpired``
    once it is killed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise subprocess.TimeoutExpired(process.args, timeout, out, err) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


_server: ForkServer | None = None
_started = False
_lock = threading.Lock()


def forked(
    args: list[str], cli_args: Sequence[str], *, cwd: Path, env: dict[str, str],
    server_env: dict[str, str], timeout: float, retry_waits: bool,
) -> subprocess.CompletedProcess[str] | None:  # fmt: skip
    """The command run by this test process's fork server (started with ``server_env`` on the
    first call), or None where it must run in a fresh interpreter."""
    server = _the_server(server_env)
    if server is None or not server.starts_alike(env):
        return None
    return server.run(args, cli_args, cwd=cwd, env=env, timeout=timeout, retry_waits=retry_waits)


def _the_server(server_env: dict[str, str]) -> ForkServer | None:
    """This test process's server, started with ``server_env`` on first use (None where it
    cannot run)."""
    global _server, _started
    with _lock:
        if not _started:
            _started = True
            _server = ForkServer.start(server_env)
        return _server


def stop() -> None:
    """End this test process's fork server, if it started one."""
    global _server
    with _lock:
        if _server is not None:
            _server.close()
            _server = None


# --- the server's side --------------------------------------------------------------------------


class Server:
    """Forks a child per command and tells each command's caller its pid and exit status."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        # A child's end wakes the select: a SIGCHLD handler that does nothing but write here.
        self.wakeup, wakeup_w = socket.socketpair()
        for end in (self.wakeup, wakeup_w):
            end.setblocking(False)
        self._wakeup_w = wakeup_w
        signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the tests is for the commands
        self.parent = os.getppid()
        self.callers: dict[int, socket.socket] = {}  # pid -> the connection of its caller
        self.abandoned: set[int] = set()  # children killed as their caller hung up

    def serve(self) -> dict[str, Any] | None:
        """Serve until stdin closes (None), or, in a forked child, return its command."""
        while True:
            waiting = [c for pid, c in self.callers.items() if pid not in self.abandoned]
            watched: list[Any] = [0, self.listener, self.wakeup, *waiting]
            ready, _, _ = select.select(watched, [], [], 1.0)
            gone = os.getppid() != self.parent  # as well as stdin's end, for a stray copy of it
            if gone or (0 in ready and not os.read(0, 4096)):
                self._end()
                return None
            if self.wakeup in ready:
                self.wakeup.recv(4096)
            for caller in waiting:
                if caller in ready:  # hung up before its command ended: past its timeout
                    pid = next(p for p, c in self.callers.items() if c is caller)
                    self._kill(pid)
            self._reap()
            if self.listener in ready:
                command = self._accept()
                if command is not None:
                    return command

    def _accept(self) -> dict[str, Any] | None:
        connection, _ = self.listener.accept()
        fds: list[int] = []
        try:
            connection.settimeout(10)
            header, fds, _, _ = socket.recv_fds(connection, _LENGTH.size, 3)
            header += _receive(connection, _LENGTH.size - len(header))
            command: dict[str, Any] = json.loads(_receive(connection, _LENGTH.unpack(header)[0]))
            connection.settimeout(None)
        except (OSError, ValueError) as exc:
            print(f"cli_forks: a command could not be read: {exc!r}", file=sys.stderr)
            for fd in fds:
                os.close(fd)
            connection.close()
            return None
        pid = os.fork()
        if pid == 0:
            self._leave()
            connection.close()
            command["fds"] = fds
            return command
        for fd in fds:
            os.close(fd)
        self.callers[pid] = connection
        _tell(connection, pid)
        return None

    def _reap(self) -> None:
        while self.callers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            caller = self.callers.pop(pid, None)
            self.abandoned.discard(pid)
            if caller is not None:
                _tell(caller, os.waitstatus_to_exitcode(status))
                caller.close()

    def _kill(self, pid: int) -> None:
        self.abandoned.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _end(self) -> None:
        """Kill the children nobody waits for any more, and take the socket away."""
        shutil.rmtree(os.path.dirname(self.listener.getsockname()), ignore_errors=True)
        for pid in list(self.callers):
            self._kill(pid)
        while self.callers:
            pid, _ = os.waitpid(-1, 0)
            self.callers.pop(pid, None)

    def _leave(self) -> None:
        """In a child: none of the server's sockets nor its signal handling."""
        signal.set_wakeup_fd(-1)
        for end in (self.listener, self.wakeup, self._wakeup_w, *self.callers.values()):
            end.close()


def _receive(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller hung up mid-command")
        data += chunk
    return bytes(data)


def _tell(connection: socket.socket, number: int) -> None:
    try:
        connection.sendall(b"%d\n" % number)
    except OSError:
        pass  # the caller is gone: nobody to tell


def become(command: dict[str, Any], unbuffered: bool) -> None:
    """Make this forked child the fresh ``python -m orchestrator ARGS`` of ``command``."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(command["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    unbuffered = unbuffered or bool(command["env"].get("PYTHONUNBUFFERED"))
    names = ("<stdin>", "<stdout>", "<stderr>")
    like = (sys.stdin, sys.stdout, sys.stderr)
    streams = [_stdio(fd, names[fd], "rww"[fd], unbuffered, like[fd]) for fd in range(3)]
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]
    os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    time.tzset()
    tempfile.tempdir = None  # found again from the command's TMPDIR
    script = command.get("script")
    if script is None:
        sys.argv = ["-m", *command["args"]]
        sys.orig_argv = [sys.executable, "-m", "orchestrator", *command["args"]]
        sys.path.insert(0, os.getcwd())  # the server took its own directory out
    else:  # as ``python SCRIPT``: its own directory first on the path
        sys.argv = [script, *command["args"]]
        sys.orig_argv = [sys.executable, script, *command["args"]]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    importlib.invalidate_caches()
    if not command["retry_waits"]:
        stop_waiting()


def _stdio(fd: int, name: str, mode: str, unbuffered: bool, like: Any) -> io.TextIOWrapper:
    """A standard stream on ``fd`` as the interpreter makes one at start-up (``create_stdio``):
    the encoding and errors of the server's (same locale), stdin buffered even when unbuffered,
    stderr line-buffered."""
    raw = io.FileIO(fd, mode + "b", closefd=False)
    raw.name = name  # as the interpreter names its own
    buffer: Any = raw
    if mode == "r":
        buffer = io.BufferedReader(raw)
    elif not unbuffered:
        buffer = io.BufferedWriter(raw)
    stream = io.TextIOWrapper(
        buffer, encoding=like.encoding, errors=like.errors, newline="\n",
        line_buffering=not unbuffered and (raw.isatty() or fd == 2), write_through=unbuffered,
    )  # fmt: skip
    stream.mode = mode  # type: ignore[misc]
    return stream


def _preload() -> None:
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an extra not installed: the child finds that out itself


if __name__ == "__main__":
    # The server: stdin is the test process (its end is ours), stdout says when it is ready.
    unbuffered = isinstance(sys.stdout.buffer, io.FileIO)  # -u or PYTHONUNBUFFERED
    server = Server(sys.argv[1])
    del sys.path[0]  # this directory: the preloaded modules are found where a command finds them
    _preload()
    sys.stdout.buffer.write(_READY)
    sys.stdout.flush()
    command = server.serve()
    if command is None:
        sys.exit(0)
    become(command, unbuffered)
    script = command.get("script")
    del server, command
    if script is None:
        runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(script, run_name="__main__")
