"""Running untrusted code: the one place that starts a process executing model-written code.

On Linux the code runs in new user, PID, network, mount and IPC namespaces, built by an existing
isolation tool: bubblewrap (``bwrap``) when this machine has it, otherwise util-linux
``unshare``; one the machine has that fails to start is an error, not a fallback. Inside it sees
a read-only view of the system and of this Python environment, one writable scratch directory
(a copy, at the same path as outside) and a private ``/tmp`` on one size- and inode-limited
tmpfs, a fresh ``/proc`` holding only its own processes, no network but its own loopback, an
environment with none of the user's variables, no inherited file descriptor but stdio and an
optional result channel, and resource limits (CPU seconds, processes, file size, and memory for
the whole sandbox: a cgroup where one can be made, else split over its processes). The whole
tree is killed at its time limit. Run as root, the code runs as ``nobody``: root is exempt from
the process limit.

Where no isolation can be set up, ``detect()`` returns None and callers must not run the code,
unless the user asked for ``unsafe()``, which runs it with a scrubbed environment only.

This module finds and probes the isolation and runs the code; ``sandbox_command`` builds the
isolated command line and its mounts, ``sandbox_limits`` the resource limits and the cgroup,
``sandbox_process`` starts the process and collects its output. All four load only the
standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from orchestrator.code.sandbox_command import (
    BUBBLEWRAP,
    UNSHARE,
    drop_to_nobody,
    isolated_command,
    nobody,
)
from orchestrator.code.sandbox_limits import (
    LIMIT_VARIABLES,
    Cgroup,
    Limits,
    cgroup_parent,
    configured_limits,
    mib,
    unsafe_limits,
)
from orchestrator.code.sandbox_process import (
    CHANNEL_CAP,
    OUTPUT_CAP,
    Completed,
    execute,
    minimal_env,
    run_tool,
)

__all__ = [
    "CHANNEL_CAP",
    "LIMIT_VARIABLES",
    "NO_SANDBOX",
    "OUTPUT_CAP",
    "SANDBOX_ENV",
    "Completed",
    "Limits",
    "Sandbox",
    "choose",
    "configured_limits",
    "detect",
    "hand_over",
    "machine_lacks",
    "run_tool",
    "scratch_dir",
    "unsafe",
    "why_unavailable",
]

log = logging.getLogger(__name__)

SANDBOX_ENV = "ORCHESTRATOR_SANDBOX"  # bubblewrap | unshare | none: use only that (or nothing)
NO_SANDBOX = "not run: no sandbox available (install bubblewrap)"
_UNSAFE = "none (unsafe)"

# What code reports when a limit refuses it: an allocation (MemoryError, ENOMEM), a new process
# or thread (EAGAIN from fork, clone or a thread's start).
_MEMORY_ERROR = re.compile(r"\bMemoryError\b|\[Errno 12\]")
_STARTS_PROCESS = re.compile(r"fork|spawn|Popen|_execute_child|start_new_thread|\bclone\b")
_NEARLY_FULL = 1024**2  # bytes still free on a tmpfs whose size quota a write met


@dataclass(frozen=True)
class Sandbox:
    """One way of running untrusted code; ``isolated`` is False only for ``unsafe()``."""

    isolation: str
    isolated: bool = True
    limits: Limits = field(default_factory=Limits)

    async def run(
        self,
        argv: Sequence[str],
        workdir: str,
        *,
        seconds: float,
        channel: bool = False,
        read_only: Sequence[str] = (),
        stdin: bytes = b"",
    ) -> Completed:
        """Run ``argv`` in ``workdir`` (writable); stop everything at ``seconds`` or on
        cancellation. ``read_only`` adds directories the program needs (a tool's own tree).

        With ``channel``, the placeholder ``{channel}`` in ``argv`` becomes the number of an
        inherited pipe whose contents come back in ``Completed.channel``. ``stdin`` is what the
        program reads on its standard input, then its end (nothing, by default). Raises OSError
        if the program cannot be started.
        """
        seconds = float(seconds)
        read_fd, write_fd = os.pipe() if channel else (-1, -1)
        argv = [arg.replace("{channel}", str(write_fd)) for arg in argv]
        command, group = list(argv), None
        try:
            if self.isolated:
                command = await asyncio.to_thread(self._prepare, argv, workdir, seconds, read_only)
                if (parent := cgroup_parent()) is not None:
                    group = Cgroup.create(parent, self.limits)
                    command = group.enter(command)
        except BaseException:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        exceeded = ""
        try:
            # execute owns (and closes) the write end from here on.
            done = await execute(
                command,
                cwd=workdir,
                env=minimal_env("/tmp" if self.isolated else workdir),
                seconds=seconds,
                pass_fds=(write_fd,) if channel else (),
                channel_fd=read_fd if channel else None,
                preexec_fn=None if self.isolated else unsafe_limits(seconds, self.limits),
                stdin=stdin,
            )
        finally:
            if read_fd >= 0:
                os.close(read_fd)
            if group is not None:
                # Shielded: removed even if this run is cancelled while it waits.
                exceeded = await asyncio.shield(asyncio.to_thread(group.remove))
        return dataclasses.replace(done, exceeded=exceeded) if exceeded else done

    def bounds(self) -> str:
        """The limits this sandbox enforces, and how: e.g. whether a cgroup bounds its memory."""
        return self.limits.describe(whole=cgroup_parent() is not None)

    def stopped_by(self, done: Completed, seconds: float) -> str:
        """The bound of this sandbox that stopped or held back the run ``done`` (one started
        with ``seconds``), with its figure: ``stopped by the sandbox: memory limit 2048 MiB
        reached``; "" for none it can tell. What the run's cgroup saw, or a signal a limit sends
        (SIGXCPU, SIGXFSZ); the time limit is ``Completed.timed_out``'s."""
        # Only a cgroup sees these, and it bounds the sandbox as a whole.
        if done.exceeded == "memory":
            return f"stopped by the sandbox: {self._memory(whole=True)} reached"
        if done.exceeded == "processes":
            return f"refused by the sandbox: {self._processes(whole=True)} reached"
        returncode = done.returncode or 0
        killed_by = -returncode if returncode < 0 else returncode - 128
        if killed_by == signal.SIGXCPU:
            return f"stopped by the sandbox: CPU time limit {int(seconds) + 1}s reached"
        if killed_by == signal.SIGXFSZ:
            return f"stopped by the sandbox: file size limit {mib(self.limits.file_bytes)} reached"
        return ""

    def refused_by(self, error: str, trace: str = "", room: Sequence[int] | None = None) -> str:
        """The bound of this sandbox behind ``error``, what the code raised (``MemoryError``,
        ``OSError: [Errno 28] No space left on device``), with its figure: ``refused by the
        sandbox: disk quota 256 MiB reached``; "" if it names none. ``trace`` tells a refused
        fork (EAGAIN) from other EAGAINs; ``room`` ([bytes, files] still free on the tmpfs as
        it failed) which of its two quotas a write met."""
        bound, whole = "", cgroup_parent() is not None
        if _MEMORY_ERROR.search(error):
            bound = self._memory(whole)
        elif "[Errno 27]" in error:
            bound = f"file size limit {mib(self.limits.file_bytes)}"
        elif not self.isolated:
            return ""  # unisolated: no bound on processes or disk of ours
        elif "can't start new thread" in error or (
            "[Errno 11]" in error and _STARTS_PROCESS.search(f"{error}\n{trace}")
        ):
            bound = self._processes(whole)
        elif "[Errno 28]" in error or "[Errno 122]" in error:
            bound = self._disk(room)
        return f"refused by the sandbox: {bound} reached" if bound else ""

    def _memory(self, whole: bool) -> str:
        if not self.isolated:  # unisolated: each process's own address space, not split
            return f"memory limit {mib(self.limits.memory_bytes)} per process"
        memory, _ = self.limits.per_process(whole)
        return f"memory limit {mib(memory)}" + ("" if whole else " per process")

    def _processes(self, whole: bool) -> str:
        _, processes = self.limits.per_process(whole)
        return f"process limit {processes}"

    def _disk(self, room: Sequence[int] | None) -> str:
        size, files = f"disk quota {mib(self.limits.disk_bytes)}", f"{self.limits.files} files"
        if room is not None and len(room) == 2:
            if room[1] == 0:
                return f"file quota {files}"
            if room[0] < _NEARLY_FULL:
                return size
        return f"{size} or {files}"

    def _prepare(
        self, argv: list[str], workdir: str, seconds: float, read_only: Sequence[str]
    ) -> list[str]:
        """The isolated command line, with ``workdir`` handed over to whoever runs the code."""
        hand_over(workdir)
        whole = cgroup_parent() is not None
        return isolated_command(
            self.isolation, argv, workdir, seconds, self.limits, read_only, whole
        )


def unsafe(limits: Limits | None = None) -> Sandbox:
    """No isolation: the user opted out. A scrubbed environment and limits, nothing more."""
    return Sandbox(_UNSAFE, isolated=False, limits=limits or configured_limits())


async def choose(*, unsafe_allowed: bool) -> Sandbox | None:
    """Where to run model-written code: the detected sandbox; failing that, no isolation if
    the user allowed it; else None (the code is not run)."""
    box = await detect()
    if box is None and unsafe_allowed:
        return unsafe()
    return box


_detected: dict[str, Sandbox | None] = {}


async def detect() -> Sandbox | None:
    """The isolation that works on this machine, tried once per process; None if none does.

    ``$ORCHESTRATOR_SANDBOX`` (bubblewrap, unshare or none) limits the choice to that one.
    """
    wanted = os.environ.get(SANDBOX_ENV, "").strip().lower()
    wanted = {"bwrap": BUBBLEWRAP}.get(wanted, wanted)
    # Two first calls at once may both probe; the answer is the same, so no lock is needed.
    if wanted not in _detected:
        _detected[wanted] = await _probe_all(wanted)
    return _detected[wanted]


async def _probe_all(wanted: str) -> Sandbox | None:
    if wanted not in ("", BUBBLEWRAP, UNSHARE, "none"):
        log.warning("%s=%s is not one of bubblewrap, unshare, none", SANDBOX_ENV, wanted)
        return None
    if wanted == "none":
        return None
    for isolation in (BUBBLEWRAP, UNSHARE):
        if wanted and wanted != isolation:
            continue
        # A path this machine allows but that fails to start raises: no silent fallback.
        problem = await why_unavailable(isolation)
        if problem is None:
            box = Sandbox(isolation, limits=configured_limits())
            bounds = await asyncio.to_thread(box.bounds)
            log.info("validators run model code in a %s sandbox (%s)", isolation, bounds)
            return box
        log.info("%s sandbox unavailable: %s", isolation, problem)
    return None


_problems: dict[str, str | Exception | None] = {}


async def why_unavailable(isolation: str) -> str | None:
    """What this machine lacks for ``isolation`` ("bubblewrap" or "unshare"), or None if it
    runs code. Tried once per process: a small Python program is run through it.

    Raises ``SandboxError`` when the machine has what the path needs (its tool, and
    namespaces that tool may make: ``machine_lacks``) and still the sandbox fails to start:
    that is a fault to fix, not something to fall back from.
    """
    if isolation not in _problems:
        try:
            _problems[isolation] = await _probe(isolation)
        except Exception as exc:
            _problems[isolation] = exc
    found = _problems[isolation]
    if isinstance(found, Exception):
        raise found
    return found


async def _probe(isolation: str) -> str | None:
    lacking = await asyncio.to_thread(machine_lacks, isolation)
    if lacking:
        return lacking
    marker = "sandbox-probe-ok"
    try:
        async with scratch_dir() as workdir:
            done = await Sandbox(isolation).run(
                [sys.executable, "-I", "-S", "-c", f"print({marker!r})"], workdir, seconds=20
            )
    except OSError as exc:
        problem = str(exc)
    else:
        if done.returncode == 0 and marker in done.output:
            return None
        problem = done.lines[-1] if done.lines else f"exit status {done.returncode}"
    from orchestrator.errors import SandboxError  # here: the sandbox loads only the stdlib

    raise SandboxError(
        f"the {isolation} sandbox fails to start, though {isolation} works on this machine: "
        f"{problem} (set {SANDBOX_ENV} to choose another)"
    )


def machine_lacks(isolation: str) -> str | None:
    """What this machine lacks to run ``isolation``, found without our own command line: its
    tools, or the namespaces a minimal command of that tool makes (as the user the code would
    run as). None if it has them."""
    if not sys.platform.startswith("linux"):
        return "namespaces are a Linux feature"
    needed = ["bwrap"] if isolation == BUBBLEWRAP else []
    needed += ["unshare", "prlimit", "setpriv"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if isolation == BUBBLEWRAP:
        minimal = ["bwrap", "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "/bin/true"]
    else:
        minimal = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net"]
        minimal.append("/bin/true")
    drop = drop_to_nobody() if os.geteuid() == 0 else []
    try:
        done = subprocess.run(
            [*drop, *minimal], capture_output=True, text=True, timeout=20, check=False, cwd="/"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{minimal[0]} cannot run: {exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.strip().splitlines()
    return f"{minimal[0]} cannot make namespaces here: {said[-1] if said else done.returncode}"


# --- scratch directories ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_dir() -> AsyncIterator[str]:
    """A fresh directory for one run, the only place the code may write; removed afterwards.

    It sits alone in a private parent directory, beside the mount point the stage uses.
    """
    base = await asyncio.to_thread(_make_scratch)
    try:
        yield os.path.join(base, "work")
    finally:
        await asyncio.to_thread(shutil.rmtree, base, True)


def _make_scratch() -> str:
    # Resolved, so that the path inside the sandbox is the same as outside (/tmp may be a link).
    base = os.path.realpath(tempfile.mkdtemp(prefix="orchestrator-sandbox-"))
    os.mkdir(os.path.join(base, "work"))
    os.mkdir(os.path.join(base, "root"))
    return base


def hand_over(workdir: str) -> None:
    """Make ``workdir`` and what was written into it the sandboxed code's own (as root, the
    code runs as nobody); ``Sandbox.run`` does it before every isolated run."""
    if os.geteuid() != 0:
        return
    uid, gid = nobody()
    for root, dirs, files in os.walk(workdir):
        for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            os.lchown(name, uid, gid)
