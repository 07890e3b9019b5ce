"""A wrong tree cannot talk its way to SUCCESS: each route a tree could take to make its failing
tests look passed is a whole run from the command line, over HTTP against the fake provider.

Every tree here holds the buggy token bucket (it lets one take too many) and the test that
catches it, plus the route's trick. A run of such a tree must not end SUCCESS: its integration
check of the tests fails, saying why, and the run exits 3 (PARTIAL_SUCCESS).
"""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
from conftest import fake_env, run_cli
from test_integration import BUGGY_LIBRARY, LIBRARY, TESTS, files, needs_sandbox, scripted
from test_sandbox import wait_gone

pytestmark = needs_sandbox

PROJECT = (
    "project: '[project] A rate-limiter library with tests'\ncriteria: it works\n"
    "output_dir: out\nintegration_rounds: 0\ntasks:\n"
    "  - {id: lib, type: code_generation, prompt: '[lib] Write the library.',"
    " hard_validators: [python_syntax]}\n"
    "  - {id: tests, type: code_generation, prompt: '[tests] Write its tests.',"
    " dependencies: [lib], hard_validators: [python_syntax]}\n"
)

# The test that catches the bug, in a module that also reaches for a plugin of its own.
TESTS_WITH_PLUGIN = files(
    (
        "tests/test_bucket.py",
        """
        from ratelimit import TokenBucket

        pytest_plugins = ["helpers_plugin"]


        def test_takes_until_empty():
            bucket = TokenBucket(2)
            assert [bucket.take() for _ in range(3)] == [True, True, False]
        """,
    )
)
# A hook that turns every failing report into a pass.
PASSING_HOOK = """
    import pytest


    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        report.outcome = "passed"
        report.longrepr = None
"""


def importing_first(trick: str) -> str:
    """The buggy library, whose package imports ``trick`` first thing, as a compatibility shim
    would be."""
    lib = BUGGY_LIBRARY.replace("from .bucket", "from . import compat\nfrom .bucket", 1)
    return lib + "\n\n" + files(("ratelimit/compat.py", trick))


def check_tree(fake, tmp_path, lib: str, tests: str = TESTS):
    """Run the two tasks from the command line; the tree's pytest check and the run's ending."""
    scripted(fake, {"lib": lib, "tests": tests})
    (tmp_path / "rl.yaml").write_text(PROJECT)
    env = {**fake_env(fake.base_url), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    result = run_cli("--file", str(tmp_path / "rl.yaml"), "--no-cache", cwd=tmp_path, env=env)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    [last] = summary["integration"]["rounds"]
    checks = {check["name"]: check for check in last["checks"]}
    return result, summary, checks["pytest"], last["failures"]


def assert_not_a_success(result, summary, check, detail: str) -> None:
    assert not check["passed"], check
    assert detail in check["detail"], check["detail"]
    assert summary["status"] == "PARTIAL_SUCCESS", result.stdout + result.stderr
    assert result.returncode == 3, result.stdout + result.stderr
    assert "status SUCCESS" not in result.stdout


def test_a_correct_tree_still_ends_success(fake, tmp_path):
    result, summary, check, _ = check_tree(fake, tmp_path, LIBRARY)

    assert check["passed"], check
    assert summary["status"] == "SUCCESS" and result.returncode == 0, result.stderr


# --- (a) the code under test rewrites pytest's reports when imported --------------------------

REWRITES_REPORTS = {
    "patches TestReport's constructor": """
        import _pytest.reports

        _made = _pytest.reports.TestReport.__init__


        def _passed(self, *args, **kwargs):
            _made(self, *args, **kwargs)
            self.outcome = "passed"
            self.longrepr = None


        _pytest.reports.TestReport.__init__ = _passed
    """,
    "makes every report's outcome 'passed'": """
        from _pytest.reports import TestReport

        TestReport.outcome = property(lambda self: "passed", lambda self, value: None)
    """,
    "replaces how a report is made from a call": """
        import _pytest.reports

        _make = _pytest.reports.TestReport.from_item_and_call.__func__


        def _passed(cls, item, call):
            report = _make(cls, item, call)
            report.outcome = "passed"
            report.longrepr = None
            return report


        _pytest.reports.TestReport.from_item_and_call = classmethod(_passed)
    """,
}


@pytest.mark.parametrize("trick", REWRITES_REPORTS.values(), ids=REWRITES_REPORTS.keys())
def test_a_module_under_test_that_rewrites_pytests_reports_is_refused(fake, tmp_path, trick):
    lib = importing_first(trick)

    result, summary, check, failures = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "refused")
    [refusal] = [f for f in failures if "ratelimit/compat.py" in f["files"]]
    assert "ratelimit/compat.py, line 1" in refusal["summary"]
    assert "test runner" in refusal["summary"]


