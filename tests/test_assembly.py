"""The project tree: which names a model may give its files, how two tasks naming one path are
settled, and how the tree is written next to the per-task files without ever leaving it."""

from __future__ import annotations

import json
import os

import pytest

from orchestrator.code.assembly import UnsafePath, assemble, named_files, tree_path
from orchestrator.code.output_writer import OutputError, write_outputs
from orchestrator.money.budget import Budget
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
)


@pytest.mark.parametrize(
    "name",
    ["app.py", "ratelimit/bucket.py", "./pkg/mod.py", "src/pkg/__init__.py", "docs/usage.md",
     "pyproject.toml", "LICENSE", "tests/test_x.py", "test/test_x.py", "pkg/json.py"],
)  # fmt: skip
def test_a_relative_name_of_a_known_kind_is_taken_normalised(name):
    assert tree_path(name) == name.removeprefix("./")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../up.py", "leaves the project directory"),
        ("a/../../up.py", "leaves the project directory"),
        ("/etc/cron.d/x.py", "absolute"),
        ("C:/x.py", "absolute"),
        ("a\\b.py", "absolute"),
        (".git/hooks/pre-commit.py", "hidden"),
        (".github/workflows/ci.yml", "hidden"),
        ("pkg/.env.py", "hidden"),
        ("conftest.py", "reserved"),
        ("tests/conftest.py", "reserved"),
        ("pytest.py", "test runner"),
        ("_pytest/x.py", "test runner"),
        ("json.py", "standard-library"),
        ("src/os.py", "standard-library"),
        ("email/__init__.py", "standard-library"),
        ("run.exe", "known kind"),
        ("Makefile", "known kind"),
        ("x y.py", "characters"),
        ("a/" * 9 + "deep.py", "deeper"),
        ("pkg/__pycache__/m.py", "__pycache__"),
        ("", "empty"),
    ],
)
def test_names_that_could_escape_or_change_how_tests_are_judged_are_refused(name, why):
    with pytest.raises(UnsafePath, match=why):
        tree_path(name)


def test_a_code_answer_names_each_block_and_the_marker_line_is_not_part_of_the_file():
    answer = (
        "Here it is.\n\n```python\n# file: pkg/core.py\nX = 1\n```\n\n"
        "```toml\n# file: pyproject.toml\n[project]\nname = 'pkg'\n```\n\n"
        "```python\nprint('no name')\n```\n\n```bash\npip install something\n```\n"
    )

    named = named_files(TaskType.CODE_GEN, answer)

    assert [(f.path, f.content) for f in named.files] == [
        ("pkg/core.py", "X = 1\n"),
        ("pyproject.toml", "[project]\nname = 'pkg'\n"),
    ]
    assert named.unnamed == 1  # the unnamed Python block; shell snippets are not files


@pytest.mark.parametrize(
    "answer",
    ["<!-- file: README.md -->\n# Rate limiter\n\nUse it.\n",
     "```markdown\n<!-- file: README.md -->\n# Rate limiter\n\nUse it.\n```\n"],
    ids=["plain", "fenced"],
)  # fmt: skip
def test_a_documentation_answer_that_names_its_file_is_that_file(answer):
    named = named_files(TaskType.WRITING, answer)

    assert [(f.path, f.content) for f in named.files] == [
        ("README.md", "# Rate limiter\n\nUse it.\n")
    ]


def test_a_prose_answer_may_name_only_a_document_and_one_naming_nothing_is_not_in_the_tree():
    assert named_files(TaskType.WRITING, "<!-- file: evil.py -->\nimport os\n").refused == (
        ("evil.py", "this kind of answer may name only .md, .rst, .txt files"),
    )
    assert named_files(TaskType.SUMMARIZE, "Just a summary.").files == ()
    assert named_files(TaskType.DATA_EXTRACT, '{"a": 1}').files == ()


def result(task_id, output, status=TaskStatus.COMPLETED):
    return TaskResult(task_id, output=output, status=status)


def code(*pairs):
    return "\n\n".join(f"```python\n# file: {path}\n{body}\n```" for path, body in pairs)


def test_only_completed_tasks_make_the_tree():
    tasks = {t: Task(t, TaskType.CODE_GEN, "p") for t in ("done", "degraded", "failed")}
    results = {
        "done": result("done", code(("a.py", "A = 1"))),
        "degraded": result("degraded", code(("b.py", "B = 1")), TaskStatus.DEGRADED),
        "failed": result("failed", "", TaskStatus.FAILED),
    }

    tree = assemble(tasks, list(tasks), results)

    assert list(tree.files) == ["a.py"]


def test_a_path_that_is_a_file_for_one_task_and_a_directory_for_another_is_a_conflict():
    tasks = {"one": Task("one", TaskType.CODE_GEN, "p"), "two": Task("two", TaskType.CODE_GEN, "p")}
    results = {
        "one": result("one", code(("pkg.py", "X = 1"))),
        "two": result("two", code(("pkg.py/inner.py", "Y = 1"), ("other.py", "Z = 1"))),
    }

    tree = assemble(tasks, ["one", "two"], results)

    assert sorted(tree.files) == ["other.py", "pkg.py"]
    assert [(c.path, c.kept, c.dropped) for c in tree.conflicts] == [
        ("pkg.py/inner.py", "one", "two")
    ]


