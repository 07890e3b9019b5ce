"""Hard validators as a user relies on them: verdicts, one-line details, and a sandbox that keeps
generated code inside a temporary directory, without keys, within its time limit."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.code import validators
from orchestrator.code.validators import (
    KNOWN_VALIDATORS,
    code_blocks,
    run_validators,
    unknown_validators,
)
from orchestrator.run.tasks import ValidatorResult


def py(source: str, tag: str = "python") -> str:
    """One fenced block, as a model writes it."""
    return f"```{tag}\n{textwrap.dedent(source).strip()}\n```\n"


async def check(name: str, output: str, **options) -> ValidatorResult:
    (result,) = await run_validators([name], output, **options)
    assert result.name == name
    assert "\n" not in result.detail and len(result.detail) <= 300
    if result.skipped:
        assert result.passed
    return result


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process; a zombie waiting for its parent counts as dead."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pids: list[int], within: float = 3.0) -> list[int]:
    """The pids still alive after ``within`` seconds (init may take a moment to reap)."""
    deadline = time.monotonic() + within
    while (living := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return living


def escaped_files(tmp_path: Path, absolute: Path) -> list[Path]:
    return [path for path in (absolute, *tmp_path.rglob("evil*")) if path.exists()]


ADD = py(
    """
    # file: calc.py
    def add(a, b):
        return a + b
    """
)


def sleeping_test(marker: str) -> str:
    """A test that starts a child and sleeps; both carry ``marker`` on their command line."""
    return f"""
import subprocess, sys, time

def test_sleeps():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
    time.sleep(60)
"""


def processes_with(marker: str) -> list[int]:
    """Live processes (seen from outside any sandbox) whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


# --- names ----------------------------------------------------------------------------------


def test_known_validators_are_the_six_documented_ones():
    assert {"python_syntax", "pytest", "ruff", "json_schema", "latex", "length"} == (
        KNOWN_VALIDATORS
    )


def test_unknown_validators_lists_the_unknown_names_in_order():
    assert unknown_validators(["pytest", "mypy", "length", "black", "mypy"]) == [
        "mypy",
        "black",
        "mypy",
    ]
    assert unknown_validators(iter(["ruff"])) == []


async def test_an_unknown_validator_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="mypy"):
        await run_validators(["length", "mypy"], "long enough output")


async def test_results_come_one_per_name_in_the_order_asked():
    results = await run_validators(["length", "python_syntax", "length"], py("x = 1"))
    assert [r.name for r in results] == ["length", "python_syntax", "length"]
    assert all(r.passed and not r.skipped for r in results)


# --- code_blocks ----------------------------------------------------------------------------


def test_code_blocks_takes_every_python_or_untagged_fence_of_either_kind():
    text = (
        "Intro\n```Python\na = 1\n```\ntext\n~~~\nb = 2\n~~~\n"
        "```bash\nrm -rf /\n```\n```py title=x\nc = 3\n```\n"
    )
    assert code_blocks(text) == ["a = 1\n", "b = 2\n", "c = 3\n"]
    assert code_blocks(text, ("BASH",)) == ["rm -rf /\n"]


def test_code_blocks_without_any_fence_is_the_whole_text():
    assert code_blocks("x = 1\ny = 2\n") == ["x = 1\ny = 2\n"]
    assert code_blocks("x = 1", ("json",)) == ["x = 1"]
    assert code_blocks("   \n") == []


def test_code_blocks_keeps_a_block_whose_closing_fence_is_missing():
    assert code_blocks("```python\nx = 1\n") == ["x = 1\n"]


def test_a_longer_fence_can_contain_a_shorter_one():
    text = "````markdown\n```python\nx = 1\n```\n````\n"
    assert code_blocks(text, ("markdown",)) == ["```python\nx = 1\n```\n"]
    assert code_blocks(text) == []


# --- python_syntax --------------------------------------------------------------------------


async def test_syntax_passes_valid_python():
    result = await check("python_syntax", "Here:\n" + py("def f(x):\n    return x * 2"))
    assert result.passed


async def test_syntax_failure_names_the_block_and_line():
    broken = py("def g(:\n    pass", tag="py")
    result = await check("python_syntax", py("x = 1") + "\nand then\n" + broken)
    assert not result.passed
    assert result.detail.startswith("block 2, line 1: ")


