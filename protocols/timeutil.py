"""Time handling: everything is stored as naive UTC and rendered as RFC 3339 with ``Z``.

Both databases then compare the same values the same way (SQLite has no time zone type).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal


def utcnow() -> datetime:
    """Naive UTC now, the form stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetime must carry a time zone offset")
    return value.astimezone(UTC).replace(tzinfo=None)


def format_rfc3339(value: datetime) -> str:
    """Render naive-UTC ``value`` as RFC 3339; microseconds only when present."""
    if value.tzinfo is not None:
        value = to_naive_utc(value)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


#: RFC 3339's date-time (section 5.6) in ASCII digits. ``datetime.fromisoformat`` alone also takes
#: ISO 8601's basic and week forms (20190305T000000Z, 2019-W10-2), hour-only times, decimal commas,
#: seconds in offsets and surrounding blanks: forms a client may not rely on, refused here. Offset
#: minutes stop at 59 (RFC 3339): fromisoformat read +00:60 as +01:00, moving an instant by an hour.
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                      r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?")
#: The digits of a fraction past the sixth (microseconds).
_BEYOND_MICROSECONDS = re.compile(r"\.[0-9]{6}([0-9]+)")


def parse_rfc3339(text: str, *, finer: Literal["refuse", "up", "down"] = "refuse") -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; return naive UTC.

    Instants are stored to the microsecond; a fraction with more digits (.NET writes seven) that are not
    all zeros is ``finer``:

    * ``"refuse"`` (a value to store): ``datetime.fromisoformat`` cut the digits off, so an
      ``effective_from`` of ``…00.1234567Z`` was stored as ``…00.123456Z``, another instant
      (adversarial probe);
    * ``"up"`` to the next microsecond, for a bound compared with ``>=`` or ``<`` (``since``, ``until``,
      FHIR ``_since``), and ``"down"`` for one compared with ``<=`` or ``>`` (``as_of``,
      ``updated_since``): either way the bound compares with stored instants exactly as the given
      instant would."""
    if not isinstance(text, str) or not _RFC3339.fullmatch(text):
        raise ValueError("expected an RFC 3339 date-time such as 2024-01-31T12:00:00Z")
    candidate = text[:-1] + "+00:00" if text.endswith(("z", "Z")) else text
    beyond = _BEYOND_MICROSECONDS.search(candidate)
    past = beyond is not None and beyond.group(1).strip("0") != ""
    if past and finer == "refuse":
        raise ValueError("fractional seconds are stored to the microsecond: send at most 6 digits")
    parsed = datetime.fromisoformat(candidate)  # cuts the digits past the sixth: "down"
    if past and finer == "up":
        try:
            parsed += timedelta(microseconds=1)
        except OverflowError as exc:  # 9999-12-31T23:59:59.9999999Z
            raise ValueError("date-time year must be between 1900 and 9998 (in UTC)") from exc
    if parsed.tzinfo is None:
        raise ValueError("date-time must include a time zone offset (e.g. Z or +01:00)")
    # The bounds apply to the instant stored (UTC), not to the text: 1900-01-01T00:00:00+05:00 is
    # 1899 in UTC, and a stored 1899 was refused when an export of it was imported or PUT back.
    try:
        utc = to_naive_utc(parsed)
    except OverflowError:  # 9999-12-31T23:30:00-05:00 is past year 9999 in UTC
        utc = datetime.max
    if not (1900 <= utc.year <= 9998):
        raise ValueError("date-time year must be between 1900 and 9998 (in UTC)")
    return utc
