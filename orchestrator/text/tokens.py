"""How many tokens a text is, as every part of the orchestrator counts them.

No vendor's tokenizer comes with the dependencies: OpenAI's ``tiktoken`` is not one of them,
Anthropic counts tokens only on its server (a request before every request), and google-genai's
local tokenizer needs ``sentencepiece`` and downloads its model at run time. So tokens are
estimated from the text itself, in one of three ways, by what a wrong count would cost:

``token_bound``
    A bound no tokenizer passes: one token a byte of UTF-8. Every vendor's tokenizer is byte
    pair encoding over bytes, or SentencePiece falling back to bytes, so a token always stands
    for at least one byte. For money: a call's reserved worst case under the hard budget, and
    the forecast's most a run can cost. Three to four times the real count on code and prose,
    which only holds money aside for the length of a call.

``high_tokens``
    An upper estimate, for the context window: how much of a dependency's output a prompt
    takes, and what a request's output limit is lowered to. A byte a token there refused
    prompts that fit three times over and cut a code task's answer on an 8k-token model to a
    few hundred tokens, so this counts by kind of character instead: a digit, a punctuation
    mark and a control character a token each, as tokenizers that split digits count them; a
    character beyond ASCII a token a byte, as a vocabulary without it does; letters run
    together with digits (a hash, a key, an id) a token each; other words a token for every
    four letters, three for capitals, more for runs of consonants (rare letters in a row are
    single tokens); a run of whitespace a token, and half a token more for every tab or line
    break. On this project's sources and documents and 150 modules of the standard library it
    was never under the count of SmolLM2's tokenizer (49,152 entries: the smallest vocabulary
    in use here, so the most tokens, and it splits digits one by one), and about 1.5 times
    it on code and prose; vendors' larger vocabularies count fewer. Nor was it under it on
    numbers, hashes, punctuation, indentation, accented, Cyrillic, Chinese or Japanese text or
    emoji. Words of random letters alone can pass it by a few percent; a prompt of little else
    may then be refused by a server, which hands the call to the next model and costs nothing
    (the reservation was of ``token_bound``).

``typical_tokens``
    The expected count, for predictions that add calls up: the forecast's expected spend and
    the usage of an answer whose server reported none. Four characters a token, the vendors'
    own rule of thumb for English and code; an upper estimate there would make every forecast
    look dearer than the runs it forecasts.
"""

from __future__ import annotations

import math
import re
import string

_ASCII = bytes(range(128))
_LETTERS = string.ascii_letters.encode()
_WHITESPACE = string.whitespace.encode()  # space, tab, line breaks
# Four letters of a word or less: a word's parts (camelCase and ALLCAPS split apart) in fours.
_LETTERS_4 = re.compile(r"[A-Z]{1,3}(?![a-z])|[A-Z][a-z]{1,3}|[a-z]{1,4}")
_RARE_RUN = re.compile(r"[b-df-hj-np-tv-xzB-DF-HJ-NP-TV-XZ]{3,}")  # three consonants or more
# Letters and digits run together (a hash, a key, base64, an id): a token a character.
_MIXED = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z]*[0-9])(?=[0-9]*[A-Za-z])[A-Za-z0-9]+")
# A run of whitespace, but for one space before a word: that space is part of the word's token.
_SPACE_RUN = re.compile(r"(?! [A-Za-z])\s+")
CHARS_PER_TOKEN = 4  # typical_tokens' rule of thumb


def token_bound(text: str) -> int:
    """At most this many tokens, for any tokenizer: its UTF-8 bytes (see the module's doc)."""
    return len(text.encode())


def high_tokens(text: str) -> int:
    """An upper estimate of ``text``'s tokens for a context window (see the module's doc);
    never more than ``token_bound``. Counted by C loops (``bytes.translate``, ``re``): a window
    check of a long prompt takes milliseconds, not a pass of Python over every character."""
    rest = _MIXED.sub("", text)
    return min(len(text.encode()), len(text) - len(rest) + _by_kind(rest))


def _by_kind(text: str) -> int:
    """``high_tokens`` of a text without letters and digits run together."""
    data = text.encode()
    beyond_ascii = len(data.translate(None, _ASCII))  # the bytes of every other character
    letters = len(data) - len(data.translate(None, _LETTERS))
    whitespace = len(data) - len(data.translate(None, _WHITESPACE))
    others = len(data) - beyond_ascii - letters - whitespace  # digits, punctuation, controls
    breaks = whitespace - data.count(b" ")
    words = len(_LETTERS_4.findall(text))
    rare = sum(len(run) - 2 for run in _RARE_RUN.findall(text))
    spaces = len(_SPACE_RUN.findall(text)) + breaks // 2
    return words + rare + others + beyond_ascii + spaces


def typical_tokens(text: str) -> int:
    """The expected number of ``text``'s tokens: a token for every four characters begun."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)
