"""RFC 3339 parsing: the year bounds hold for the instant stored (UTC), whatever offset the text has.

Found by an adversarial probe: ``1900-01-01T00:00:00+05:00`` was accepted and stored as 1899 (UTC),
which the same parser then refused when the export was imported or the version PUT back.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from protocols.timeutil import format_rfc3339, parse_rfc3339


@pytest.mark.parametrize("text", ["1900-01-01T00:00:00+05:00", "1899-12-31T23:59:59Z",
                                  "9998-12-31T23:30:00-05:00", "9999-12-31T23:30:00-05:00", "9999-01-01T00:00:00Z"])
def test_instants_outside_the_years_1900_to_9998_in_utc_are_refused(text):
    with pytest.raises(ValueError, match="between 1900 and 9998"):
        parse_rfc3339(text)


@pytest.mark.parametrize(("text", "stored"), [
    ("1900-01-01T05:00:00+05:00", datetime(1900, 1, 1)),
    ("1899-12-31T23:00:00-01:00", datetime(1900, 1, 1)),
    ("9998-12-31T23:59:59Z", datetime(9998, 12, 31, 23, 59, 59)),
    ("9998-12-31T18:00:00-05:00", datetime(9998, 12, 31, 23)),
])
def test_what_is_accepted_is_stored_in_utc_and_parses_again(text, stored):
    assert parse_rfc3339(text) == stored
    assert parse_rfc3339(format_rfc3339(stored)) == stored


@pytest.mark.parametrize("text", ["2030-01-01T00:00:00+00:60", "2030-01-01T00:00:00-05:75", "2030-01-01T00:00:00+05:99",
                                  "2030-01-01T00:00:00+24:00", "2030-01-01T00:00:00+99:00"])
def test_offsets_beyond_23_59_are_refused(text):
    """fromisoformat read +00:60 as +01:00: an effective_from written that way took effect an hour
    early (found by a probe). RFC 3339 offsets are 00-23 hours, 00-59 minutes."""
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)


def test_the_widest_offsets_are_accepted():
    assert parse_rfc3339("2030-01-01T23:59:00+23:59") == datetime(2030, 1, 1, 0, 0)
    assert parse_rfc3339("2030-01-01T00:00:00-23:59") == datetime(2030, 1, 1, 23, 59)


@pytest.mark.parametrize(("text", "stored"), [
    ("2024-03-01T09:15:30.1234560Z", datetime(2024, 3, 1, 9, 15, 30, 123456)),
    ("2024-03-01T09:15:30.123456000Z", datetime(2024, 3, 1, 9, 15, 30, 123456)),
    ("2024-03-01T09:15:30.1Z", datetime(2024, 3, 1, 9, 15, 30, 100000)),
])
def test_a_fraction_is_taken_when_microseconds_hold_it(text, stored):
    assert parse_rfc3339(text) == stored


@pytest.mark.parametrize("text", ["2024-03-01T09:15:30.1234567Z", "2024-03-01T09:15:30.0000001+01:00"])
def test_a_fraction_past_microseconds_is_refused_not_cut(text):
    """fromisoformat cut ".1234567" to ".123456": an effective_from was stored as another instant (probe)."""
    with pytest.raises(ValueError, match="at most 6 digits"):
        parse_rfc3339(text)


def test_a_lower_bound_past_microseconds_is_rounded_up():
    assert parse_rfc3339("2024-03-01T09:15:30.1234561Z", finer="up") == datetime(2024, 3, 1, 9, 15, 30, 123457)
    assert parse_rfc3339("2024-03-01T09:15:59.9999999Z", finer="up") == datetime(2024, 3, 1, 9, 16)
    assert parse_rfc3339("2024-03-01T09:15:30.1234560Z", finer="up") == datetime(2024, 3, 1, 9, 15, 30, 123456)
    with pytest.raises(ValueError):
        parse_rfc3339("9998-12-31T23:59:59.9999999-14:00", finer="up")


def test_an_upper_bound_past_microseconds_is_rounded_down():
    assert parse_rfc3339("2024-03-01T09:15:30.1234569Z", finer="down") == datetime(2024, 3, 1, 9, 15, 30, 123456)
