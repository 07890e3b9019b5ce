"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(path: Path, content: str) -> None:
    """Write ``content`` to ``path``: a reader sees the old file or the new one, never half of
    either. Raises ``OSError``.

    ``O_EXCL`` makes the temporary file new, never a link someone left in its place, and
    ``os.replace`` swaps the directory entry rather than writing through a link at ``path``.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    created = False
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        if created:
            # The write error is the one worth reporting, not a failed cleanup after it.
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise
