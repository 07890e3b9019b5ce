"""The --output-dir layout as a user relies on it: file names, contents, summary.json, README.md."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import TERMINAL_CONTROLS

from orchestrator import Catalog
from orchestrator.code.output_writer import (
    MANIFEST_NAME,
    OutputError,
    check_output_dir,
    strip_fences,
    write_outputs,
)
from orchestrator.money.budget import Budget
from orchestrator.money.units import usd_to_nanos
from orchestrator.run.tasks import (
    ProjectState,
    ProjectStatus,
    Task,
    TaskResult,
    TaskStatus,
    TaskType,
    ValidatorResult,
)

CATALOG = Catalog.load(env={})
GPT = CATALOG.resolve("gpt-4o")
SONNET = CATALOG.resolve("claude-sonnet-5")

CODE_ANSWER = """Here is the function you asked for.

```python
def add(a: int, b: int) -> int:
    return a + b
```

It handles integers only.
"""
REVIEW_ANSWER = "## Review\n\n- `add` has no docstring.\n- Types look right."
EXTRACT_ANSWER = 'Found these:\n\n```json\n{"name": "Zoë", "tags": ["a", "b"], "n": 2}\n```\n'

# A cell boundary in a README row is a pipe not escaped by a backslash.
CELL_BOUNDARY = re.compile(r"(?<!\\)\|")
COLUMNS = 11


def make_task(task_id: str, kind: TaskType, prompt: str = "do it", deps=()) -> Task:
    return Task(id=task_id, type=kind, prompt=prompt, dependencies=list(deps))


def make_result(task_id: str, output: str, **fields) -> TaskResult:
    defaults = {
        "score": 0.9,
        "status": TaskStatus.COMPLETED,
        "model_used": GPT,
        "reviewer_model": SONNET,
        "iterations": 2,
        "cost_usd": 0.0125,
        "deterministic_check_passed": True,
        "validator_results": [ValidatorResult("python_syntax", True)],
        "score_history": [0.7, 0.9],
    }
    return TaskResult(task_id=task_id, output=output, **{**defaults, **fields})


def make_state(tasks: list[Task], results: list[TaskResult], order=None) -> ProjectState:
    budget = Budget(max_usd=8.0, max_time_seconds=60)
    budget.charge(usd_to_nanos(1.5), "generation")
    budget.charge(usd_to_nanos(0.25), "evaluation")
    return ProjectState(
        project_id="proj-42",
        project_description="Build an adder",
        success_criteria="add() works",
        budget=budget,
        status=ProjectStatus.SUCCESS,
        tasks={t.id: t for t in tasks},
        execution_order=list(order) if order is not None else [t.id for t in tasks],
        results={r.task_id: r for r in results},
        api_health={"openai": True, "anthropic": False},
        quality_threshold=0.8,
    )


def design_state() -> ProjectState:
    """The three tasks of the design document's example layout."""
    return make_state(
        [
            make_task("task_001", TaskType.CODE_GEN, "Write add()"),
            make_task("task_002", TaskType.CODE_REVIEW, "Review add()", ["task_001"]),
            make_task("task_003", TaskType.DATA_EXTRACT, "Extract the people"),
        ],
        [
            make_result("task_001", CODE_ANSWER),
            make_result("task_002", REVIEW_ANSWER, validator_results=[]),
            make_result("task_003", EXTRACT_ANSWER, validator_results=[]),
        ],
    )


