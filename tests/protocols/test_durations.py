"""protocols/durations.py: ISO 8601 durations for dosing, parsed once per distinct string (cached)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from protocols.durations import _parse, parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("P1D", timedelta(days=1)), ("P1W", timedelta(weeks=1)), ("PT40M", timedelta(minutes=40)),
    ("P1W2DT3H4M5S", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
])
def test_durations_parse_to_exact_timedeltas_every_time(text, expected):
    assert parse_duration(text) == expected
    hits = _parse.cache_info().hits
    assert parse_duration(text) == expected
    assert _parse.cache_info().hits == hits + 1  # the second answer came from the cache


@pytest.mark.parametrize(("text", "message"), [
    ("P1M", "years and months"), ("P1Y", "years and months"), ("P0D", "longer than zero"),
    ("P", "not an ISO 8601 duration"), ("PT", "not an ISO 8601 duration"), ("1D", "not an ISO 8601 duration"),
])
def test_a_refused_duration_is_refused_every_time(text, message):
    """The cache keeps answers, not errors: the second call raises as the first did."""
    for _ in range(2):
        with pytest.raises(ValueError, match=message):
            parse_duration(text)


@pytest.mark.parametrize("value", [None, 1, ["P1D"], {"P": 1}])
def test_a_value_that_is_not_a_string_is_a_value_error(value):
    """Checked before the cache, which would raise TypeError for an unhashable value."""
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(value)
