"""Text a model or a test wrote is shown as text: its control characters are escaped, visibly."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import TERMINAL_CONTROLS

from orchestrator.cli import app as cli
from orchestrator.text.visible import shorten, visible, visible_json

ORDINARY = "café naïve Ünïcödé, 中文 日本語, emoji 🎉 and a family 👨\u200d👩\u200d👧, e\u0301"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;pwned\x07", r"\x1b]0;pwned\x07"),  # retitles the terminal
        ("\x1b[2J", r"\x1b[2J"),  # clears it
        ("\x1b[32mstatus SUCCESS\x1b[0m", r"\x1b[32mstatus SUCCESS\x1b[0m"),
        ("\x00 \x08 \x0b \x0c \x1f", r"\x00 \x08 \x0b \x0c \x1f"),  # other C0
        ("real\rfake", r"real\rfake"),  # a carriage return overwrites the line
        ("\x7f", r"\x7f"),  # DEL
        ("\x9b2J \x85 \x90", r"\x9b2J \x85 \x90"),  # C1: a one-byte CSI, NEL, DCS
        ("\u202eSSECCUS\u202c", r"\u202eSSECCUS\u202c"),  # a right-to-left override
        (
            "\u2066\u2067\u2068\u2069 \u200e\u200f\u061c",
            r"\u2066\u2067\u2068\u2069 \u200e\u200f\u061c",
        ),
        ("one\u2028two\u2029", r"one\u2028two\u2029"),  # line breaks to some viewers only
        ("lone \ud800", r"lone \ud800"),  # cannot be encoded: would fail the write
    ],
)
def test_control_characters_are_escaped_so_a_user_sees_they_were_there(raw, shown):
    assert visible(raw) == shown


def test_newlines_tabs_and_ordinary_unicode_are_kept():
    text = f"Traceback:\n\tline 1\n{ORDINARY}\n"

    assert visible(text) == text


def test_one_line_escapes_newlines_and_tabs_too():
    assert visible("a\nb\tc\x1b", one_line=True) == r"a\nb\tc\x1b"
    assert visible(ORDINARY, one_line=True) == ORDINARY


def test_a_text_is_shortened_to_one_line_at_a_word_with_an_ellipsis():
    error = "the import failed: no module named numpy"
    assert shorten("  a short\n\tline  ", 40) == "a short line"
    assert shorten(error, 30) == "the import failed: no module…"
    assert all(len(shorten(error, limit)) <= limit for limit in range(1, 45))


def test_a_word_longer_than_the_room_is_cut_not_dropped():
    # textwrap.shorten would leave the ellipsis alone, or "see…": the path's start says more.
    assert shorten("/" + "x" * 100, 20) == "/" + "x" * 18 + "…"
    assert shorten("see /usr/lib/python3/site-packages/module.py", 24) == "see /usr/lib/python3/si…"


def test_shortening_escapes_nothing_and_what_shows_it_still_escapes_it():
    line = shorten("\x1b[2J cleared\r\nover", 80)
    assert line == "\x1b[2J cleared over"  # line breaks gone, ESC left for visible
    assert not TERMINAL_CONTROLS.search(visible(line))


def test_escaping_twice_changes_nothing_more():
    once = visible("\x1b[2J\r\u202e\x9b")

    assert visible(once) == once


def test_json_text_holds_no_control_character_and_parses_to_the_same_value():
    value = {"message": "\x1b]0;pwned\x07\x9b\x7f\u202e\u2028\ud800\n\t" + ORDINARY}
    text = json.dumps(value, ensure_ascii=False, indent=2)

    safe = visible_json(text)

    assert not TERMINAL_CONTROLS.search(safe)
    assert json.loads(safe) == value
    assert ORDINARY in safe  # readable as it is, not as \u escapes


def test_the_command_lines_log_lines_show_control_characters_escaped(capsys):
    # The command line configures logging only where nothing has yet; pytest has, so its
    # handlers are set aside (and put back within the test, where pytest expects them).
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        assert cli.main(["--list-projects"]) == 0
        logging.getLogger("orchestrator.test").warning("a server said: %s", "\x1b[2J\u202eok")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    assert capsys.readouterr().err.splitlines()[-1] == (
        r"WARNING orchestrator.test: a server said: \x1b[2J\u202eok"
    )