def tree(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


def table_rows(readme: str) -> list[list[str]]:
    """The README table's body rows, each split into its cells."""
    lines = [line for line in readme.splitlines() if line.startswith("|")]
    return [CELL_BOUNDARY.split(line)[1:-1] for line in lines[2:]]


# --- layout and file contents ----------------------------------------------------------------


def test_layout_matches_the_design_document(tmp_path):
    out = tmp_path / "results" / "nested"

    written = write_outputs(design_state(), out)

    names = [
        "task_001_code_generation.py",
        "task_002_code_review.md",
        "task_003_data_extraction.json",
        "summary.json",
        "README.md",
    ]
    assert written == [out.resolve() / name for name in names]
    # Beside them, the manifest of what was written (so a later write never loses a user's file).
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MANIFEST_NAME])
    for path in written:
        assert path.read_text(encoding="utf-8").endswith("\n")

    code = (out / names[0]).read_text(encoding="utf-8")
    assert "```" not in code and "Here is" not in code
    namespace: dict = {}
    exec(compile(code, names[0], "exec"), namespace)
    assert namespace["add"](2, 3) == 5

    assert (out / names[1]).read_text(encoding="utf-8") == REVIEW_ANSWER + "\n"

    extracted = (out / names[2]).read_text(encoding="utf-8")
    data = {"name": "Zoë", "tags": ["a", "b"], "n": 2}
    assert json.loads(extracted) == data
    assert extracted == json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize(
    "answer",
    [
        "The document names nobody.",
        '```json\n{"name": "Zoë",\n```',
        '{"score": NaN}',
    ],
    ids=["prose", "broken-json-block", "nan-is-not-json"],
)
def test_extraction_that_is_not_json_is_written_raw_as_markdown(tmp_path, answer):
    state = make_state(
        [make_task("x", TaskType.DATA_EXTRACT)], [make_result("x", answer, validator_results=[])]
    )

    written = write_outputs(state, tmp_path / "out")

    assert written[0].name == "task_001_data_extraction.md"
    assert written[0].read_text(encoding="utf-8") == answer + "\n"
    assert not list((tmp_path / "out").glob("task_*.json"))


def test_extraction_that_is_bare_json_is_pretty_printed(tmp_path):
    state = make_state(
        [make_task("x", TaskType.DATA_EXTRACT)],
        [make_result("x", '  [{"a":1},{"b":"ü"}]  ', validator_results=[])],
    )

    written = write_outputs(state, tmp_path / "out")

    assert written[0].name == "task_001_data_extraction.json"
    pretty = '[\n  {\n    "a": 1\n  },\n  {\n    "b": "ü"\n  }\n]\n'
    assert written[0].read_text(encoding="utf-8") == pretty


def test_prose_types_are_written_raw_as_markdown(tmp_path):
    kinds = [
        TaskType.CODE_REVIEW,
        TaskType.REASONING,
        TaskType.WRITING,
        TaskType.SUMMARIZE,
        TaskType.EVALUATE,
    ]
    answer = 'Prose with a fence:\n```python\nx = 1\n```\n{"not": "json-file"}'
    state = make_state(
        [make_task(f"t{i}", kind) for i, kind in enumerate(kinds)],
        [make_result(f"t{i}", answer) for i in range(len(kinds))],
    )

    written = write_outputs(state, tmp_path / "out")

    assert [p.name for p in written[:-2]] == [
        f"task_{i:03d}_{kind.value}.md" for i, kind in enumerate(kinds, 1)
    ]
    assert all(p.read_text(encoding="utf-8") == answer + "\n" for p in written[:-2])


def test_several_code_blocks_are_joined_and_other_languages_dropped(tmp_path):
    answer = (
        "First the helper:\n```python\ndef double(x):\n    return 2 * x\n```\n"
        "Install it with:\n```bash\npip install nothing\n```\n"
        "Then use it:\n```py\nFOUR = double(2)\n```\n"
        "And a test:\n```\nassert FOUR == 4\n```\n"
    )
    state = make_state([make_task("c", TaskType.CODE_GEN)], [make_result("c", answer)])

    code = write_outputs(state, tmp_path / "out")[0].read_text(encoding="utf-8")

    assert code == (
        "def double(x):\n    return 2 * x\n\n\nFOUR = double(2)\n\n\nassert FOUR == 4\n"
    )
    assert "pip install" not in code
    exec(compile(code, "joined.py", "exec"), {})


def test_code_without_fences_is_kept_as_is(tmp_path):
    answer = "import math\n\nprint(math.pi)"
    state = make_state([make_task("c", TaskType.CODE_GEN)], [make_result("c", answer)])

    code = write_outputs(state, tmp_path / "out")[0].read_text(encoding="utf-8")

    assert code == answer + "\n"


def test_code_fenced_as_python3_is_written_without_its_fences(tmp_path):
    # The syntax validator reads a ```python3 block as Python; the file must hold just as much.
    answer = "Here it is:\n\n```python3\ndef add(a, b):\n    return a + b\n```\n\nDone."
    state = make_state([make_task("c", TaskType.CODE_GEN)], [make_result("c", answer)])

    code = write_outputs(state, tmp_path / "out")[0].read_text(encoding="utf-8")

    assert code == "def add(a, b):\n    return a + b\n"


def test_strip_fences_details():
    # A model cut off by its token limit never closes the fence; its code is still kept.
    assert strip_fences("```python\nx = 1\ny = 2") == "x = 1\ny = 2"
    assert strip_fences("```Python title=a.py\nx = 1\n```") == "x = 1"
    assert strip_fences("````python\n```\nnested\n```\n````") == "```\nnested\n```"
    assert strip_fences("only ```inline``` ticks") == "only ```inline``` ticks"
    assert strip_fences("```bash\nls\n```") == "```bash\nls\n```"
    assert strip_fences("```sql\nSELECT 1\n```\n```bash\nls\n```", ("sql",)) == "SELECT 1"


# --- numbering and hostile ids ---------------------------------------------------------------


def test_numbering_follows_execution_order_not_insertion_order(tmp_path):
    tasks = [
        make_task("review", TaskType.CODE_REVIEW),
        make_task("write", TaskType.CODE_GEN),
        make_task("idle", TaskType.SUMMARIZE),
        make_task("extract", TaskType.DATA_EXTRACT),
    ]
    results = [
        make_result("review", "Looks fine."),
        make_result("write", "x = 1"),
        make_result("idle", "", status=TaskStatus.SKIPPED),
        make_result("extract", "[]"),
    ]
    state = make_state(tasks, results, order=["write", "idle", "review", "extract"])

    written = write_outputs(state, tmp_path / "out")

    # The skipped task keeps its number, so the others do not shift when it is missing.
    assert [p.name for p in written[:-2]] == [
        "task_001_code_generation.py",
        "task_003_code_review.md",
        "task_004_data_extraction.json",
    ]


def test_hostile_task_ids_never_reach_the_file_system(tmp_path):
    ids = ["../../etc/passwd", "a/b", "/abs/path", "..", "c:\\evil", "line\nbreak"]
    kinds = [TaskType.CODE_GEN, TaskType.CODE_REVIEW, TaskType.DATA_EXTRACT] * 2
    state = make_state(
        [make_task(i, k) for i, k in zip(ids, kinds, strict=True)],
        [make_result(i, '{"ok": true}') for i in ids],
    )
    before = tree(tmp_path)
    out = tmp_path / "out"

    written = write_outputs(state, out)

    added = tree(tmp_path) - before
    assert added == {Path("out"), Path("out") / MANIFEST_NAME} | {
        Path("out") / p.name for p in written
    }
    assert all(p.parent == out.resolve() for p in written)
    assert [p.name for p in written[:-2]] == [
        "task_001_code_generation.py",
        "task_002_code_review.md",
        "task_003_data_extraction.json",
        "task_004_code_generation.py",
        "task_005_code_review.md",
        "task_006_data_extraction.json",
    ]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [t["id"] for t in summary["tasks"]] == ids


# --- summary.json ----------------------------------------------------------------------------


