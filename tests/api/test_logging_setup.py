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


def test_text_lines_carry_the_same_fields_and_stay_one_line() -> None:
    """Found by an adversarial probe: with ``PROTOCOLS_LOG_JSON=false`` every request line read ``INFO
    api.access request``; the fields passed in ``extra`` were never shown. A value that is not plain (a
    path decoded from ``%0A``, a quote) is written as a JSON string, so it cannot start a line."""
    import logging

    from api.logging_setup import TextFormatter

    record = logging.LogRecord("api.access", logging.INFO, __file__, 0, "request", (), None)
    record.__dict__.update(request_id="r-1", method="GET", path='/v1/a\nb "c"', status=200, duration_ms=1.5,
                           actor=None, remote_addr="127.0.0.1")
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith('INFO api.access request request_id=r-1 method=GET path="/v1/a\\nb \\"c\\"" status=200 '
                         "duration_ms=1.5 actor=- remote_addr=127.0.0.1"), line


def test_text_lines_escape_messages_and_indent_tracebacks() -> None:
    """Found in review: a message or an exception with a line break could still write a line that reads
    as a request line of its own."""
    import logging
    import sys

    from api.logging_setup import TextFormatter

    record = logging.LogRecord("api.errors", logging.ERROR, __file__, 0, "bad\n2026-01-01 INFO api.access request",
                               (), None)
    assert TextFormatter().format(record).count("\n") == 0
    try:
        raise ValueError("boom\n2026-01-01 00:00:00,000 INFO api.access request status=200")
    except ValueError:
        record = logging.LogRecord("api.errors", logging.ERROR, __file__, 0, "unhandled error", (), sys.exc_info())
    first, *rest = TextFormatter().format(record).split("\n")
    assert first.endswith("ERROR api.errors unhandled error") and rest
    assert all(line.startswith("    | ") for line in rest), rest
