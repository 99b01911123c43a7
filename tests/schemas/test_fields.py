"""schemas/fields.py: marshmallow's URL patterns are compiled at worker start-up, for every ``Url``
field the schemas declare (otherwise the first write and the first CDS Hooks call of each worker
compile them, 40-60 ms each); the shortcuts the write path takes (plain text, validators combined
once) accept and refuse exactly what the full checks do."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from marshmallow import Schema, ValidationError, fields, validate

import schemas
from schemas.fields import URL_VARIANTS, PositiveDecimal, Text, WebUrl, plainly_valid_text

ROOT = Path(__file__).resolve().parents[2]


def url_fields() -> Iterator[tuple[str, fields.Url]]:
    """Every ``Url`` field of every schema defined in the schemas package (inside lists too)."""
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Schema) and obj.__module__ == module.__name__:
                for name, field in obj().fields.items():
                    while isinstance(field, fields.List):
                        field = field.inner
                    if isinstance(field, fields.Url):
                        yield f"{obj.__name__}.{name}", field


def test_every_url_field_is_a_variant_compiled_at_start_up():
    found = dict(url_fields())
    assert {"SourceSchema.url", "CdsRequestSchema.fhirServer"} <= set(found), found
    for name, field in found.items():
        assert (field.relative, field.absolute, field.require_tld) in URL_VARIANTS, name


_NO_COMPILE = """
import re, sys
from marshmallow import validate
from schemas.fields import URL_VARIANTS, compile_url_patterns
if sys.argv[1] == "warm":
    assert compile_url_patterns() == URL_VARIANTS
def refuse(*args, **kwargs):
    raise RuntimeError("compiled a pattern while validating")
re.compile = refuse
for relative, absolute, require_tld in URL_VARIANTS:
    validate.URL(relative=relative, absolute=absolute, require_tld=require_tld)("https://www.fda.gov/drugs")