def test_summary_holds_every_score_cost_model_and_validator_result(tmp_path):
    state = design_state()
    state.results["task_001"].validator_results = [
        ValidatorResult("python_syntax", True),
        ValidatorResult("pytest", False, detail="1 failed"),
        ValidatorResult("ruff", True, skipped=True, detail="ruff not installed"),
    ]
    state.tasks["task_004"] = make_task("task_004", TaskType.SUMMARIZE)
    state.execution_order.append("task_004")
    state.results["task_004"] = make_result(
        "task_004", "", status=TaskStatus.FAILED, score=float("nan"), reason="all models failed"
    )

    write_outputs(state, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))

    assert summary["project_id"] == "proj-42"
    assert summary["status"] == "SUCCESS"
    assert summary["description"] == "Build an adder"
    assert summary["criteria"] == "add() works"
    assert summary["quality_threshold"] == 0.8
    assert summary["execution_order"] == ["task_001", "task_002", "task_003", "task_004"]
    assert summary["api_health"] == {"openai": True, "anthropic": False}
    budget = summary["budget"]
    assert budget["max_usd"] == 8.0 and budget["max_time_seconds"] == 60
    assert budget["spent_usd"] == pytest.approx(1.75)
    assert budget["phase_spent"]["generation"] == pytest.approx(1.5)
    assert 0 <= budget["elapsed_seconds"] < 60

    by_id = {t["id"]: t for t in summary["tasks"]}
    assert list(by_id) == summary["execution_order"]
    for task_id in ("task_001", "task_002", "task_003"):
        entry = by_id[task_id]
        assert entry["result"] == state.results[task_id].to_dict()
        assert entry["type"] == state.tasks[task_id].type.value
        assert entry["prompt"] == state.tasks[task_id].prompt
    first = by_id["task_001"]["result"]
    assert first["score"] == 0.9 and first["cost_usd"] == 0.0125
    assert first["model_used"] == "gpt-4o" and first["reviewer_model"] == "claude-sonnet-5"
    assert first["iterations"] == 2 and first["output"] == CODE_ANSWER
    assert [v["name"] for v in first["validator_results"]] == ["python_syntax", "pytest", "ruff"]
    assert first["validator_results"][2]["skipped"] is True
    assert by_id["task_002"]["dependencies"] == ["task_001"]
    assert by_id["task_001"]["file"] == "task_001_code_generation.py"
    # A broken score must not make the whole file invalid JSON.
    assert by_id["task_004"]["file"] is None
    assert by_id["task_004"]["result"]["score"] is None
    assert by_id["task_004"]["result"]["reason"] == "all models failed"


# --- README.md -------------------------------------------------------------------------------