# --- (b) a test module names a plugin the tree holds ------------------------------------------


def test_pytest_plugins_in_a_test_module_is_refused_with_its_reason(fake, tmp_path):
    tests = TESTS_WITH_PLUGIN + "\n\n" + files(("helpers_plugin.py", PASSING_HOOK))

    result, summary, check, failures = check_tree(fake, tmp_path, BUGGY_LIBRARY, tests)

    assert_not_a_success(result, summary, check, "refused")
    [refusal] = [f for f in failures if "tests/test_bucket.py" in f["files"]]
    assert "tests/test_bucket.py, line 3: pytest_plugins" in refusal["summary"]


# --- (c) a package named like an installed plugin ---------------------------------------------


def test_a_package_named_like_an_installed_distribution_is_refused_naming_it(fake, tmp_path):
    pytest.importorskip("pytest_asyncio")
    lib = (
        BUGGY_LIBRARY
        + "\n\n"
        + files(("pytest_asyncio/__init__.py", ""), ("pytest_asyncio/plugin.py", PASSING_HOOK))
    )

    result, summary, check, failures = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "refused")
    [refusal] = [f for f in failures if "installed distribution" in f["summary"]]
    assert "pytest_asyncio/__init__.py: the name 'pytest_asyncio'" in refusal["summary"]
    assert "installed distribution pytest-asyncio" in refusal["summary"]


# --- routes the static screen cannot see: the second run disagrees ----------------------------


def test_a_test_module_rewriting_reports_through_pytests_public_api_is_inconsistent(fake, tmp_path):
    # A test module may import pytest, and pytest exports its report class.
    tests = TESTS.replace(
        "from ratelimit import TokenBucket",
        "import pytest\nfrom ratelimit import TokenBucket\n\n"
        "_made = pytest.TestReport.__init__\n\n\n"
        "def _passed(self, *args, **kwargs):\n"
        "    _made(self, *args, **kwargs)\n"
        "    self.outcome = 'passed'\n"
        "    self.longrepr = None\n\n\n"
        "pytest.TestReport.__init__ = _passed",
    )

    result, summary, check, failures = check_tree(fake, tmp_path, BUGGY_LIBRARY, tests)

    assert_not_a_success(result, summary, check, "test results inconsistent")
    assert "pytest passed tests/test_bucket.py::test_takes_until_empty" in check["detail"]
    assert "a second run failed it" in check["detail"]
    # The failure goes back as the test's, implicating the code it tests.
    [failure] = failures
    assert "ratelimit/bucket.py" in failure["files"]
    assert "[bucket.take() for _ in range(3)] == [True, True, False]" in failure["summary"]


def test_pytests_internals_reached_by_a_name_built_at_run_time_is_inconsistent(fake, tmp_path):
    trick = """
        import importlib

        reports = importlib.import_module("_py" + "test.reports")
        _made = reports.TestReport.__init__


        def _passed(self, *args, **kwargs):
            _made(self, *args, **kwargs)
            self.outcome = "passed"
            self.longrepr = None


        reports.TestReport.__init__ = _passed
    """
    lib = importing_first(trick)

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "test results inconsistent")


