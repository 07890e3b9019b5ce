"""The second witness of a test run: the tests run again without pytest's runner, in their own
process, and this verdict must agree with pytest's.

Usage (inside the sandbox): ``python -I -B witness_runner.py FD ROOTS_JSON TEST_FILE...``, with
the run's key on standard input (``pytest_channel.read_key``).

It imports each test module as pytest would (its directory, or the directory above its package,
first on the path; ``ROOTS_JSON`` lists the import roots) and calls the tests itself, in
pytest's order: module-level ``test*`` functions and the ``test*`` methods of ``Test*`` classes
(a fresh instance each), ``unittest.TestCase`` classes through ``unittest``,
``pytest.mark.parametrize`` expanded from its marks, the module's and classes' own fixtures
(``yield`` fixtures, any scope, ``autouse``), the builtin ``tmp_path``, ``tmp_path_factory``,
``monkeypatch`` and ``capsys``, and xunit ``setup_*``/``teardown_*``. A test it cannot run the
way pytest would (async, an unknown fixture, a fixture with ``params``, a ``skip``, ``skipif``,
``xfail`` or ``filterwarnings`` mark, a skip at run time) is reported ``unwitnessed``, never
guessed. One JSON line per test, after the run's key, goes to the inherited pipe FD the moment
it is known (a parametrized test is one line for all its parameter sets: its outcome is the
worst of theirs), then ``{"event": "finish"}``.

This file is copied into the sandbox and runs there on its own: the standard library, and the
channel of ``pytest_channel`` and the fixtures of ``witness_fixtures`` beside it, each loaded by
its path; pytest is imported only for ``monkeypatch``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
import types
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard


def _beside(name: str) -> types.ModuleType:
    """A module of this directory, which is not on the path (``python -I``)."""
    location = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_witness_{name}", location)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:  # what the checker reads; at run time, the files beside this one
    from orchestrator.code import pytest_channel as _channel
    from orchestrator.code import witness_fixtures as _fixtures
else:
    _channel = _beside("pytest_channel")
    _fixtures = _beside("witness_fixtures")
Channel = _channel.Channel
MESSAGE_LIMIT = _channel.MESSAGE_LIMIT
TRACE_LIMIT, TRACE_LINES = _channel.TRACE_LIMIT, _channel.TRACE_LINES
Fixture = _fixtures.Fixture
Resolver = _fixtures.Resolver
Scopes = _fixtures.Scopes
Unwitnessed = _fixtures.Unwitnessed
fixture_of = _fixtures.fixture_of

PASSED, FAILED, UNWITNESSED = "passed", "failed", "unwitnessed"
_UNRUNNABLE_MARKS = frozenset({"skip", "skipif", "xfail", "filterwarnings"})
_SKIPS = frozenset({"Skipped", "XFailed"})  # pytest.skip(), importorskip(), pytest.xfail()


class _EmptyClass:
    pass


_IGNORED = frozenset(dir(types.ModuleType("empty"))) | {"__builtins__", "__file__", "__cached__"}
_IGNORED |= frozenset(dir(_EmptyClass)) | frozenset(dir(_EmptyClass()))


class Outcome:
    def __init__(self, outcome: str, message: str = "", trace: str = "") -> None:
        self.outcome, self.message, self.trace = outcome, message, trace


def _failure(exc: BaseException) -> Outcome:
    kind = type(exc)
    if isinstance(exc, unittest.SkipTest) or (
        kind.__name__ in _SKIPS and kind.__module__.startswith("_pytest")
    ):
        return Outcome(UNWITNESSED, "skipped or expected to fail at run time")
    lines = traceback.format_exception(exc)
    text = "".join(lines).splitlines()[-TRACE_LINES:]
    message = traceback.format_exception_only(exc)[-1].strip() or kind.__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if message == kind.__name__ and frames:  # a bare ``assert``: the line says what failed
        message = f"{message}: {frames[-1].line}"
    message = message[:MESSAGE_LIMIT]
    return Outcome(FAILED, message, "\n".join(text)[-TRACE_LIMIT:])


# --- collection, as pytest collects -----------------------------------------------------------


def _marks(*holders: object) -> list[object]:
    marks = []
    for holder in holders:
        found = getattr(holder, "pytestmark", [])
        for mark in found if isinstance(found, list) else [found]:
            marks.append(getattr(mark, "mark", mark))
    return marks


def _parameter_sets(marks: list[object]) -> list[dict[str, object]]:
    """The keyword arguments of each parameter set, from the parametrize marks."""
    combined: list[dict[str, object]] = [{}]
    for mark in marks:
        if getattr(mark, "name", "") != "parametrize":
            continue
        args, kwargs = tuple(getattr(mark, "args", ())), dict(getattr(mark, "kwargs", {}))
        if kwargs.get("indirect") or len(args) < 2 or set(kwargs) - {"ids", "scope"}:
            raise Unwitnessed("a parametrize mark the second run does not expand")
        names, values = args[0], list(args[1])
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if not values:
            raise Unwitnessed("parametrized with no values")
        sets = []
        for value in values:
            if type(value).__name__ == "ParameterSet":
                if value.marks:
                    raise Unwitnessed("a parameter set with marks")
                value = value.values
            elif len(names) == 1:
                value = (value,)
            if len(value) != len(names):
                raise Unwitnessed("a parameter set of the wrong length")
            sets.append(dict(zip(names, value, strict=True)))
        if any(name in combined[0] for name in names):
            raise Unwitnessed("one argument parametrized twice")
        combined = [{**a, **b} for b in sets for a in combined]
    return combined


def _is_test_function(name: str, obj: object) -> Callable[..., object] | None:
    if not (name.startswith("test") or _true(obj, "__test__")):
        return None
    if isinstance(obj, staticmethod | classmethod):
        obj = getattr(obj, "__func__", None)
    if not callable(obj) or fixture_of(obj) is not None:
        return None
    function = getattr(obj, "__func__", obj)
    real = inspect.unwrap(function) if callable(function) else function
    if not (inspect.isfunction(function) or inspect.isfunction(real)):
        return None
    return function if getattr(function, "__test__", True) else None


def _true(obj: object, attribute: str) -> bool:
    try:
        return getattr(obj, attribute, False) is True
    except Exception:
        return False


def _members(holder: object) -> list[tuple[str, object]]:
    """Name and object, in pytest's order: definition order, base classes first."""
    dicts = [getattr(holder, "__dict__", {})]
    if isinstance(holder, type):
        dicts += [base.__dict__ for base in holder.__mro__]
    seen: set[str] = set()
    per_dict = []
    for namespace in dicts:
        members = []
        for name, obj in list(namespace.items()):
            if name in _IGNORED or name in seen:
                continue
            seen.add(name)
            members.append((name, obj))
        per_dict.append(members)
    return [member for members in reversed(per_dict) for member in members]


