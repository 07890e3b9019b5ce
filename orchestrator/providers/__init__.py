"""One adapter per vendor SDK, all behind ``ProviderAdapter``."""

from __future__ import annotations

from .base import Endpoint, ProviderAdapter


def make_adapter(kind: str, endpoint: Endpoint) -> ProviderAdapter:
    """The adapter for a catalog provider ``kind``; SDKs are imported only when needed."""
    if kind == "openai":
        from .openai_compat import OpenAICompatibleAdapter

        return OpenAICompatibleAdapter(endpoint)
    if kind == "anthropic":
        from .anthropic import AnthropicAdapter

        return AnthropicAdapter(endpoint)
    if kind == "gemini":
        from .gemini import GeminiAdapter

        return GeminiAdapter(endpoint)
    raise ValueError(f"unknown provider kind {kind!r}")
