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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "NO_SANDBOX",
    "SANDBOX_ENV",
    "Completed",
    "Limits",
    "Sandbox",
    "choose",
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
OUTPUT_CAP = 64 * 1024  # bytes of a process's output kept: half from the start, half the end
CHANNEL_CAP = 4 * 1024 * 1024  # bytes of the result channel kept; beyond that it is cut off

_BUBBLEWRAP = "bubblewrap"
_UNSHARE = "unshare"
_UNSAFE = "none (unsafe)"

# The system, read-only. Top-level symlinks (merged /usr) are recreated as symlinks.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What programs need from /etc, and nothing that could hold a secret.
_ETC_ENTRIES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/texmf",
    "/etc/fonts",
)
_DATA_DIRS = ("/var/lib/texmf",)
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run; CPU seconds follow the run's time limit.

    ``memory_bytes`` bounds the sandbox as a whole: a cgroup's ``memory.max`` where one can be
    made, else it is split: each process may map ``memory_bytes // split`` and at most
    ``split`` run at once. ``disk_bytes`` and ``files`` bound the one tmpfs that holds the
    scratch directory and ``/tmp``.
    """

    memory_bytes: int = 2 * 1024**3
    processes: int = 128
    file_bytes: int = 64 * 1024**2
    disk_bytes: int = 256 * 1024**2
    files: int = 20_000
    split: int = 8

    def per_process(self, whole: bool) -> tuple[int, int]:
        """(address space, processes) each process gets: whole when a cgroup bounds the sum."""
        if whole:
            return self.memory_bytes, self.processes
        split = max(1, min(self.split, self.processes))
        return self.memory_bytes // split, split

    def describe(self, whole: bool) -> str:
        memory, processes = self.per_process(whole)
        disk = f"disk {_mib(self.disk_bytes)} and {self.files} files"
        if whole:
            return f"memory {_mib(memory)} in all (cgroup), {processes} processes, {disk}"
        return f"memory {_mib(memory)} per process x {processes} processes (no cgroup), {disk}"


# Limits a machine's owner may set in the environment: variable -> (Limits field, unit).
LIMIT_VARIABLES = {
    "ORCHESTRATOR_SANDBOX_MEMORY_MIB": ("memory_bytes", 1024**2),
    "ORCHESTRATOR_SANDBOX_DISK_MIB": ("disk_bytes", 1024**2),
    "ORCHESTRATOR_SANDBOX_FILES": ("files", 1),
}


def configured_limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The default ``Limits`` with what ``LIMIT_VARIABLES`` set; ``ConfigError`` (one line
    naming the variable) for a value that is not a whole number above zero."""
    environ = os.environ if environ is None else environ
    chosen: dict[str, int] = {}
    for variable, (name, unit) in LIMIT_VARIABLES.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            from orchestrator.errors import (
                ConfigError,  # here: this module is also loaded on its own
            )

            raise ConfigError(f"{variable}={text!r}: not a whole number above zero")
        chosen[name] = int(text) * unit
    return Limits(**chosen)


def _mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB"