def test_code_that_is_right_only_while_pytest_runs_a_test_is_inconsistent(fake, tmp_path):
    # Correct only when pytest's per-test variable is set: under test, never in use.
    lib = BUGGY_LIBRARY.replace(
        "if self.tokens < 0:",
        "if self.tokens < int('PYTEST_CURRENT_TEST' in __import__('os').environ):",
    )
    assert lib != BUGGY_LIBRARY

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "test results inconsistent")


# --- code under test reaching for the runner by other means than an import ---------------------

LOOKS_FOR_THE_RUNNER = {
    "walks frames up to pytest's report": """
        import sys

        frame = sys._getframe(1)
        while frame is not None and "report" not in frame.f_locals:
            frame = frame.f_back
    """,
    "finds pytest's modules in sys.modules": """
        import sys

        reports = sys.modules.get("_py" + "test.reports")
    """,
    "walks the garbage collector's objects": """
        import gc

        reports = [o for o in gc.get_objects() if type(o).__name__ == "TestReport"]
    """,
}


@pytest.mark.parametrize("trick", LOOKS_FOR_THE_RUNNER.values(), ids=LOOKS_FOR_THE_RUNNER.keys())
def test_a_module_under_test_that_looks_for_the_runner_is_refused(fake, tmp_path, trick):
    lib = importing_first(trick)

    result, summary, check, failures = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "refused")
    refusals = [f for f in failures if "ratelimit/compat.py" in f["files"]]
    assert refusals, failures
    for refusal in refusals:
        assert "code under test may not look for the test runner" in refusal["summary"]


# --- the result channel ------------------------------------------------------------------------

# Lines in each runner's own format saying the test passed, written to the result channel (its
# number is the runner's first argument), then an exit before anything else is reported.
FORGE = textwrap.dedent(
    """
    import json
    import os
    import sys

    TEST = "tests/test_bucket.py::test_takes_until_empty"


    def forged_lines():
        if sys.argv[0].endswith("witness_runner.py"):
            said = [{"event": "test", "id": TEST, "outcome": "passed"}, {"event": "finish"}]
        else:
            said = [{"event": "collected", "count": 1}]
            said += [
                {"event": "report", "id": TEST, "when": when, "outcome": "passed"}
                for when in ("setup", "call", "teardown")
            ]
            said.append({"event": "finish", "exitstatus": 0, "collected": 1, "failed": 0})
        return "".join(json.dumps(message) + "\\n" for message in said).encode()
    """
)


def test_forged_results_written_straight_into_the_result_channel_are_not_the_runners(
    fake, tmp_path
):
    trick = FORGE + "\n\nos.write(int(sys.argv[1]), forged_lines())\nos._exit(0)\n"
    lib = importing_first(trick)

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "test results inconsistent")
    assert "lacks the run's key: something else than the runner wrote it" in check["detail"]


def test_a_test_that_runs_the_runner_again_with_a_hook_passing_every_test_is_not_believed(
    fake, tmp_path
):
    # The test module starts pytest's runner itself, with its own arguments and the same result
    # channel, and adds itself as a plugin whose hook turns failures into passes; then it
    # leaves with that run's exit status, before its own run reports anything.
    tests = TESTS.replace(
        "from ratelimit import TokenBucket",
        "import os\nimport subprocess\nimport sys\n\nimport pytest\n"
        "from ratelimit import TokenBucket\n\n"
        + textwrap.dedent(PASSING_HOOK).split("\n\n", 1)[1]
        + "\n\nif sys.argv[0].endswith('pytest_channel.py') and 'AGAIN' not in os.environ:\n"
        "    os.environ['AGAIN'] = '1'\n"
        "    again = [sys.executable, '-I', '-B', *sys.argv, '-p', 'tests.test_bucket']\n"
        "    fd = int(sys.argv[1])\n"
        "    os._exit(subprocess.run(again, pass_fds=(fd,)).returncode)\n",
    )

    result, summary, check, _ = check_tree(fake, tmp_path, BUGGY_LIBRARY, tests)

    assert_not_a_success(result, summary, check, "test results inconsistent")
    assert "lacks the run's key" in check["detail"]


