"""protocols/durations.py: ISO 8601 durations for dosing, parsed once per distinct string (cached)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from protocols.durations import PUBLISHED_PATTERN, _parse, parse_duration


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
    ("P", "not a duration this service reads"), ("PT", "not a duration this service reads"),
    ("1D", "not a duration this service reads"),
    # A fraction is ISO 8601, but not read here: the message says so, not that it is no ISO duration (a docs probe).
    ("PT5.5H", r"whole numbers, such as .* PT5H30M \(no fractions such as PT5.5H\)"),
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


@pytest.mark.parametrize("text", ["P1D", "P1W", "PT40M", "PT24H", "P1W2DT3H4M5S", "PT0H1S", "P0D", "PT0S", "",
                                  "P", "PT", "P1M", "P1Y", "PT1.5H", "P1DT", "p1d", "P1D ", "P12345D", "PT1234567S",
                                  "P0W0DT0H0M1S", "PT-1H", "P1D\n"])
def test_the_published_pattern_accepts_what_parse_duration_accepts(text):
    """The OpenAPI document publishes PUBLISHED_PATTERN for every duration (a contract probe: "" passed
    the schema and was refused). Python's re reads this pattern as ECMA-262 does ($ is anchored with
    fullmatch so a trailing newline cannot pass)."""
    try:
        parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    assert (re.fullmatch(PUBLISHED_PATTERN.removeprefix("^").removesuffix("$"), text) is not None) is parsed, text
