"""Field types shared by every schema: bounded text, exact decimals, ISO durations, slugs."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import urlsplit

from marshmallow import ValidationError, fields, validate

from protocols import invisible
from protocols.dosing import MAX_SIGNIFICANT_DIGITS, significant_digits
from protocols.durations import PUBLISHED_PATTERN, parse_duration
from protocols.timeutil import parse_rfc3339

SLUG_PATTERN = re.compile(r"\A[a-z0-9][a-z0-9-]{2,63}\Z")
#: C0 (except TAB, LF, CR) and C1 controls, DEL, and Unicode noncharacters (U+FDD0-FDEF, U+xFFFE/F).
_NONCHARACTERS = "".join(chr(plane * 0x10000 + 0xFFFE) + chr(plane * 0x10000 + 0xFFFF) for plane in range(17))
_CONTROL_CHARS = f"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef{_NONCHARACTERS}"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
#: Line breaks (and TAB): refused in single-line text such as titles, names and codes.
_LINE_BREAK_CHARS = "\t\n\r\u2028\u2029"
_LINE_BREAK = re.compile(f"[{_LINE_BREAK_CHARS}]")
#: The characters :class:`Text` accepts that ``str.isprintable()`` does not: every space separator (Unicode
#: category Zs) but the ASCII space, and in multi-line text (``True``) TAB, CR, LF and U+2028/U+2029.
#: As a ``str.translate`` table to a printable character, so that a translated value is printable
#: exactly when it holds none of the characters Text refuses but the printable invisible ones.
_SPACE_SEPARATORS = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_ACCEPTED_UNPRINTABLE = {multiline: str.maketrans(dict.fromkeys(_SPACE_SEPARATORS + (_LINE_BREAK_CHARS if multiline
                                                                                    else ""), "x"))
                         for multiline in (True, False)}

#: The ``fields.Url`` variants the schemas use, as (relative, absolute, require_tld): absolute URLs, with
#: a top-level domain (sources) and without one (a CDS Hooks ``fhirServer`` may be an intranet host).
URL_VARIANTS = ((False, True, True), (False, True, False))

MAX_DOSE_VALUE = Decimal(1_000_000)


def is_blank(text: str) -> bool:
    """Whether non-empty text holds nothing visible: only spaces, line breaks, format characters
    (zero-width space, BOM), controls, or other characters that display as nothing (a variation
    selector, which text may hold: a review stored a title of U+FE0F alone). A title of three spaces
    passed ``Length(1, 200)``."""
    return bool(text) and all(char.isspace() or unicodedata.category(char)[0] in "ZC" or invisible.is_invisible(char)
                              for char in text)


def starts_visible(text: str) -> bool:
    """Whether ``text`` is empty or starts with a character that makes it not blank: printable, not a
    space, and not one of the printable characters that display as nothing (a variation selector).
    (``str.isprintable()`` is False exactly for the Unicode categories Z* and C*, but for the ASCII
    space: with those, the characters :func:`is_blank` counts as nothing visible.)"""
    first = text[:1]
    return first.isprintable() and first != " " and (first.isascii() or not invisible.is_invisible(first))


#: Scripts whose letters a keyboard layout puts within reach and that hold look-alikes of Latin ones.
_LOOKALIKE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})
MIXED_SCRIPTS_MESSAGE = "no word may mix Latin, Cyrillic and Greek letters (it reads as another name)"
_WORD = re.compile(r"[^\W\d_]+")


def mixes_scripts(text: str) -> bool:
    """Whether a word of ``text`` mixes Latin, Cyrillic and Greek letters. A drug named "\u0435sketamine"
    (a Cyrillic e) read as esketamine and escaped the ``drug`` filter (adversarial probe); a name
    written wholly in one script (кетамин) is a name, one that mixes them within a word is a look-alike.
    International nonproprietary names spell Greek letters out in Latin ("alfa", "beta"), so a name
    needs no Greek letter beside Latin ones; ordinary text (a title naming TNF\u03b1) is not held to this."""
    for word in _WORD.findall(text):
        if not word.isascii() and len({unicodedata.name(char, "").partition(" ")[0] for char in word}
                                       & _LOOKALIKE_SCRIPTS) > 1:
            return True
    return False


def plainly_valid_text(text: str, *, multiline: bool, identifier: bool = False) -> bool:
    """A cheap sufficient condition for :class:`Text` to accept ``text`` as it is: it starts visible
    and holds none of the characters Text refuses. ``str.isprintable()`` (one pass in C) answers for
    most text: a printable string holds no control, format, surrogate, private-use, unassigned or
    separator character; text with line breaks (or a non-ASCII space) is asked again with those
    made printable. A printable string may still hold a character that displays as nothing (a
    filler; in an ``identifier``, a variation selector too: ``protocols.invisible``): one search, skipped for
    ASCII (``isascii()`` reads a flag of the string)."""
    return (starts_visible(text)
            and (text.isprintable() or text.translate(_ACCEPTED_UNPRINTABLE[multiline]).isprintable())
            and (text.isascii() or (_PRINTABLE_REFUSED[identifier].search(text) is None
                                    and (not mixes_scripts(text) if identifier
                                         else not invisible.misplaces_selector(text)))))


#: The printable characters Text refuses, by ``identifier`` (see ``protocols.invisible``).
_PRINTABLE_REFUSED = {True: invisible.PRINTABLE_INVISIBLE, False: invisible.PRINTABLE_HIDING}
#: Text's rule for characters that display as nothing, and its message, by ``identifier``.
_HIDDEN = {True: (invisible.is_invisible, invisible.MESSAGE), False: (invisible.hides_text, invisible.TEXT_MESSAGE)}


class ValidatorsCombinedOnce(fields.Field):
    """A field whose validators are combined into one ``validate.And`` once, not per value.

    Why: marshmallow builds a new ``And`` of a field's validators for every value it validates
    (``Field._validate_all`` is a property), and a PUT validates ~80 values. The ``And`` kept is the
    one marshmallow's own property builds (with whatever options its version gives it), so errors
    read exactly as marshmallow's (docs/performance.md, design choice 14). A field's validators must
    therefore not change once it has validated a value: nothing here, in marshmallow, webargs or
    flask-smorest changes them after construction (``Url`` adds its own in ``__init__``)."""

    @functools.cached_property
    def _validate_all(self) -> Callable[[Any], None]:
        combined: Callable[[Any], None] = super()._validate_all
        return combined


class Text(ValidatorsCombinedOnce, fields.String):
    """A string that is valid UTF-8 text: no lone surrogates, no control characters or noncharacters,
    not blank, nothing that hides a word or reorders the text (``protocols.invisible.hides_text``;
    with ``identifier=True``, nothing that displays as nothing at all: ``is_invisible``, for drug and
    brand names, which the ``drug`` filter compares); single-line unless ``multiline=True``
    (summaries, instructions, notes)."""

    def __init__(self, *, multiline: bool = False, identifier: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.multiline = multiline
        self.identifier = identifier

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        # The shortcut for what nearly every value is: a str that starts visible (so is not blank) and
        # holds no character refused below is valid as it came, after one pass over it instead of four
        # checks (a PUT's ~50 text values: docs/performance.md, design choice 14).
        # Anything else takes the checks one by one, whose order decides the message a value with two
        # faults gets. tests/schemas/test_fields.py checks the shortcut over every code point.
        if type(value) is str and plainly_valid_text(value, multiline=self.multiline, identifier=self.identifier):
            return value
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            result.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError("Not valid Unicode text (lone surrogate).") from exc
        if _CONTROL.search(result):
            raise ValidationError("Control characters are not allowed.")
        if not self.multiline and _LINE_BREAK.search(result):
            raise ValidationError("Must be a single line (no tab or line break).")
        if is_blank(result):
            raise ValidationError("Must not be blank.")
        hidden, message = _HIDDEN[self.identifier]
        if any(map(hidden, result)):
            # "esket\u200bamine" displayed as esketamine and was missed by the drug filter; U+202E
            # reorders the dose text after it (found by an adversarial probe).
            raise ValidationError(_sentence(message))
        if not self.identifier and invisible.misplaces_selector(result):
            raise ValidationError(_sentence(invisible.SELECTOR_MESSAGE))
        if self.identifier and mixes_scripts(result):
            raise ValidationError(_sentence(MIXED_SCRIPTS_MESSAGE))
        return result


def _sentence(rule: str) -> str:
    """A rule ("no …", as key names report it) as the sentence a field's error gives."""
    return rule[:1].upper() + rule[1:] + "."


