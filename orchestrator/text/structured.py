"""Reading JSON out of a model's answer and checking it against the requested schema."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, TypeGuard

from orchestrator.text.fences import code_blocks, has_fence
from orchestrator.text.schemas import first_error
from orchestrator.text.visible import shorten

if TYPE_CHECKING:
    from jsonschema import ValidationError


class InvalidAnswer(ValueError):
    """The answer is not JSON, or not JSON matching the schema; the message says why."""


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole text, a fenced block, or the outermost braces."""
    candidates = [text.strip()]
    if has_fence(text):
        candidates += [block.strip() for block in code_blocks(text, ("json", ""))]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise InvalidAnswer("the answer is not valid JSON")


def parse_answer(text: str, schema: dict[str, Any]) -> Any:
    """The answer's JSON value if it validates against ``schema``; otherwise ``InvalidAnswer``."""
    value = extract_json(text)
    error = first_error(schema, value)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise InvalidAnswer(f"at {where}: {_problem(error)}")
    return value


def _problem(error: ValidationError) -> str:
    """The error in one short line: never a dump of the whole answer."""
    value, limit = error.instance, error.validator_value
    if error.validator in ("minItems", "maxItems") and isinstance(value, list):
        path = list(error.absolute_path)
        noun = str(path[-1]) if path and isinstance(path[-1], str) else "items"
        need = "at least" if error.validator == "minItems" else "at most"
        return f"got {len(value)} {noun}, need {need} {limit}"
    return shorten(error.message, 200)


def repair_prompt(problem: str) -> str:
    return (
        f"Your previous answer was rejected: {problem}. Reply again with only the corrected JSON, "
        "matching the schema exactly, with no other text."
    )


# Keywords the cloud vendors' native structured output rejects (OpenAI strict answers 400) or
# ignores. Our schemas keep them: answers are validated against them here, and a local server's
# constrained decoding (llama.cpp, vLLM) uses them to keep a small model's answer bounded.
VENDOR_UNSUPPORTED = frozenset(
    {"$schema", "$id", "title", "default", "examples", "minLength", "maxLength", "uniqueItems"}
)
# Where a schema's keys name properties rather than keywords.
_NAMED = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def vendor_schema(schema: Any) -> Any:
    """``schema`` without the keywords a cloud vendor's native structured output rejects."""
    if isinstance(schema, list):
        return [vendor_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in VENDOR_UNSUPPORTED:
            continue
        if key in _NAMED and isinstance(value, dict):
            result[key] = {name: vendor_schema(sub) for name, sub in value.items()}
        else:
            result[key] = vendor_schema(value)
    return result


# A bounded number becomes a list of values this far apart for grammar-constrained decoding.
DECODER_STEP = 0.01
_DECODER_MAX_VALUES = 201
# The longest free text a local server's decoding lets a model write into one field: at most a
# token a character, so an answer of a few such fields ends within its output limit.
DECODER_MAX_STRING = 400


def decoder_schema(schema: Any) -> Any:
    """``schema`` as a local server's grammar-constrained decoding can enforce it: llama.cpp's
    grammar keeps a number's type but not its range (a 135M model grading "0 to 1" wrote 9), so
    a number bounded on both sides becomes the values between its bounds, ``DECODER_STEP``
    apart (every one of them valid under the original schema, which answers are checked
    against). A free-text string gets at most ``DECODER_MAX_STRING`` characters, so a small
    model cannot ramble past its output limit (answers are not checked against this bound)."""
    if isinstance(schema, list):
        return [decoder_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "string" and not {"maxLength", "enum", "pattern"} & set(schema):
        return {**schema, "maxLength": DECODER_MAX_STRING}
    low, high = schema.get("minimum"), schema.get("maximum")
    if schema.get("type") == "number" and _finite(low) and _finite(high) and low <= high:
        count = round((high - low) / DECODER_STEP) + 1
        if count <= _DECODER_MAX_VALUES:
            values = sorted({round(low + i * DECODER_STEP, 2) for i in range(count)} | {low, high})
            kept = {k: v for k, v in schema.items() if k not in ("type", "minimum", "maximum")}
            return {**kept, "enum": [v for v in values if low <= v <= high]}
    return {
        key: (
            {name: decoder_schema(sub) for name, sub in value.items()}
            if key in _NAMED and isinstance(value, dict)
            else decoder_schema(value)
        )
        for key, value in schema.items()
    }


def _finite(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a finite JSON number (an int or a float, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
