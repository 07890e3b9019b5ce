"""Google Gemini over ``google-genai``, pinned to an httpx2 transport we own and close."""

from __future__ import annotations

from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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
    with_estimated_usage,
)
from orchestrator.text.structured import vendor_schema


class GeminiAdapter:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        # Our own client pins the transport: with aiohttp installed the SDK would otherwise switch
        # to it, and raise different exception types on timeouts and refused connections.
        self._http = httpx2.AsyncClient(timeout=endpoint.timeout)
        self._client = genai.Client(
            api_key=endpoint.api_key,
            http_options=types.HttpOptions(
                base_url=endpoint.base_url,
                api_version=endpoint.api_version or "v1beta",
                timeout=int(endpoint.timeout * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
                httpx_async_client=self._http,
            ),
        )

    async def complete(
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion:
        arguments: dict[str, Any] = {
            "model": model_id,
            "contents": [
                types.Content(
                    role="model" if m.role == "assistant" else "user",
                    parts=[types.Part(text=m.content)],
                )
                for m in request.messages
            ],
            "config": _config(request),
        }
        if not self.endpoint.stream:
            response = await self._client.aio.models.generate_content(**arguments)
            return _completion(request, _text(response), response)
        # Streamed (see ``Endpoint.stream``): each piece carries some text; the last one the
        # finish reason and the usage.
        parts: list[str] = []
        last = None
        async for piece in await self._client.aio.models.generate_content_stream(**arguments):
            if progress is not None:
                progress()
            parts.append(_text(piece))
            last = piece
        return _completion(request, "".join(parts), last)

    def classify(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, genai_errors.APIError):
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
            return status_failure(int(exc.code), headers, str(exc.message or exc.status)[:200])
        if isinstance(exc, httpx2.TimeoutException | TimeoutError):
            return TIMED_OUT
        if isinstance(exc, httpx2.TransportError | ConnectionError):
            return CONNECTION_FAILED
        return None

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()


def _completion(request: ChatRequest, text: str, response: Any) -> RawCompletion:
    stop = _finish_reason(response) if response is not None else None
    truncated = stop == "MAX_TOKENS"
    usage = response.usage_metadata if response is not None else None
    reported = response.model_version if response is not None else None
    if usage is None or usage.prompt_token_count is None:
        prompt = "".join(m.content for m in request.messages) + (request.system or "")
        return with_estimated_usage(text, prompt, reported, stop, truncated)
    return RawCompletion(
        text=text,
        input_tokens=usage.prompt_token_count,
        # Thinking tokens are billed as output but reported apart from the candidates.
        output_tokens=(usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0),
        cached_tokens=usage.cached_content_token_count or 0,
        reported_model=reported,
        stop_reason=stop,
        truncated=truncated,
    )


def _config(request: ChatRequest) -> types.GenerateContentConfig:
    system = system_prompt(request)
    config = types.GenerateContentConfig(
        max_output_tokens=request.max_tokens,
        temperature=request.temperature,
        system_instruction=system or None,
    )
    if request.json_schema is not None:
        config.response_mime_type = "application/json"
        if request.native_schema:
            config.response_json_schema = vendor_schema(request.json_schema)
    return config


def _text(response: types.GenerateContentResponse) -> str:
    # response.text warns and returns None on non-text parts; collect text parts ourselves.
    if not response.candidates:
        return ""
    content = response.candidates[0].content
    if content is None or not content.parts:
        return ""
    return "".join(part.text for part in content.parts if part.text and not part.thought)


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    if not response.candidates or response.candidates[0].finish_reason is None:
        return None
    reason = response.candidates[0].finish_reason
    return getattr(reason, "value", None) or str(reason)
