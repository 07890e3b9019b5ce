"""The resource limits of a sandboxed run: the ``Limits`` (and those a machine's owner sets in the
environment), the per-process limits of a run without isolation, and the cgroup v2 that bounds a
whole sandbox's memory and processes where this process can make one.

Standard library only, like the rest of the sandbox (``sandbox``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "LIMIT_VARIABLES",
    "Cgroup",
    "Limits",
    "cgroup_parent",
    "configured_limits",
    "mib",
    "unsafe_limits",
]

log = logging.getLogger("orchestrator.code.sandbox")  # the sandbox's: its messages read as one


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
        disk = f"disk {mib(self.disk_bytes)} and {self.files} files"
        if whole:
            return f"memory {mib(memory)} in all (cgroup), {processes} processes, {disk}"
        return f"memory {mib(memory)} per process x {processes} processes (no cgroup), {disk}"


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
                ConfigError,  # here: the sandbox loads only the standard library
            )

            raise ConfigError(f"{variable}={text!r}: not a whole number above zero")
        chosen[name] = int(text) * unit
    return Limits(**chosen)


def mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB"


def unsafe_limits(seconds: float, limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        for limit, value in (
            (resource.RLIMIT_CPU, int(seconds) + 1),
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
        ):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(limit, (value, value))

    return apply


# --- a cgroup for the whole sandbox ------------------------------------------------------------

_CGROUP_PREFIX = "orchestrator-sandbox-"
_cgroup_names = itertools.count()


@dataclass(frozen=True)
class Cgroup:
    """A cgroup v2 bounding the memory (swap included) and the processes of one run as a whole."""

    path: str

    @classmethod
    def create(cls, parent: str, limits: Limits) -> Cgroup:
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
def cgroup_parent() -> str | None:
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
        probe = Cgroup.create(parent, Limits())
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
            Cgroup(os.path.join(parent, name)).remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