async def test_every_fenced_block_counts_not_only_the_first():
    good = py("def ok():\n    return 1")
    bad = py("x = 1\ny = 2\nif x\n    y = 3")
    result = await check("python_syntax", good + bad)
    assert not result.passed
    assert result.detail.startswith("block 2, line 3:")


async def test_unfenced_plain_code_counts_as_one_block():
    assert (await check("python_syntax", "import os\nprint(os.sep)\n")).passed
    result = await check("python_syntax", "x = 1\nprint(x\n")
    assert not result.passed
    assert result.detail.startswith("block 1, line 2:")


async def test_output_without_python_fails_syntax():
    result = await check("python_syntax", 'Only data:\n```json\n{"a": 1}\n```\n')
    assert not result.passed
    assert result.detail == "no Python code found"


# --- length ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "passed"), [(9, False), (10, True), (50_000, True), (50_001, False)]
)
async def test_length_bounds_are_10_to_50000_stripped_characters(length, passed):
    result = await check("length", "  \n" + "x" * length + "\n\n ")
    assert result.passed is passed
    assert f"{length:,}" in result.detail


# --- json_schema ----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["name", "tags"],
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


async def test_json_that_does_not_parse_fails_with_its_position():
    result = await check("json_schema", '{"name": "a",\n "tags": [1,}')
    assert not result.passed
    assert result.detail.startswith("invalid JSON at line 2, column")


async def test_schema_violation_gives_the_json_path_and_message():
    result = await check("json_schema", '{"name": "a", "tags": ["x", 7]}', output_schema=SCHEMA)
    assert not result.passed
    assert result.detail.startswith("$.tags[1]: ")
    assert "is not of type 'string'" in result.detail


async def test_fenced_json_is_taken_from_its_block():
    output = 'Here you go:\n```json\n{"name": "Zoë", "tags": ["a"]}\n```\nDone.'
    assert (await check("json_schema", output, output_schema=SCHEMA)).passed
    assert (await check("json_schema", output)).passed


async def test_without_a_schema_any_valid_json_passes():
    assert (await check("json_schema", "[1, 2, 3]")).passed


# --- pytest ---------------------------------------------------------------------------------


async def test_pytest_passes_a_passing_suite():
    output = ADD + py(
        """
        from calc import add

        def test_add():
            assert add(2, 3) == 5

        def test_add_negative():
            assert add(-1, 1) == 0
        """
    )
    result = await check("pytest", output)
    assert result.passed, result.detail
    assert "2 passed" in result.detail


async def test_pytest_failing_suite_reports_the_summary():
    output = py(
        """
        def add(a, b):
            return a - b
        """
    ) + py(
        """
        from solution import add

        def test_add():
            assert add(2, 3) == 5

        def test_zero():
            assert add(0, 0) == 0
        """
    )
    result = await check("pytest", output)
    assert not result.passed
    assert "1 failed" in result.detail and "1 passed" in result.detail
    assert "test_add" in result.detail


async def test_pytest_without_tests_fails():
    result = await check("pytest", ADD)
    assert not result.passed
    assert result.detail == "no tests found"


async def test_pytest_timeout_fails_fast_and_leaves_no_process():
    marker = f"orchestrator-sleeper-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = await check("pytest", py(sleeping_test(marker)), timeout=2)
    assert time.monotonic() - started < 6
    assert not result.passed
    assert result.detail == "timed out after 2s"
    assert wait_dead(processes_with(marker)) == []


async def test_cancelling_a_run_kills_its_processes():
    marker = f"orchestrator-sleeper-{uuid.uuid4().hex}"
    task = asyncio.create_task(run_validators(["pytest"], py(sleeping_test(marker)), timeout=30))
    deadline = time.monotonic() + 10
    while not processes_with(marker):
        assert time.monotonic() < deadline, "the generated test never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wait_dead(processes_with(marker)) == []


async def test_dependency_code_is_importable_by_a_later_tasks_tests():
    dependency = "I wrote the module.\n" + ADD
    design = "Design: calc.add adds two numbers. No code here, just prose."
    tests = py(
        """
        from calc import add

        def test_add():
            assert add(20, 22) == 42
        """
    )
    result = await check(
        "pytest", tests, dependency_outputs={"task_001": design, "task_002": dependency}
    )
    assert result.passed, result.detail


