"""What pip installs: a distribution with a name of its own, pytest with it, and its licence."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import orchestrator

ROOT = Path(__file__).resolve().parents[1]


def test_the_distribution_is_not_the_unrelated_orchestrator_on_pypi():
    assert orchestrator.DISTRIBUTION == "orchestrator-llm"
    assert importlib.metadata.metadata(orchestrator.DISTRIBUTION)["Name"] == "orchestrator-llm"
    assert orchestrator.__version__ == importlib.metadata.version("orchestrator-llm")


def test_pytest_is_installed_with_the_tool_since_its_checks_run_the_trees_tests():
    requires = importlib.metadata.requires(orchestrator.DISTRIBUTION) or []
    runtime = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r}
    assert "pytest" in runtime


def test_the_licence_the_project_declares_is_shipped_beside_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert "LICENSE" in (
        importlib.metadata.metadata(orchestrator.DISTRIBUTION).get_all("License-File") or []
    )
