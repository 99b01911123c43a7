"""The JSON log line's timestamp cache formats exactly what ``datetime.strftime`` would."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from api.logging_setup import _timestamp


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False, allow_infinity=False))
def test_timestamp_matches_strftime(created: float) -> None:
    assert _timestamp(created) == datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_timestamp_carries_rounding_into_the_next_second() -> None:
    created = 1_700_000_000.9999996
    assert _timestamp(created) == datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
