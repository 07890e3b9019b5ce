"""Anthropic's Messages API over the ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from orchestrator.llm.providers.base import (
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
from orchestrator.text.structured import vendor_schema

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
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion:
        payload = _payload(model_id, request)
        if self.endpoint.stream:
            return await self._streamed(payload, progress)
        message = await self._client.messages.create(**payload)
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        return _completion(
            text,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens or 0,
            usage.cache_creation_input_tokens or 0,
            message.model,
            message.stop_reason,
        )

    async def _streamed(self, payload: dict[str, Any], progress: Progress | None) -> RawCompletion:
        """The answer as it is generated (see ``Endpoint.stream``): the usage comes with the
        first event, and the whole turn's counts and the stop reason with the last."""
        stream = await self._client.messages.create(**payload, stream=True)
        parts: list[str] = []
        model, stop = payload["model"], None
        input_tokens = output_tokens = cached = written = 0
        try:
            async for event in stream:
                if progress is not None:
                    progress()
                if event.type == "message_start":
                    usage = event.message.usage
                    model = event.message.model or model
                    input_tokens, output_tokens = usage.input_tokens, usage.output_tokens or 0
                    cached = usage.cache_read_input_tokens or 0
                    written = usage.cache_creation_input_tokens or 0
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
                elif event.type == "message_delta":
                    stop = event.delta.stop_reason or stop
                    # Its counts are the whole turn's: a server tool (web search) that ran
                    # since message_start added input, so they replace the first ones.
                    usage = event.usage
                    output_tokens = usage.output_tokens or output_tokens
                    input_tokens = _latest(usage.input_tokens, input_tokens)
                    cached = _latest(usage.cache_read_input_tokens, cached)
                    written = _latest(usage.cache_creation_input_tokens, written)
        finally:
            await stream.close()
        return _completion(
            "".join(parts), input_tokens, output_tokens, cached, written, model, stop
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


def _completion(
    text: str,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    written: int,
    model: str | None,
    stop: str | None,
) -> RawCompletion:
    return RawCompletion(
        text=text,
        # Anthropic's input_tokens leaves out cache reads and writes; ours counts them all.
        input_tokens=input_tokens + cached + written,
        output_tokens=output_tokens,
        cached_tokens=cached,
        cache_write_tokens=written,
        reported_model=model,
        stop_reason=stop,
        truncated=stop in CUT_OFF,
    )


def _latest(cumulative: int | None, earlier: int) -> int:
    # The larger: a count of the whole turn never shrinks, and a server that sends 0 there
    # (llama.cpp's messages route does) must not erase what message_start said was paid.
    return max(earlier, cumulative or 0)


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
