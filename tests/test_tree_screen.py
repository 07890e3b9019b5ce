"""The screen a tree passes before any of it runs: what could reach into the test runner is
refused, naming the file, the line and why; ordinary code is not."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.code.tree_screen import screen


def refusals(files: dict[str, str]) -> list[str]:
    return [str(r) for r in screen({p: textwrap.dedent(s) for p, s in files.items()})]


REACHING_FOR_THE_RUNNER = {
    "imports pytest": ("import pytest", "line 1: imports pytest: the test runner"),
    "imports pytest from a package": ("from pytest import fail", "imports pytest"),
    "imports it by __import__": ("x = __import__('pytest')", "imports pytest"),
    "imports it by importlib": (
        "import importlib\nr = importlib.import_module('_pytest.reports')",
        "line 2: imports _pytest.reports: the test runner's internals",
    ),
    "imports pluggy": ("import pluggy", "imports pluggy"),
    "walks frames with sys._getframe": ("import sys\nf = sys._getframe(2)", "uses ._getframe"),
    "walks frames with inspect": ("import inspect\nf = inspect.stack()", "uses inspect.stack"),
    "walks up from a frame": ("def up(frame):\n    return frame.f_back", "line 2: uses .f_back"),
    "walks from a traceback": ("def at(tb):\n    return tb.tb_frame", "uses .tb_frame"),
    "walks from a generator": ("def at(gen):\n    return gen.gi_frame", "uses .gi_frame"),
    "names a frame attribute": ("import sys\nf = getattr(sys, '_getframe')", "names '_getframe'"),
    "reads sys.modules": ("import sys as s\nr = s.modules['_pytest.reports']", "uses sys.modules"),
    "imports modules from sys": ("from sys import modules", "imports modules from sys"),
    "searches the object graph": ("import gc\nobjs = gc.get_objects()", "uses .get_objects"),
    "follows referrers": ("from gc import get_referrers", "imports get_referrers from gc"),
    "traces calls": ("import sys\nsys.settrace(print)", "uses .settrace"),
}


@pytest.mark.parametrize(
    ("source", "reason"), REACHING_FOR_THE_RUNNER.values(), ids=REACHING_FOR_THE_RUNNER.keys()
)
def test_code_under_test_that_reaches_for_the_test_runner_is_refused(source, reason):
    [refused] = refusals({"lib/core.py": source})

    assert refused.startswith("lib/core.py, line ")
    assert reason in refused


def test_a_test_module_may_import_pytest_and_look_at_sys_modules_but_not_pytests_internals():
    source = """
        import sys

        import pytest
        from _pytest.reports import TestReport


        def test_imports():
            assert "json" in sys.modules
    """
    assert refusals({"tests/test_x.py": source, "tests/other_test.py": "import pytest"}) == [
        "tests/test_x.py, line 5: imports _pytest.reports: the test runner's internals"
    ]


def test_a_test_module_may_not_walk_frames_or_the_object_graph_where_the_runners_keys_are():
    source = """
        import gc
        import sys
        from inspect import currentframe


        def test_digs():
            assert sys.modules["json"]
            assert gc.get_referrers(sys._getframe(0))
    """
    reason = (
        "a test may not walk frames or the garbage collector's object graph, where the runners "
        "keep their own state"
    )
    assert refusals({"tests/test_x.py": source}) == [
        f"tests/test_x.py, line 4: imports currentframe from inspect: {reason}",
        f"tests/test_x.py, line 9: uses .get_referrers: {reason}",
    ]


def test_pytest_plugins_is_refused_wherever_it_is_set():
    assert refusals(
        {
            "tests/test_x.py": "pytest_plugins = ['helpers']",
            "lib/a.py": "globals()['pytest_plugins'] = ('helpers',)",
        }
    ) == [
        "lib/a.py, line 1: pytest_plugins names plugins for pytest to load into the run that "
        "judges the tests; a tree may not load plugins",
        "tests/test_x.py, line 1: pytest_plugins names plugins for pytest to load into the run "
        "that judges the tests; a tree may not load plugins",
    ]


def test_a_name_an_installed_distribution_provides_is_refused_naming_the_distribution():
    # iniconfig comes with pytest: the names come from the environment, not from a list.
    assert refusals({"iniconfig/__init__.py": "", "tests/sitecustomize.py": ""}) == [
        "iniconfig/__init__.py: the name 'iniconfig' is provided by the installed distribution "
        "iniconfig: a tree may not replace an installed package; choose another name",
        "tests/sitecustomize.py: the name 'sitecustomize' is the test runner's: choose another "
        "name",
    ]


def test_ordinary_code_passes_the_screen():
    source = """
        import subprocess
        import sys

        import numpy as np


        class Parser:
            def __init__(self):
                self.stack = []

            def run(self):
                subprocess.run([sys.executable, "-m", "pytest"], check=False)
                return np.stack(self.stack), sys.argv, sys.version_info


        def frames(video):
            return video.frames
    """
    assert refusals({"src/app/core.py": source, "src/app/__init__.py": ""}) == []
