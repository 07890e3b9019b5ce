"""``orchestrator.hooks``, the design document's path to :mod:`orchestrator.observe.hooks`."""

from orchestrator.observe.hooks import (
    CANCEL_GRACE_SECONDS,
    HOOK_TIMEOUT_SECONDS,
    EventType,
    Hook,
    HookRegistry,
    log,
)

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "HOOK_TIMEOUT_SECONDS",
    "EventType",
    "Hook",
    "HookRegistry",
    "log",
]
