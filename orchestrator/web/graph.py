"""A task graph drawn in layers: each task one column to the right of its deepest dependency,
so every edge points right and a chain reads left to right."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NODE_WIDTH = 168
NODE_HEIGHT = 34
COLUMN_GAP = 56
ROW_GAP = 14
MARGIN = 8


@dataclass(frozen=True)
class Node:
    task_id: str
    state: str
    x: int
    y: int


@dataclass(frozen=True)
class Edge:
    """From the right side of a dependency to the left side of the task that needs it."""

    start_x: int
    start_y: int
    end_x: int
    end_y: int

    @property
    def bend(self) -> int:
        """Where the curve's control points sit: half-way across the gap."""
        return (self.start_x + self.end_x) // 2


@dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def layered(
    order: Sequence[str], dependencies: Mapping[str, Sequence[str]], states: Mapping[str, str]
) -> Drawing:
    """The drawing of the tasks ``order`` lists (dependencies before the tasks that need them,
    as a plan keeps them); a dependency the plan does not have is left out."""
    column: dict[str, int] = {}
    rows_in: dict[int, int] = {}
    places: dict[str, tuple[int, int]] = {}
    for task_id in order:
        known = [d for d in dependencies.get(task_id, ()) if d in column]
        column[task_id] = 1 + max((column[d] for d in known), default=-1)
        row = rows_in.get(column[task_id], 0)
        rows_in[column[task_id]] = row + 1
        places[task_id] = (
            MARGIN + column[task_id] * (NODE_WIDTH + COLUMN_GAP),
            MARGIN + row * (NODE_HEIGHT + ROW_GAP),
        )
    nodes = [Node(t, states.get(t, "waiting"), *places[t]) for t in order]
    middle = NODE_HEIGHT // 2
    edges = [
        Edge(places[d][0] + NODE_WIDTH, places[d][1] + middle, x, y + middle)
        for t, (x, y) in places.items()
        for d in dependencies.get(t, ())
        if d in places
    ]
    columns = max(column.values(), default=-1) + 1
    rows = max(rows_in.values(), default=0)
    return Drawing(
        width=2 * MARGIN + max(columns * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP, 0),
        height=2 * MARGIN + max(rows * (NODE_HEIGHT + ROW_GAP) - ROW_GAP, 0),
        nodes=nodes,
        edges=edges,
    )