def refused_in_url(text: str) -> bool:
    """Whether ``text`` holds a character no URL field takes: control or whitespace characters,
    surrogates, and whatever displays as nothing (``protocols.invisible.is_invisible``: format,
    private-use and unassigned code points, variation selectors, fillers; a review found a source URL
    ending in U+FE0F stored and served into FHIR output)."""
    return bool(_CONTROL.search(text)) or any(
        char.isspace() or unicodedata.category(char) == "Cs" or invisible.is_invisible(char) for char in text)


def plainly_valid_url(text: str) -> bool:
    """A cheap sufficient condition for :func:`refused_in_url` to pass ``text``: ``str.isprintable()``
    is False for every whitespace (but " "), control and format character, surrogate, private-use and
    unassigned code point, so a printable URL without a space holds none but the printable invisible
    ones, one search away (skipped for ASCII). A PUT's URLs cost ~30 µs through the full check."""
    return (text.isprintable() and " " not in text
            and (text.isascii() or invisible.PRINTABLE_INVISIBLE.search(text) is None))


class WebUrl(ValidatorsCombinedOnce, fields.Url):
    """An absolute http(s) URL that is only a URL: no control, format or whitespace characters and a
    port that exists. marshmallow's pattern allows any non-blank path (a NUL, ESC or zero-width space
    in a source URL was stored and served into FHIR output; port 99999999 passed; adversarial probe).
    Never empty, as the OpenAPI document says (``""`` passed the published schema; a contract probe)."""

    def __init__(self, **kwargs: Any) -> None:
        # "uri", JSON Schema's format (apispec writes marshmallow's "url", which no tool knows; a probe)
        kwargs["metadata"] = {"minLength": 1, "format": "uri", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result = super()._deserialize(value, attr, data, **kwargs)
        if not plainly_valid_url(result) and refused_in_url(result):
            raise ValidationError("Not a valid URL: control, whitespace or invisible characters are not allowed.")
        try:
            urlsplit(result).port  # noqa: B018  (reading the port raises for one outside 0-65535)
        except ValueError as exc:
            raise ValidationError("Not a valid URL: the port must be 0-65535.") from exc
        return str(result)


class Slug(Text):
    """A protocol id. The pattern is in the OpenAPI document too: clients generated from the contract
    sent ids the server refuses (found by a contract probe)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"pattern": "^[a-z0-9][a-z0-9-]{2,63}$", "minLength": 3, "maxLength": 64,
                              **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result = super()._deserialize(value, attr, data, **kwargs)
        if not SLUG_PATTERN.match(result):
            raise ValidationError("Must match ^[a-z0-9][a-z0-9-]{2,63}$ (lowercase letters, digits, hyphens).")
        return result


class PositiveDecimal(ValidatorsCombinedOnce, fields.Decimal):
    """A finite, positive number with at most 12 significant digits, kept exact as ``Decimal``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_nan", False)
        kwargs.setdefault("as_string", False)
        # Documented as the contract's bounds (they were a bare number there; found by a contract probe).
        kwargs["metadata"] = {"minimum": 0, "exclusiveMinimum": True, "maximum": int(MAX_DOSE_VALUE),
                              **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, str | bool):
            raise ValidationError("Must be a JSON number.")
        try:
            result = super()._deserialize(value, attr, data, **kwargs)
        except (InvalidOperation, OverflowError) as exc:
            raise ValidationError("Not a valid number.") from exc
        if result is None:
            raise ValidationError("Not a valid number.")
        if not result.is_finite():
            raise ValidationError("Must be a finite number.")
        if result <= 0:
            raise ValidationError("Must be greater than 0.")
        if result > MAX_DOSE_VALUE:
            raise ValidationError(f"Must be at most {MAX_DOSE_VALUE}.")
        if significant_digits(result) > MAX_SIGNIFICANT_DIGITS:
            raise ValidationError(f"At most {MAX_SIGNIFICANT_DIGITS} significant digits.")
        if Decimal(repr(float(result))) != result:
            # Documents carry numbers as JSON doubles: 1e-400 would be stored as 0 (found by the
            # hostile-input suite). Refuse what cannot be written back exactly.
            raise ValidationError("Too small to be stored exactly.")
        return result

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        number = Decimal(str(value))
        return int(number) if number == number.to_integral_value() else float(number)


class Duration(Text):
    """An ISO 8601 duration without years or months (see ``protocols.durations``). Its pattern is in the
    OpenAPI document: ``""`` passed the published schema and was refused (found by a contract probe)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {"pattern": PUBLISHED_PATTERN, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            parse_duration(result)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        return result


class QueryInteger(ValidatorsCombinedOnce, fields.Integer):
    """A non-negative integer written in ASCII digits: ``int()`` also takes " 5", "\\uff12" (a fullwidth 2)
    and "\\u0661" (an Arabic-Indic 1), which then came back in ``next`` links as the client wrote them."""

    _DIGITS = re.compile(r"0|[1-9][0-9]{0,8}")  # no leading zeros: "05" came back in next links

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not self._DIGITS.fullmatch(value):
            # Said why: "05" is digits 0-9, and the message only said that (adversarial probe).
            raise ValidationError("Must be a whole number written in the digits 0-9, without a leading zero "
                                  "(at most 9 digits).")
        return int(value)


class StrictBoolean(ValidatorsCombinedOnce, fields.Boolean):
    """``true`` or ``false`` as JSON booleans: marshmallow's Boolean also takes "yes", "on", "t", 1, "0"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class StrictInteger(ValidatorsCombinedOnce, fields.Integer):
    """An integer that must arrive as a JSON integer (not 1.0, not "1", not true)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("strict", True)
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("Not a valid integer.")
        return int(super()._deserialize(value, attr, data, **kwargs))


class CalendarDate(ValidatorsCombinedOnce, fields.Date):
    """A date as RFC 3339's full-date (``2019-03-05``); ``date.fromisoformat`` alone also takes the
    basic form (``20190305``) and ISO week dates."""

    _FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not self._FULL_DATE.fullmatch(value):
            raise ValidationError("Not a valid date: use YYYY-MM-DD.")
        return super()._deserialize(value, attr, data, **kwargs)


class Instant(ValidatorsCombinedOnce, fields.AwareDateTime):
    """An RFC 3339 date-time with an offset, loaded as naive UTC (the stored form). ``finer`` says what
    a fraction past microseconds becomes (``protocols.timeutil.parse_rfc3339``): refused in a value to
    store; rounded the way a query bound compares (``"up"`` for ``>=``/``<``, ``"down"`` for
    ``<=``/``>``), so that a .NET client's seven digits ask exactly what they say."""

    def __init__(self, *, finer: Literal["refuse", "up", "down"] = "refuse", **kwargs: Any) -> None:
        kwargs.setdefault("format", "iso")
        super().__init__(**kwargs)
        self.finer: Literal["refuse", "up", "down"] = finer

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or len(value) > 40:
            raise ValidationError("Not a valid RFC 3339 date-time.")
        try:
            return parse_rfc3339(value, finer=self.finer)
        except (ValueError, OverflowError) as exc:
            raise ValidationError(f"Not a valid RFC 3339 date-time: {exc}") from exc


def compile_url_patterns() -> tuple[tuple[bool, bool, bool], ...]:
    """Compile marshmallow's URL patterns now, at worker start-up.

    Why: marshmallow builds the pattern for each URL variant the first time a URL of that variant is
    validated, and its host part is a character class of every Unicode letter, whose compilation takes
    40-60 ms. Without this, the first write (sources carry URLs) and the first CDS Hooks call
    (``fhirServer``) of every worker pay it, after each restart (production recycles workers).
    Returns the variants compiled; ``tests/schemas`` checks that every ``Url`` field is among them.
    """
    for relative, absolute, require_tld in URL_VARIANTS:
        validate.URL(relative=relative, absolute=absolute, require_tld=require_tld)("https://example.org")
    return URL_VARIANTS
