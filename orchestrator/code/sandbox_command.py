"""The isolated command line: the stage that builds what the code may see (a read-only root, one
quota'd tmpfs for all it may write, a fresh ``/proc``), the isolating tool (bubblewrap or
``unshare``) started in it, capabilities dropped and ``prlimit``'s limits set before the code.

Nothing here runs anything: ``isolated_command`` returns the argv that ``Sandbox.run`` starts.
Standard library only, like the rest of the sandbox (``sandbox``).
"""

from __future__ import annotations

import functools
import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.code.sandbox_limits import Limits

__all__ = ["BUBBLEWRAP", "UNSHARE", "drop_to_nobody", "isolated_command", "nobody"]

BUBBLEWRAP = "bubblewrap"
UNSHARE = "unshare"

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

# Drops every capability for good before the code starts (root in a user namespace has them).
_DROP_CAPS = [
    "setpriv",
    "--no-new-privs",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--",
]


def isolated_command(
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
    if isolation == BUBBLEWRAP and not as_root:
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
    drop = drop_to_nobody() if as_root else []
    if isolation == BUBBLEWRAP:
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
    script = view.stage_script(inner, devices=isolation == UNSHARE)
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


def drop_to_nobody() -> list[str]:
    uid, gid = nobody()
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def nobody() -> tuple[int, int]:
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
        # Paths in /tmp are bound after the private /tmp is mounted, over it.
        ordinary = [p for p in self.read_only if not p.startswith("/tmp/")]
        in_tmp = [p for p in self.read_only if p.startswith("/tmp/")]
        files = [p for p in ordinary if not os.path.isdir(p)]
        tmp_files = [p for p in in_tmp if not os.path.isdir(p)]
        nodes = [d for d in _DEVICES if devices and os.path.exists(d)]
        dirs = {"/tmp", "/proc", "/dev", "/.old", "/etc"} | {p for p in ordinary if p not in files}
        tmp_dirs = {p for p in in_tmp if p not in tmp_files}
        # The scratch directory's mount point: in the private /tmp, or in the read-only root.
        (tmp_dirs if _within(self.workdir, "/tmp") else dirs).add(self.workdir)
        lines = [
            "set -eu",
            f"R={shlex.quote(self._stage_root())}",
            'mount -t tmpfs -o mode=755 sandbox "$R"',
            *_mount_points(dirs, files + nodes),
            *self._writable(),
            *(_bind(path, read_only=True) for path in ordinary),
            'mount --bind "$R/.old/tmp" "$R/tmp"',
            *_mount_points(tmp_dirs, tmp_files),
            *(_bind(path, read_only=True) for path in in_tmp),
            *(_bind(node, read_only=False) for node in nodes),
        ]
        if not devices:
            lines.append('mount --rbind /dev "$R/dev"')
        return "\n".join([*lines, *self._enter(inner, no_userns)])

    def _writable(self) -> list[str]:
        """Commands that fill the new root (the copies of /etc, the symlinks), then mount the
        one tmpfs the code may write (its /tmp, a copy of the scratch directory) on /.old and
        make the root read-only."""
        q = shlex.quote
        quota = f"size={self.limits.disk_bytes},nr_inodes={self.limits.files}"
        lines = []
        if self.copies:
            lines.append(f'cp -P --preserve=mode -t "$R/etc" {" ".join(q(p) for p in self.copies)}')
        return [
            *lines,
            *_symlink_lines(self.symlinks),
            f'mount -t tmpfs -o mode=755,nosuid,nodev,{quota} sandbox "$R/.old"',
            'mkdir -m 1777 "$R/.old/tmp"',
            f'cp -a {q(self.workdir)} "$R/.old/work"',
            'mount -o remount,bind,ro "$R"',
        ]

    def _enter(self, inner: Sequence[str], no_userns: bool) -> list[str]:
        """Commands that bind the scratch directory's copy in place, mount a fresh /proc and
        start ``inner`` in the new root, the old one (and the host's /proc) gone."""
        q = shlex.quote
        lines = [f'mount --bind "$R/.old/work" "$R"{q(self.workdir)}', 'umount "$R/.old"']
        # A proc of this stage's own PID namespace: the old root (and the host's /proc) goes.
        lines.append('mount -t proc proc "$R/proc"')
        if no_userns:
            lines.append('echo 0 > "$R/proc/sys/user/max_user_namespaces"')
        lines.append('cd "$R"; pivot_root . .old; umount -l /.old')
        lines.append(f"cd {q(self.workdir)}; unset OLDPWD")
        lines.append("exec " + " ".join(q(arg) for arg in inner) + ' "$@"')
        return lines

    def _stage_root(self) -> str:
        # The new root is mounted over an empty directory beside the scratch directory.
        return os.path.join(os.path.dirname(self.workdir), "root")


def _mount_points(dirs: set[str], files: Sequence[str]) -> list[str]:
    """Commands that make mount points under the new root: ``dirs``, ``files`` and their
    directories."""
    every = dirs | {os.path.dirname(p) for p in files}
    if not every:  # a scratch directory outside /tmp leaves none to make in the private /tmp
        return []
    lines = [f"mkdir -p {_under_root(sorted(every))}"]
    if files:
        lines.append(f"touch {_under_root(files)}")
    return lines


def _under_root(paths: Sequence[str]) -> str:
    return " ".join(f'"$R"{shlex.quote(p)}' for p in paths)


def _bind(path: str, *, read_only: bool) -> str:
    """The command that binds ``path`` at the same path in the new root."""
    options = "-o ro,nosuid,nodev " if read_only else ""
    q = shlex.quote
    return f'mount --bind {options}{q(path)} "$R"{q(path)}'


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