"""


def run(mode: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: marshmallow's pattern cache is per process and this one's is warm already."""
    return subprocess.run([sys.executable, "-c", _NO_COMPILE, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_after_compile_url_patterns_validating_a_url_compiles_nothing():
    warm = run("warm")
    assert warm.returncode == 0, warm.stderr
    cold = run("cold")  # the control: without the warm-up, the first validation compiles
    assert cold.returncode != 0 and "compiled a pattern while validating" in cold.stderr


def test_every_url_field_refuses_what_is_no_url():
    """marshmallow's pattern takes any non-blank path: a NUL, BEL, ESC, DEL, U+FFFE or zero-width space
    in a source URL was stored and served into FHIR output, and port 99999999 passed (adversarial
    probe). Every URL field is a WebUrl, which refuses them; ordinary URLs still pass."""
    found = dict(url_fields())
    assert found and all(isinstance(field, WebUrl) for field in found.values()), found
    field = found["SourceSchema.url"]
    for bad in ("https://example.org/a\x00b", "https://example.org/\x07", "https://example.org/\x1b[2J",
                "https://example.org/\x7f", "https://example.org/\ufffe", "https://example.org/a\u200bb",
                "https://example.org/a\u00a0b", "https://example.org:99999999/label.pdf"):
        try:
            field.deserialize(bad)
        except ValidationError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    for good in ("https://www.accessdata.fda.gov/drugsatfda_docs/label/2019/211243lbl.pdf",
                 "http://example.org:8080/x?y=1#z", "https://example.org/caf%C3%A9"):
        assert field.deserialize(good) == good


def test_the_printable_shortcut_skips_no_character_the_full_check_refuses():
    """WebUrl skips its per-character check for a printable URL without a space and without a printable
    invisible character. Over every code point: a character that shortcut lets through is one the full
    check accepts too, and the shortcut is taken for plain URLs."""
    from schemas.fields import plainly_valid_url, refused_in_url

    skipped_but_refused = [hex(cp) for cp in range(0x110000)
                           if plainly_valid_url(f"https://example.org/{chr(cp)}") and refused_in_url(chr(cp))]
    assert skipped_but_refused == []
    assert plainly_valid_url("https://example.org/caf\u00e9") and not plainly_valid_url("https://example.org/a\ufe0f")
    assert refused_in_url("https://example.org/label\ufe0f.pdf") and refused_in_url("https://example.org/a\u3164b")


def test_a_source_url_with_a_control_character_is_422_naming_it(client):
    from tests.factories import protocol_payload

    payload = protocol_payload()
    payload["sources"][0]["url"] = "https://example.org/label\x1b[2J.pdf"
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422, response.get_json()
    assert "sources.0.url" in response.get_json()["errors"], response.get_json()


class _NotPlainStr(str):
    """A str that is not exactly ``str``: Text runs its checks one by one on it, without the shortcut."""


def test_a_str_subclass_takes_the_checks_one_by_one(monkeypatch):
    """What makes ``_full_check`` a check of the full path: the shortcut is never asked about it."""
    def no_shortcut(text: str, **_: bool) -> bool:
        raise AssertionError("the shortcut was asked")

    monkeypatch.setattr("schemas.fields.plainly_valid_text", no_shortcut)
    assert _full_check(Text(), "Ketamine") == "Ketamine"
    with pytest.raises(AssertionError, match="the shortcut was asked"):
        Text().deserialize("Ketamine")


def _full_check(field: Text, value: str) -> str | list[str]:
    """What Text's checks one by one make of ``value``: the value, or the error messages."""
    try:
        return str(field.deserialize(_NotPlainStr(value)))
    except ValidationError as exc:
        return list(exc.messages)


@pytest.mark.parametrize(("multiline", "identifier"), [(False, False), (True, False), (False, True)])
def test_the_plain_text_shortcut_accepts_only_what_the_full_checks_accept(multiline, identifier):
    """Text returns a value its shortcut calls plainly valid without the checks one by one. Over
    every code point, as the first character and inside a text: where the shortcut says valid, the
    full checks accept the same text."""
    field = Text(multiline=multiline, identifier=identifier)

    def plain(text: str) -> bool:
        return plainly_valid_text(text, multiline=multiline, identifier=identifier)

    inside = [chr(cp) for cp in range(0x110000) if plain(f"a{chr(cp)}b")]
    refused_inside = []
    for start in range(0, len(inside), 512):  # 512 characters at a time; one by one where a block fails
        block = inside[start:start + 512]
        if _full_check(field, text := "a" + "".join(block)) != text:
            refused_inside += [hex(ord(char)) for char in block if _full_check(field, f"a{char}b") != f"a{char}b"]
    assert refused_inside == []
    starting = [f"{chr(cp)}b" for cp in range(0x110000)]
    refused_first = [hex(ord(text[0])) for text in starting
                     if plain(text) and _full_check(field, text) != text]
    assert refused_first == []
    # After a leading space (which starts nothing visible): " \n" is blank, " \x00" holds a control.
    after_space = [f" {chr(cp)}" for cp in range(0x110000)]
    refused_after_space = [hex(ord(text[1])) for text in after_space
                           if plain(text) and _full_check(field, text) != text]
    assert refused_after_space == []
    # The shortcut is taken for ordinary clinical text (else it saves nothing), and not for what is refused.
    for ordinary in ("Esketamine 56 mg or 84 mg twice weekly", "(S)-ketamine", "0.5 mg/kg IV over 40 min",
                     "Ketalar\u00ae \u2014 \u00e9l\u00e8ve", ""):
        assert plain(ordinary), ordinary
    for refused in ("a\x00b", "a\ud800b", "a\ufffeb", "   ", "\u200b", "\u00a0"):
        assert not plain(refused), repr(refused)
    assert plain("line 1\nline 2") is multiline


def test_the_shortcut_makes_printable_exactly_the_space_separators():
    """The shortcut's table of accepted non-printable characters holds every space separator (Zs)
    but the ASCII space, which is printable: a missing one would only cost the slow path, an extra
    one could let a refused character through."""
    from schemas.fields import _SPACE_SEPARATORS

    assert sorted(_SPACE_SEPARATORS) == [chr(cp) for cp in range(0x110000)
                                         if unicodedata.category(chr(cp)) == "Zs" and cp != 0x20]


HIDING = "No characters that hide or reorder text (bidirectional overrides and isolates, zero-width spaces, " \
         "byte-order marks, soft hyphens, tags, private-use, unassigned)."
INVISIBLE = "No invisible or direction-changing characters (Unicode format, private-use, unassigned)."
MIXED_SCRIPTS = "No word may mix Latin, Cyrillic and Greek letters (it reads as another name)."


def _answer(field: Text, value: str) -> list[str]:
    """The messages ``field`` answers ``value`` with ([] when it accepts it), the same through the
    shortcut as through the checks one by one."""
    try:
        field.deserialize(value)
        through_shortcut: list[str] = []
    except ValidationError as exc:
        through_shortcut = list(exc.messages)
    assert _full_check(field, value) == (through_shortcut or value), value
    return through_shortcut


@pytest.mark.parametrize("value", [
    "esket\u200bamine", "\u202e56 mg", "a\u2066b\u2069", "\ufeffKetalar", "soft\u00adhyphen", "tag\U000e0041",
    "private\ue000", "unassigned\U000e0080", "filler\u3164", "word\u2060joiner", "khmer\u17b4", "cgj\u034fx",
    # A review of the first split: directional marks reorder a dose, joiners hide a word from search.
    "1\u200f.5 mg/kg", "5\u200f-10 mg", "56\u200f 84 mg", "2\u061c,5 mg", "1\u070f.5 mg", "1\u200e.5 mg",
    "Zorbla\u200ctine nasal spray", "\u0930\u200d\u094d\u092f", "\u0600\u0661\u0662",
    # Symbols that draw nothing (adversarial probe): "esketamine\u2800" escaped the drug filter.
    "esketamine\u2800", "a\ufffcb", "null\U0001d159notehead",
])
def test_text_refuses_what_hides_a_word_or_reorders_text(value):
    """A drug named "esket\u200bamine" displayed as esketamine and was missed by the drug filter; a
    right-to-left override reorders the dose text after it (adversarial probe); "1\u200f.5 mg/kg"
    displays as "15. mg/kg" and a zero-width non-joiner hides "Zorblatine" from the search (review).
    Refused in every text field, through the shortcut and through the checks one by one."""
    for field in (Text(), Text(multiline=True)):
        assert _answer(field, value) == [HIDING], value
    assert _answer(Text(identifier=True), value) == [INVISIBLE], value


@pytest.mark.parametrize("value", ["\u26a0\ufe0f Monitor blood pressure", "\u2714\ufe0f REMS enrolled",
                                   "\u2695\ufe0e staff"])
def test_text_keeps_an_emoji_presentation_but_a_name_refuses_it(value):
    """A variation selector gives a pasted emoji its presentation (U+26A0 U+FE0F); it cannot reorder or
    split anything. Drug and brand names, which the drug filter compares, still refuse it."""
    for field in (Text(), Text(multiline=True)):
        assert _answer(field, value) == [], value
    assert _answer(Text(identifier=True), value) == [INVISIBLE], value


@pytest.mark.parametrize(("value", "refused"), [
    ("\u0435sketamine", True), ("Spr\u0430vato", True), ("ket\u03b1mine", True),  # Cyrillic e, a; Greek alpha
    ("esketamine", False), ("\u043a\u0435\u0442\u0430\u043c\u0438\u043d", False),  # one script each
    ("\u03b1-ketamine", False), ("ketamine \u043a\u0435\u0442\u0430\u043c\u0438\u043d", False),  # separate words
    ("\u00e9l\u00e8ve", False),
])
def test_a_name_refuses_a_word_that_mixes_latin_cyrillic_and_greek(value, refused):
    """A drug named with a Cyrillic e read as esketamine and escaped the drug filter (adversarial probe).
    Ordinary text is not held to it (a title may quote a name in another script)."""
    assert _answer(Text(identifier=True), value) == ([MIXED_SCRIPTS] if refused else []), value
    assert _answer(Text(), value) == [], value


SELECTOR = "No variation selector inside a word or after another one (it hides the word from search)."


@pytest.mark.parametrize("value", ["Uses zorbl\ufe0fquux daily", "56\ufe0f0 mg", "x\ufe0f\ufe0f",
                                   "zorbl\u0301\ufe0fquux", "zorbl\ufe0f\u0301quux",  # a mark beside it (review)
                                   "title" + "\U000e0100" * 28, "\u26a0\ufe0f\ufe0e warning", "\u6f22\U000e0100\u5b57"])
def test_text_refuses_a_variation_selector_inside_a_word_or_in_a_run(value):
    """Inside a word a selector splits it for the free-text search ("zorbl\ufe0fquux" was not found
    by "zorblquux", only by its halves); a run carries data no reader sees (a 28-byte message in a
    title; adversarial probe). Through the shortcut and the checks one by one alike."""
    for field in (Text(), Text(multiline=True)):
        assert _answer(field, value) == [SELECTOR], value


@pytest.mark.parametrize("value", ["1\ufe0f\u20e3 dose", "\u2764\ufe0f care", "dose\ufe0f", "a\ufe0f b",
                                   "\u6f22\U000e0100"])
def test_text_keeps_a_variation_selector_after_what_it_modifies(value):
    for field in (Text(), Text(multiline=True)):
        assert _answer(field, value) == [], value


@pytest.mark.parametrize("value", ["\ufe0f", "\ufe0f\ufe0f", " \ufe0f", "\U000e0100", "\u2800\u2800"])
def test_a_value_of_variation_selectors_alone_is_blank(value):
    """It displays as nothing (a review stored a title of U+FE0F alone, a probe one of two Braille blanks)."""
    for field in (Text(), Text(multiline=True), Text(identifier=True)):
        assert _answer(field, value) == ["Must not be blank."], value


def test_invisible_characters_in_a_protocol_are_422_naming_each_field(client):
    from tests.factories import protocol_payload

    payload = protocol_payload()
    payload["drug"]["name"] = "esket\u200bamine"
    payload["drug"]["brand_names"] = ["Spra\u200bvato"]
    payload["dosing_ranges"][0]["instructions"] = "Day 1: \u202e56 mg"
    before = client.get("/v1/protocols").get_json()
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["errors"]
    assert {"drug.name", "drug.brand_names.0", "dosing_ranges.0.instructions"} <= set(errors), errors
    # A variation selector: kept in a title, refused in the names the drug filter compares.
    payload = protocol_payload(title="\u26a0\ufe0f Monitor for 2 hours")
    payload["drug"]["name"], payload["drug"]["brand_names"] = "esketamine\ufe0f", ["Spravato\ufe0f"]
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422 and set(response.get_json()["errors"]) == {"drug.name", "drug.brand_names.0"}
    # A word mixing scripts (a Cyrillic e): refused in the names, and as the drug filter's value.
    payload["drug"]["name"], payload["drug"]["brand_names"] = "\u0435sketamine", ["Spr\u0430vato"]
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422 and set(response.get_json()["errors"]) == {"drug.name", "drug.brand_names.0"}
    assert client.get("/v1/protocols", query_string={"drug": "\u0435sketamine"}).status_code == 422
    assert client.get("/v1/protocols").get_json() == before
    payload["drug"]["name"], payload["drug"]["brand_names"] = "esketamine", ["Spravato"]
    assert client.post("/v1/protocols", json=payload).status_code == 201


@pytest.mark.parametrize("value", ["Ketamine", "a\x00b", "a\ud800b", "a\nb", "  ", "\u2028", " padded ", "",
                                   "x" * 201, "a\tb", " \n", " \x00", "\u00a0\u200b"])
def test_text_answers_alike_with_and_without_the_shortcut(value):
    """Value or messages: the same through the shortcut (a plain str) as through the checks one by one."""
    for field in (Text(validate=validate.Length(1, 200)), Text(multiline=True, validate=validate.Length(1, 200))):
        try:
            through_shortcut: str | list[str] = field.deserialize(value)
        except ValidationError as exc:
            through_shortcut = list(exc.messages)
        assert through_shortcut == _full_check(field, value)


def test_validators_combined_once_report_as_marshmallow_does():
    """Validators combined once (ValidatorsCombinedOnce) give marshmallow's own messages, all of them,
    value after value, in a schema's copy of the field too."""
    validators = [validate.Length(2, 3), validate.OneOf(["ab", "abc"])]

    class Combined(Schema):
        name = Text(validate=validators)
        dose = PositiveDecimal(validate=validate.Range(max=10))

    class Plain(Schema):
        name = fields.String(validate=validators)
        dose = fields.Decimal(validate=validate.Range(max=10))

    def answer(schema: Schema, data: Mapping[str, object]) -> object:
        try:
            return schema.load(data)
        except ValidationError as exc:
            return exc.messages

    combined, plain = Combined(), Plain()
    for data in ({"name": "ab", "dose": 5}, {"name": "abcd", "dose": 11}, {"name": "x"}, {"name": "abc", "dose": 10},
                 {"name": "zz"}):
        assert answer(combined, data) == answer(plain, data), data
    assert answer(combined, {"name": "abcd"}) == {"name": ["Length must be between 2 and 3.",
                                                          "Must be one of: ab, abc."]}
    field = combined.fields["name"]
    assert field._validate_all is field._validate_all  # built once, by marshmallow's own property
    assert isinstance(field._validate_all, validate.And)
    assert list(field._validate_all.validators) == validators


@pytest.mark.parametrize("value", ["05", "00", "1e2", " 5", "\uff12", "-1", "1234567890", "5.0", ""])
def test_a_query_integer_refuses_other_spellings_and_says_how_to_write_one(value):
    from schemas.fields import QueryInteger

    with pytest.raises(ValidationError) as refused:
        QueryInteger().deserialize(value)
    assert refused.value.messages == ["Must be a whole number written in the digits 0-9, without a leading zero "
                                      "(at most 9 digits)."]
    assert QueryInteger().deserialize("0") == 0 and QueryInteger().deserialize("100") == 100


def test_an_instant_past_microseconds_is_refused_to_store_and_rounded_as_a_query_bound_compares(client):
    """Seven digits (.NET) are refused in a value to store (they were cut to another instant) and, as a
    query bound, rounded the way the bound compares: up for since/until, down for as_of/updated_since."""
    from datetime import datetime

    from schemas.fields import Instant

    text = "2024-03-01T09:15:30.1234561Z"
    with pytest.raises(ValidationError, match="at most 6 digits"):
        Instant().deserialize(text)
    assert Instant(finer="up").deserialize(text) == datetime(2024, 3, 1, 9, 15, 30, 123457)
    assert Instant(finer="down").deserialize(text) == datetime(2024, 3, 1, 9, 15, 30, 123456)
    for query in (f"as_of={text}", f"updated_since={text}"):
        assert client.get(f"/v1/protocols?{query}").status_code == 200, query
    response = client.get(f"/v1/admin/audit?since={text}&until=2024-03-01T09:15:31.1234561Z")
    assert response.status_code == 200, response.get_json()
