"""Fenced code blocks in a model's answer: what validators check, the writer saves, JSON reads."""

from __future__ import annotations

import re
from collections.abc import Collection

# The tags a block of Python is fenced with (models write ```python3 too; "" stands for an
# untagged block, which a code answer's is). What the validators check as Python, what the writer
# saves to a .py file and what the assembly counts as an unnamed file are these blocks.
PYTHON_TAGS = ("python", "py", "python3", "")

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TAG = re.compile(r"[A-Za-z0-9_+#-]*")


def has_fence(text: str) -> bool:
    """Whether ``text`` opens at least one fenced block."""
    return any(_opening_fence(line) is not None for line in text.splitlines())


def code_blocks(text: str, languages: Collection[str] = PYTHON_TAGS) -> list[str]:
    """The contents of every fenced block whose language tag is in ``languages``.

    Fences are ``` or ~~~ (three or more, indented at most three spaces); the tag is the first
    word of the info string, compared case-insensitively, and "" stands for an untagged block.
    A fence left open runs to the end of the text, as in Markdown, so a truncated answer keeps
    its last block. Text with no fence at all is one block by itself (none if it is blank).
    """
    wanted = {language.lower() for language in languages}
    blocks = fenced_blocks(text)
    if not blocks and not has_fence(text):
        return [text] if text.strip() else []
    return [body for tag, body in blocks if tag in wanted]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, contents) of every fenced block, in order, whatever its language."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the text's final newline, not an empty last line
    blocks: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        opening = _opening_fence(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, tag = opening
        body: list[str] = []
        i += 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(_strip_indent(lines[i], indent))
            i += 1
        i += 1  # past the closing fence
        blocks.append((tag, "\n".join(body) + "\n" if body else ""))
    return blocks


def _opening_fence(line: str) -> tuple[int, str, str] | None:
    match = _FENCE_OPEN.match(line)
    if match is None:
        return None
    fence, info = match["fence"], match["info"].strip()
    # A backtick in the info string means inline code such as ```x```, not a fence.
    if fence[0] == "`" and "`" in info:
        return None
    tag = _TAG.match(info.lstrip("{."))
    return len(match["indent"]), fence, tag.group().lower() if tag else ""


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and len(stripped) >= len(fence)
        and set(stripped) == {fence[0]}
    )


def _strip_indent(line: str, indent: int) -> str:
    removable = len(line) - len(line.lstrip(" "))
    return line[min(indent, removable) :]


def join_continuation(text: str, continuation: str) -> str:
    """``text`` followed by a model's continuation of it.

    Asked to continue an answer cut off inside a code block, models often reopen the block
    first; that fence would end the block instead, so it is dropped.
    """
    if _open_fence(text) is not None:
        first, newline, rest = continuation.lstrip("\n").partition("\n")
        if _opening_fence(first) is not None:
            continuation = rest if newline else ""
    return text + continuation


def _open_fence(text: str) -> str | None:
    """The fence of the block still open at the end of ``text``, if any."""
    open_fence: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if open_fence is None:
            opening = _opening_fence(line)
            if opening is not None:
                open_fence = opening[1]
        elif _closes(line, open_fence):
            open_fence = None
    return open_fence
