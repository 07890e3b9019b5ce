"""The package's floor plan: what a reader can rely on when they open any file of it.

Modules are grouped by concern (``run``, ``task``, ``jobs``, ``llm``, ``routing``, ``money``,
``store``, ``code``, ``text``, ``observe``, ``cli``); no module imports, as it loads, a module
that imports it back; and no module, class or function outgrows what one reading takes in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
CONCERNS = {
    "run", "task", "jobs", "llm", "routing", "money", "store", "code", "text", "observe", "cli",
    "web",
}  # fmt: skip

# The design document's import paths, each a module that only re-exports (see test_import_weight).
DESIGN_PATHS = {
    "audit", "cache", "cost", "hooks", "metrics", "models", "optimization", "policy", "policy_dsl",
    "state",
}  # fmt: skip
# What every concern shares: the errors a user sees, where state lives, a few helpers.
SHARED = {"__init__", "__main__", "errors", "settings", "aio", "files", "user_files"}

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports_at_load(name: str, path: Path) -> set[str]:
    """The package's modules that loading ``name`` imports: every import statement run when the
    module is imported (not those inside functions or under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return found


def _load_graph() -> dict[str, set[str]]:
    modules = dict(_modules())
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imports_at_load(name, path):
            # importing a.b.c loads a.b (its __init__) too
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules around it, or None."""
    state: dict[str, int] = {}  # 1: being visited, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back_as_it_loads():
    cycle = _cycle(_load_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_top_level_holds_only_the_concerns_the_shared_modules_and_the_design_paths():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    folders = {
        path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    assert folders == CONCERNS
    assert top == SHARED | DESIGN_PATHS


def test_a_design_path_module_only_re_exports():
    for stem in DESIGN_PATHS:
        tree = ast.parse((PACKAGE / f"{stem}.py").read_text())
        kinds = {type(node).__name__ for node in tree.body}
        assert kinds <= {"Expr", "ImportFrom", "Assign"}, stem


def _sizes() -> Iterator[tuple[str, str, int, int]]:
    """(kind, where, lines, limit) of every module, class and function of the package."""
    for _, path in _modules():
        where = str(path.relative_to(PACKAGE.parent))
        text = path.read_text()
        yield "module", where, len(text.splitlines()), MAX_MODULE_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                kind, limit = "class", MAX_CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                kind, limit = "function", MAX_FUNCTION_LINES
            else:
                continue
            assert node.end_lineno is not None
            yield kind, f"{where}:{node.name}", node.end_lineno - node.lineno + 1, limit


@pytest.mark.parametrize("kind", ["module", "class", "function"])
def test_nothing_outgrows_what_one_reading_takes_in(kind):
    over = {where: lines for k, where, lines, limit in _sizes() if k == kind and lines > limit}
    assert not over, f"over the {kind} limit: {over}"
