"""Importing the package is light: ``import orchestrator`` loads none of its modules, a public
name loads its own module's chain only, and ``--help`` answers without the engine.

Each check runs in a fresh interpreter and looks at what it added to ``sys.modules``: what a
library loads on import is paid by every program that imports it, whether it runs a project
or not.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, clean_environment, fake_env

import orchestrator

# Libraries that are slow to import and needed only when something is run: the vendor SDKs and
# their HTTP clients, the schema validator, the stores' drivers, the package metadata, ...
HEAVY = (
    "openai", "anthropic", "google.genai", "httpx", "httpx2", "jsonschema", "aiosqlite",
    "psycopg", "procrastinate", "prometheus_client", "xllamacpp", "dotenv",
    "importlib.metadata", "urllib.request", "email.utils",
)  # fmt: skip
# ... and what only a run needs: the engine, its stores, the YAML reader of the catalog files.
RUN_ONLY = (
    "asyncio", "yaml", "sqlite3", "orchestrator.run.engine", "orchestrator.run.orchestrator",
    "orchestrator.cli.commands", "orchestrator.store.state", "orchestrator.llm.client",
)  # fmt: skip
# ... and what only the page over the store needs (--serve: the web extra).
WEB = ("starlette", "uvicorn", "jinja2", "orchestrator.web")

WHAT_IT_ADDS = """
import json, sys
before = set(sys.modules)
{code}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def modules_added(code: str, *argv: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``code`` adds to a fresh interpreter's ``sys.modules`` (run with ``argv``,
    and ``env`` added to its environment)."""
    result = subprocess.run(
        [sys.executable, "-c", WHAT_IT_ADDS.format(code=code), *argv],
        cwd=PROJECT_ROOT, env={**clean_environment(), **(env or {})}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def loaded(added: set[str], names: tuple[str, ...]) -> set[str]:
    return {name for name in names if name in added}


def test_importing_the_package_loads_none_of_its_modules():
    added = modules_added("import orchestrator")

    assert loaded(added, HEAVY + RUN_ONLY + WEB) == set()
    assert sorted(m for m in added if m.startswith("orchestrator.")) == []


@pytest.mark.parametrize("names", ["Orchestrator, RunConfig", "AgentPool", "CostForecaster"])
def test_a_public_name_loads_no_sdk_nor_what_only_a_run_uses(names):
    added = modules_added(f"from orchestrator import {names}")

    assert loaded(added, HEAVY) == set()


def test_help_is_answered_without_importing_the_engine():
    run_help = """
from orchestrator.cli.app import run
try:
    run()
except SystemExit as exit:
    assert exit.code == 0, exit.code
"""
    added = modules_added(run_help, "--help")

    assert loaded(added, HEAVY + RUN_ONLY + WEB) == set()


def test_a_whole_run_from_the_command_line_never_imports_the_page(fake, llm, tmp_path):
    run_project = f"""
from orchestrator.cli.app import main
assert main(["--project", "[project] add", "--criteria", "add works", "--budget", "2",
             "--output-dir", {str(tmp_path / "results")!r}]) == 0
"""
    added = modules_added(run_project, env=fake_env(fake.base_url))

    assert "orchestrator.run.engine" in added  # it ran
    assert loaded(added, WEB) == set()


@pytest.mark.parametrize(
    ("module", "above"),
    [
        ("orchestrator.run.tasks", ("orchestrator.money.budget", "orchestrator.llm.catalog")),
        ("orchestrator.money.forecast", ("orchestrator.observe.progress",)),
        ("orchestrator.observe.metrics", ("orchestrator.observe.progress",)),
        ("orchestrator.code.output_writer", ("orchestrator.observe.progress",)),
    ],
    ids=["models", "cost", "metrics", "output_writer"],
)
def test_a_module_imports_nothing_from_the_layers_above_it(module, above):
    """The vocabulary stays below the budget and the catalog; money is written for people by
    ``orchestrator.money.units``, not by the progress display."""
    assert loaded(modules_added(f"import {module}"), above) == set()


def test_each_public_name_is_the_one_its_module_defines():
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None, name
    assert "__version__" in dir(orchestrator)
    with pytest.raises(AttributeError):
        orchestrator.NoSuchName  # noqa: B018


def test_what_type_checkers_see_is_what_the_package_gives():
    """The ``TYPE_CHECKING`` imports of ``orchestrator/__init__.py`` name every public name,
    each from the module the package takes it from at run time."""
    tree = ast.parse((PROJECT_ROOT / "orchestrator" / "__init__.py").read_text())
    guarded = next(
        node for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )  # fmt: skip
    seen = {}
    for node in guarded.body:
        if isinstance(node, ast.AnnAssign):  # __version__: str
            continue
        assert isinstance(node, ast.ImportFrom) and node.module
        module = importlib.import_module(node.module)
        for alias in node.names:
            seen[alias.name] = getattr(module, alias.name)

    assert sorted(seen) == sorted(orchestrator.__all__)
    assert {name: getattr(orchestrator, name) for name in seen} == seen


# Each module path the design document's examples import, and the module that holds its names now.
DESIGN_PATHS = {
    "orchestrator.optimization": "orchestrator.routing.backends",
    "orchestrator.policy": "orchestrator.routing.policy",
    "orchestrator.audit": "orchestrator.observe.audit",
    "orchestrator.hooks": "orchestrator.observe.hooks",
    "orchestrator.metrics": "orchestrator.observe.metrics",
    "orchestrator.policy_dsl": "orchestrator.routing.policy_file",
    "orchestrator.cost": "orchestrator.money.forecast",
    "orchestrator.models": "orchestrator.run.tasks",
    "orchestrator.cache": "orchestrator.llm.cache",
    "orchestrator.state": "orchestrator.store.state",
}


def _public_names_defined_in(module):
    tree = ast.parse(Path(module.__file__).read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node]
        for target in targets:
            name = getattr(target, "name", None) or getattr(target, "id", None)
            if name and not name.startswith("_"):
                yield name


@pytest.mark.parametrize("path", sorted(DESIGN_PATHS))
def test_the_design_documents_import_paths_give_the_same_objects(path):
    """Code written from the design's examples keeps working: its path gives every public name
    of the module that holds them now, as the very same objects."""
    design, home = importlib.import_module(path), importlib.import_module(DESIGN_PATHS[path])
    names = set(_public_names_defined_in(home))
    assert names and names <= set(design.__all__)
    for name in names:
        assert getattr(design, name) is getattr(home, name)


def test_the_design_documents_one_function_path_works():
    from orchestrator.models import build_default_profiles

    assert build_default_profiles is orchestrator.build_default_profiles
    assert importlib.import_module("orchestrator").cost is sys.modules["orchestrator.cost"]
