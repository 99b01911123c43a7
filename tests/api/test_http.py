"""Conditional headers (api/http.py): the documented syntax of an entity-tag list is the parsed one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import ApiError
from api.http import ENTITY_TAG_LIST_PATTERN, parse_etag_list

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _refused(header: str) -> bool:
    try:
        parse_etag_list(header)
    except ApiError as exc:
        assert exc.status == 400 and list(exc.errors) == ["If-Match"]
        return True
    return False


def test_every_get_documents_if_match_with_the_parsers_pattern():
    """The contract names the syntax a client must send; a GET's If-Match is evaluated by every read."""
    document = yaml.safe_load(OPENAPI.read_text())
    gets = [operation for item in document["paths"].values() for method, operation in item.items()
            if method == "get"]
    assert gets
    for operation in gets:
        (parameter,) = [p for p in operation["parameters"] if p.get("in") == "header" and p["name"] == "If-Match"]
        assert parameter["schema"]["pattern"] == ENTITY_TAG_LIST_PATTERN
        assert {"400", "412"} <= set(operation["responses"])


@pytest.mark.parametrize(("header", "tags"), [
    ("*", ["*"]), (" \t* ", ["*"]), ('"a"', ['"a"']), ('W/"a"', ['W/"a"']), ('"a",W/"b"', ['"a"', 'W/"b"']),
    (', "x", , W/"y" ,', ['"x"', 'W/"y"']), ('""', ['""']), ('"!#~"', ['"!#~"']),
])
def test_entity_tag_lists_the_parser_reads(header: str, tags: list[str]):
    assert parse_etag_list(header) == tags
    assert re.fullmatch(ENTITY_TAG_LIST_PATTERN.strip("^$"), header)


@pytest.mark.parametrize("header", [
    "", " ", ", ,", "a", '"a" "b"', '"a", b', 'W/ "a"', 'w/"a"', '*, "a"', '"a"*', '"a b"', '"é"',
    '\xa0"a"', '"a"\n', "**",
])
def test_malformed_entity_tag_lists_are_refused_and_outside_the_pattern(header: str):
    assert _refused(header)
    assert not re.fullmatch(ENTITY_TAG_LIST_PATTERN.strip("^$"), header)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from([" ", "\t", ",", '"', "W", "/", "*", "a", "\x7f", "é", "\n"]), max_size=14))
def test_the_parser_refuses_exactly_what_the_pattern_does(header: str):
    assert _refused(header) is (re.fullmatch(ENTITY_TAG_LIST_PATTERN.strip("^$"), header) is None)
