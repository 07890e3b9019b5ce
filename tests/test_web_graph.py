"""The task graph as the page draws it (``orchestrator.web.graph.layered``): columns from left to
right in the order work can happen, so every arrow points right, and no box hides another."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.web.graph import Drawing, Node, layered


def draw(dependencies: dict[str, list[str]]) -> Drawing:
    """The drawing of a plan given as task -> dependencies, in that (a plan's) order."""
    return layered(list(dependencies), dependencies, {t: "waiting" for t in dependencies})


def columns(drawing: Drawing) -> list[list[str]]:
    """The tasks of each column, from left to right."""
    by_x: dict[int, list[str]] = {}
    for node in drawing.nodes:
        by_x.setdefault(node.x, []).append(node.task_id)
    return [by_x[x] for x in sorted(by_x)]


def random_plan(tasks: int, seed: int) -> dict[str, list[str]]:
    """A plan as a planner writes one: each task needs up to three of the tasks before it."""
    rng = random.Random(seed)
    plan: dict[str, list[str]] = {}
    for index in range(tasks):
        earlier = list(plan)
        plan[f"t{index}"] = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 3)))
    return plan


def overlap(a: Node, b: Node, drawing: Drawing) -> bool:
    return (
        a.x < b.x + drawing.node_width
        and b.x < a.x + drawing.node_width
        and a.y < b.y + drawing.node_height
        and b.y < a.y + drawing.node_height
    )


@pytest.mark.parametrize("seed", range(5))
def test_every_arrow_goes_from_a_dependencys_right_side_to_its_tasks_left_side(seed):
    plan = random_plan(60, seed)
    drawing = draw(plan)
    place = {node.task_id: node for node in drawing.nodes}
    middle = drawing.node_height // 2

    expected = sorted(
        (place[d].x + drawing.node_width, place[d].y + middle, place[t].x, place[t].y + middle)
        for t, deps in plan.items()
        for d in deps
    )
    drawn = sorted((e.start_x, e.start_y, e.end_x, e.end_y) for e in drawing.edges)
    assert drawn == expected
    assert all(e.start_x < e.bend < e.end_x for e in drawing.edges)


@pytest.mark.parametrize("seed", range(5))
def test_no_two_boxes_overlap_and_every_box_is_inside_the_drawing(seed):
    drawing = draw(random_plan(60, seed))

    assert not [
        (a.task_id, b.task_id)
        for a, b in itertools.combinations(drawing.nodes, 2)
        if overlap(a, b, drawing)
    ]
    for node in drawing.nodes:
        assert 0 <= node.x and node.x + drawing.node_width <= drawing.width
        assert 0 <= node.y and node.y + drawing.node_height <= drawing.height


def test_a_chain_of_n_tasks_is_n_columns_in_its_order():
    chain = {f"step{i}": [f"step{i - 1}"] if i else [] for i in range(7)}

    assert columns(draw(chain)) == [[task] for task in chain]


def test_n_independent_tasks_are_one_column():
    drawing = draw({f"part{i}": [] for i in range(9)})

    assert columns(drawing) == [[f"part{i}" for i in range(9)]]
    assert drawing.edges == []


def test_a_task_stands_one_column_right_of_its_deepest_dependency():
    plan = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["d", "c"], "f": []}

    assert columns(draw(plan)) == [["a", "f"], ["b", "d"], ["c"], ["e"]]


def test_a_dependency_missing_from_the_plan_is_left_out():
    drawing = draw({"a": [], "b": ["a", "gone"], "c": ["gone"]})

    assert columns(drawing) == [["a", "c"], ["b"]]
    assert len(drawing.edges) == 1
    assert [n.task_id for n in drawing.nodes] == ["a", "b", "c"]


def test_each_box_carries_its_tasks_state():
    drawing = layered(["a", "b"], {"b": ["a"]}, {"a": "completed"})

    assert [(n.task_id, n.state) for n in drawing.nodes] == [("a", "completed"), ("b", "waiting")]


def test_an_empty_plan_is_an_empty_drawing():
    drawing = draw({})

    assert (drawing.nodes, drawing.edges) == ([], [])
    assert drawing.width >= 0 and drawing.height >= 0
