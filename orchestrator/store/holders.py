"""Who holds a project in the state store: a run's owner name, whether a holder still lives, and
the claim, renewal and release of the project row's lease (``store.lease.Lease`` keeps one).

An owner is ``host:pid:token``. A holder on this machine keeps its project while its process
lives, whatever its lease says; a holder elsewhere keeps it until its lease runs out.
"""

from __future__ import annotations

import os
import secrets
import socket

from orchestrator.store.base import Store


class Holders:
    """The lease columns of the projects in one store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def claim(self, project_id: str, owner: str, lease_seconds: float) -> str | None:
        """Take the project for one run: None when it is ours now, else who holds it.

        A holder on this machine keeps the project while its process lives, whatever its lease
        says (a clock jump must not hand a live run's project to another), and loses it once
        gone (``kill -9``); a holder elsewhere keeps it until its lease runs out.
        """
        rows = await self._store.run(
            "SELECT owner, lease_until FROM projects WHERE id = ?", (project_id,)
        )
        if not rows:
            return "nobody: the project is unknown"
        holder: str | None
        lease_until: float  # set whenever holder is
        holder, lease_until = rows[0]
        now = await self._store.clock()
        if holder is None or holder == owner or not self.alive(holder, lease_until, now):
            # Compare-and-set on the holder seen, so two claimants cannot both win.
            taken = await self._store.run(
                "UPDATE projects SET owner = ?, lease_until = ? WHERE id = ?"
                " AND owner IS ? RETURNING id",
                (owner, now + lease_seconds, project_id, holder),
            )
            if taken:
                return None
            return await self._holder(project_id)
        return holder

    async def held(self, project_id: str) -> bool:
        """Whether a live run holds the project now (its lease, renewed as it runs)."""
        return await self.lease(project_id) is not None

    async def lease(self, project_id: str) -> tuple[str, float, float] | None:
        """While a live run holds the project: its holder, when its lease ends and the store's
        clock now (seconds since the epoch); None when no run holds it. A renewal moves the
        end, another run's claim changes the holder."""
        rows = await self._store.run(
            "SELECT owner, lease_until FROM projects WHERE id = ?", (project_id,)
        )
        if not rows or rows[0][0] is None:
            return None
        holder, lease_until = rows[0]
        now = await self._store.clock()
        if not self.alive(holder, float(lease_until), now):
            return None
        return str(holder), float(lease_until), now

    async def live(self) -> dict[str, str]:
        """The projects a live run holds now, each with its holder: one read, however many
        projects the store has."""
        rows = await self._store.run(
            "SELECT id, owner, lease_until FROM projects WHERE owner IS NOT NULL"
        )
        if not rows:
            return {}
        now = await self._store.clock()
        return {
            str(project_id): str(owner)
            for project_id, owner, lease_until in rows
            if self.alive(owner, float(lease_until), now)
        }

    async def _holder(self, project_id: str) -> str:
        rows = await self._store.run("SELECT owner FROM projects WHERE id = ?", (project_id,))
        return (rows[0][0] if rows else None) or "another run"

    async def renew(self, project_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend our lease; False when the project is no longer ours."""
        rows = await self._store.run(
            "UPDATE projects SET lease_until = ? WHERE id = ? AND owner = ? RETURNING id",
            (await self._store.clock() + lease_seconds, project_id, owner),
        )
        return bool(rows)

    async def release(self, project_id: str, owner: str) -> None:
        await self._store.run(
            "UPDATE projects SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
            (project_id, owner),
        )

    def alive(self, holder: str, lease_until: float, now: float) -> bool:
        """Whether ``holder`` still counts as holding its project: while its process lives, on
        this machine where the store can tell; elsewhere until its lease runs out."""
        if self._store.local_liveness and _on_this_host(holder):
            return _owner_alive(holder)
        return lease_until >= now


def new_owner() -> str:
    """Who runs a project: this machine, this process, and this run within it."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def shown_owner(owner: str) -> str:
    """Who holds a project, for a person: its machine and process, without the run's token."""
    host, pid = _host_and_pid(owner)
    return f"{host} (pid {pid})" if pid else host


def _host_and_pid(owner: str) -> tuple[str, str]:
    """An owner's machine and process id (``host:pid:token``), as written."""
    host, _, rest = owner.partition(":")
    return host, rest.partition(":")[0]


def _on_this_host(owner: str) -> bool:
    host, pid = _host_and_pid(owner)
    return host == socket.gethostname() and pid.isdigit()


def _owner_alive(owner: str) -> bool:
    """Whether the process of ``owner``, on this machine, still runs."""
    pid_text = _host_and_pid(owner)[1]
    if not _on_this_host(owner):
        return True  # another machine: only its lease can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
