"""JSON Schema checks (Draft 2020-12) through ``jsonschema``, imported on first use.

Importing ``jsonschema`` is a fifth of the package's own start-up, and a run's first calls need
no schema: a resumed run's first provider call comes sooner without it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError


async def load_off_loop() -> None:
    """Import ``jsonschema`` in a thread if it is not in yet: an async caller's first check
    would otherwise hold the event loop (and every call in flight) for its whole import."""
    if "jsonschema" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "jsonschema")


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


@cache
def shipped_schema(name: str) -> dict[str, Any]:
    """One of the schemas in ``orchestrator/data`` (shared: copy it before changing it)."""
    from importlib import resources

    text = resources.files("orchestrator").joinpath(f"data/{name}").read_text()
    schema: dict[str, Any] = json.loads(text)  # each is an object
    return schema


@cache
def shipped(name: str) -> Draft202012Validator:
    """A validator for one of the schemas in ``orchestrator/data``, built once."""
    return validator(shipped_schema(name))


def best_match(errors: Iterable[ValidationError]) -> ValidationError | None:
    """The error that best says what is wrong (``jsonschema``'s choice), or None."""
    from jsonschema.exceptions import best_match

    found: ValidationError | None = best_match(errors)  # types-jsonschema leaves it unannotated
    return found


def first_error(schema: dict[str, Any], instance: Any) -> ValidationError | None:
    """How ``instance`` best fails ``schema``, or None when it matches."""
    text = _schema_text(schema)
    checker = validator(schema) if text is None else _text_validator(text)
    return best_match(checker.iter_errors(instance))


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None when it is one.

    Checking a schema against the meta-schema costs about a millisecond, and a run sends the
    same few schemas with every call: the verdict is kept per schema, keyed on its JSON text."""
    text = _schema_text(schema)
    return _schema_problem(schema) if text is None else _text_schema_problem(text)


def _schema_text(schema: Any) -> str | None:
    """``schema`` as canonical JSON text, to key what is built once per schema; None when that
    text would not read back as an equal value (so no two schemas share a key)."""
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == schema else None


@lru_cache(maxsize=256)
def _text_validator(text: str) -> Draft202012Validator:
    # Building a validator (resolving its references) costs more than most checks with it.
    return validator(json.loads(text))


@lru_cache(maxsize=256)
def _text_schema_problem(text: str) -> str | None:
    return _schema_problem(json.loads(text))


def _schema_problem(schema: Any) -> str | None:
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return str(exc.message)
    return None
