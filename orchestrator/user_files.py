"""Reading the files a user names (project, catalog, policy), within bounds.

A file is read only up to ``MAX_FILE_BYTES``; a YAML file is composed (cheap: an alias is one
shared node) and then refused if, with its aliases expanded, it would hold more than
``MAX_VALUES`` values, nest deeper than ``MAX_DEPTH`` collections or contain itself, before
anything is built from it or validated. So a "billion laughs" file or one nested 50,000 deep
is one line of error naming the file, never a hang or a traceback. JSON has no aliases; its
nesting has the same bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 100  # collections inside collections
MAX_VALUES = 100_000  # scalars and collections, keys included, every alias expanded

_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def read_user_file(path: Path, origin: str, error: type[Exception]) -> str:
    """The text of a file the user named; ``error`` with one line starting with ``origin``
    when it is missing, unreadable, larger than ``MAX_FILE_BYTES`` or not UTF-8."""
    try:
        with path.open("rb") as handle:  # never more than the bound, even from a device
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{origin}: no such file") from None
    except OSError as exc:
        raise error(f"{origin}: cannot be read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"{origin}: refused: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{origin}: not UTF-8 text") from None


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that is too big to build: reported as what it is, not as a syntax error."""


if TYPE_CHECKING:
    # What a loader this is mixed into provides: PyYAML's composer and parser (libyaml's
    # CParser has the same methods).
    class _Loader(yaml.parser.Parser, yaml.composer.Composer): ...
else:
    _Loader = object


class _Bounded(_Loader):
    """What makes a loader refuse a document past the bounds, before constructing it."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Only the pure-Python composer recurses here (libyaml's has its own nesting limit):
        # stop at the bound rather than at Python's recursion limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                # types-PyYAML leaves Parser.peek_event unannotated.
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _Refused(problem=_TOO_DEEP, problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_bounds(node)
        return node


class PurePythonLoader(_Bounded, yaml.SafeLoader):
    """``yaml.SafeLoader`` within the bounds: the loader where PyYAML has no libyaml."""


if TYPE_CHECKING:  # libyaml's loader has the pure-Python one's interface
    _FastestSafeLoader = yaml.SafeLoader
else:  # CSafeLoader exists only where PyYAML was built with libyaml
    _FastestSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SafeLoader(_Bounded, _FastestSafeLoader):
    """``yaml.SafeLoader`` within the bounds, libyaml's where PyYAML was built with it (the
    catalog is read at every start)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_bounds(root: yaml.Node) -> None:
    """Raise ``_Refused`` if ``root`` expanded is too big, too deep or contains itself.

    Each distinct node is visited once, with what it stands for (values, depth) remembered, so
    the cost is that of the file as written, not as expanded.
    """
    values: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if not children_done:
            if key in values:
                continue
            if key in open_nodes:  # an alias inside the node its anchor names
                raise _Refused(problem="an alias refers to a value that contains it",
                               problem_mark=node.start_mark)  # fmt: skip
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
            continue
        open_nodes.discard(key)
        children = _children(node)
        values[key] = 1 + sum(values[id(child)] for child in children)
        is_collection = not isinstance(node, yaml.ScalarNode)
        depth[key] = is_collection + max((depth[id(child)] for child in children), default=0)
        if values[key] > MAX_VALUES:
            raise _Refused(problem=f"more than {MAX_VALUES} values once its aliases are expanded",
                           problem_mark=node.start_mark)  # fmt: skip
        if depth[key] > MAX_DEPTH:
            raise _Refused(problem=_TOO_DEEP, problem_mark=node.start_mark)


def load_yaml(text: str, origin: str, error: type[Exception], loader: type = SafeLoader) -> Any:
    """The document in ``text``, read with ``loader`` (``SafeLoader`` or a subclass); ``error``
    with one line starting with ``origin`` if it is not valid YAML or is past the bounds."""
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "").split())
        if isinstance(exc, _Refused):
            raise error(f"{origin}: refused{where}: {problem}") from None
        raise error(f"{origin}: not valid YAML{where}{f': {problem}' if problem else ''}") from None


def load_json(text: str, origin: str, error: type[Exception]) -> Any:
    """The document in ``text``; ``error`` with one line starting with ``origin`` if it is not
    valid JSON or nests deeper than ``MAX_DEPTH``."""
    try:
        document = json.loads(text)
    except RecursionError:  # far deeper than the bound: the parser gave up first
        raise error(f"{origin}: refused: {_TOO_DEEP}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{origin}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    if _json_depth(document) > MAX_DEPTH:
        raise error(f"{origin}: refused: {_TOO_DEEP}")
    return document


def _json_depth(document: Any) -> int:
    deepest = 0
    stack = [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((item, level + 1) for item in value)
    return deepest