# What code reports when a limit refuses it: an allocation (MemoryError, ENOMEM), a new process
# or thread (EAGAIN from fork, clone or a thread's start).
_MEMORY_ERROR = re.compile(r"\bMemoryError\b|\[Errno 12\]")
_STARTS_PROCESS = re.compile(r"fork|spawn|Popen|_execute_child|start_new_thread|\bclone\b")
_NEARLY_FULL = 1024**2  # bytes still free on a tmpfs whose size quota a write met


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
                if (parent := _cgroup_parent()) is not None:
                    group = _Cgroup.create(parent, self.limits)
                    command = group.enter(command)
        except BaseException:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        exceeded = ""
        try:
            # _execute owns (and closes) the write end from here on.
            done = await _execute(
                command,
                cwd=workdir,
                env=_minimal_env("/tmp" if self.isolated else workdir),
                seconds=seconds,
                pass_fds=(write_fd,) if channel else (),
                channel_fd=read_fd if channel else None,
                preexec_fn=None if self.isolated else _unsafe_limits(seconds, self.limits),
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
        return self.limits.describe(whole=_cgroup_parent() is not None)

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
            return f"stopped by the sandbox: file size limit {_mib(self.limits.file_bytes)} reached"
        return ""

    def refused_by(self, error: str, trace: str = "", room: Sequence[int] | None = None) -> str:
        """The bound of this sandbox behind ``error``, what the code raised (``MemoryError``,
        ``OSError: [Errno 28] No space left on device``), with its figure: ``refused by the
        sandbox: disk quota 256 MiB reached``; "" if it names none. ``trace`` tells a refused
        fork (EAGAIN) from other EAGAINs; ``room`` ([bytes, files] still free on the tmpfs as
        it failed) which of its two quotas a write met."""
        bound, whole = "", _cgroup_parent() is not None
        if _MEMORY_ERROR.search(error):
            bound = self._memory(whole)
        elif "[Errno 27]" in error:
            bound = f"file size limit {_mib(self.limits.file_bytes)}"
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
            return f"memory limit {_mib(self.limits.memory_bytes)} per process"
        memory, _ = self.limits.per_process(whole)
        return f"memory limit {_mib(memory)}" + ("" if whole else " per process")

    def _processes(self, whole: bool) -> str:
        _, processes = self.limits.per_process(whole)
        return f"process limit {processes}"

    def _disk(self, room: Sequence[int] | None) -> str:
        size, files = f"disk quota {_mib(self.limits.disk_bytes)}", f"{self.limits.files} files"
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
        whole = _cgroup_parent() is not None
        return _isolated_command(
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
    wanted = {"bwrap": _BUBBLEWRAP}.get(wanted, wanted)
    # Two first calls at once may both probe; the answer is the same, so no lock is needed.
    if wanted not in _detected:
        _detected[wanted] = await _probe_all(wanted)
    return _detected[wanted]


async def _probe_all(wanted: str) -> Sandbox | None:
    if wanted not in ("", _BUBBLEWRAP, _UNSHARE, "none"):
        log.warning("%s=%s is not one of bubblewrap, unshare, none", SANDBOX_ENV, wanted)
        return None
    if wanted == "none":
        return None
    for isolation in (_BUBBLEWRAP, _UNSHARE):
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
    from orchestrator.errors import SandboxError  # here: this module is also loaded on its own

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
    needed = ["bwrap"] if isolation == _BUBBLEWRAP else []
    needed += ["unshare", "prlimit", "setpriv"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if isolation == _BUBBLEWRAP:
        minimal = ["bwrap", "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "/bin/true"]
    else:
        minimal = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net"]
        minimal.append("/bin/true")
    drop = _drop_to_nobody() if os.geteuid() == 0 else []
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


# --- the isolated command ---------------------------------------------------------------------

# Drops every capability for good before the code starts (root in a user namespace has them).
_DROP_CAPS = [
    "setpriv",
    "--no-new-privs",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--",
]


def _isolated_command(
    isolation: str,
    argv: Sequence[str],
    workdir: str,
    seconds: float,
    limits: Limits,
    read_only: Sequence[str],
    whole: bool,
) -> list[str]:
    """Every path first builds the view in a stage (a private mount namespace in which it may
    mount), then starts the code in it; the stage is what mounts the quota'd tmpfs."""
    limited = [*_prlimit(seconds, limits, whole), "--", *argv]
    view = _View.build(workdir, read_only, limits)
    as_root = os.geteuid() == 0
    if isolation == _BUBBLEWRAP and not as_root:
        # bubblewrap makes every namespace, and leaves the stage (root in its own user
        # namespace) what building the view needs; the stage drops it all before the code runs
        # and forbids further user namespaces (bubblewrap's --disable-userns would forbid the
        # stage its mounts).
        stage = [
            "bwrap",
            *_bwrap_isolation(disable_userns=False),
            *("--uid", "0", "--gid", "0"),
            *("--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"),
            *("--cap-add", "CAP_SYS_RESOURCE"),
            *("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"),
        ]
        script = view.stage_script([*_DROP_CAPS, *limited], devices=True, no_userns=True)
        return [*stage, "--", "/bin/sh", "-c", script, "sandbox-stage"]
    # Root (so that the code can run as nobody) and the unshare path build the view in a
    # private mount namespace, then start the isolating tool inside it.
    drop = _drop_to_nobody() if as_root else []
    if isolation == _BUBBLEWRAP:
        inner = [
            *drop,
            "bwrap",
            *_bwrap_isolation(disable_userns=_bwrap_can_disable_userns()),
            *("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"),
            *("--bind", "/tmp", "/tmp", "--bind", workdir, workdir, "--chdir", workdir),
            "--",
            *limited,
        ]
    else:
        # lo is brought up so that the code has its own loopback; without `ip` it stays down.
        loopback_then_drop = (
            f'ip link set lo up 2>/dev/null || true; exec {shlex.join(_DROP_CAPS)} "$@"'
        )
        inner = [
            *drop,
            *("unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"),
            *("--net", "--ipc", "--uts", "--mount", "--mount-proc"),
            *("--", "/bin/sh", "-c", loopback_then_drop, "sandbox", *limited),
        ]
    stage = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    if not as_root:
        stage[1:1] = ["--user", "--map-root-user"]
    script = view.stage_script(inner, devices=isolation == _UNSHARE)
    return [*stage, "--", "/bin/sh", "-c", script, "sandbox-stage"]


def _bwrap_isolation(*, disable_userns: bool) -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        *(["--disable-userns"] if disable_userns else []),
    ]


@functools.cache
def _bwrap_can_disable_userns() -> bool:
    try:
        usage = subprocess.run(
            ["bwrap", "--help"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--disable-userns" in usage


def _prlimit(seconds: float, limits: Limits, whole: bool) -> list[str]:
    memory, processes = limits.per_process(whole)
    return [
        "prlimit",
        f"--cpu={int(seconds) + 1}",
        f"--as={memory}",
        f"--nproc={processes}",
        f"--fsize={limits.file_bytes}",
        "--core=0",
    ]


def _drop_to_nobody() -> list[str]:
    uid, gid = _nobody()
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


@dataclass
class _View:
    """What the code may see: read-only paths, copied files, symlinks, one writable directory."""

    workdir: str
    read_only: list[str]  # bound read-only at the same path
    copies: list[str]  # small files of /etc: copied into the stage (one command), not bound
    symlinks: list[tuple[str, str]]  # (path, target)
    limits: Limits

    @classmethod
    def build(cls, workdir: str, extra: Sequence[str], limits: Limits) -> _View:
        read_only: list[str] = []
        symlinks: list[tuple[str, str]] = []
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                symlinks.append((path, os.readlink(path)))
            elif os.path.isdir(path):
                read_only.append(path)
        etc = [p for p in _ETC_ENTRIES if os.path.exists(p)]
        read_only += [p for p in (*etc, *_DATA_DIRS) if os.path.isdir(p)]
        for path in (*_python_dirs(), *extra):
            real = os.path.realpath(path)
            if os.path.exists(real) and not any(_within(real, seen) for seen in read_only):
                read_only.append(real)
        copies = [p for p in etc if not os.path.isdir(p)]
        return cls(workdir, read_only, copies, symlinks, limits)

    def stage_script(self, inner: Sequence[str], *, devices: bool, no_userns: bool = False) -> str:
        """A shell script that builds this view as a new read-only root, then starts ``inner``
        in it. With ``devices``, a few device nodes; otherwise all of /dev, for bubblewrap
        to build its own from (the code never sees the stage's). With ``no_userns``, the code
        (run in the stage's own user namespace) may make no further user namespace.

        Everything the code can write (the scratch directory, a copy of the one outside, and
        /tmp) is one tmpfs of ``disk_bytes`` and ``files``, mounted on /.old until it is bound
        in place. Every command is a process, so paths are grouped into as few as possible.
        """
        q = shlex.quote

        def under_root(paths: Sequence[str]) -> str:
            return " ".join(f'"$R"{q(p)}' for p in paths)

        # Paths in /tmp are bound after the private /tmp is mounted, over it.
        ordinary = [p for p in self.read_only if not p.startswith("/tmp/")]
        in_tmp = [p for p in self.read_only if p.startswith("/tmp/")]
        files = [p for p in ordinary if not os.path.isdir(p)]
        tmp_files = [p for p in in_tmp if not os.path.isdir(p)]
        nodes = [d for d in _DEVICES if devices and os.path.exists(d)]
        dirs = {"/tmp", "/proc", "/dev", "/.old", "/etc"}
        dirs.update(p for p in ordinary if p not in files)
        dirs.update(os.path.dirname(p) for p in files + nodes)
        tmp_dirs = {p for p in in_tmp if p not in tmp_files}
        tmp_dirs.update(os.path.dirname(p) for p in tmp_files)
        # The scratch directory's mount point: in the private /tmp, or in the read-only root.
        (tmp_dirs if _within(self.workdir, "/tmp") else dirs).add(self.workdir)
        quota = f"size={self.limits.disk_bytes},nr_inodes={self.limits.files}"
        lines = [
            "set -eu",
            f"R={q(self._stage_root())}",
            'mount -t tmpfs -o mode=755 sandbox "$R"',
            f"mkdir -p {under_root(sorted(dirs))}",
        ]
        if files + nodes:
            lines.append(f"touch {under_root(files + nodes)}")
        if self.copies:
            lines.append(f'cp -P --preserve=mode -t "$R/etc" {" ".join(q(p) for p in self.copies)}')
        lines += _symlink_lines(self.symlinks)
        lines += [
            f'mount -t tmpfs -o mode=755,nosuid,nodev,{quota} sandbox "$R/.old"',
            'mkdir -m 1777 "$R/.old/tmp"',
            f'cp -a {q(self.workdir)} "$R/.old/work"',
            'mount -o remount,bind,ro "$R"',
        ]
        for path in ordinary:
            lines.append(f'mount --bind -o ro,nosuid,nodev {q(path)} "$R"{q(path)}')
        lines.append('mount --bind "$R/.old/tmp" "$R/tmp"')
        lines.append(f"mkdir -p {under_root(sorted(tmp_dirs))}")
        if tmp_files:
            lines.append(f"touch {under_root(tmp_files)}")
        for path in in_tmp:
            lines.append(f'mount --bind -o ro,nosuid,nodev {q(path)} "$R"{q(path)}')
        for node in nodes:
            lines.append(f'mount --bind {q(node)} "$R"{q(node)}')
        if not devices:
            lines.append('mount --rbind /dev "$R/dev"')
        lines.append(f'mount --bind "$R/.old/work" "$R"{q(self.workdir)}')
        lines.append('umount "$R/.old"')
        # A proc of this stage's own PID namespace: the old root (and the host's /proc) goes.
        lines.append('mount -t proc proc "$R/proc"')
        if no_userns:
            lines.append('echo 0 > "$R/proc/sys/user/max_user_namespaces"')
        lines.append('cd "$R"; pivot_root . .old; umount -l /.old')
        lines.append(f"cd {q(self.workdir)}; unset OLDPWD")
        lines.append("exec " + " ".join(q(arg) for arg in inner) + ' "$@"')
        return "\n".join(lines)

    def _stage_root(self) -> str:
        # The new root is mounted over an empty directory beside the scratch directory.
        return os.path.join(os.path.dirname(self.workdir), "root")


def _symlink_lines(symlinks: Sequence[tuple[str, str]]) -> list[str]:
    """``ln -s`` commands, one for all links named like their target (merged /usr)."""
    q = shlex.quote
    at_root = [t for p, t in symlinks if os.path.dirname(p) == "/" and os.path.basename(t) == p[1:]]
    lines = [f'ln -s -t "$R/" {" ".join(q(t) for t in at_root)}'] if at_root else []
    for path, target in symlinks:
        if target not in at_root:
            lines.append(f'ln -s {q(target)} "$R"{q(path)}')
    return lines


def _python_dirs() -> list[str]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    return sorted(dirs)


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# --- a cgroup for the whole sandbox ------------------------------------------------------------

_CGROUP_PREFIX = "orchestrator-sandbox-"
_cgroup_names = itertools.count()


@dataclass(frozen=True)
class _Cgroup:
    """A cgroup v2 bounding the memory (swap included) and the processes of one run as a whole."""

    path: str

    @classmethod
    def create(cls, parent: str, limits: Limits) -> _Cgroup:
        group = cls(os.path.join(parent, f"{_CGROUP_PREFIX}{os.getpid()}-{next(_cgroup_names)}"))
        os.mkdir(group.path)
        try:
            group._write("memory.max", limits.memory_bytes)
            if os.path.exists(os.path.join(group.path, "memory.swap.max")):
                group._write("memory.swap.max", 0)
            group._write("pids.max", limits.processes)
        except BaseException:
            group.remove()
            raise
        return group

    def enter(self, command: Sequence[str]) -> list[str]:
        """``command``, started in this cgroup: its first process moves itself in (``0`` is the
        writer) before it becomes the command, so everything it starts is inside."""
        procs = os.path.join(self.path, "cgroup.procs")
        return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', procs, *command]

    def remove(self) -> str:
        """Kill what is still inside, remove the cgroup; which bound it saw reached, if any."""
        exceeded = ""
        if self._count("memory.events", "oom_kill") or self._count("memory.events", "oom"):
            exceeded = "memory"
        elif self._count("pids.events", "max"):
            exceeded = "processes"
        deadline = time.monotonic() + 5.0
        while True:
            self._kill()
            try:
                os.rmdir(self.path)
                return exceeded
            except FileNotFoundError:
                return exceeded
            except OSError as exc:  # EBUSY until the killed processes are gone
                if time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s: %s", self.path, exc)
                    return exceeded
            time.sleep(0.01)

    def _kill(self) -> None:
        try:
            self._write("cgroup.kill", 1)  # Linux 5.14
            return
        except OSError:
            pass
        with contextlib.suppress(OSError):
            with open(os.path.join(self.path, "cgroup.procs")) as procs:
                for pid in procs.read().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)

    def _write(self, name: str, value: int | str) -> None:
        with open(os.path.join(self.path, name), "w") as file:
            file.write(str(value))

    def _count(self, name: str, key: str) -> int:
        try:
            with open(os.path.join(self.path, name)) as file:
                fields = dict(line.split() for line in file if len(line.split()) == 2)
        except OSError:
            return 0
        return int(fields.get(key, 0))


@functools.cache
def _cgroup_parent() -> str | None:
    """Where this process can make a cgroup v2 that bounds a whole sandbox (as root, or in a
    delegated subtree), tried once; None where it cannot.

    At the root of the hierarchy, below it; elsewhere beside our own cgroup, and only if ours
    has no memory or process limit a sandbox there would escape. Cgroups left by processes
    that died are removed on the way.
    """
    try:
        mount, own = _cgroup2_mount(), _own_cgroup()
        if mount is None or own is None:
            return None
        here = os.path.normpath(os.path.join(mount, own.lstrip("/")))
        if own != "/" and not all(
            _read(here, f) in ("max", "") for f in ("memory.max", "pids.max")
        ):
            log.debug("no cgroup for the sandbox: %s has limits of its own", here)
            return None
        parent = here if own == "/" else os.path.dirname(here)
        if not {"memory", "pids"} <= set(_read(parent, "cgroup.controllers").split()):
            return None
        enabled = set(_read(parent, "cgroup.subtree_control").split())
        missing = {"memory", "pids"} - enabled
        if missing:
            with open(os.path.join(parent, "cgroup.subtree_control"), "w") as control:
                control.write(" ".join(f"+{name}" for name in sorted(missing)))
        _sweep(parent)
        probe = _Cgroup.create(parent, Limits())
        try:
            subprocess.run(probe.enter(["/bin/true"]), check=True, timeout=10, capture_output=True)
        finally:
            probe.remove()
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("no cgroup for the sandbox: %s", exc)
        return None
    return parent


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields, _, rest = line.partition(" - ")
            if rest.split()[:1] == ["cgroup2"]:
                return fields.split()[4]
    return None


def _own_cgroup() -> str | None:
    with open("/proc/self/cgroup") as groups:
        for line in groups:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as file:
            return file.read().strip()
    except FileNotFoundError:
        return ""


def _sweep(parent: str) -> None:
    """Remove the cgroups of sandboxes whose orchestrator process is gone (killed, say)."""
    for name in os.listdir(parent):
        if not name.startswith(_CGROUP_PREFIX):
            continue
        owner = name[len(_CGROUP_PREFIX) :].split("-")[0]
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            _Cgroup(os.path.join(parent, name)).remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    uid, gid = _nobody()
    for root, dirs, files in os.walk(workdir):
        for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            os.lchown(name, uid, gid)


# --- processes --------------------------------------------------------------------------------


def _minimal_env(home: str) -> dict[str, str]:
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


def _unsafe_limits(seconds: float, limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        for limit, value in (
            (resource.RLIMIT_CPU, int(seconds) + 1),
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
        ):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(limit, (value, value))

    return apply


async def run_tool(
    argv: Sequence[str], workdir: str, *, seconds: float, env: Mapping[str, str] | None = None
) -> Completed:
    """Run a trusted tool (ruff) that reads model output without executing it, unisolated."""
    env = env or _minimal_env(workdir)
    return await _execute(list(argv), cwd=workdir, env=env, seconds=seconds)


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


async def _execute(
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