# --- running ----------------------------------------------------------------------------------


class Runner:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.scopes = Scopes()
        self.count = 0
        self.xunit_done: set[tuple[str, int]] = set()
        self.module_obj: object = None

    def send(self, test: str, outcome: Outcome) -> None:
        self.count += 1
        self.channel.send(
            event="test",
            id=test,
            outcome=outcome.outcome,
            message=outcome.message,
            trace=outcome.trace,
        )

    def module(self, path: str) -> None:
        try:
            module = _import(path)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.send(path, _failure(exc))
            return
        if not getattr(module, "__test__", True):
            return
        module_fixtures = _fixtures.definitions(vars(module), None, module)
        self.module_obj = module
        for name, obj in _members(module):
            if isinstance(obj, type):
                if _is_test_case(obj):
                    self.unittest_class(f"{path}::{name}", obj)
                elif (name.startswith("Test") or _true(obj, "__test__")) and not (
                    inspect.isabstract(obj)
                ):
                    self.test_class(f"{path}::{name}", obj, module_fixtures)
            else:
                function = _is_test_function(name, obj)
                if function is not None:
                    self.test(f"{path}::{name}", function, None, [module_fixtures], [module])
        self.close("class", path)
        self.close("module", path, teardown=("tearDownModule", "teardown_module"), arg=module)

    def close(
        self,
        scope: str,
        test: str,
        teardown: tuple[str, ...] = (),
        arg: object = None,
        owner: object = None,
    ) -> None:
        errors = self.scopes.close(scope)
        holder = owner if owner is not None else self.module_obj
        if (scope, id(holder)) in self.xunit_done:
            function = _first(holder, teardown)
            if function is not None:
                try:
                    _call_optional(function, arg)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            self.send(test, _failure(errors[0]))

    def xunit(self, scope: str, holder: object, names: tuple[str, ...], arg: object) -> None:
        if (scope, id(holder)) in self.xunit_done:
            return
        self.xunit_done.add((scope, id(holder)))
        function = _first(holder, names)
        if function is not None:
            _call_optional(function, arg)

    def test_class(self, base: str, cls: type, module_fixtures: dict[str, Fixture]) -> None:
        if not getattr(cls, "__test__", True):
            return
        if _has_own(cls, "__init__", object.__init__) or _has_own(cls, "__new__", object.__new__):
            return
        for name, obj in _members(cls):
            function = _is_test_function(name, obj)
            if function is not None:
                self.test(
                    f"{base}::{name}", function, cls, [module_fixtures], [cls, self.module_obj]
                )
        self.close("class", base, teardown=("teardown_class",), arg=cls, owner=cls)

    def unittest_class(self, base: str, cls: type[unittest.TestCase]) -> None:
        if not getattr(cls, "__test__", True):
            return
        names = unittest.TestLoader().getTestCaseNames(cls)
        if not names and hasattr(cls, "runTest"):
            names = ["runTest"]
        if not names:
            return
        if getattr(cls, "__unittest_skip__", False):
            for name in names:
                self.send(f"{base}::{name}", Outcome(UNWITNESSED, "a skipped class"))
            return
        try:
            self.xunit("module", self.module_obj, ("setUpModule", "setup_module"), self.module_obj)
            cls.setUpClass()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            for name in names:
                self.send(f"{base}::{name}", _failure(exc))
            return
        for name in names:
            result = unittest.TestResult()
            cls(name).run(result)
            problems = result.errors + result.failures
            if problems:
                outcome = Outcome(FAILED, problems[0][1].strip().splitlines()[-1][:MESSAGE_LIMIT])
                outcome.trace = problems[0][1][-TRACE_LIMIT:]
            elif result.skipped or result.expectedFailures or result.unexpectedSuccesses:
                outcome = Outcome(UNWITNESSED, "skipped or expected to fail")
            else:
                outcome = Outcome(PASSED)
            self.send(f"{base}::{name}", outcome)
        try:
            cls.tearDownClass()
            cls.doClassCleanups()
            # typeshed omits TestCase.tearDown_exceptions (doClassCleanups sets it).
            exceptions = cls.tearDown_exceptions  # type: ignore[attr-defined]
            if exceptions:
                raise exceptions[0][1]
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.send(base, _failure(exc))

    def test(
        self,
        test: str,
        function: Callable[..., object],
        cls: type | None,
        layers: list[dict[str, Fixture]],
        holders: list[object],
    ) -> None:
        try:
            marks = _marks(function, *holders)
            unrunnable = {getattr(m, "name", "") for m in marks} & _UNRUNNABLE_MARKS
            if unrunnable:
                raise Unwitnessed(f"marked {', '.join(sorted(unrunnable))}")
            if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
                raise Unwitnessed("an async test")
            if inspect.isgeneratorfunction(function) or hasattr(function, "patchings"):
                raise Unwitnessed("a generator or a mock.patch-decorated test")
            sets = _parameter_sets(marks)
            used = [
                n
                for m in marks
                if getattr(m, "name", "") == "usefixtures"
                for n in getattr(m, "args", ())
            ]
        except Unwitnessed as exc:
            self.send(test, Outcome(UNWITNESSED, str(exc)))
            return
        outcomes = [self.once(function, cls, layers, parameters, used) for parameters in sets]
        # The worst of them (the first, of equals): sets is never empty.
        ranks = (PASSED, UNWITNESSED, FAILED)
        self.send(test, max(outcomes, key=lambda outcome: ranks.index(outcome.outcome)))

    def once(
        self,
        function: Callable[..., object],
        cls: type | None,
        layers: list[dict[str, Fixture]],
        parameters: dict[str, object],
        used: list[str],
    ) -> Outcome:
        instance = None
        outcome = Outcome(PASSED)
        try:
            self.xunit("module", self.module_obj, ("setUpModule", "setup_module"), self.module_obj)
            if cls is not None:
                self.xunit("class", cls, ("setup_class",), cls)
                instance = cls()
                layers = [_fixtures.definitions(_class_namespace(cls), instance, cls), *layers]
                call = getattr(instance, function.__name__)
            else:
                call = function
            resolver = Resolver(self.scopes, layers)
            for name in resolver.autouse() + list(used):
                resolver.value(name)
            if cls is not None:
                _call_optional(_first(instance, ("setup_method",)), call)
            else:
                _call_optional(_first(self.module_obj, ("setup_function",)), function)
            kwargs = {}
            for name in _fixtures.argnames(call):
                kwargs[name] = parameters[name] if name in parameters else resolver.value(name)
            result = call(**kwargs)
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)  # a coroutine's: no "never awaited"
                with contextlib.suppress(Exception):
                    if callable(close):
                        close()
                raise Unwitnessed("returned an awaitable")
        except Unwitnessed as exc:
            outcome = Outcome(UNWITNESSED, str(exc))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            outcome = _failure(exc)
        teardown = _first(instance, ("teardown_method",)) if cls is not None else None
        teardown = teardown or (
            _first(self.module_obj, ("teardown_function",)) if cls is None else None
        )
        try:
            _call_optional(teardown, call if cls is not None else function)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if outcome.outcome != FAILED:
                outcome = _failure(exc)
        errors = self.scopes.close("function")
        if errors and outcome.outcome != FAILED:
            outcome = _failure(errors[0])
        return outcome


