"""Characters that display as nothing or reorder the text around them: Unicode format characters
(zero-width space, byte-order mark, soft hyphen, the bidirectional overrides and isolates, tag
characters), private-use and unassigned code points, and the default-ignorable letters and marks
(variation selectors, the combining grapheme joiner, Hangul and Mongolian fillers).

Why one place: a value holding one of them reads exactly like a value without it and compares
differently. A key named "\\u202enimda" displayed as "admin" in audit rows; a drug named
"esket\\u200bamine" displayed as esketamine and was missed by the ``drug`` filter integrations use
(found by adversarial probes).

Two rules, because some of these characters are what text in other scripts needs:

* :func:`is_invisible`, for names that identify something (API key names, drug and brand names):
  every such character is refused, since nothing in a name needs one and any one makes a look-alike.
* :func:`hides_text`, for every other text field (schemas/fields.py ``Text``): refused are the
  characters that hide a word or reorder what follows, while those that written text needs stay
  allowed (a review found the first rule refusing them): the zero-width non-joiner and joiner of
  Persian and Indic spelling and of emoji sequences, the left-to-right and right-to-left marks that
  keep "56 mg" in order inside Hebrew or Arabic text, variation selectors (an emoji's presentation,
  as in a pasted warning sign), the combining grapheme joiner and Mongolian variation selectors,
  and the prepended concatenation marks (Arabic number signs: format characters that display)."""

from __future__ import annotations

import re
import unicodedata

#: Unicode categories that render as nothing or are not characters yet: format, private use, unassigned.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cn"})

#: Default-ignorable code points (Unicode DerivedCoreProperties) outside ``INVISIBLE_CATEGORIES``:
#: combining grapheme joiner, variation selectors, Hangul and Mongolian fillers. They render as nothing,
#: and ``str.isprintable()`` calls them printable (categories Mn and Lo).
IGNORABLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
                    (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF))

#: The same ranges as one character class: the only invisible characters a printable string can hold.
PRINTABLE_INVISIBLE = re.compile("[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}"
                                               for low, high in IGNORABLE_RANGES) + "]")

MESSAGE = "no invisible or direction-changing characters (Unicode format, private-use, unassigned)"

#: What :func:`hides_text` allows of :func:`is_invisible`'s characters (see the module docstring).
ALLOWED_IN_TEXT = ((0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                   (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180B, 0x180D), (0x180F, 0x180F), (0x200C, 0x200F),
                   (0xFE00, 0xFE0F), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0xE0100, 0xE01EF))

#: :func:`hides_text`'s characters a printable string can hold: the fillers and Khmer's inherent vowels.
PRINTABLE_HIDING = re.compile("[\u115f\u1160\u17b4\u17b5\u3164\uffa0]")

TEXT_MESSAGE = ("no characters that hide or reorder text (bidirectional overrides and isolates, zero-width "
                "spaces, byte-order marks, soft hyphens, tags, private-use, unassigned)")


def _within(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def is_invisible(char: str) -> bool:
    """Whether ``char`` (one character) displays as nothing or reorders the text around it."""
    return unicodedata.category(char) in INVISIBLE_CATEGORIES or _within(ord(char), IGNORABLE_RANGES)


def hides_text(char: str) -> bool:
    """Whether ``char`` hides a word or reorders what follows it: :func:`is_invisible` but for what
    written text needs (``ALLOWED_IN_TEXT``)."""
    return is_invisible(char) and not _within(ord(char), ALLOWED_IN_TEXT)
