"""A whole answer from calls the output limit may cut off: prose and code continued where they
stopped, JSON and empty answers asked again with a larger limit, and an answer that does not
match its schema repaired once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.errors import StructuredOutputError, TruncatedAnswerError
from orchestrator.llm.catalog import Model
from orchestrator.llm.context_window import MIN_OUTPUT_ROOM, fitted, output_room
from orchestrator.llm.providers.base import ChatRequest, Message, RawCompletion
from orchestrator.text.fences import join_continuation
from orchestrator.text.structured import InvalidAnswer, parse_answer, repair_prompt

# A prose or code answer cut off by the output limit is continued at most this often.
MAX_CONTINUATIONS = 2
CONTINUE_PROMPT = (
    "Your answer was cut off by the output limit. Continue it exactly where it stopped: "
    "repeat nothing, add no preamble, and do not reopen a code block that is still open."
)

# One paid request, retried as the client's policy says: its answer and the attempts it took.
Call = Callable[[ChatRequest], Awaitable[tuple[RawCompletion, int]]]

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What the calls behind one answer gave: its whole text, parsed where a schema asked."""

    text: str
    attempts: int
    max_tokens: int  # the limit the answer was finally asked with
    notes: list[str]
    parsed: Any = None


async def parsed_answer(
    model: Model, request: ChatRequest, call: Call, paid: list[RawCompletion]
) -> Answer:
    """A whole answer (``whole_answer``), parsed and repaired once when a schema is asked for;
    each paid request's answer is added to ``paid``."""
    answer = await whole_answer(model, request, call, paid)
    schema = request.json_schema
    if schema is None:
        return answer
    try:
        answer.parsed = parse_answer(answer.text, schema)
        return answer
    except InvalidAnswer as first_problem:
        repair = _follow_up(request, answer.text, repair_prompt(str(first_problem)))
        repair = replace(repair, max_tokens=answer.max_tokens)
    repaired = await whole_answer(model, repair, call, paid)
    repaired.attempts += answer.attempts
    repaired.notes[:0] = answer.notes
    try:
        repaired.parsed = parse_answer(repaired.text, schema)
    except InvalidAnswer as problem:
        raise StructuredOutputError(
            f"{model.value} did not answer with JSON matching the schema ({problem}), "
            "even after a repair request",
            model=model.value,
            provider=model.provider,
            attempts=repaired.attempts,
        ) from None
    return repaired


async def whole_answer(
    model: Model, request: ChatRequest, call: Call, paid: list[RawCompletion]
) -> Answer:
    """The answer to ``request`` from ``call``s to ``model``, never one the output limit cut
    off; each paid request's answer is added to ``paid``.

    Prose and code are continued where they stopped (the part already paid for is kept);
    JSON, and an answer cut off before any text, are asked again with a larger limit, up to
    the model's own. ``TruncatedAnswerError`` when neither gives a whole answer.
    """
    raw, attempts = await call(request)
    paid.append(raw)
    text, continued, notes = raw.text, 0, []
    while raw.truncated:
        cut_at = request.max_tokens
        if request.json_schema is None and text.strip():
            if continued == MAX_CONTINUATIONS:
                raise _truncated(model, cut_at, f"even after {continued} continuations")
            continued += 1
            follow_up = _follow_up(request, text, CONTINUE_PROMPT)
            if output_room(model, follow_up) < MIN_OUTPUT_ROOM:
                raise _truncated(model, cut_at, "no room left in its context window")
            raw, more = await call(fitted(model, follow_up))
            text = join_continuation(text, raw.text)
        else:
            limit = min(model.max_output_tokens, cut_at * 4, output_room(model, request))
            if limit <= cut_at:
                raise _truncated(model, cut_at, "the most this model can write")
            notes.append(f"cut off at {cut_at} output tokens; asked again with {limit}")
            request = replace(request, max_tokens=limit)
            raw, more = await call(request)
            text = raw.text
        attempts += more
        paid.append(raw)
    if continued:
        times = "once" if continued == 1 else f"{continued} times"
        notes.append(f"cut off at {request.max_tokens} output tokens; continued {times}")
    for note in notes:
        log.info("%s: %s", model.value, note)
    return Answer(text, attempts, request.max_tokens, notes)


def _truncated(model: Model, max_tokens: int, why: str) -> TruncatedAnswerError:
    return TruncatedAnswerError(
        f"{model.value}'s answer was cut off at {max_tokens} output tokens ({why})",
        model=model.value,
        provider=model.provider,
    )


def _follow_up(request: ChatRequest, answer: str, prompt: str) -> ChatRequest:
    """``request`` carried on: the model's ``answer`` to it, then our ``prompt`` about that."""
    messages = (*request.messages, Message("assistant", answer), Message("user", prompt))
    return replace(request, messages=messages)
