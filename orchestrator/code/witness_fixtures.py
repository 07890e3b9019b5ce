"""The fixtures of the second witness (``witness_runner``), resolved as pytest resolves them: the
test module's and class's own (``yield`` fixtures, any scope, ``autouse``), and the builtin
``tmp_path``, ``tmp_path_factory``, ``monkeypatch`` and ``capsys``. A fixture it cannot provide
the way pytest would (async, unknown, with ``params``) makes the test ``Unwitnessed``.

Like ``witness_runner``, this file runs inside the sandbox on its own: the runner loads it by
its path, from beside itself; the standard library only (pytest is imported for
``monkeypatch``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import sys
import tempfile
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

SCOPES = ("session", "package", "module", "class", "function")


class Unwitnessed(Exception):
    """This test cannot be run the way pytest runs it; the message says why."""


class FixtureMarker(Protocol):
    """What this reads of pytest's mark on a fixture function (its ``name``, ``scope`` and
    ``params`` are read with ``getattr``: not every pytest has each)."""

    autouse: bool


def fixture_of(obj: object) -> tuple[FixtureMarker, Callable[..., object]] | None:
    """(marker, function) of a pytest fixture definition, or None."""
    try:
        marker = getattr(obj, "_fixture_function_marker", None) or getattr(
            obj, "_pytestfixturefunction", None
        )
    except Exception:
        return None
    if marker is None or not callable(obj):  # pytest's decorator makes a callable
        return None
    if hasattr(obj, "_get_wrapped_function"):
        return marker, obj._get_wrapped_function()
    return marker, getattr(getattr(obj, "__pytest_wrapped__", None), "obj", obj)


class Fixture:
    def __init__(
        self,
        name: str,
        function: Callable[..., object] | None,
        scope: str,
        autouse: bool,
        key: object,
    ) -> None:
        self.name, self.function, self.scope, self.autouse, self.key = (
            name,
            function,
            scope,
            autouse,
            key,
        )


def definitions(namespace: dict[str, object], owner: object, holder: object) -> dict[str, Fixture]:
    """The fixtures defined in ``namespace`` (of ``holder``, a module or class); a class's
    are bound to ``owner``, the test's instance."""
    found: dict[str, Fixture] = {}
    for attribute, obj in list(namespace.items()):
        fixture = fixture_of(obj)
        if fixture is None:
            continue
        marker = fixture[0]
        function: Callable[..., object] | None = fixture[1]
        if owner is not None:  # a method: bound to the test's instance when it runs
            function = getattr(owner, attribute, None)
            fixture = fixture_of(function)
            function = fixture[1] if fixture else None
        name = getattr(marker, "name", None) or attribute
        scope = getattr(marker, "scope", "function")
        if getattr(marker, "params", None) is not None or scope not in SCOPES or function is None:
            found[name] = Fixture(name, None, "function", bool(marker.autouse), None)
        else:
            key = (id(holder), name)
            found[name] = Fixture(name, function, scope, bool(marker.autouse), key)
    return found


class CaptureResult(namedtuple("CaptureResult", ["out", "err"])):
    pass


class Capsys:
    def __init__(self) -> None:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._out, self._err

    def readouterr(self) -> CaptureResult:
        result = CaptureResult(self._out.getvalue(), self._err.getvalue())
        for stream in (self._out, self._err):
            stream.seek(0)
            stream.truncate()
        return result

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        sys.stdout, sys.stderr = self._saved
        try:
            yield
        finally:
            sys.stdout, sys.stderr = self._out, self._err

    def close(self) -> None:
        sys.stdout, sys.stderr = self._saved


class TmpPathFactory:
    def __init__(self) -> None:
        self._base = Path(tempfile.mkdtemp(prefix="witness-"))
        self._count = itertools.count()

    def getbasetemp(self) -> Path:
        return self._base

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        path = self._base / (f"{basename}{next(self._count)}" if numbered else basename)
        path.mkdir()
        return path


class Scopes:
    """Fixture values and finalizers per scope; a scope's finalizers run when it closes."""

    def __init__(self) -> None:
        self.values: dict[str, dict[object, object]] = {s: {} for s in SCOPES}
        self.finalizers: dict[str, list[Callable[[], object]]] = {s: [] for s in SCOPES}
        self.factory: TmpPathFactory | None = None

    def close(self, scope: str) -> list[BaseException]:
        errors: list[BaseException] = []
        while self.finalizers[scope]:
            try:
                self.finalizers[scope].pop()()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                errors.append(exc)
        self.values[scope].clear()
        return errors

    def builtin(self, name: str) -> object:
        if name in ("tmp_path_factory", "tmp_path"):
            if self.factory is None:
                self.factory = TmpPathFactory()
            if name == "tmp_path_factory":
                return self.factory
            return self.factory.mktemp("tmp")
        if name == "monkeypatch":
            from pytest import MonkeyPatch

            patch = MonkeyPatch()
            self.finalizers["function"].append(patch.undo)
            return patch
        if name == "capsys":
            capture = Capsys()
            self.finalizers["function"].append(capture.close)
            return capture
        raise Unwitnessed(f"fixture {name!r} is not one the second run provides")


def argnames(function: Callable[..., object]) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise Unwitnessed("its signature cannot be read") from exc
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


class Resolver:
    def __init__(self, scopes: Scopes, layers: list[dict[str, Fixture]]) -> None:
        self.scopes = scopes
        self.layers = layers  # innermost first: the class's, the module's
        self.active: set[str] = set()

    def autouse(self) -> list[str]:
        names: list[str] = []
        for layer in reversed(self.layers):
            names += [n for n, f in layer.items() if f.autouse and n not in names]
        return names

    def value(self, name: str) -> object:
        fixture = next((layer[name] for layer in self.layers if name in layer), None)
        if fixture is None:
            return self.scopes.builtin(name)
        if fixture.function is None:
            raise Unwitnessed(f"fixture {name!r} has params or a scope the second run lacks")
        cache = self.scopes.values[fixture.scope]
        if fixture.key in cache:
            return cache[fixture.key]
        if name in self.active:
            raise Unwitnessed(f"fixture {name!r} overrides itself")
        function = fixture.function
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            raise Unwitnessed(f"fixture {name!r} is async")
        self.active.add(name)
        try:
            kwargs = {arg: self.value(arg) for arg in argnames(function)}
        finally:
            self.active.discard(name)
        if inspect.isgeneratorfunction(function):
            generator = function(**kwargs)
            value = next(generator)

            def finish(generator: Iterator[object] = generator, name: str = name) -> None:
                try:
                    next(generator)
                except StopIteration:
                    return
                raise RuntimeError(f"fixture {name!r} yielded twice")

            self.scopes.finalizers[fixture.scope].append(finish)
        else:
            value = function(**kwargs)
        cache[fixture.key] = value
        return value
