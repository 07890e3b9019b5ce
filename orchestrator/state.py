"""``orchestrator.state``, the design document's path to :mod:`orchestrator.store.state`."""

from orchestrator.store.state import (
    STATE_FORMAT,
    ProjectSummary,
    SavedProject,
    StateError,
    StateManager,
    UnknownProjectError,
    new_owner,
)

__all__ = [
    "STATE_FORMAT",
    "ProjectSummary",
    "SavedProject",
    "StateError",
    "StateManager",
    "UnknownProjectError",
    "new_owner",
]
