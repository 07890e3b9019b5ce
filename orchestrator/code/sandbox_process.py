"""Starting a process and collecting what it leaves: its output (the middle dropped beyond
``OUTPUT_CAP``), its result channel, its exit status. Its whole process group is killed at its
time limit, on cancellation, and when it ends. ``Sandbox.run`` starts an isolated command here;
``run_tool`` a trusted tool, unisolated. Standard library only, like the rest of the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CHANNEL_CAP", "OUTPUT_CAP", "Completed", "execute", "minimal_env", "run_tool"]

OUTPUT_CAP = 64 * 1024  # bytes of a process's output kept: half from the start, half the end
CHANNEL_CAP = 4 * 1024 * 1024  # bytes of the result channel kept; beyond that it is cut off


@dataclass(frozen=True)
class Completed:
    returncode: int | None  # None when the run was stopped at its time limit
    output: str  # stdout and stderr interleaved; the middle is dropped beyond OUTPUT_CAP
    channel: bytes = b""  # what the code wrote to the result channel, if one was asked for
    exceeded: str = ""  # the sandbox's bound its cgroup saw reached: "memory" or "processes"

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.output.splitlines() if line.strip()]


def minimal_env(home: str) -> dict[str, str]:
    """What Python and pytest need, and no variable of the user's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": home,
        "TMPDIR": "/tmp" if home == "/tmp" else home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUTF8": "1",
    }


async def run_tool(
    argv: Sequence[str], workdir: str, *, seconds: float, env: Mapping[str, str] | None = None
) -> Completed:
    """Run a trusted tool (ruff) that reads model output without executing it, unisolated."""
    env = env or minimal_env(workdir)
    return await execute(list(argv), cwd=workdir, env=env, seconds=seconds)


class _CappedOutput:
    """Keeps the first and last ``cap / 2`` bytes: tools put their summary at the end."""

    def __init__(self, cap: int = OUTPUT_CAP) -> None:
        self._half = cap // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = False

    def feed(self, chunk: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._half:
            self._dropped = True
            del self._tail[: len(self._tail) - self._half]

    def text(self) -> str:
        gap = b"\n[... output truncated ...]\n" if self._dropped else b""
        return bytes(self._head + gap + self._tail).decode("utf-8", errors="replace")


async def _drain(stream: asyncio.StreamReader, sink: _CappedOutput) -> None:
    while chunk := await stream.read(65536):
        sink.feed(chunk)


async def _read_channel(fd: int, into: bytearray) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHANNEL_CAP)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while chunk := await reader.read(65536):
            if len(into) < CHANNEL_CAP:
                into += chunk[: CHANNEL_CAP - len(into)]
    finally:
        transport.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def execute(
    command: list[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    seconds: float,
    pass_fds: tuple[int, ...] = (),
    channel_fd: int | None = None,
    preexec_fn: Callable[[], object] | None = None,
    stdin: bytes = b"",
) -> Completed:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
            preexec_fn=preexec_fn,
        )
    finally:
        for fd in pass_fds:
            # Only the child holds the write end now, so the channel ends when the code does.
            os.close(fd)
    assert proc.stdout is not None
    if proc.stdin is not None:
        # Less than a pipe holds: written at once, whenever the program reads it (or dies).
        with contextlib.suppress(OSError):
            proc.stdin.write(stdin)
        proc.stdin.close()
    sink = _CappedOutput()
    channel = bytearray()
    readers = {asyncio.create_task(_drain(proc.stdout, sink))}
    if channel_fd is not None:
        readers.add(asyncio.create_task(_read_channel(channel_fd, channel)))
    timed_out = False
    try:
        async with asyncio.timeout(seconds):
            # Shielded so that a timeout leaves the readers to collect what is still in the pipes.
            await asyncio.shield(asyncio.gather(*readers))
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        # Also after a normal exit: anything the code started in the background shares the
        # group (or the PID namespace, which dies with its first process) and must not outlive
        # the check.
        _kill_group(proc.pid)
        await proc.wait()
        # A process that left our session can hold a pipe open forever; stop waiting for it.
        await asyncio.wait(readers, timeout=1.0)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return Completed(None if timed_out else proc.returncode, sink.text(), bytes(channel))
