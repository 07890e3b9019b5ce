"""Text a model or a test wrote, made safe to show: the one place control characters are escaped.

A test's failure message, a model's answer, a task id the planner chose: any of them can hold
terminal escape codes (``ESC ] 0 ; title BEL`` retitles the terminal, ``ESC [ 2 J`` clears it,
``ESC [ 32 m`` paints a fake green "status SUCCESS"), carriage returns and backspaces that
overwrite what was printed, or Unicode bidirectional overrides that make a line read in another
order than it is stored. Every place that shows or writes such text about a run (progress lines,
the results table, error lines, the results README and summary.json, log records) passes it
through ``visible`` first. The files of the project tree are the model's code and are written as
validated, byte for byte; they are not shown, so they are not changed.

The characters are escaped (``\\x1b``, ``\\r``, ``\\u202e``), not removed: a user sees that
something was there, where it was, and what it was, and a removed bidi override or carriage
return would silently change what a line seems to say. Backslashes are not doubled, so what is
shown stays readable (paths, regexes); a literal ``\\x1b`` in the text looks the same as an
escaped ESC, which is harmless: the output holds no control character either way. Escaping is
idempotent: escaped text holds nothing left to escape.

``shorten`` is the one way a text is made a line of at most so many characters (an error's
detail, an excerpt of a prompt): it collapses whitespace, line breaks included, but escapes
nothing; what shows the line passes it through ``visible`` as it would the whole text.
"""

from __future__ import annotations

import logging
import re
import textwrap

ELLIPSIS = "…"

# C0 controls but newline and tab, DEL and the C1 controls (``\x9b`` is a one-byte CSI for many
# terminals), the line and paragraph separators (a line break to some viewers, not to others),
# the characters of Unicode's Bidi_Control property (LRM, RLM, ALM, the embeddings, overrides
# and isolates), and lone surrogates (which cannot be encoded: writing one would fail). Other
# invisible formatting characters (zero-width joiner, variation selectors, emoji tags) are kept:
# ordinary text and emoji use them, and they move no cursor and reorder nothing.
_UNSAFE = (
    r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029"
    r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    r"\ud800-\udfff"
)
_CONTROL = re.compile(f"[{_UNSAFE}]")
_CONTROL_OR_BREAK = re.compile(f"[\\t\\n{_UNSAFE}]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def visible(text: str, *, one_line: bool = False) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\x1b``, ``\\r``,
    ``\\x9b``, ``\\u202e``); newline and tab are kept, unless ``one_line`` (a table cell, a
    line of the live progress area), which escapes them too."""
    pattern = _CONTROL_OR_BREAK if one_line else _CONTROL
    return pattern.sub(_escaped, text)


def shorten(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters (at least one): its runs of
    whitespace made one space, and a longer line cut after its last whole word that fits, with
    an ellipsis (``textwrap.shorten``). Where whole words would leave out most of the room (a
    long path, a JSON value, which ``textwrap.shorten`` drops whole), it is cut inside a word."""
    limit = max(1, limit)
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    words = textwrap.shorten(flat, limit, placeholder=ELLIPSIS)
    return words if len(words) > limit // 2 else flat[: limit - 1] + ELLIPSIS


def visible_json(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters ``visible``
    escapes written as JSON escapes (``\\u001b``): the same document when parsed, nothing to a
    terminal or viewer when shown. JSON puts such characters only inside strings, where the
    escape means the character itself."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class VisibleFormatter(logging.Formatter):
    """Log records as ``logging.Formatter`` writes them, their control characters escaped: a
    message quotes model output, a test's failure or a server's error as it came."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))