async def test_declared_paths_outside_the_temp_dir_fall_back_to_default_names(
    tmp_path, monkeypatch
):
    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    absolute = Path(f"/tmp/evil_{os.getpid()}_{time.time_ns()}.py")
    output = (
        py('# file: ../../evil.py\nMARK = "parent"')
        + py(f'# file: {absolute}\nMARK = "absolute"')
        + py('# filename: pkg/inner/good.py\nMARK = "nested"')
        + py(
            """
            import os
            import module_2
            import solution
            from pkg.inner import good

            def test_fallbacks_stay_inside():
                assert solution.MARK == "parent"
                assert module_2.MARK == "absolute"
                assert good.MARK == "nested"
                assert sorted(os.listdir(".")) == [
                    ".verdict.ini", "module_2.py", "pkg", "solution.py", "test_generated_1.py"
                ]
            """
        )
    )
    result = await check("pytest", output)
    assert result.passed, result.detail
    assert escaped_files(tmp_path, absolute) == []
    assert list(base.iterdir()) == [], "the temporary directory is removed afterwards"


@pytest.fixture
def callers_file() -> Path:
    """A file in the caller's working directory that generated code must not find."""
    path = Path("callers_file.txt")
    path.write_text("private")
    return path


async def test_generated_code_sees_none_of_the_users_variables_nor_the_callers_directory(
    monkeypatch, callers_file
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-must-not-leak")
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.invalid/v1")
    monkeypatch.setenv("ORCH_TEST_VISIBLE", "no, not even a harmless one")
    output = py(
        f"""
        import os

        def test_environment_is_minimal():
            allowed = {{"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD",
                       "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8",
                       "PYTEST_VERSION", "PYTEST_CURRENT_TEST",  # set by pytest itself
                       "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}}  # set by the runner: no plugins
            assert set(os.environ) <= allowed, sorted(set(os.environ) - allowed)
            assert os.environ["HOME"] != {str(Path.home())!r}
            assert not os.path.exists({str(callers_file.resolve())!r})
            assert not os.path.exists("callers_file.txt")
        """
    )
    result = await check("pytest", output)
    assert result.passed, result.detail


async def test_pytest_absent_fails(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "pytest" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = await check("pytest", py("def test_x():\n    assert True"))
    assert not result.passed
    assert result.detail == "pytest is not installed"


async def test_event_loop_stays_responsive_while_pytest_runs():
    output = py("import time\n\ndef test_slow():\n    time.sleep(0.8)")
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    ticking = asyncio.create_task(ticker())
    try:
        result = await check("pytest", output)
    finally:
        ticking.cancel()
    assert result.passed, result.detail
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) >= 10
    assert max(gaps) < 0.3


# --- ruff -----------------------------------------------------------------------------------


async def test_ruff_absent_is_skipped_and_passes(monkeypatch):
    monkeypatch.setattr(validators, "find_ruff", lambda: None)
    result = await check("ruff", py("import os"))
    assert result.passed and result.skipped
    assert result.detail == "ruff is not installed"


def test_ruff_is_found_next_to_the_interpreter_when_not_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    found = validators.find_ruff()
    assert found is not None
    assert Path(found).parent == Path(sys.executable).parent


async def test_ruff_catches_an_unused_import():
    assert validators.find_ruff() is not None, "ruff is a dev dependency"
    output = py("x = 1") + py("import os\nimport sys\n\nprint(1)")
    result = await check("ruff", output)
    assert not result.passed and not result.skipped
    assert result.detail.startswith("block 2, line 1, column 8: F401")
    assert result.detail.endswith("(2 problems)")


async def test_ruff_passes_clean_code():
    result = await check("ruff", py("import os\n\nprint(os.sep)"))
    assert result.passed and not result.skipped


# --- latex ----------------------------------------------------------------------------------


async def test_latex_absent_is_skipped_and_passes(monkeypatch):
    monkeypatch.setattr(validators, "_find_pdflatex", lambda: None)
    result = await check("latex", "\\documentclass{article}\\begin{document}x\\end{document}")
    assert result.passed and result.skipped
    assert result.detail == "pdflatex is not installed"


async def test_latex_runs_pdflatex_without_shell_escape_and_reports_the_error(
    tmp_path, monkeypatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pdflatex"
    # It reports, as its error line, how it was called and what it was given to compile.
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'This is pdfTeX'\n"
        "printf '%s\\n' \"! args: $* | doc: $(tr '\\n' ' ' < doc.tex)\"\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    output = "The document:\n```latex\n\\documentclass{article}\n\\foo\n```\n"
    result = await check("latex", output)
    assert not result.passed
    assert result.detail == (
        "! args: -interaction=nonstopmode -halt-on-error -no-shell-escape doc.tex "
        "| doc: \\documentclass{article} \\foo"
    )


PYTEST_GAMES = {
    "only skipped tests": (
        "```python\nimport pytest\n\n\ndef test_later():\n"
        "    pytest.importorskip('module_that_is_not_installed')\n```"
    ),
    "exit before pytest reports": (
        "```python\nimport os\n\nos._exit(0)\n\n\ndef test_never_runs():\n    assert False\n```"
    ),
    "a conftest that rewrites results": (
        "```python\n# file: conftest.py\nimport pytest\n\n\n"
        "@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n```\n\n"
        "```python\ndef test_wrong():\n    assert 1 == 2\n```"
    ),
}


@pytest.mark.parametrize("output", PYTEST_GAMES.values(), ids=PYTEST_GAMES.keys())
async def test_pytest_passes_only_when_a_test_really_passed(output):
    [result] = await run_validators(["pytest"], output, timeout=30)

    assert not result.passed, result.detail


async def test_pytest_loads_none_of_the_installed_plugins():
    pytest.importorskip("xdist")  # installed here, as a user's environment may hold plugins
    output = py(
        """
        import sys

        def test_no_installed_plugin_was_loaded():
            loaded = [m for m in sys.modules if m.split(".")[0] in ("xdist", "pytest_asyncio")]
            assert loaded == []
        """
    )

    result = await check("pytest", output)

    assert result.passed, result.detail


async def test_a_second_run_confirms_a_suite_written_with_pytests_everyday_features():
    output = ADD + py(
        """
        import unittest

        import pytest
        from calc import add


        @pytest.fixture
        def numbers():
            yield [1, 2]


        @pytest.fixture(scope="module")
        def base(tmp_path_factory):
            return tmp_path_factory.mktemp("base")


        @pytest.mark.parametrize(("a", "b", "total"), [(1, 2, 3), pytest.param(2, 2, 4, id="two")])
        def test_add(a, b, total):
            assert add(a, b) == total


        def test_fixtures(numbers, tmp_path, monkeypatch, capsys, base):
            monkeypatch.setenv("CALC", "1")
            print("hi")
            (tmp_path / "f").write_text("x")
            assert capsys.readouterr().out == "hi\\n"
            assert add(*numbers) == 3 and base.is_dir()


        class TestCalc:
            @pytest.fixture(autouse=True)
            def zero(self):
                self.zero = 0

            def setup_method(self, method):
                self.one = 1

            def test_identity(self):
                assert add(self.one, self.zero) == 1
                with pytest.raises(TypeError):
                    add(1, None)


        class CalcCase(unittest.TestCase):
            def setUp(self):
                self.two = 2

            def test_two(self):
                self.assertEqual(add(1, 1), self.two)


        def test_with_a_fixture_the_second_run_lacks(request):
            assert request.node.name == "test_with_a_fixture_the_second_run_lacks"


        @pytest.mark.skip(reason="later")
        def test_skipped():
            assert False
        """
    )

    result = await check("pytest", output)

    # A parametrized test counts once in the second run: its parameter sets together.
    assert result.passed, result.detail
    assert result.detail == "6 passed, 1 skipped (4 run twice)"


async def test_tests_that_pass_only_where_the_second_run_cannot_go_do_not_pass():
    output = py(
        """
        def test_only_pytest_can_run(request):
            assert request.node.name == "test_only_pytest_can_run"
        """
    )

    result = await check("pytest", output)

    assert not result.passed
    assert result.detail == (
        "1 passed, but no passing test could be run a second time: "
        "test_generated_1.py::test_only_pytest_can_run: fixture 'request' is not one the "
        "second run provides"
    )
