"""Multi-LLM orchestrator: one async interface over OpenAI, Anthropic, Gemini, Kimi and DeepSeek."""

from .catalog import Catalog, Model, Price, ProviderSpec
from .client import Completion, UnifiedClient
from .errors import (
    CatalogError,
    ConfigError,
    ModelUnavailableError,
    NoProvidersError,
    OrchestratorError,
    ProviderError,
    StructuredOutputError,
    UnknownModelError,
)
from .providers.base import Message
from .retry import RetryPolicy

__all__ = [
    "Catalog",
    "CatalogError",
    "Completion",
    "ConfigError",
    "Message",
    "Model",
    "ModelUnavailableError",
    "NoProvidersError",
    "OrchestratorError",
    "Price",
    "ProviderError",
    "ProviderSpec",
    "RetryPolicy",
    "StructuredOutputError",
    "UnifiedClient",
    "UnknownModelError",
]