def test_readme_has_one_row_per_task_with_every_column(tmp_path):
    state = design_state()
    state.results["task_001"].validator_results = [
        ValidatorResult("python_syntax", True),
        ValidatorResult("pytest", False),
        ValidatorResult("ruff", True, skipped=True),
    ]

    write_outputs(state, tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")

    assert readme.startswith("# ") and "proj-42" in readme.splitlines()[0]
    assert "SUCCESS" in readme
    assert "$1.75 of $8.00" in readme
    assert "**Elapsed:** " in readme and " of 1m 00s" in readme
    header = next(line for line in readme.splitlines() if line.startswith("|"))
    assert [c.strip() for c in CELL_BOUNDARY.split(header)[1:-1]] == [
        "#",
        "Task",
        "Type",
        "Status",
        "Score",
        "Model",
        "Reviewer",
        "Iterations",
        "Cost (USD)",
        "Validators",
        "File",
    ]
    rows = table_rows(readme)
    assert len(rows) == 3 and all(len(row) == COLUMNS for row in rows)
    first = [c.strip() for c in rows[0]]
    assert first[0] == "1" and "task_001" in first[1]
    assert first[2:9] == [
        "code_generation",
        "completed",
        "0.90",
        "gpt-4o",
        "claude-sonnet-5",
        "2",
        "$0.0125",
    ]
    assert first[9] == "python_syntax ✓, pytest ✗, ruff ✓ (skipped)"
    assert "task_001_code_generation.py" in first[10]
    assert [c.strip() for c in rows[1]][9] == "–"


def test_readme_escapes_pipes_and_newlines_from_models_and_users(tmp_path):
    state = make_state(
        [
            make_task("id|with|pipes", TaskType.CODE_REVIEW, "Compare a | b\nand then\\|c"),
            make_task("plain", TaskType.CODE_GEN),
        ],
        [
            make_result(
                "id|with|pipes",
                "| col | col |\n|---|---|",
                status=TaskStatus.DEGRADED,
                reason="reviewer said: a | b\n# not a heading",
                validator_results=[ValidatorResult("weird|name", False)],
            ),
            make_result("plain", "x = 1"),
        ],
    )
    state.project_description = "Line one\n| injected | row |"

    write_outputs(state, tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")

    rows = table_rows(readme)
    assert len(rows) == 2 and all(len(row) == COLUMNS for row in rows)
    assert "id\\|with\\|pipes" in rows[0][1] and "a \\| b and then" in rows[0][1]
    assert "weird\\|name ✗" in rows[0][9]
    assert not any(line.startswith("# not a heading") for line in readme.splitlines())
    assert not any(line.startswith("| injected") for line in readme.splitlines())
    assert "reviewer said: a | b # not a heading" in readme


def test_escape_codes_from_models_are_text_in_the_readme_and_summary_and_kept_in_task_files(
    tmp_path,
):
    tricks = "\x1b]0;pwned\x07\x1b[2J\x9b2K\x7f\u202eSSECCUS\u2066"
    answer = f"```python\nprint('{tricks}')\n```\n"
    state = make_state(
        [make_task("t1", TaskType.CODE_GEN, f"Print {tricks}")],
        [make_result("t1", answer, status=TaskStatus.DEGRADED, reason=f"reviewer: {tricks}")],
    )
    state.project_description = f"A project {tricks}"

    write_outputs(state, tmp_path / "out")

    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    summary = (tmp_path / "out" / "summary.json").read_text(encoding="utf-8")
    for text in (readme, summary):
        assert not TERMINAL_CONTROLS.search(text), text
    # Shown where it was, as a Markdown backslash: \\ renders as one.
    escaped = r"\\x1b]0;pwned\\x07\\x1b[2J\\x9b2K\\x7f\\u202eSSECCUS\\u2066"
    assert f"Print {escaped}" in table_rows(readme)[0][1]
    assert f"reviewer: {escaped}" in readme and f"A project {escaped}" in readme
    assert json.loads(summary)["tasks"][0]["result"]["reason"] == f"reviewer: {tricks}"
    # The task's file is the model's answer, as it gave it.
    assert (tmp_path / "out" / "task_001_code_generation.py").read_text() == f"print('{tricks}')\n"


def test_tasks_without_output_get_no_file_but_appear_everywhere(tmp_path):
    tasks = [
        make_task("ok", TaskType.CODE_GEN),
        make_task("broke", TaskType.CODE_REVIEW),
        make_task("after", TaskType.SUMMARIZE, deps=["broke"]),
        make_task("never", TaskType.EVALUATE),
    ]
    results = [
        make_result("ok", "x = 1"),
        make_result("broke", "", status=TaskStatus.FAILED, score=0.0, reason="all models failed"),
        make_result("after", "  \n", status=TaskStatus.SKIPPED, reason="dependency broke failed"),
    ]
    state = make_state(tasks, results)
    state.status = ProjectStatus.PARTIAL_SUCCESS

    written = write_outputs(state, tmp_path / "out")

    assert [p.name for p in written] == ["task_001_code_generation.py", "summary.json", "README.md"]
    summary = json.loads(written[1].read_text(encoding="utf-8"))
    by_id = {t["id"]: t for t in summary["tasks"]}
    assert list(by_id) == ["ok", "broke", "after", "never"]
    assert by_id["broke"]["file"] is None and by_id["broke"]["result"]["status"] == "failed"
    assert by_id["after"]["result"]["status"] == "skipped"
    assert by_id["never"]["file"] is None and by_id["never"]["result"] is None
    readme = written[2].read_text(encoding="utf-8")
    rows = [[c.strip() for c in row] for row in table_rows(readme)]
    assert [row[3] for row in rows] == ["completed", "failed", "skipped", "not run"]
    assert [row[10] for row in rows[1:]] == ["–", "–", "–"]
    assert "all models failed" in readme and "dependency broke failed" in readme


# --- re-runs and errors ----------------------------------------------------------------------


def test_rewriting_overwrites_our_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "task_001_my_own.py").write_text("mine too", encoding="utf-8")
    state = design_state()
    write_outputs(state, out)

    state.results["task_001"].output = "```python\nANSWER = 42\n```"
    state.results["task_003"].output = "no JSON this time"
    state.status = ProjectStatus.PARTIAL_SUCCESS
    written = write_outputs(state, out)

    assert (out / "task_001_code_generation.py").read_text(encoding="utf-8") == "ANSWER = 42\n"
    assert (out / "task_003_data_extraction.md").read_text(encoding="utf-8") == (
        "no JSON this time\n"
    )
    # The earlier .json would contradict summary.json, which now names the .md.
    assert not (out / "task_003_data_extraction.json").exists()
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["status"] == (
        "PARTIAL_SUCCESS"
    )
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "task_001_my_own.py").read_text(encoding="utf-8") == "mine too"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in written] + ["notes.txt", "task_001_my_own.py", MANIFEST_NAME]
    )


