"""Characters that display as nothing or reorder the text around them: Unicode format characters
(zero-width space, byte-order mark, soft hyphen, the bidirectional overrides and isolates, tag
characters), private-use and unassigned code points, the default-ignorable letters and marks
(variation selectors, the combining grapheme joiner, Hangul and Mongolian fillers), and the symbols
that draw nothing (the Braille pattern blank).

Why one place: a value holding one of them reads exactly like a value without it and compares
differently. A key named "\\u202enimda" displayed as "admin" in audit rows; a drug named
"esket\\u200bamine" displayed as esketamine and was missed by the ``drug`` filter integrations use
(found by adversarial probes).

Two rules:

* :func:`is_invisible`, for names that identify something (API key names, drug and brand names) and
  for URLs: every such character is refused, since nothing in a name needs one and any one makes a
  look-alike.
* :func:`hides_text`, for every other text field (schemas/fields.py ``Text``): the same, but for the
  variation selectors, which give an emoji its presentation (a pasted warning sign is U+26A0 U+FE0F)
  and cannot reorder anything; where one would split a word or carry hidden data (inside a word, in
  a run) it is refused too (:func:`misplaces_selector`). A first version also allowed the joiners of
  Persian and Indic spelling, the directional marks of right-to-left text and the Arabic number signs; a review
  showed the marks reordering a dose ("1\\u200f.5 mg/kg" displays as "15. mg/kg") and the joiners
  hiding a word from the free-text search, so in this service's clinical text they are refused.
  A value of nothing but variation selectors is blank (schemas/fields.py ``is_blank``)."""

from __future__ import annotations

import re
import unicodedata

from protocols import fulltext

#: Unicode categories that render as nothing or are not characters yet: format, private use, unassigned.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cn"})

#: Default-ignorable code points (Unicode DerivedCoreProperties) outside ``INVISIBLE_CATEGORIES``:
#: combining grapheme joiner, variation selectors, Hangul and Mongolian fillers. They render as nothing,
#: and ``str.isprintable()`` calls them printable (categories Mn and Lo).
IGNORABLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
                    (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF))

#: Symbols that draw nothing, though no Unicode property says so (category So): the Braille pattern
#: blank, the musical null notehead and the object replacement character (drawn as nothing or as an
#: empty box). "esketamine\u2800" read as esketamine and escaped the ``drug`` filter, and a title of
#: two Braille blanks was stored as not blank (adversarial probe).
BLANK_SYMBOLS = ((0x2800, 0x2800), (0xFFFC, 0xFFFC), (0x1D159, 0x1D159))

#: Every invisible character outside ``INVISIBLE_CATEGORIES``.
_PRINTABLE_RANGES = IGNORABLE_RANGES + BLANK_SYMBOLS


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """The ranges as the inside of a regular-expression character class."""
    return "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges)


#: The same ranges as one character class: the only invisible characters a printable string can hold.
PRINTABLE_INVISIBLE = re.compile(f"[{_char_class(_PRINTABLE_RANGES)}]")

MESSAGE = "no invisible or direction-changing characters (Unicode format, private-use, unassigned)"

#: What :func:`hides_text` allows of :func:`is_invisible`'s characters: the variation selectors.
ALLOWED_IN_TEXT = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))

TEXT_MESSAGE = ("no characters that hide or reorder text (bidirectional overrides and isolates, zero-width "
                "spaces, byte-order marks, soft hyphens, tags, private-use, unassigned)")

SELECTOR_MESSAGE = "no variation selector inside a word or after another one (it hides the word from search)"

_SELECTOR = re.compile(f"[{_char_class(ALLOWED_IN_TEXT)}]")
_SELECTOR_RUN = re.compile(f"[{_char_class(ALLOWED_IN_TEXT)}]{{2,}}")


def misplaces_selector(text: str) -> bool:
    """Whether ``text`` holds a variation selector where it otherwise keeps none: where it splits a
    word for the free-text search ("zorbl\ufe0fquux" was not found by "zorblquux", only by its halves),
    asked of the search's own tokenizer so that what counts as a word is the search's (a combining mark
    beside the selector is part of the word there), or after another selector, where a run carries data
    no reader sees (28 bytes hidden in a title; adversarial probe). An emoji takes one selector after
    it (U+26A0 U+FE0F), a keycap one before U+20E3: neither splits a word."""
    if _SELECTOR.search(text) is None:
        return False
    return _SELECTOR_RUN.search(text) is not None or fulltext.tokens(text) != fulltext.tokens(_SELECTOR.sub("", text))


def _within(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def is_invisible(char: str) -> bool:
    """Whether ``char`` (one character) displays as nothing or reorders the text around it."""
    return unicodedata.category(char) in INVISIBLE_CATEGORIES or _within(ord(char), _PRINTABLE_RANGES)


def hides_text(char: str) -> bool:
    """Whether ``char`` may hide a word or reorder what follows it: :func:`is_invisible` but for the
    variation selectors (``ALLOWED_IN_TEXT``)."""
    return is_invisible(char) and not _within(ord(char), ALLOWED_IN_TEXT)


#: :func:`hides_text`'s characters a printable string can hold (derived from the tables above: the
#: combining grapheme joiner, fillers, Khmer's inherent vowels, Mongolian variation selectors, the
#: blank symbols).
PRINTABLE_HIDING = re.compile("[" + "".join(re.escape(chr(code)) for low, high in _PRINTABLE_RANGES
                                            for code in range(low, high + 1)
                                            if chr(code).isprintable() and hides_text(chr(code))) + "]")
