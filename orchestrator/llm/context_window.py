"""What fits a model's context window: the prompt's tokens (a bound for what a call may cost, an
estimate for the window), the output limit a request is sent with, and a request fitted to the
window before anything is sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orchestrator.errors import ContextWindowError
from orchestrator.llm.catalog import Model
from orchestrator.llm.providers.base import ChatRequest, Message, system_prompt
from orchestrator.text.tokens import high_tokens, token_bound

DEFAULT_MAX_TOKENS = 4096
# Fewer output tokens than this left in a context window: the prompt does not fit the model.
MIN_OUTPUT_ROOM = 64


def sent_max_tokens(model: Model, max_tokens: int | None) -> int:
    """The output limit a request for ``max_tokens`` is sent with: capped at the model's."""
    return min(max_tokens or DEFAULT_MAX_TOKENS, model.max_output_tokens)


def prompt_token_bound(request: ChatRequest) -> int:
    """A bound on the prompt's tokens no tokenizer passes (``tokens.token_bound``), for what a
    call may cost."""
    return _prompt_tokens(request, token_bound)


def prompt_token_estimate(request: ChatRequest) -> int:
    """An upper estimate of the prompt's tokens (``tokens.high_tokens``), for its window."""
    return _prompt_tokens(request, high_tokens)


def _prompt_tokens(request: ChatRequest, count: Callable[[str], int]) -> int:
    """The prompt's tokens as ``count`` counts a text's; the margins cover chat-template tokens
    and the vendor-side tokens a native schema mode adds."""
    tokens = count(system_prompt(request)) + sum(count(m.content) for m in request.messages)
    if request.json_schema is not None and request.native_schema:
        tokens += 2 * count(json.dumps(request.json_schema))
    return tokens + 16 * (len(request.messages) + 1) + 512


def worst_case_nanos(model: Model, request: ChatRequest) -> int:
    """An upper bound on what ``request`` can cost, in nano-dollars."""
    return model.price.cost_nanos(prompt_token_bound(request), request.max_tokens)


def output_room(model: Model, request: ChatRequest) -> int:
    """The most output tokens ``request`` can ask of ``model`` without the prompt and the answer
    passing its context window (a server answers that with HTTP 400, or cuts the answer off)."""
    return model.context_window - prompt_token_estimate(request)


def prompt_room(
    model: Model,
    prompt: str,
    *,
    system: str | None,
    max_tokens: int | None,
    schema: dict[str, Any] | None = None,
) -> int:
    """How many tokens (``tokens.high_tokens``) ``prompt`` may still grow by and its request to
    ``model`` keep its whole output limit: what a prompt's added context may take."""
    request = ChatRequest(
        messages=(Message("user", prompt),),
        max_tokens=sent_max_tokens(model, max_tokens),
        system=system,
        json_schema=schema,
        native_schema=schema is not None and model.json_schema,
    )
    return output_room(model, request) - request.max_tokens


def fitted(model: Model, request: ChatRequest) -> ChatRequest:
    """``request`` with its output limit lowered to fit ``model``'s context window; a prompt
    that leaves no useful room is refused before anything is sent (the next model is asked)."""
    wanted = max(request.max_tokens, MIN_OUTPUT_ROOM)
    if model.context_window - prompt_token_bound(request) >= wanted:
        return request  # it fits at a token a byte: no need to estimate closer
    room = output_room(model, request)
    if room < MIN_OUTPUT_ROOM:
        raise ContextWindowError(
            f"{model.value}'s context window ({model.context_window} tokens) cannot take this "
            f"prompt (up to about {prompt_token_estimate(request)} tokens) and an answer",
            model=model.value,
            provider=model.provider,
        )
    return request if request.max_tokens <= room else replace(request, max_tokens=room)
