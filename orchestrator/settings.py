"""Where state lives and which environment the providers see."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HOME_ENV = "ORCHESTRATOR_HOME"
CATALOG_ENV = "ORCHESTRATOR_CATALOG"
# A postgresql:// URL: the projects, the journal and the cache live in that database instead
# of the SQLite files in the home directory.
DB_URL_ENV = "ORCHESTRATOR_DB_URL"
DEFAULT_HOME = Path("~/.orchestrator_cache")


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory for the cache and state databases: argument, then $ORCHESTRATOR_HOME."""
    if explicit is not None:
        return Path(explicit).expanduser()
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_HOME.expanduser()


def load_environment(
    env: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The variables providers read: ``env`` (default: the process environment) and ``.env``.

    Values already set always win over the ``.env`` file, and the process environment is not
    modified. Without ``dotenv_path``, the nearest ``.env`` upward from the working directory.
    """
    from dotenv import dotenv_values, find_dotenv  # read when a run starts, not on import

    merged = dict(os.environ if env is None else env)
    path = str(dotenv_path) if dotenv_path is not None else find_dotenv(usecwd=True)
    if path and Path(path).is_file():
        for name, value in dotenv_values(path).items():
            if value is not None and name not in merged:
                merged[name] = value
    return merged


def first_set(env: Mapping[str, str], names: list[str]) -> str | None:
    """The value of the first variable in ``names`` that is set and not blank."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None