def test_a_link_in_place_of_our_file_stops_the_write_and_is_never_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").symlink_to(outside)

    with pytest.raises(OutputError, match=r"README\.md.*--overwrite"):
        write_outputs(design_state(), out)
    assert (out / "README.md").is_symlink() and sorted(out.iterdir()) == [out / "README.md"]

    write_outputs(design_state(), out, overwrite=True)

    assert outside.read_text(encoding="utf-8") == "untouched"
    assert not (out / "README.md").is_symlink()


def test_a_file_edited_by_hand_is_never_overwritten_without_being_asked(tmp_path):
    out = tmp_path / "out"
    state = design_state()
    write_outputs(state, out)
    edited = out / "task_001_code_generation.py"
    edited.write_text("# my fix\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    state.results["task_001"].output = "```python\nANSWER = 42\n```"
    with pytest.raises(OutputError) as refused:
        write_outputs(state, out)

    assert "task_001_code_generation.py" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing changed
    write_outputs(state, out, overwrite=True)
    assert edited.read_text(encoding="utf-8") == "ANSWER = 42\n"


def test_writing_the_same_project_again_replaces_what_this_tool_wrote(tmp_path):
    out = tmp_path / "out"
    write_outputs(design_state(), out)
    before = {p.name: p.read_bytes() for p in out.glob("task_*")}

    write_outputs(design_state(), out)  # summary.json's clock moved on: replaced, not refused

    assert {p.name: p.read_bytes() for p in out.glob("task_*")} == before


def test_another_projects_results_are_not_replaced_without_being_asked(tmp_path):
    out = tmp_path / "out"
    write_outputs(design_state(), out)
    other = design_state()
    other.project_id = "another-project"
    other.project_description = "Build something else"

    with pytest.raises(OutputError, match="results of project 'proj-42'"):
        check_output_dir(out, other.project_description, other.success_criteria)
    with pytest.raises(OutputError, match="results of project 'proj-42'"):
        write_outputs(other, out)
    write_outputs(other, out, overwrite=True)

    assert json.loads((out / "summary.json").read_text())["project_id"] == "another-project"


def test_a_new_run_asked_the_same_updates_what_the_last_one_wrote(tmp_path):
    out = tmp_path / "out"
    write_outputs(design_state(), out)
    again = design_state()  # the same command run again: a new project, asked the same
    again.project_id = "the-next-run"
    again.results["task_001"].output = "```python\nANSWER = 43\n```"

    check_output_dir(out, again.project_description, again.success_criteria)
    write_outputs(again, out)

    assert (out / "task_001_code_generation.py").read_text() == "ANSWER = 43\n"
    assert json.loads((out / "summary.json").read_text())["project_id"] == "the-next-run"


def test_a_file_a_person_changed_is_found_before_a_run_pays_for_anything(tmp_path):
    out = tmp_path / "out"
    write_outputs(design_state(), out)
    (out / "README.md").write_text("my notes\n", encoding="utf-8")

    with pytest.raises(OutputError, match=r"README\.md"):
        check_output_dir(out, design_state().project_description, design_state().success_criteria)
    with pytest.raises(OutputError, match=r"README\.md"):
        check_output_dir(out, None, None)  # a resume too


def test_a_file_where_the_directory_should_be_is_an_output_error(tmp_path):
    target = tmp_path / "results"
    target.write_text("not a directory", encoding="utf-8")

    with pytest.raises(OutputError) as caught:
        write_outputs(design_state(), target)

    message = str(caught.value)
    assert str(target) in message and "\n" not in message
    assert target.read_text(encoding="utf-8") == "not a directory"


def test_a_file_in_the_parent_path_is_an_output_error(tmp_path):
    (tmp_path / "blocker").write_text("", encoding="utf-8")

    with pytest.raises(OutputError, match="blocker") as caught:
        write_outputs(design_state(), tmp_path / "blocker" / "results")

    assert "\n" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_a_read_only_directory_is_an_output_error(tmp_path):
    out = tmp_path / "locked"
    out.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="locked"):
            write_outputs(design_state(), out)
    finally:
        out.chmod(0o700)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_outputs(design_state(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def refuse(source, destination):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("orchestrator.code.output_writer.os.replace", refuse)
    state = design_state()
    state.results["task_001"].output = "ANSWER = 42"
    with pytest.raises(OutputError, match=r"task_001_code_generation\.py: Permission denied"):
        write_outputs(state, out)

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
