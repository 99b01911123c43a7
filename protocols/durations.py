"""ISO 8601 durations as used in dosing (``P1D``, ``P1W``, ``PT40M``).

Years and months are refused: their length varies, so "per month" maxima would be ambiguous in dose
arithmetic. Everything else converts exactly to a ``timedelta``.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

_PATTERN = re.compile(
    r"\AP(?!\Z)(?:(?P<weeks>[0-9]{1,4})W)?(?:(?P<days>[0-9]{1,4})D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]{1,4})H)?(?:(?P<minutes>[0-9]{1,5})M)?(?:(?P<seconds>[0-9]{1,6})S)?)?\Z"
)


#: The same language as :func:`parse_duration`, for the OpenAPI document (ECMA-262, as JSON Schema reads
#: patterns): its parts, and at least one digit that is not 0 (a duration is longer than zero).
#: ``tests/protocols/test_durations.py`` holds the two to the same answers.
PUBLISHED_PATTERN = (r"^P(?=.*[1-9])(?:[0-9]{1,4}W)?(?:[0-9]{1,4}D)?"
                     r"(?:T(?=[0-9])(?:[0-9]{1,4}H)?(?:[0-9]{1,5}M)?(?:[0-9]{1,6}S)?)?$")


def parse_duration(text: str) -> timedelta:
    """Parse ``PnWnDTnHnMnS`` (any subset, at least one part, > 0). Raises ``ValueError``."""
    if not isinstance(text, str):
        raise ValueError("duration must be a string such as P1D, P1W or PT40M")
    return _parse(text)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> timedelta:
    """Cached: a write carries ~6 durations, nearly always the same few (``P1D``, ``P1W``, ``PT40M``),
    and a parse costs ~3 µs against 0.06 from the cache (a ``timedelta`` is immutable; an error is
    raised anew each time, not cached)."""
    if re.fullmatch(r"P.*[0-9]+[YM].*", text, re.DOTALL) and "T" not in text.split("M")[0]:
        raise ValueError("years and months are not allowed (their length varies); use weeks or days")
    match = _PATTERN.match(text)
    if not match:
        raise ValueError("not a duration this service reads: ISO 8601 with whole numbers, such as P1D, P1W, PT1H, "
                         "PT40M or PT5H30M (no fractions such as PT5.5H)")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    value = timedelta(weeks=parts.get("weeks", 0), days=parts.get("days", 0), hours=parts.get("hours", 0),
                      minutes=parts.get("minutes", 0), seconds=parts.get("seconds", 0))
    if value <= timedelta(0):
        raise ValueError("duration must be longer than zero")
    return value
