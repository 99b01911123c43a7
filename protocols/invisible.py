"""Characters that display as nothing: Unicode format characters (zero-width space, byte-order mark,
soft hyphen, the bidirectional overrides and isolates that reorder what follows them, tag
characters), private-use and unassigned code points, and the default-ignorable letters and marks
(variation selectors, the combining grapheme joiner, Hangul and Mongolian fillers).

Why one place: a value holding one of them reads exactly like a value without it and compares
differently. A key named "\\u202enimda" displayed as "admin" in audit rows; a drug named
"esket\\u200bamine" displayed as esketamine and was missed by the ``drug`` filter integrations use
(found by adversarial probes). API key names (protocols/keys.py) and every text field of the wire
contract (schemas/fields.py ``Text``) refuse them with this rule."""

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


def is_invisible(char: str) -> bool:
    """Whether ``char`` (one character) displays as nothing or reorders the text around it."""
    if unicodedata.category(char) in INVISIBLE_CATEGORIES:
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in IGNORABLE_RANGES)
