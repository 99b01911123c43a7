"""Cursor tokens and their keys (protocols/paging.py): every listing, REST and FHIR, reads its cursors
through these, so a forged token is refused the same way everywhere."""

from __future__ import annotations

import pytest

from protocols import paging


def test_a_token_decodes_to_what_was_encoded() -> None:
    token = paging.encode_cursor("audit", 42, "n", f="feed-1")
    assert paging.decode_cursor("audit", token, extra=("f",)) == (42, "n", {"f": "feed-1"})


@pytest.mark.parametrize("token", [
    paging.encode_cursor("history", 1, "n"),    # another listing's cursor
    paging.encode_cursor("audit", 1, "x"),      # no such direction
    paging.encode_cursor("audit", 1.5, "n"),    # a key the service never writes
    paging.encode_cursor("audit", True, "n"),
    paging.encode_cursor("audit", 1, "n", z="1"),  # a field the service never writes
    "not base64 at all!", "", "W10",            # garbage; '[]'
])
def test_a_token_this_listing_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(paging.InvalidCursor):
        paging.decode_cursor("audit", token)


@pytest.mark.parametrize(("key", "held"), [
    (0, True), (7, True), (2**31 - 1, True),
    (-1, False), (2**31, False), (True, False), (False, False), (1.0, False), ("1", False), ([1], False),
    (None, False),
])
def test_a_key_must_be_an_integer_its_column_holds(key: object, held: bool) -> None:
    assert paging.is_key(key, 2**31 - 1) is held


@pytest.mark.parametrize(("key", "held"), [
    ([1, 2, 3, 1], True), ([1, 2], True),       # the two optional parts missing
    ([1], False), ([1, 2, 3, 1, 5], False),     # too short, too long
    ([1, 2, 3, 2], False),                      # the last part's column holds 0-1
    ([1, True], False), ([1, -2], False), ([1, 2**63], False), ((1, 2), False), (12, False),
])
def test_a_composite_key_is_a_list_of_such_integers(key: object, held: bool) -> None:
    assert paging.is_composite_key(key, (2**31 - 1, 2**63 - 1, 2**63 - 1, 1), optional=2) is held