def test_a_child_left_behind_to_forge_the_results_later_is_gone_with_the_run(fake, tmp_path):
    # A child of the code under test leaves the process group and outlives the runner, to
    # write forged results once the real ones are in, and stays.
    marker = f"left-behind-{uuid.uuid4().hex}"
    trick = FORGE + textwrap.dedent(
        f"""

        WAIT_THEN_FORGE = (
            'while kill -0 "$1" 2>/dev/null; do sleep 0.01; done; printf %s "$2" >&"$0"'
        )
        runner = os.getpid()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sh", ["/bin/sh", "-c", WAIT_THEN_FORGE + "; sleep 600", sys.argv[1],
                                     str(runner), forged_lines().decode(), {marker!r}])
            os._exit(0)
        """
    )
    lib = importing_first(trick)

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    # The sandbox ends with the runner: the child is killed with it (the test's failure stands),
    # or at best writes in the moment between, where its lines lack the run's key. The run did
    # not wait for it (no time-out), and nothing is left running.
    assert_not_a_success(result, summary, check, "")
    assert check["detail"].startswith("1 failed") or "lacks the run's key" in check["detail"]
    assert wait_gone(marker) == []


# --- start-up hooks ----------------------------------------------------------------------------


def test_a_tree_naming_a_module_after_pythons_start_up_hook_is_refused(fake, tmp_path):
    hook = "import os\n\nos.environ['PYTEST_ADDOPTS'] = '-p no:python'\n"
    lib = BUGGY_LIBRARY + "\n\n" + files(("sitecustomize.py", hook), ("usercustomize.py", hook))

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    assert not check["passed"], check
    assert summary["status"] != "SUCCESS" and result.returncode != 0, result.stdout
    shown = json.dumps(summary)
    assert "sitecustomize" in shown and "test runner" in shown, shown


HOOK_AS_A_PLUGIN = """
    def pytest_runtest_logreport(report):
        report.outcome = "passed"
"""
DIST_INFO = (
    "```text\n# file: ratelimit_hooks-1.0.dist-info/entry_points.txt\n"
    "[pytest11]\nratelimit_hooks = ratelimit_hooks\n```\n"
)


def test_a_tree_declaring_itself_a_distribution_with_a_pytest_plugin_loads_nothing(fake, tmp_path):
    # importlib.metadata would find this as an installed distribution wherever the tree is on
    # the path, and pytest would load its plugin if plugins were loaded automatically.
    lib = f"{BUGGY_LIBRARY}\n\n{files(('ratelimit_hooks.py', HOOK_AS_A_PLUGIN))}\n\n{DIST_INFO}"

    result, summary, check, _ = check_tree(fake, tmp_path, lib)

    assert_not_a_success(result, summary, check, "1 failed")


def test_a_test_module_that_finds_the_runners_own_channel_in_its_process_is_refused(fake, tmp_path):
    # Each runner sends with the run's key: the object that holds it is in the test's own
    # process, and the garbage collector lists every object.
    tests = TESTS.replace(
        "from ratelimit import TokenBucket",
        FORGE.replace("import json\n", "import gc\nimport json\n")
        + "\n\nfor found in gc.get_objects():\n"
        "    if type(found).__name__ == 'Channel':\n"
        "        for line in forged_lines().decode().splitlines():\n"
        "            found.send(**json.loads(line))\n"
        "        os._exit(0)\n\n"
        "from ratelimit import TokenBucket",
    )

    result, summary, check, failures = check_tree(fake, tmp_path, BUGGY_LIBRARY, tests)

    assert_not_a_success(result, summary, check, "refused")
    assert "tests/test_bucket.py, line " in failures[0]["summary"]
    assert "uses .get_objects: a test may not walk frames" in failures[0]["summary"]
