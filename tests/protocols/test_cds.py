"""protocols.cds without an app or a database: reading draft orders and prefetched weights.
(The cards, judged against stored protocols over HTTP, are tested in tests/api/test_cds_hooks.py.)"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from protocols import cds
from protocols.errors import MalformedOrder


def weight(value: object, unit: str = "kg", when: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "effectiveDateTime": when,
            "code": {"coding": [{"system": cds.LOINC, "code": cds.BODY_WEIGHT_LOINC}]},
            "subject": {"reference": "Patient/example"},
            "valueQuantity": {"value": value, "unit": unit, "code": unit}}


def test_a_malformed_order_names_its_path_without_any_http_in_sight():
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "MedicationRequest",
                                                                "status": "not-a-status"}}]}
    with pytest.raises(MalformedOrder) as raised:
        cds.draft_medication_requests(bundle, "order-sign", [], cds.HookPatient("example"))
    (path,) = raised.value.details["errors"]
    assert path.startswith("context.draftOrders.entry.0.resource")
    with pytest.raises(MalformedOrder) as raised:
        cds.draft_medication_requests({"resourceType": "Patient"}, "order-sign", [], cds.HookPatient("example"))
    assert raised.value.details["errors"] == {"context.draftOrders": ["must be a FHIR Bundle"]}


def test_the_newest_usable_weight_wins_in_kilograms():
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": [
        {"resource": weight(70, when="2026-01-01T10:00:00+09:00")},   # 01:00Z: older
        {"resource": weight(154, "[lb_av]", when="2026-01-01T05:00:00Z")},
        {"resource": weight(True)},                                    # not a weight of 1 kg
    ]}
    newest = cds.prefetched_weight({"weight": bundle}, patient=cds.HookPatient("example"))
    assert isinstance(newest, cds.Weight) and newest.kg == Fraction(154) * Fraction("0.45359237")
    assert newest.observed_at == datetime(2026, 1, 1, 5, 0)
    assert cds.prefetched_weight({}, patient=cds.HookPatient("example")) == "no body weight was prefetched"
    assert (cds.prefetched_weight({"weight": weight(0)}, patient=cds.HookPatient("example"))
            == "the prefetched observations hold no usable body weight")
    # The newest weight is implausible: none is used (an older one is no safer), and the card says why.
    bundle["entry"].append({"resource": weight(1000000, when="2026-02-01T00:00:00Z")})
    refused = cds.prefetched_weight({"weight": bundle}, patient=cds.HookPatient("example"))
    assert isinstance(refused, cds.Weight) and refused.kg == 1000000 and refused.usable_kg is None
    assert refused.refused is not None and refused.refused.startswith("body weight must be between 0.3 and 500 kg")
    assert newest.usable_kg == newest.kg and newest.refused is None
    with pytest.raises(MalformedOrder):
        cds.prefetched_weight({"weight": ["not", "a", "resource"]}, patient=cds.HookPatient("example"))


def test_weights_by_period_in_the_future_or_with_a_comparator():
    """Found by an adversarial probe: a weight with effectivePeriod sorted oldest (a 2020 weight won
    over it), a weight dated 2099 was the newest, and "> 70 kg" was read as 70 kg."""
    by_period = {**weight(100, when=""), "effectivePeriod": {"start": "2026-02-01T00:00:00Z",
                                                             "end": "2026-02-01T00:10:00Z"}}
    del by_period["effectiveDateTime"]
    future = weight(50, when="2099-01-01T00:00:00Z")
    bounded = weight(80, when="2026-03-01T00:00:00Z")
    bounded["valueQuantity"]["comparator"] = ">"
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in
                                                  (weight(50, when="2020-01-01T00:00:00Z"), by_period, future,
                                                   bounded)]}
    chosen = cds.prefetched_weight({"weight": bundle}, patient=cds.HookPatient("example"), now=datetime(2026, 12, 1))
    assert isinstance(chosen, cds.Weight)
    assert (chosen.kg, chosen.observed_at) == (Fraction(100), datetime(2026, 2, 1, 0, 10))


def test_summaries_keep_the_verdict_and_the_protocol_version():
    summary = cds._summary("above protocol maximum", "x" * 300, "protocol esketamine-nasal-spravato v3")
    assert len(summary) == cds.SUMMARY_LIMIT == 139  # CDS Hooks: "<140-character"
    assert summary.startswith("above protocol maximum: xxx")
    assert summary.endswith("… (protocol esketamine-nasal-spravato v3)")
    # counted as JavaScript counts: a character outside the BMP is two code units, and is never cut in half
    emoji = cds._summary("above protocol maximum", "\U0001F489" * 300, "protocol esketamine-nasal-spravato v3")
    assert cds.utf16_length(emoji) <= 139 and len(emoji.encode("utf-16-le")) // 2 <= 139
    assert emoji.endswith("… (protocol esketamine-nasal-spravato v3)") and "\U0001F489" in emoji


# ------------------------------------------------------------------------- markdown in cards


_RENDERER = MarkdownIt("commonmark").enable(["strikethrough", "table"])


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40) | st.sampled_from([
    "# h", "> q", "- l", "+ l", "1. o", "12) o", "=== ", "---", "***", "___", "    code", "[a](b)", "![i](u)",
    "<b>x</b>", "<http://a.b>", "&amp; &#x200B;", "`c`", "~~s~~", "*e* _e_", "a\\", "a  \nb", "[r]: http://a",
]))
def test_markdown_text_is_read_back_as_the_same_text(text: str) -> None:
    """Placed where a card places data (first in a list item, inside bold), the escaped text renders as
    exactly its words, whitespace collapsed: no markup of its own."""
    expected = " ".join(text.split())
    placements = [(f"- {cds.markdown_text(text)}", ("", ""))]
    if expected:  # bold around nothing is no bold; a card never bolds an empty text (titles are not blank)
        placements.append((f"x **{cds.markdown_text(text)}** y", ("x ", " y")))
    for source, (before, after) in placements:
        tokens = _RENDERER.parse(source)
        children = [c for t in tokens for c in t.children or []]
        assert {c.type for c in children} <= {"text", "strong_open", "strong_close"}, (text, source)
        rendered = "".join(c.content for c in children)
        assert rendered == before + expected + after, (text, source)


def test_an_observation_time_with_more_digits_than_microseconds_is_read_not_dated_unknown():
    """fhir_query.date_start reads FHIR's longer fractions (.NET writes seven) from the first stored
    microsecond they stand for; it used to give None, "date unknown" on the card."""
    from protocols import fhir_query

    assert fhir_query.date_start("2024-06-01T10:00:00.1234567Z") == datetime(2024, 6, 1, 10, 0, 0, 123457)
    assert fhir_query.date_start("2024-06-01T10:00:00.123456000+01:00") == datetime(2024, 6, 1, 9, 0, 0, 123456)
    assert fhir_query.date_start("2024-06-01T10:00:00.1234567891Z") is None  # past nine digits: not FHIR


def test_the_summary_is_one_line_of_visible_text():
    """Found by an adversarial probe: the order's medication text went into the summary as it came, line
    breaks and a right-to-left override (U+202E) included."""
    summary = cds._summary("within protocol range", "keta\u202emine\n  10 mg\u200b/mL\tIV", "protocol p v1")
    assert summary == "within protocol range: ketamine 10 mg/mL IV (protocol p v1)"
