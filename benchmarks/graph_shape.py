"""The shape of a task graph, for the benchmarks' bounds: its depth and its width."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.run.taskgraph import execution_order
from orchestrator.run.tasks import Task


def critical_path_length(tasks: Mapping[str, Task]) -> int:
    """The task count of the longest dependency chain."""
    depth: dict[str, int] = {}
    for tid in execution_order(tasks):
        depth[tid] = 1 + max((depth[d] for d in tasks[tid].dependencies), default=0)
    return max(depth.values(), default=0)


def width(tasks: Mapping[str, Task]) -> int:
    """The most tasks that can run at the same time: the size of a maximum antichain.

    Exact, not the per-depth-level approximation (which undercounts when a long chain runs beside
    short ones): by Dilworth's theorem it is the task count minus a maximum matching in the
    bipartite "must finish before" graph of the transitive closure.
    """
    order = execution_order(tasks)
    ancestors: dict[str, set[str]] = {}
    for tid in order:
        found: set[str] = set()
        for dep in tasks[tid].dependencies:
            found.add(dep)
            found |= ancestors[dep]
        ancestors[tid] = found
    later: dict[str, list[str]] = {tid: [] for tid in order}
    for tid in order:
        for ancestor in ancestors[tid]:
            later[ancestor].append(tid)

    matched_to: dict[str, str] = {}  # right-side task -> left-side task that precedes it

    def augment(left: str, visited: set[str]) -> bool:
        for right in later[left]:
            if right in visited:
                continue
            visited.add(right)
            if right not in matched_to or augment(matched_to[right], visited):
                matched_to[right] = left
                return True
        return False

    matching = sum(1 for tid in order if augment(tid, set()))
    return len(order) - matching
