"""Running untrusted code: the one place that starts a process executing model-written code.

On Linux the code runs in new user, PID, network, mount and IPC namespaces, built by an existing
isolation tool: bubblewrap (``bwrap``) when it works, otherwise util-linux ``unshare``. Inside it
sees a read-only view of the system and of this Python environment, one writable scratch
directory (at the same path as outside), a private ``/tmp``, a fresh ``/proc`` holding only its
own processes, no network but its own loopback, an environment with none of the user's
variables, no inherited file descriptor but stdio and an optional result channel, and resource
limits (CPU seconds, address space, processes, file size). The whole tree is killed at its time
limit. Run as root, the code runs as ``nobody``: root is exempt from the process limit.

Where no isolation can be set up, ``detect()`` returns None and callers must not run the code,
unless the user asked for ``unsafe()``, which runs it with a scrubbed environment only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pwd
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
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
    """Resource limits of one sandboxed run; CPU seconds follow the run's time limit."""

    memory_bytes: int = 2 * 1024**3
    processes: int = 128
    file_bytes: int = 64 * 1024**2
    tmp_bytes: int = 256 * 1024**2


@dataclass(frozen=True)
class Completed:
    returncode: int | None  # None when the run was stopped at its time limit
    output: str  # stdout and stderr interleaved; the middle is dropped beyond OUTPUT_CAP
    channel: bytes = b""  # what the code wrote to the result channel, if one was asked for

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
    ) -> Completed:
        """Run ``argv`` in ``workdir`` (writable); stop everything at ``seconds`` or on
        cancellation. ``read_only`` adds directories the program needs (a tool's own tree).

        With ``channel``, the placeholder ``{channel}`` in ``argv`` becomes the number of an
        inherited pipe whose contents come back in ``Completed.channel``. Raises OSError if the
        program cannot be started.
        """
        seconds = float(seconds)
        read_fd, write_fd = os.pipe() if channel else (-1, -1)
        argv = [arg.replace("{channel}", str(write_fd)) for arg in argv]
        try:
            command = list(argv)
            if self.isolated:
                command = await asyncio.to_thread(self._prepare, argv, workdir, seconds, read_only)
        except BaseException:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        try:
            # _execute owns (and closes) the write end from here on.
            return await _execute(
                command,
                cwd=workdir,
                env=_minimal_env("/tmp" if self.isolated else workdir),
                seconds=seconds,
                pass_fds=(write_fd,) if channel else (),
                channel_fd=read_fd if channel else None,
                preexec_fn=None if self.isolated else _unsafe_limits(seconds, self.limits),
            )
        finally:
            if read_fd >= 0:
                os.close(read_fd)

    def _prepare(
        self, argv: list[str], workdir: str, seconds: float, read_only: Sequence[str]
    ) -> list[str]:
        """The isolated command line, with ``workdir`` handed over to whoever runs the code."""
        hand_over(workdir)
        return _isolated_command(self.isolation, argv, workdir, seconds, self.limits, read_only)


def unsafe(limits: Limits | None = None) -> Sandbox:
    """No isolation: the user opted out. A scrubbed environment and limits, nothing more."""
    return Sandbox(_UNSAFE, isolated=False, limits=limits or Limits())


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
        problem = await why_unavailable(isolation)
        if problem is None:
            log.info("validators run model code in a %s sandbox", isolation)
            return Sandbox(isolation)
        log.info("%s sandbox unavailable: %s", isolation, problem)
    return None


_problems: dict[str, str | None] = {}


async def why_unavailable(isolation: str) -> str | None:
    """Why ``isolation`` ("bubblewrap" or "unshare") cannot run code here, or None if it can.

    Tried once per process: a small Python program is run through it.
    """
    if isolation not in _problems:
        _problems[isolation] = await _probe(isolation)
    return _problems[isolation]


