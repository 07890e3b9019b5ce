"""Anthropic's Messages API over the ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from ..structured import vendor_schema
from .base import (
    CONNECTION_FAILED,
    TIMED_OUT,
    ChatRequest,
    Endpoint,
    Failure,
    Progress,
    RawCompletion,
    status_failure,
    system_prompt,
)

# Generation stopped by a limit, not by the model: the text is not the whole answer.
CUT_OFF = ("max_tokens", "model_context_window_exceeded")


class AnthropicAdapter:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client = anthropic.AsyncAnthropic(
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            timeout=endpoint.timeout,
            max_retries=0,
        )

    async def complete(
        self,
        model_id: str,
        request: ChatRequest,
        progress: Progress | None = None,  # not streamed: the attempt's limit is for all of it
    ) -> RawCompletion:
        message = await self._client.messages.create(**_payload(model_id, request))
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        cached = usage.cache_read_input_tokens or 0
        written = usage.cache_creation_input_tokens or 0
        return RawCompletion(
            text=text,
            # Anthropic's input_tokens leaves out cache reads and writes; ours counts them all.
            input_tokens=usage.input_tokens + cached + written,
            output_tokens=usage.output_tokens,
            cached_tokens=cached,
            cache_write_tokens=written,
            reported_model=message.model,
            stop_reason=message.stop_reason,
            truncated=message.stop_reason in CUT_OFF,
        )

    def classify(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, anthropic.APIStatusError):
            return status_failure(exc.status_code, exc.response.headers, _detail(exc))
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
            return TIMED_OUT
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return CONNECTION_FAILED
        return None

    async def aclose(self) -> None:
        await self._client.close()


def _payload(model_id: str, request: ChatRequest) -> dict[str, Any]:
    system = system_prompt(request)
    payload: dict[str, Any] = {
        "model": model_id,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if system:
        payload["system"] = system
    # No temperature: the SDK's messages.create (2.14) no longer takes sampling parameters,
    # and passing one raised a TypeError that failed every call that had one.
    if request.json_schema is not None and request.native_schema:
        payload["output_config"] = {
            "format": {"type": "json_schema", "schema": vendor_schema(request.json_schema)}
        }
    return payload


def _detail(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:200]
    return f"HTTP {exc.status_code}"
