"""The README's quick-start commands, the lines a newcomer copies: CI runs them as they are.

    python3 .ci/readme_commands.py run    # the set-up that runs the keyless example
    python3 .ci/readme_commands.py test   # the set-up that runs the suite

Standard library only: it runs before anything is installed. ``tests/test_docs.py`` reads the
same lines through this module.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FIRST_RUN = "python3 -m venv .venv && .venv/bin/pip install -e '.[local]'"
SUITE = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


def command_starting(text: str, start: str) -> str:
    """The one line of a bash block that begins with ``start``; ValueError if none does."""
    found = [line for b in bash_blocks(text) for line in b.splitlines() if line.startswith(start)]
    if not found:
        raise ValueError(f"no command starting {start!r}")
    return found[0]


def first_run_command(text: str) -> str:
    return command_starting(text, FIRST_RUN)


def suite_command(text: str) -> str:
    return command_starting(text, SUITE)


def quick_start(text: str) -> str:
    return text.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]


if __name__ == "__main__":
    which = {"run": first_run_command, "test": suite_command}
    if len(sys.argv) != 2 or sys.argv[1] not in which:
        sys.exit("usage: python3 .ci/readme_commands.py run|test")
    print(which[sys.argv[1]](quick_start(README.read_text(encoding="utf-8"))))
