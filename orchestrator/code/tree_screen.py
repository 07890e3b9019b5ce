"""The screen a tree's Python passes before any of it runs: what could change how its tests are
judged is refused, with the file, the line and the reason.

The tests' verdict comes from pytest running in the sandbox (``pytest_channel``) and from a
second, independent run (``witness_runner``). Code that shares pytest's process could rewrite
pytest's reports from the inside; the screen refuses the ordinary ways to reach it:

- ``pytest_plugins`` anywhere: a module naming plugins for pytest to load (a hook turning
  failures into passes) even with conftest files off;
- a top-level name that an installed distribution provides (``pytest_asyncio``, ``pluggy``,
  ``yaml``), computed from the environment that runs the tests: the tree's copy would be
  imported instead of the installed one, by pytest's plugin loading or lazily by pytest itself;
  and the names of the runner and of Python's start-up hooks (``sitecustomize``, ``conftest``),
  which no distribution lists;
- ``_pytest`` or ``pluggy`` imported anywhere (pytest's internals; a test needs only ``pytest``);
- a module that is not a test module (``test_*.py``, ``*_test.py``) reaching for the test
  runner: importing ``pytest`` (in any form: ``import``, ``from``, ``__import__`` or
  ``importlib.import_module`` with the name written out), walking frames (``sys._getframe``,
  ``inspect.currentframe``/``stack``, ``.f_back``, ``.tb_frame``, ``.gi_frame``, tracing hooks),
  or reaching objects by the interpreter's tables (``sys.modules``, ``gc.get_referents``,
  ``gc.get_referrers``, ``gc.get_objects``);
- a test module walking frames or the object graph (all of the above but ``sys.modules``): each
  runner keeps the key its results are sent with in its own process, and a test that could find
  it could send results of its own in both runs.

A static screen does not see through a name built at run time; the second run is there for that.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["RUNNER_MODULES", "Refused", "is_test_module", "provided_names", "screen"]

# Modules whose replacement would replace the test runner itself or Python's start-up hooks.
RUNNER_MODULES = frozenset(
    {"pytest", "_pytest", "pluggy", "py", "sitecustomize", "usercustomize", "conftest"}
)
_INTERNALS = frozenset({"_pytest", "pluggy"})  # refused in every module
_RUNNER = frozenset({"pytest", "py"}) | _INTERNALS  # refused outside test modules
_PLUGINS = "pytest_plugins"

# Attribute names that only ever lead to frames or the interpreter's object tables.
_FRAME_ATTRIBUTES = frozenset(
    {"_getframe", "_current_frames", "currentframe", "getouterframes", "getinnerframes"}
    | {"f_back", "f_globals", "f_locals", "tb_frame", "gi_frame", "cr_frame", "ag_frame"}
    | {"walk_stack", "settrace", "setprofile", "get_referents", "get_referrers", "get_objects"}
)
# Names of these modules that do the same, and are too common to refuse on any object.
_MODULE_ATTRIBUTES = {
    "sys": frozenset({"modules", "meta_path", "path_hooks"}),
    "inspect": frozenset({"stack", "trace"}),
    "threading": frozenset({"settrace", "setprofile", "settrace_all_threads"}),
}
_IMPORTERS = frozenset({"__import__", "import_module"})


@dataclass(frozen=True)
class Refused:
    """One thing the screen refused: where, and why."""

    path: str
    line: int  # 0: the file as a whole (its name)
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line else self.path
        return f"{where}: {self.reason}"


def is_test_module(path: str) -> bool:
    """A test module by its name, as pytest's default ``python_files`` has it."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


@functools.cache
def provided_names() -> Mapping[str, str]:
    """Top-level module name -> the installed distribution that provides it, in the
    environment of this interpreter (the one that runs the tests)."""
    import importlib.metadata  # slow to import, and only a tree with tests needs it

    names: dict[str, str] = {}
    for name, distributions in importlib.metadata.packages_distributions().items():
        if name.isidentifier():
            names[name] = ", ".join(sorted(set(distributions)))
    return names


def screen(files: Mapping[str, str], roots: Iterable[str] = ("",)) -> list[Refused]:
    """What in ``files`` (relative path -> source) is refused, in path order. ``roots`` are the
    directories (relative, ``""`` for the top) the tree's modules are importable from."""
    refused = _names(files, tuple(roots))
    for path in sorted(files):
        if path.endswith(".py"):
            refused += _source(path, files[path])
    return refused


def _names(files: Mapping[str, str], roots: tuple[str, ...]) -> list[Refused]:
    provided = provided_names()
    refused = []
    for name, path in _top_level_names(files, roots).items():
        if name in RUNNER_MODULES:
            reason = f"the name {name!r} is the test runner's: choose another name"
        elif name in provided:
            reason = (
                f"the name {name!r} is provided by the installed distribution "
                f"{provided[name]}: a tree may not replace an installed package; choose "
                "another name"
            )
        else:
            continue
        refused.append(Refused(path, 0, reason))
    return sorted(refused, key=lambda r: r.path)


def _top_level_names(files: Mapping[str, str], roots: tuple[str, ...]) -> dict[str, str]:
    """Name -> the first file that makes it importable at the top: a module or package at an
    import root, and every module of a directory that is no package (pytest puts a test's
    directory on the path when it is not a package)."""
    python = sorted(p for p in files if p.endswith((".py", ".pyi")))
    packages = {str(PurePosixPath(p).parent) for p in python if PurePosixPath(p).stem == "__init__"}
    names: dict[str, str] = {}
    for path in python:
        parts = PurePosixPath(path)
        for root in roots:
            prefix = f"{root}/" if root else ""
            if path.startswith(prefix):
                head = PurePosixPath(path[len(prefix) :]).parts[0]
                module = head.rsplit(".", 1)[0] if head.endswith((".py", ".pyi")) else head
                names.setdefault(module, path)
        if str(parts.parent) not in packages and parts.stem != "__init__":
            names.setdefault(parts.stem, path)
    return names


def _source(path: str, source: str) -> list[Refused]:
    try:
        syntax = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # it cannot run; compiling it reports why
    test = is_test_module(path)
    modules = _module_aliases(syntax)
    found: dict[int, str] = {}

    def refuse(node: ast.AST, reason: str) -> None:
        found.setdefault(getattr(node, "lineno", 1), reason)

    for node in ast.walk(syntax):
        for name in _names_of(node):
            if name == _PLUGINS:
                refuse(
                    node,
                    "pytest_plugins names plugins for pytest to load into the run that judges "
                    "the tests; a tree may not load plugins",
                )
        for module in _imported(node):
            top = module.split(".")[0]
            if top in _INTERNALS or (top in _RUNNER and not test):
                where = "the test runner's internals" if top in _INTERNALS else "the test runner"
                whom = "" if top in _INTERNALS else " (only test modules may import pytest)"
                refuse(node, f"imports {module}: {where}{whom}")
        reach = _reaches_runner(node, modules, test)
        if reach and test:
            refuse(
                node,
                f"{reach}: a test may not walk frames or the garbage collector's object graph, "
                "where the runners keep their own state",
            )
        elif reach:
            refuse(
                node,
                f"{reach}: code under test may not look for the test runner (frames, "
                "sys.modules, the garbage collector's object graph)",
            )
    return [Refused(path, line, reason) for line, reason in sorted(found.items())]


def _names_of(node: ast.AST) -> list[str]:
    """The names a node binds, reads or spells out as a string."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.alias):
        return [node.name.split(".")[-1], node.asname or ""]
    if isinstance(node, ast.Global | ast.Nonlocal):
        return list(node.names)
    return []


def _imported(node: ast.AST) -> list[str]:
    """The absolute modules a node imports, with the name written out."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.module and node.level == 0 else []
    if isinstance(node, ast.Call) and node.args:
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        first = node.args[0]
        if name in _IMPORTERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value]
    return []


def _module_aliases(syntax: ast.AST) -> dict[str, str]:
    """Local name -> the module of ``_MODULE_ATTRIBUTES`` an import binds it to."""
    aliases: dict[str, str] = {}
    for node in ast.walk(syntax):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in _MODULE_ATTRIBUTES:
                    aliases[alias.asname or alias.name] = alias.name
    return aliases


def _reaches_runner(node: ast.AST, modules: Mapping[str, str], test: bool) -> str:
    """How ``node`` reaches for the runner (``sys._getframe``), or "". A ``test`` module may
    use ``sys.modules`` (a test swaps modules there), not frames or the object graph."""
    if isinstance(node, ast.Attribute):
        if node.attr in _FRAME_ATTRIBUTES:
            return f"uses .{node.attr}"
        base = node.value
        module = modules.get(base.id) if isinstance(base, ast.Name) else None
        if module is not None and node.attr in _MODULE_ATTRIBUTES[module]:
            if not (test and module == "sys"):
                return f"uses {module}.{node.attr}"
    if isinstance(node, ast.ImportFrom) and node.module in (*_MODULE_ATTRIBUTES, "gc", "traceback"):
        refused = _MODULE_ATTRIBUTES.get(node.module, frozenset()) | _FRAME_ATTRIBUTES | {"*"}
        if test and node.module == "sys":
            refused = _FRAME_ATTRIBUTES
        for alias in node.names:
            if alias.name in refused:
                return f"imports {alias.name} from {node.module}"
    if isinstance(node, ast.Constant) and node.value in _FRAME_ATTRIBUTES:
        return f"names {node.value!r}"  # getattr(sys, "_getframe")
    if isinstance(node, ast.Name) and node.id in _FRAME_ATTRIBUTES:
        return f"uses {node.id}"
    return ""
