"""OpenAI, and every OpenAI-compatible endpoint (Kimi, DeepSeek, Ollama, vLLM), over ``openai``."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai.types import CompletionUsage

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
from orchestrator.text.structured import decoder_schema, vendor_schema


class OpenAICompatibleAdapter:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client = openai.AsyncOpenAI(
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            timeout=endpoint.timeout,
            max_retries=0,
        )
        # The SDK imports its chat resources on first use: here, off the event loop.
        self._completions = self._client.chat.completions

    async def complete(
        self, model_id: str, request: ChatRequest, progress: Progress | None = None
    ) -> RawCompletion:
        payload = _payload(model_id, request, self.endpoint.provider)
        if self.endpoint.stream:
            return await self._streamed(payload, request, progress)
        response = await self._completions.create(**payload)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        stop = choice.finish_reason if choice is not None else None
        return _completion(request, text, stop, response.usage, response.model)

    async def _streamed(
        self, payload: dict[str, Any], request: ChatRequest, progress: Progress | None
    ) -> RawCompletion:
        """The answer as it is generated: each piece tells ``progress`` the server is alive,
        so a slow model is timed out only when it stops producing, not for being slow."""
        stream = await self._completions.create(
            **payload, stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        stop: str | None = None
        usage: Any = None
        model = payload["model"]
        try:
            async for chunk in stream:
                if progress is not None:
                    progress()
                model = chunk.model or model
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                    stop = choice.finish_reason or stop
                    usage = _choice_usage(choice) or usage
        finally:
            await stream.close()  # the connection is given back however the stream ends
        return _completion(request, "".join(parts), stop, usage, model)

    def classify(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, openai.APIStatusError):
            return status_failure(exc.status_code, exc.response.headers, _detail(exc))
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
            return TIMED_OUT
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return CONNECTION_FAILED
        return None

    async def aclose(self) -> None:
        await self._client.close()


def _completion(
    request: ChatRequest, text: str, stop: str | None, usage: Any, reported: str | None
) -> RawCompletion:
    truncated = stop == "length"
    if usage is None:
        prompt = "".join(m["content"] for m in _messages(request))
        return with_estimated_usage(text, prompt, reported, stop, truncated)
    return RawCompletion(
        text=text,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_tokens=_cached_tokens(usage),
        reported_model=reported,
        stop_reason=stop,
        truncated=truncated,
    )


def _cached_tokens(usage: CompletionUsage) -> int:
    """The prompt tokens read from a cache (counted in prompt_tokens too), wherever the vendor
    puts them: OpenAI under prompt_tokens_details, DeepSeek in prompt_cache_hit_tokens, Kimi
    beside prompt_tokens (fields outside OpenAI's schema survive parsing as extras)."""
    details = usage.prompt_tokens_details
    if details is not None and details.cached_tokens:
        return details.cached_tokens
    for vendor_field in ("prompt_cache_hit_tokens", "cached_tokens"):
        count = getattr(usage, vendor_field, None)
        if count:
            return int(count)
    return 0


def _choice_usage(choice: Any) -> CompletionUsage | None:
    """Kimi streams the usage of its answer inside the last chunk's choice, not in a chunk of
    its own as OpenAI does with include_usage; the SDK keeps it as an unparsed extra field."""
    usage = (choice.model_extra or {}).get("usage")
    return CompletionUsage.model_validate(usage) if isinstance(usage, dict) else None


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    system = system_prompt(request)
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    return messages


def _payload(model_id: str, request: ChatRequest, provider: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model_id,
        "messages": _messages(request),
    }
    # OpenAI's reasoning models reject max_tokens; most compatible servers only know max_tokens.
    token_param = "max_completion_tokens" if provider == "openai" else "max_tokens"
    payload[token_param] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.json_schema is not None:
        if request.native_schema:
            # A cloud vendor gets what it accepts; any other server (llama.cpp, vLLM) the whole
            # schema, bounds included, for its constrained decoding.
            schema = (
                vendor_schema(request.json_schema)
                if provider in CLOUD_VENDORS
                else decoder_schema(request.json_schema)
            )
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": schema,
                    "strict": is_strict_compatible(schema),
                },
            }
        else:
            payload["response_format"] = {"type": "json_object"}
    return payload


CLOUD_VENDORS = frozenset({"openai", "kimi", "deepseek"})


def is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: closed objects, every property required."""
    if isinstance(schema, list):
        return all(is_strict_compatible(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(properties):
            return False
    return all(is_strict_compatible(value) for value in schema.values())


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:200]
    return f"HTTP {exc.status_code}"