async def _probe(isolation: str) -> str | None:
    if not sys.platform.startswith("linux"):
        return "namespaces are a Linux feature"
    needed = ["bwrap"] if isolation == _BUBBLEWRAP else []
    needed += ["unshare", "prlimit", "setpriv"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    marker = "sandbox-probe-ok"
    try:
        async with scratch_dir() as workdir:
            done = await Sandbox(isolation).run(
                [sys.executable, "-I", "-S", "-c", f"print({marker!r})"], workdir, seconds=20
            )
    except OSError as exc:
        return str(exc)
    if done.returncode == 0 and marker in done.output:
        return None
    return done.lines[-1] if done.lines else f"exit status {done.returncode}"


# --- the isolated command ---------------------------------------------------------------------


def _isolated_command(
    isolation: str,
    argv: Sequence[str],
    workdir: str,
    seconds: float,
    limits: Limits,
    read_only: Sequence[str],
) -> list[str]:
    limited = [*_prlimit(seconds, limits), "--", *argv]
    view = _View.build(workdir, read_only, limits.tmp_bytes)
    as_root = os.geteuid() == 0
    if isolation == _BUBBLEWRAP and not as_root:
        return ["bwrap", *_bwrap_isolation(), *view.bwrap_args(), "--", *limited]
    # Root (so that the code can run as nobody) and the unshare path first build the view in a
    # private mount namespace, then start the isolating tool inside it.
    drop = _drop_to_nobody() if as_root else []
    if isolation == _BUBBLEWRAP:
        inner = [
            *drop,
            "bwrap",
            *_bwrap_isolation(),
            *("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"),
            *("--bind", "/tmp", "/tmp", "--bind", workdir, workdir, "--chdir", workdir),
            "--",
            *limited,
        ]
    else:
        # lo is brought up so that the code has its own loopback; without `ip` it stays down.
        loopback_then_drop = (
            "ip link set lo up 2>/dev/null || true; "
            'exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"'
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


def _bwrap_isolation() -> list[str]:
    return [
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        *(["--disable-userns"] if _bwrap_can_disable_userns() else []),
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


def _prlimit(seconds: float, limits: Limits) -> list[str]:
    return [
        "prlimit",
        f"--cpu={int(seconds) + 1}",
        f"--as={limits.memory_bytes}",
        f"--nproc={limits.processes}",
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
    tmp_bytes: int

    @classmethod
    def build(cls, workdir: str, extra: Sequence[str], tmp_bytes: int) -> _View:
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
        return cls(workdir, read_only, copies, symlinks, tmp_bytes)

    def bwrap_args(self) -> list[str]:
        args: list[str] = []
        for path in [*self.read_only, *self.copies]:
            if not path.startswith("/tmp/"):
                args += ["--ro-bind", path, path]
        for path, target in self.symlinks:
            args += ["--symlink", target, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.tmp_bytes), "--tmpfs", "/tmp"]
        for path in self.read_only:
            if path.startswith("/tmp/"):  # e.g. a virtual environment in /tmp: over the tmpfs
                args += ["--ro-bind", path, path]
        args += ["--bind", self.workdir, self.workdir, "--chdir", self.workdir]
        # Last: the root itself (mount points included) becomes read-only.
        return [*args, "--remount-ro", "/"]

    def stage_script(self, inner: Sequence[str], *, devices: bool) -> str:
        """A shell script that builds this view as a new read-only root, then starts ``inner``
        in it. With ``devices``, a few device nodes; otherwise all of /dev, for bubblewrap
        to build its own from (the code never sees the stage's).

        Every command is a process, so paths are grouped into as few commands as possible.
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
        tmp_dirs = {p for p in in_tmp if p not in tmp_files} | {self.workdir}
        tmp_dirs.update(os.path.dirname(p) for p in tmp_files)
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
        lines.append('mount -o remount,bind,ro "$R"')
        for path in ordinary:
            lines.append(f'mount --bind -o ro,nosuid,nodev {q(path)} "$R"{q(path)}')
        lines.append(f'mount -t tmpfs -o mode=1777,size={self.tmp_bytes} sandbox "$R/tmp"')
        lines.append(f"mkdir -p {under_root(sorted(tmp_dirs))}")
        if tmp_files:
            lines.append(f"touch {under_root(tmp_files)}")
        for path in in_tmp:
            lines.append(f'mount --bind -o ro,nosuid,nodev {q(path)} "$R"{q(path)}')
        for node in nodes:
            lines.append(f'mount --bind {q(node)} "$R"{q(node)}')
        if not devices:
            lines.append('mount --rbind /dev "$R/dev"')
        lines.append(f'mount --bind {q(self.workdir)} "$R"{q(self.workdir)}')
        # A proc of this stage's own PID namespace: the old root (and the host's /proc) goes.
        lines.append('mount -t proc proc "$R/proc"')
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


def _unsafe_limits(seconds: float, limits: Limits):
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
    preexec_fn=None,
) -> Completed:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
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