def test_paths_differing_only_in_case_are_one_path_and_a_conflict():
    tasks = {
        "one": Task("one", TaskType.CODE_GEN, "p"),
        "two": Task("two", TaskType.CODE_GEN, "p"),
        "revises": Task("revises", TaskType.CODE_GEN, "p", ["one"]),
    }
    results = {
        "one": result("one", code(("calc.py", "X = 1"), ("pkg/Util.py", "U = 1"))),
        "two": result(
            "two", code(("Calc.py", "X = 1"), ("PKG/util.py", "U = 2"), ("PKG/b.py", ""))
        ),
        # Depending on the file's writer does not make another spelling of it a revision.
        "revises": result("revises", code(("CALC.py", "X = 3"), ("ok.py", "Y = 1"))),
    }

    tree = assemble(tasks, ["one", "two", "revises"], results)

    assert sorted(tree.files) == ["calc.py", "ok.py", "pkg/Util.py"]
    assert {(c.path, c.kept, c.dropped, c.reason) for c in tree.conflicts} == {
        ("Calc.py", "one", "two",
         "Calc.py and calc.py of task one differ only in case: one path on macOS and Windows"),
        ("PKG/util.py", "one", "two",
         "PKG and pkg (in pkg/Util.py) of task one differ only in case: one path on macOS and "
         "Windows"),
        ("PKG/b.py", "one", "two",
         "PKG and pkg (in pkg/Util.py) of task one differ only in case: one path on macOS and "
         "Windows"),
        ("CALC.py", "one", "revises",
         "CALC.py and calc.py of task one differ only in case: one path on macOS and Windows"),
    }  # fmt: skip


def test_one_task_naming_two_spellings_of_a_file_keeps_the_first_and_reports_the_other():
    tasks = {"one": Task("one", TaskType.CODE_GEN, "p")}
    answer = code(("util.py", "X = 1"), ("Util.py", "X = 2"))

    tree = assemble(tasks, ["one"], {"one": result("one", answer)})

    assert list(tree.files) == ["util.py"]
    assert [(c.path, c.kept, c.dropped) for c in tree.conflicts] == [("Util.py", "one", "one")]


def test_the_same_file_written_twice_alike_is_no_conflict():
    tasks = {"one": Task("one", TaskType.CODE_GEN, "p"), "two": Task("two", TaskType.CODE_GEN, "p")}
    same = code(("util.py", "X = 1"))

    tree = assemble(tasks, ["one", "two"], {"one": result("one", same), "two": result("two", same)})

    assert tree.conflicts == [] and tree.files["util.py"].task_id == "one"


def finished_state(outputs: dict[str, str]) -> ProjectState:
    tasks = {t: Task(t, TaskType.CODE_GEN, f"[{t}] p") for t in outputs}
    state = ProjectState("proj", "d", "c", Budget(max_usd=1.0), status=ProjectStatus.SUCCESS)
    state.tasks, state.execution_order = tasks, list(tasks)
    state.results = {t: result(t, output) for t, output in outputs.items()}
    return state


def test_a_link_planted_in_the_tree_is_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "project").mkdir(parents=True)
    (out / "project" / "lib").symlink_to(outside, target_is_directory=True)
    state = finished_state({"lib": code(("lib/x.py", "X = 1"))})

    with pytest.raises(OutputError, match="is a link or a file"):
        write_outputs(state, out)

    assert list(outside.iterdir()) == []
    with pytest.raises(OutputError, match="is a link or a file"):
        write_outputs(state, out, overwrite=True)  # not even when asked to overwrite
    assert list(outside.iterdir()) == []


def test_a_tree_file_gone_from_a_later_run_is_removed_with_its_empty_directories(tmp_path):
    out = tmp_path / "out"
    write_outputs(finished_state({"lib": code(("pkg/deep/a.py", "A = 1"), ("b.py", "B = 1"))}), out)
    assert (out / "project" / "pkg" / "deep" / "a.py").is_file()

    write_outputs(finished_state({"lib": code(("b.py", "B = 2"))}), out)

    assert sorted(p.name for p in (out / "project").iterdir()) == ["b.py"]
    assert (out / "project" / "b.py").read_text() == "B = 2\n"
    manifest = json.loads((out / ".orchestrator-manifest.json").read_text())
    assert "project/b.py" in manifest["files"] and "project/pkg/deep/a.py" not in manifest["files"]


def test_a_tree_file_edited_by_hand_stops_the_next_write_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    write_outputs(finished_state({"lib": code(("b.py", "B = 1"))}), out)
    (out / "project" / "b.py").write_text("B = 'mine'\n")

    with pytest.raises(OutputError, match=r"project/b\.py"):
        write_outputs(finished_state({"lib": code(("b.py", "B = 2"))}), out)
    assert (out / "project" / "b.py").read_text() == "B = 'mine'\n"

    write_outputs(finished_state({"lib": code(("b.py", "B = 2"))}), out, overwrite=True)
    assert (out / "project" / "b.py").read_text() == "B = 2\n"


def test_the_tree_goes_under_the_name_the_user_gives(tmp_path):
    out = tmp_path / "out"
    write_outputs(finished_state({"lib": code(("b.py", "B = 1"))}), out, tree_name="ratelimiter")

    assert (out / "ratelimiter" / "b.py").is_file() and not (out / "project").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["project_tree"]["directory"] == "ratelimiter"
    with pytest.raises(OutputError, match="one plain name"):
        write_outputs(finished_state({}), out, tree_name="../elsewhere")
    assert not os.path.exists(tmp_path / "elsewhere")
