"""Time handling: everything is stored as naive UTC and rendered as RFC 3339 with ``Z``.

Both databases then compare the same values the same way (SQLite has no time zone type).
"""

from __future__ import annotations

from datetime import UTC, datetime


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


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; return naive UTC."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise ValueError("expected an RFC 3339 date-time such as 2024-01-31T12:00:00Z")
    candidate = text.strip()
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    parsed = datetime.fromisoformat(candidate)
    if parsed.tzinfo is None:
        raise ValueError("date-time must include a time zone offset (e.g. Z or +01:00)")
    if not (1900 <= parsed.year <= 9998):
        raise ValueError("date-time year must be between 1900 and 9998")
    return to_naive_utc(parsed)