def _class_namespace(cls: type) -> dict[str, object]:
    namespace: dict[str, object] = {}
    for base in reversed(cls.__mro__):
        namespace.update(base.__dict__)
    return namespace


def _is_test_case(obj: type) -> TypeGuard[type[unittest.TestCase]]:
    try:
        return issubclass(obj, unittest.TestCase)
    except TypeError:
        return False


def _has_own(cls: type, name: str, default: object) -> bool:
    found = getattr(cls, name, None)
    return bool(found) and found != default


def _first(holder: object, names: tuple[str, ...]) -> Callable[..., object] | None:
    for name in names:
        # What pytest would call: a callable, as the caller assumes (it fails as pytest would).
        found: Callable[..., object] | None = (
            getattr(holder, name, None) if holder is not None else None
        )
        if found is not None and fixture_of(found) is None:
            return found
    return None


def _call_optional(function: Callable[..., object] | None, arg: object) -> None:
    """Call ``function`` with ``arg`` if it takes an argument, as pytest calls xunit setups."""
    if function is None:
        return
    count = 0
    if inspect.isfunction(function) or inspect.ismethod(function):
        count = function.__code__.co_argcount - inspect.ismethod(function)
    function(arg) if count else function()


def _import(path: str) -> types.ModuleType:
    """Import the test module at ``path`` by the name pytest's default import mode gives it."""
    file = Path(path).resolve()
    names = [file.stem]
    base = file.parent
    while (base / "__init__.py").is_file():
        names.insert(0, base.name)
        base = base.parent
    if names[-1] == "__init__":
        names.pop()
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    name = ".".join(names)
    module = importlib.import_module(name)
    if Path(getattr(module, "__file__", "") or "").resolve() != file:
        raise ImportError(f"import file mismatch: {name} is not {path}")
    return module


def main(argv: list[str]) -> int:
    channel = Channel(int(argv[1]), _channel.read_key())
    for root in reversed(json.loads(argv[2])):
        sys.path.insert(0, root)
    runner = Runner(channel)
    for path in argv[3:]:
        runner.module(path)
    for scope in ("package", "session"):
        for error in runner.scopes.close(scope):
            runner.send("::session", _failure(error))
    channel.send(event="finish", count=runner.count)
    sys.stdout.flush()
    os._exit(0)  # no atexit hook of the code under test runs after the verdict


if __name__ == "__main__":
    sys.exit(main(sys.argv))
