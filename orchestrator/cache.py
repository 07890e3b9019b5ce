"""``orchestrator.cache``, the design document's path to :mod:`orchestrator.llm.cache`."""

from orchestrator.llm.cache import (
    CACHE_FORMAT,
    CacheError,
    DiskCache,
    cache_key,
    log,
)

__all__ = [
    "CACHE_FORMAT",
    "CacheError",
    "DiskCache",
    "cache_key",
    "log",
]
