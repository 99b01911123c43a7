"""Clinical diff: one test per change type, unit safety, range matching and the JSON Patch."""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jsonpatch
import pytest

from protocols import diff
from tests.factories import protocol_payload

NASAL, IV = "46713006", "47625008"
IV_ROUTE = {"system": "http://snomed.info/sct", "code": IV, "display": "Intravenous route"}
SI = {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R45.851", "display": "Suicidal ideations"}


def document(**overrides: Any) -> dict[str, Any]:
    """A stored-document-shaped dict (meta + content), version 1."""
    doc = protocol_payload("esketamine-trd", **overrides)
    doc.update({"version": 1, "status": "active", "effective_from": "2025-01-01T00:00:00Z",
                "recorded_at": "2025-01-01T00:00:00Z", "recorded_by": "tests", "request_id": None})
    return doc


def changed(mutate: Callable[[dict[str, Any]], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    a = document()
    b = copy.deepcopy(a)
    b["version"] = 2
    mutate(b)
    return a, b


def only(changes: list[diff.ClinicalChange]) -> diff.ClinicalChange:
    assert len(changes) == 1, [c.as_dict() for c in changes]
    return changes[0]


def dosing(b: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = b["dosing_ranges"][0]
    return first


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(b: dict[str, Any]) -> None:
        node: Any = b
        *parents, last = path.split("/")[1:]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _append(field: str, item: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b[field].append(copy.deepcopy(item))


def _add_iv_route_with_range(b: dict[str, Any]) -> None:
    b["routes"].append(IV_ROUTE)
    b["dosing_ranges"].append({"route": IV, "phase": "infusion", "dose_min": 0.5, "dose_max": 0.5,
                               "unit": "mg/kg", "frequency": None, "duration": "PT40M",
                               "max_per_period": None, "instructions": None})


# (case id, mutation, expected type, severity, path, before, after)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str, str, Any, Any]] = [
    ("max-up", _set("/dosing_ranges/0/dose_max", 112), "dose_max_increased", "major",
     "/dosing_ranges/0/dose_max", 84, 112),
    ("max-down", _set("/dosing_ranges/0/dose_max", 56), "dose_max_decreased", "major",
     "/dosing_ranges/0/dose_max", 84, 56),
    ("min-up", _set("/dosing_ranges/0/dose_min", 84), "dose_min_increased", "major",
     "/dosing_ranges/0/dose_min", 56, 84),
    ("min-down", _set("/dosing_ranges/0/dose_min", 28), "dose_min_decreased", "major",
     "/dosing_ranges/0/dose_min", 56, 28),
    ("max-tiny-decimal", _set("/dosing_ranges/0/dose_max", 84.000001), "dose_max_increased", "major",
     "/dosing_ranges/0/dose_max", 84, 84.000001),
    ("frequency", _set("/dosing_ranges/0/frequency", {"count": 1, "period": "P1W", "text": "twice weekly"}),
     "frequency_changed", "major", "/dosing_ranges/0/frequency",
     {"count": 2, "period": "P1W", "text": "twice weekly"}, {"count": 1, "period": "P1W", "text": "twice weekly"}),
    ("frequency-removed", _set("/dosing_ranges/0/frequency", None), "frequency_changed", "major",
     "/dosing_ranges/0/frequency", {"count": 2, "period": "P1W", "text": "twice weekly"}, None),
    ("max-per-period", _set("/dosing_ranges/0/max_per_period/value", 112), "max_per_period_changed", "major",
     "/dosing_ranges/0/max_per_period/value", 84, 112),
    ("max-per-period-dropped", _set("/dosing_ranges/0/max_per_period", None), "max_per_period_changed", "major",
     "/dosing_ranges/0/max_per_period", {"value": 84, "unit": "mg", "period": "P1D"}, None),
    ("duration", _set("/dosing_ranges/0/duration", "PT2H"), "duration_changed", "major",
     "/dosing_ranges/0/duration", None, "PT2H"),
    ("instructions", _set("/dosing_ranges/0/instructions", "Observe for 2 hours"), "instructions_changed",
     "moderate", "/dosing_ranges/0/instructions", None, "Observe for 2 hours"),
    ("frequency-text", _set("/dosing_ranges/0/frequency/text", "84 mg every 2 hours as needed"),
     "frequency_text_changed", "moderate", "/dosing_ranges/0/frequency/text", "twice weekly",
     "84 mg every 2 hours as needed"),
    ("route-added", _append("routes", IV_ROUTE), "route_added", "major", "/routes/1", None, IV_ROUTE),
    ("indication-added", _append("indications", SI), "indication_added", "major", "/indications/1", None, SI),
    ("indication-removed", lambda b: b["indications"].clear(), "indication_removed", "major",
     "/indications/0", document()["indications"][0], None),
    ("range-added", _append("dosing_ranges", {**document()["dosing_ranges"][0], "phase": "maintenance"}),
     "dosing_range_added", "major", "/dosing_ranges/1", None,
     {**document()["dosing_ranges"][0], "phase": "maintenance"}),
    ("range-removed", lambda b: b["dosing_ranges"].clear(), "dosing_range_removed", "major",
     "/dosing_ranges/0", document()["dosing_ranges"][0], None),
    ("drug", _set("/drug/rxnorm_cui", "6130"), "drug_changed", "major", "/drug/rxnorm_cui", "2201625", "6130"),
    ("status", _set("/status", "retired"), "status_changed", "major", "/status", "active", "retired"),
    ("fda-status", _set("/fda_approval/status", "off_label"), "fda_status_changed", "moderate",
     "/fda_approval/status", "approved", "off_label"),
    ("rems", _set("/fda_approval/rems_required", False), "rems_changed", "moderate",
     "/fda_approval/rems_required", True, False),
    ("boxed-warning", _set("/fda_approval/boxed_warning", None), "boxed_warning_changed", "moderate",
     "/fda_approval/boxed_warning",
     "Sedation; dissociation; abuse and misuse; suicidal thoughts and behaviors", None),
    ("dea", _set("/drug/dea_schedule", "CII"), "dea_schedule_changed", "moderate", "/drug/dea_schedule",
     "CIII", "CII"),
    ("approval-date", _set("/fda_approval/approval_date", "2019-03-06"), "approval_details_changed", "minor",
     "/fda_approval/approval_date", "2019-03-05", "2019-03-06"),
    ("effective-from", _set("/effective_from", "2025-02-01T00:00:00Z"), "effective_from_changed", "minor",
     "/effective_from", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"),
    ("title", _set("/title", "Esketamine (Spravato) for TRD"), "text_changed", "minor", "/title",
     "Esketamine nasal spray for treatment-resistant depression", "Esketamine (Spravato) for TRD"),
    ("route-display", _set("/routes/0/display", "Nasal route (qualifier value)"), "text_changed", "minor",
     "/routes/0/display", "Nasal route", "Nasal route (qualifier value)"),
    ("duration-min", _set("/dosing_ranges/0/duration_min", "PT60S"), "duration_changed", "major",
     "/dosing_ranges/0/duration_min", None, "PT60S"),
    ("absolute-max", _set("/dosing_ranges/0/absolute_max", {"value": 25, "unit": "mg/h"}), "absolute_max_changed",
     "major", "/dosing_ranges/0/absolute_max", None, {"value": 25, "unit": "mg/h"}),
    ("range-indications", _set("/dosing_ranges/0/indications", ["F33.2"]), "indications_changed", "major",
     "/dosing_ranges/0/indications", None, ["F33.2"]),
    ("sources", _set("/sources/0/title", "Spravato label"), "sources_changed", "minor", "/sources",
     document()["sources"], [{**document()["sources"][0], "title": "Spravato label"}]),
]


@pytest.mark.parametrize(("mutate", "kind", "severity", "path", "before", "after"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_change_type(mutate: Callable[[dict[str, Any]], None], kind: str, severity: str, path: str,
                          before: Any, after: Any) -> None:
    a, b = changed(mutate)
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity, change.path, change.before, change.after) == (
        kind, severity, path, before, after)
    assert change.description
    assert diff.CHANGE_TYPES[kind] == severity


def test_route_removed_with_its_range() -> None:
    a, b = changed(_add_iv_route_with_range)
    b, a = a, b  # go from two routes to one
    changes = diff.clinical_changes(a, b)
    assert {(c.type, c.path) for c in changes} == {("route_removed", "/routes/1"),
                                                  ("dosing_range_removed", "/dosing_ranges/1")}
    removed = next(c for c in changes if c.type == "dosing_range_removed")
    assert (removed.route, removed.phase) == (IV, "infusion")


def test_unit_change_is_never_a_numeric_increase() -> None:
    """56-84 mg -> 0.2-1 mg/kg: the numbers fell, but they are not comparable."""
    a, b = changed(lambda b: dosing(b).update(dose_min=0.2, dose_max=1, unit="mg/kg"))
    change = only(diff.clinical_changes(a, b))
    assert change.type == "unit_changed" and change.severity == "major"
    assert change.before == {"dose_min": 56, "dose_max": 84, "unit": "mg"}
    assert change.after == {"dose_min": 0.2, "dose_max": 1, "unit": "mg/kg"}
    assert (change.route, change.phase) == (NASAL, "induction")


@pytest.mark.parametrize(("update", "meaning"), [
    ({"dose_min": 56000, "dose_max": 84000, "unit": "ug"}, "the same doses"),
    ({"dose_min": 0.056, "dose_max": 0.084, "unit": "g"}, "the same doses"),
    ({"dose_min": 50000, "dose_max": 84000, "unit": "ug"}, "in mg: the minimum lowered to 50 mg"),
    ({"dose_min": 56000, "dose_max": 840000, "unit": "ug"}, "in mg: the maximum raised to 840 mg"),
    ({"dose_min": 56, "dose_max": 84, "unit": "mL"}, "the numbers are not comparable"),
    ({"dose_min": 0.2, "dose_max": 1, "unit": "mg/kg"}, "the numbers are not comparable"),
])
def test_a_unit_change_says_what_the_doses_became(update: dict[str, Any], meaning: str) -> None:
    """Rewritten in a unit of the same kind, the bounds are converted exactly and compared: 56-84 mg as
    56000-84000 ug read "the numbers are not comparable" (adversarial probe). It stays a major
    unit_changed: a thousandfold slip hides in such a rewrite."""
    a, b = changed(lambda b: dosing(b).update(update))
    change = only(diff.clinical_changes(a, b))
    assert change.type == "unit_changed" and change.severity == "major"
    assert change.description.endswith(f"; {meaning} (nasal route (46713006), induction phase)"), change.description


def test_a_rate_rewritten_per_minute_is_converted_per_hour() -> None:
    a, b = changed(lambda b: dosing(b).update(dose_min=1, dose_max=2, unit="mg/kg/h"))
    a, b = b, changed(lambda c: dosing(c).update(dose_min=Decimal("16.6"), dose_max=Decimal("33.4"),
                                                 unit="ug/kg/min"))[1]
    description = only(diff.clinical_changes(a, b)).description
    assert "in mg/kg/h: the minimum lowered to 0.996 mg/kg/h and the maximum raised to 2.004 mg/kg/h" in description


def test_a_converted_bound_that_does_not_terminate_is_marked_rounded_and_away_from_the_old_one() -> None:
    """1-2 mg/kg/h is 16.666…-33.333… ug/kg/min: shown rounded ("≈") and away from the old bound, so a
    minimum that fell never reads as the old value (a first version printed "lowered to 16.6667" next to
    an old minimum of 16.6667, and 2/3 as 28 digits presented as exact; found in review)."""
    a, b = changed(lambda b: dosing(b).update(dose_min=Decimal("16.6667"), dose_max=Decimal("33.3333"),
                                              unit="ug/kg/min"))
    a, b = b, changed(lambda c: dosing(c).update(dose_min=1, dose_max=2, unit="mg/kg/h"))[1]
    description = only(diff.clinical_changes(a, b)).description
    assert ("in ug/kg/min: the minimum lowered to ≈16.6666666666 ug/kg/min and the maximum raised to "
            "≈33.3333333334 ug/kg/min") in description


def test_per_period_maximum_over_a_different_period_is_a_unit_change() -> None:
    """84 mg per day -> 168 mg per week is not "an increase of 84"."""
    a, b = changed(lambda b: dosing(b).update(max_per_period={"value": 168, "unit": "mg", "period": "P1W"}))
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.path) == ("unit_changed", "/dosing_ranges/0/max_per_period")
    a, b = changed(lambda b: dosing(b).update(max_per_period={"value": 84, "unit": "mg/kg", "period": "P1D"}))
    assert only(diff.clinical_changes(a, b)).type == "unit_changed"


def test_equal_lengths_in_other_words_are_minor_rewrites() -> None:
    """P1W -> P7D changes no dose, so it is no major change; but it is named (the probe found it in the
    patch and nowhere in the changes, while the same rewrite of a per-period maximum was listed)."""
    a, b = changed(lambda b: dosing(b)["frequency"].update(period="P7D"))
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity, change.path) == ("text_changed", "minor",
                                                           "/dosing_ranges/0/frequency/period")
    assert diff.json_patch(a, b) == [{"op": "replace", "path": "/dosing_ranges/0/frequency/period",
                                      "value": "P7D"}, {"op": "replace", "path": "/version", "value": 2}]
    a, b = changed(lambda b: dosing(b).update(duration="PT2400S"))
    dosing(a)["duration"] = "PT40M"
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity, change.path) == ("text_changed", "minor", "/dosing_ranges/0/duration")


def test_ranges_are_matched_by_route_and_phase_not_position() -> None:
    def two_ranges(doc: dict[str, Any]) -> None:
        doc["dosing_ranges"].append({**doc["dosing_ranges"][0], "phase": "maintenance", "dose_min": 56,
                                     "dose_max": 84, "frequency": {"count": 1, "period": "P1W", "text": None}})

    a = document()
    two_ranges(a)
    b = copy.deepcopy(a)
    b["dosing_ranges"].reverse()
    assert diff.clinical_changes(a, b) == []  # reordering alone changes nothing clinically
    b["dosing_ranges"][0]["dose_max"] = 56  # maintenance, now first in b
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.path, change.phase) == ("dose_max_decreased", "/dosing_ranges/0/dose_max",
                                                        "maintenance")


def test_alternative_ranges_of_one_phase_are_matched_by_content_not_position() -> None:
    """A phase's ranges are alternatives; swapping them is no dose change (matched by position, two
    swapped ranges read as four "major" changes). A range that really changed is still reported,
    against the range it came from."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": 0.1, "dose_max": 0.5, "unit": "mg/kg/h"},
                          {**first, "dose_min": 0.3, "dose_max": 1, "unit": "mg/kg/h"},
                          {**first, "dose_min": 2, "dose_max": 3, "unit": "mg/kg/h"}]
    b = copy.deepcopy(a)
    b["dosing_ranges"].reverse()
    assert diff.clinical_changes(a, b) == []
    b["dosing_ranges"][0]["dose_max"] = 4  # the 2-3 range, now first, widened
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.path, change.before, change.after) == (
        "dose_max_increased", "/dosing_ranges/0/dose_max", 3, 4)
    c = copy.deepcopy(a)
    del c["dosing_ranges"][0]
    c["dosing_ranges"].reverse()
    change = only(diff.clinical_changes(a, c))
    assert (change.type, change.path, change.before["dose_min"]) == ("dosing_range_removed", "/dosing_ranges/0", 0.1)


def test_ranges_that_changed_are_paired_with_their_closest_counterparts() -> None:
    """Ranges left over after the unchanged ones are paired by content, not position (found by a probe):
    in order, dropping the 56 mg option while annotating the 84 mg one read as "56 mg raised to 84 mg"
    and "84 mg removed", and two swapped ranges that both widened read as two raised and two lowered."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": 56, "dose_max": 56, "unit": "mg"},
                          {**first, "dose_min": 84, "dose_max": 84, "unit": "mg"}]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [{**a["dosing_ranges"][1], "instructions": "Observe for 2 hours."}]
    changes = diff.clinical_changes(a, b)
    # The 84 mg range, now at position 0 where the 56 mg one stood, is also named as matched away from
    # its position (the patch raises /dosing_ranges/0's doses; found in review, the safety net).
    assert sorted((c.type, c.path) for c in changes) == [("dosing_range_rematched", "/dosing_ranges/0"),
                                                         ("dosing_range_removed", "/dosing_ranges/0"),
                                                         ("instructions_changed", "/dosing_ranges/0/instructions")]
    assert next(c for c in changes if c.type == "dosing_range_removed").before["dose_min"] == 56

    a["dosing_ranges"] = [{**first, "dose_min": 28, "dose_max": 56, "unit": "mg"},
                          {**first, "dose_min": 56, "dose_max": 84, "unit": "mg"}]
    c = copy.deepcopy(a)
    c["dosing_ranges"] = [{**first, "dose_min": 56, "dose_max": 90, "unit": "mg"},
                          {**first, "dose_min": 28, "dose_max": 60, "unit": "mg"}]
    assert sorted((x.type, x.path, x.before, x.after) for x in diff.clinical_changes(a, c)) == [
        ("dose_max_increased", "/dosing_ranges/0/dose_max", 84, 90),
        ("dose_max_increased", "/dosing_ranges/1/dose_max", 56, 60)]
    # A range that moved further than a sibling is paired with the nearer one: 56 and 84 -> 80.
    d = copy.deepcopy(a)
    d["dosing_ranges"] = [{**first, "dose_min": 56, "dose_max": 80, "unit": "mg"}]
    assert sorted((x.type, x.before if x.type == "dosing_range_removed" else x.after)
                  for x in diff.clinical_changes(a, d)
                  if x.type in ("dosing_range_removed", "dose_max_decreased")) == [
        ("dose_max_decreased", 80), ("dosing_range_removed", a["dosing_ranges"][0])]



def test_ranges_are_never_paired_across_units_while_one_in_their_own_unit_is_left() -> None:
    """A cross-unit pair cost one kind of change and no distance, so raising both maxima of
    [10-20 mg, 1-2 mg/kg] read as two unit changes (found by a probe of the pairing)."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": 10, "dose_max": 20, "unit": "mg"},
                          {**first, "dose_min": 1, "dose_max": 2, "unit": "mg/kg"}]
    b = copy.deepcopy(a)
    b["dosing_ranges"][0]["dose_max"] = 30
    b["dosing_ranges"][1]["dose_max"] = 3
    assert sorted((c.type, c.before, c.after) for c in diff.clinical_changes(a, b)) == [
        ("dose_max_increased", 2, 3), ("dose_max_increased", 20, 30)]
    c = copy.deepcopy(a)
    c["dosing_ranges"] = [{**a["dosing_ranges"][1], "dose_max": 3}]
    assert sorted((x.type, x.path) for x in diff.clinical_changes(a, c)) == [
        ("dose_max_increased", "/dosing_ranges/0/dose_max"), ("dosing_range_removed", "/dosing_ranges/0")]
    assert next(x for x in diff.clinical_changes(a, c) if x.type == "dosing_range_removed").before["unit"] == "mg"


def test_a_diff_of_many_alternative_ranges_stays_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six route/phase groups of 8 changed ranges took over a second per diff with an exhaustive search
    up to 40,320 pairings; the assignment is solved exactly now (Kuhn-Munkres), each pair's distance
    computed once: rows times columns per route and phase, never one per pairing."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "phase": phase, "dose_min": 10 * n, "dose_max": 10 * n + 5, "unit": "mg"}
                          for phase in ("induction", "maintenance") for n in range(1, 9)]
    b = copy.deepcopy(a)
    for item in b["dosing_ranges"]:
        item["dose_max"] += 1
    measured = 0
    real = diff._distance

    def counted(*args: Any) -> Any:
        nonlocal measured
        measured += 1
        return real(*args)

    monkeypatch.setattr(diff, "_distance", counted)
    changes = diff.clinical_changes(a, b)
    assert len(changes) == 16 and all(c.after == c.before + 1 for c in changes)
    assert measured == 2 * 8 * 8, measured
    assert not hasattr(diff, "itertools")  # no pairing is enumerated


def _twenty_stages() -> tuple[dict[str, Any], dict[str, Any]]:
    """20 ranges of one phase, each a stage of its own; every frequency text and instruction reworded,
    every minimum raised, and the ranges shuffled: the costliest diff of one phase a protocol holds."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "phase": "maintenance", "dose_min": 10 * n, "dose_max": 10 * n + 5,
                           "frequency": {"count": 1, "period": "P1W",
                                         "text": f"once weekly, weeks {4 * n + 1}-{4 * n + 4}"},
                           "instructions": f"Stage {n}: observe for {n} hours."} for n in range(1, 21)]
    b = copy.deepcopy(a)
    for item in b["dosing_ranges"]:
        item["frequency"]["text"] = item["frequency"]["text"].replace("-", " to ")
        item["instructions"] += " Check blood pressure."
        item["dose_min"] += 1
    random.Random(20).shuffle(b["dosing_ranges"])
    return a, b


def test_twenty_reworded_and_shuffled_stages_are_each_paired_with_their_own() -> None:
    """Every pair of 20 ranges is measured (400 distances, text likeness included) and the assignment
    solved: each stage is paired with its own (its minimum raised by 1, nothing crosswise). (Its speed is
    measured outside the tests, which hold no timing assertions.)"""
    a, b = _twenty_stages()
    result = diff.diff_documents(a, b)
    raised = [c for c in result.changes if c.type == "dose_min_increased"]
    assert len(raised) == 20 and all(c.after == c.before + 1 for c in raised)
    assert {c.type for c in result.changes} == {"dose_min_increased", "frequency_text_changed", "instructions_changed"}


def test_many_leftover_ranges_are_still_paired_closest_first() -> None:
    """Ten against ten (an exhaustive search's bound was 720 pairings, greedy beyond it; now an exact
    assignment): no range is paired with a far one while its own counterpart is left."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": 10 * n, "dose_max": 10 * n + 5, "unit": "mg"} for n in range(1, 11)]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [{**r, "dose_max": r["dose_max"] + 1} for r in reversed(a["dosing_ranges"])]
    changes = diff.clinical_changes(a, b)
    assert len(changes) == 10 and {c.type for c in changes} == {"dose_max_increased"}
    assert all(c.after == c.before + 1 for c in changes)



def test_a_period_range_is_a_frequency_change_and_its_rewording_minor() -> None:
    a = document()
    dosing(a)["frequency"] = {"count": 1, "period": "P2W", "text": None}
    b = copy.deepcopy(a)
    dosing(b)["frequency"] = {"count": 1, "period": "P1W", "period_max": "P2W", "text": None}
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity) == ("frequency_changed", "major")
    assert "from 1 per P2W to 1 per P1W to P2W" in change.description
    c = copy.deepcopy(b)
    dosing(c)["frequency"]["period_max"] = "P14D"
    change = only(diff.clinical_changes(b, c))
    assert (change.type, change.path) == ("text_changed", "/dosing_ranges/0/frequency/period_max")
    dosing(c)["frequency"]["period_max"] = "P3W"
    assert only(diff.clinical_changes(b, c)).type == "frequency_changed"

def test_changing_a_ranges_route_is_a_removal_and_an_addition() -> None:
    def move_to_iv(b: dict[str, Any]) -> None:
        b["routes"].append(IV_ROUTE)
        dosing(b).update(route=IV)

    a, b = changed(move_to_iv)
    kinds = sorted(c.type for c in diff.clinical_changes(a, b))
    assert kinds == ["dosing_range_added", "dosing_range_removed", "route_added"]


def test_changes_are_sorted_by_severity_and_counted() -> None:
    def many(b: dict[str, Any]) -> None:
        b["title"] = "New title"
        b["fda_approval"]["rems_required"] = False
        dosing(b)["dose_max"] = 112

    a, b = changed(many)
    result = diff.diff_documents(a, b)
    assert [c.severity for c in result.changes] == ["major", "moderate", "minor"]
    assert result.highest_severity == "major"
    assert result.counts() == {"major": 1, "moderate": 1, "minor": 1}
    assert diff.diff_documents(a, a).highest_severity is None


def test_patch_turns_a_into_b_and_back() -> None:
    def rewrite(b: dict[str, Any]) -> None:
        _add_iv_route_with_range(b)
        b["indications"].insert(0, SI)
        dosing(b).update(dose_min=28, unit="mg/kg")
        b["fda_approval"]["boxed_warning"] = None
        b["drug"]["brand_names"] = []
        b["status"] = "retired"

    a, b = changed(rewrite)
    patch = diff.json_patch(a, b)
    assert jsonpatch.apply_patch(a, patch) == b
    assert jsonpatch.apply_patch(b, diff.json_patch(b, a)) == a
    assert a["dosing_ranges"][0]["unit"] == "mg"  # applying never mutates the input
    assert diff.json_patch(a, a) == []


def test_diff_etag_is_a_function_of_the_representation() -> None:
    assert diff.diff_etag(b'{"a": 1}') == diff.diff_etag(b'{"a": 1}') != diff.diff_etag(b'{"a": 2}')
    assert re.fullmatch(r'"diff-[0-9a-f]{16}"', diff.diff_etag(b"{}"))


def test_every_dosing_field_in_the_patch_is_named_in_the_changes() -> None:
    """Found in review: 84 mg/P1D -> 90 mg/PT24H named only the value, and 84 -> 84.0 nothing, while
    the patch held /max_per_period/period and /dose_max."""
    a, b = changed(lambda b: dosing(b).update(max_per_period={"value": 90, "unit": "mg", "period": "PT24H"}))
    dosing(a)["max_per_period"] = {"value": 84, "unit": "mg", "period": "P1D"}
    changes = diff.clinical_changes(a, b)
    assert {(c.type, c.path) for c in changes} == {
        ("max_per_period_changed", "/dosing_ranges/0/max_per_period/value"),
        ("text_changed", "/dosing_ranges/0/max_per_period/period")}
    a, b = changed(lambda b: dosing(b).update(dose_max=float(dosing(b)['dose_max'])))  # 84 -> 84.0
    patched = {op["path"] for op in diff.json_patch(a, b)} - {"/version"}
    named = {c.path for c in diff.clinical_changes(a, b)}
    assert patched == named == {"/dosing_ranges/0/dose_max"}, (patched, named)


@pytest.mark.parametrize(("before", "after", "meaning"), [
    ({"value": Decimal("0.084"), "unit": "g", "period": "P1D"}, {"value": 840, "unit": "mg", "period": "P1D"},
     "in g: raised to 0.84 g"),
    ({"value": 84, "unit": "mg", "period": "P1D"}, {"value": Decimal("0.084"), "unit": "g", "period": "P1D"},
     "the same amount"),
    ({"value": 84, "unit": "mg", "period": "P1D"}, {"value": 84, "unit": "mL", "period": "P1D"},
     "the amounts are not comparable"),
    ({"value": 84, "unit": "mg", "period": "P1D"}, {"value": 84000, "unit": "ug", "period": "P1W"},
     "the amounts are not comparable"),
])
def test_a_maximum_per_period_in_another_unit_says_what_it_became(before, after, meaning) -> None:
    """Found by an adversarial probe: any unit change of max_per_period read "the amounts are not
    comparable", so a tenfold raise written in g read like the same cap in another unit."""
    a, b = changed(lambda c: dosing(c).update(max_per_period=before))
    a, b = b, changed(lambda c: dosing(c).update(max_per_period=after))[1]
    change = only(diff.clinical_changes(a, b))
    assert change.type == "unit_changed" and change.severity == "major"
    assert f"; {meaning} (" in change.description, change.description


def test_a_unit_change_shows_bounds_as_dose_checks_do() -> None:
    """Found by an adversarial probe: "1e-09-2e-09 Mg" read as a subtraction."""
    a, b = changed(lambda c: dosing(c).update(dose_min=Decimal("0.000001"), dose_max=Decimal("0.000002"), unit="g"))
    description = only(diff.clinical_changes(a, b)).description
    assert "56\u201384 mg became 0.000001\u20130.000002 g;" in description, description
    assert "e-0" not in description


@pytest.mark.parametrize(("before", "after", "kind", "description"), [
    (None, ["R45.851"], "indications_changed", "from every indication of the record to R45.851"),
    (["F33.2"], None, "indications_changed", "from F33.2 to every indication of the record"),
    (["F33.2"], ["F33.2", "R45.851"], "indications_changed", "from F33.2 to F33.2, R45.851; added R45.851"),
    (["F33.2", "R45.851"], ["R45.851", "F32.9"], "indications_changed",
     "from F33.2, R45.851 to R45.851, F32.9; added F32.9; removed F33.2"),
    (["F33.2", "R45.851"], ["R45.851", "F33.2"], "text_changed", "reordered (the same codes)"),
])
def test_a_change_of_the_indications_a_range_is_for_names_the_codes(before, after, kind, description) -> None:
    """Which indications a range is for decides which patients its doses are for (Spravato's MDSI regimen
    against the TRD ones): a major change naming the codes added and removed; a reordering is minor."""
    def mutate(b: dict[str, Any]) -> None:
        if after is None:
            dosing(b).pop("indications", None)
        else:
            dosing(b)["indications"] = after

    a = document()
    if before is not None:
        dosing(a)["indications"] = before
    b = copy.deepcopy(a)
    mutate(b)
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.path, change.before, change.after) == (kind, "/dosing_ranges/0/indications",
                                                                       before, after)
    assert description in change.description, change.description


# ------------------------------------------------------------- a range's identity (found by a probe)

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
MDSI = {"system": ICD, "code": "R45.851", "display": "Suicidal ideations"}


def _stage(low: int, high: int, mark: str, told_apart_by: str) -> dict[str, Any]:
    """A range of one route and phase told apart from its siblings only by ``told_apart_by``."""
    item: dict[str, Any] = {"route": NASAL, "phase": "maintenance", "dose_min": low, "dose_max": high,
                            "unit": "mg", "frequency": {"count": 1, "period": "P1W", "text": None},
                            "duration": None, "max_per_period": None, "instructions": None}
    if told_apart_by == "frequency_text":
        item["frequency"]["text"] = mark
    elif told_apart_by == "instructions":
        item["instructions"] = mark
    else:
        item["indications"] = [mark]
    return item


STAGE_MARKS = {"frequency_text": ("once weekly, weeks 5-8", "once weekly, week 9 onwards"),
               "instructions": ("Weeks 5-8.", "Week 9 onwards."),
               "indications": ("F33.2", "R45.851")}


def _staged(told_apart_by: str, doses: list[tuple[int, int]]) -> dict[str, Any]:
    doc = document()
    doc["indications"].append(MDSI)
    doc["dosing_ranges"] = [_stage(low, high, mark, told_apart_by)
                            for (low, high), mark in zip(doses, STAGE_MARKS[told_apart_by], strict=True)]
    return doc


def _reworded_swap(told_apart_by: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two stages whose doses swap in a revision that rewords both of their labels (``REWORDED``)."""
    a = _staged(told_apart_by, [(56, 84), (28, 56)])
    b = _staged(told_apart_by, [(28, 56), (56, 84)])
    for item, mark in zip(b["dosing_ranges"], REWORDED[told_apart_by], strict=True):
        if told_apart_by == "frequency_text":
            item["frequency"]["text"] = mark
        elif told_apart_by == "instructions":
            item["instructions"] = mark
        else:
            item["indications"] = mark
    return a, b


def _one_label_swap(told_apart_by: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two stages whose doses swap in a revision that gives both one label: nothing tells them apart."""
    a = _staged(told_apart_by, [(56, 84), (28, 56)])
    b = _staged(told_apart_by, [(28, 56), (56, 84)])
    for item in b["dosing_ranges"]:
        if told_apart_by == "frequency_text":
            item["frequency"]["text"] = "once weekly"
        else:
            item["instructions"] = "Once weekly."
    return a, b


def _dose_paths(changes: list[diff.ClinicalChange]) -> set[str]:
    return {c.path for c in changes if c.type.startswith(("dose_min_", "dose_max_"))}


@pytest.mark.parametrize("told_apart_by", sorted(STAGE_MARKS))
def test_doses_swapped_between_stages_are_dose_changes_of_each_stage(told_apart_by: str) -> None:
    """Two maintenance ranges told apart only by their frequency text (weeks 5-8, week 9 onwards), their
    instructions, or the indications they are for, with their doses swapped: the diff paired them
    crosswise (a rewording cost nothing), naming only wording (minor), instructions or indications, and
    no dose change, while the patch replaced dose_min and dose_max and a dose check flipped (found by a
    probe). Each range keeps its identity now, and its dose changes are named, major."""
    a = _staged(told_apart_by, [(56, 84), (28, 56)])
    b = _staged(told_apart_by, [(28, 56), (56, 84)])
    b["version"] = 2
    changes = diff.clinical_changes(a, b)
    assert [(c.type, c.path, c.before, c.after) for c in changes] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min", 56, 28),
        ("dose_max_decreased", "/dosing_ranges/0/dose_max", 84, 56),
        ("dose_min_increased", "/dosing_ranges/1/dose_min", 28, 56),
        ("dose_max_increased", "/dosing_ranges/1/dose_max", 56, 84)]
    assert {c.severity for c in changes} == {"major"}
    patched = {op["path"] for op in diff.json_patch(a, b) if op["path"].endswith(("/dose_min", "/dose_max"))}
    assert _dose_paths(changes) == patched == {f"/dosing_ranges/{i}/{bound}" for i in (0, 1)
                                               for bound in ("dose_min", "dose_max")}


@pytest.mark.parametrize("told_apart_by", sorted(STAGE_MARKS))
def test_stages_reordered_are_no_change_and_a_stage_dropped_is_itself_removed(told_apart_by: str) -> None:
    """Exact twins are still matched wherever they stand; and dropping weeks 5-8 (56-84 mg) while raising
    week 9 onwards to 56-84 mg is that removal and that raise, not weeks 5-8 reworded."""
    a = _staged(told_apart_by, [(56, 84), (28, 56)])
    b = copy.deepcopy(a)
    b["dosing_ranges"].reverse()
    assert diff.clinical_changes(a, b) == []
    c = copy.deepcopy(a)
    c["dosing_ranges"] = [{**a["dosing_ranges"][1], "dose_min": 56, "dose_max": 84}]
    assert [(x.type, x.path) for x in diff.clinical_changes(a, c)] == [
        ("dosing_range_removed", "/dosing_ranges/0"), ("dose_min_increased", "/dosing_ranges/0/dose_min"),
        ("dose_max_increased", "/dosing_ranges/0/dose_max")]
    assert diff.clinical_changes(a, c)[0].before == a["dosing_ranges"][0]


def test_a_range_whose_identity_changed_is_still_paired_when_nothing_else_is_left() -> None:
    """Identity only ranks the pairings: a stage reworded alone is its own rewording (moderate), and two
    stages reworded with their doses kept are two rewordings, never four dose changes."""
    a = _staged("frequency_text", [(56, 84), (28, 56)])
    b = copy.deepcopy(a)
    b["dosing_ranges"][1]["frequency"]["text"] = "once weekly or every 2 weeks, week 9 onwards"
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity, change.path) == ("frequency_text_changed", "moderate",
                                                           "/dosing_ranges/1/frequency/text")
    b["dosing_ranges"][0]["frequency"]["text"] = "once weekly, weeks 5 to 8"
    assert [(c.type, c.path) for c in diff.clinical_changes(a, b)] == [
        ("frequency_text_changed", "/dosing_ranges/0/frequency/text"),
        ("frequency_text_changed", "/dosing_ranges/1/frequency/text")]


@pytest.mark.parametrize(("field", "noun"), [("indications", "Indications"), ("routes", "Routes")])
def test_the_records_indications_or_routes_reordered_are_named(field: str, noun: str) -> None:
    """Found by a probe: reversed indications were a move in the patch and nowhere in the changes, though
    every field of the patch is named (as a reordering of brand names or sources is)."""
    a = document()
    a["indications"].append(MDSI)
    a["routes"].append(IV_ROUTE)
    b = copy.deepcopy(a)
    b[field].reverse()
    assert {op["path"].split("/")[1] for op in diff.json_patch(a, b)} == {field}
    change = only(diff.clinical_changes(a, b))
    assert (change.type, change.severity, change.path, change.before, change.after) == (
        "text_changed", "minor", f"/{field}", a[field], b[field])
    assert change.description == f"{noun} reordered (the same codes)"
    b[field].append({**b[field][0], "code": "X1"})  # one added too: the added one and the reordering
    assert [c.type for c in diff.clinical_changes(a, b)] == [f"{field[:-1]}_added", "text_changed"]
    c = copy.deepcopy(a)
    c[field].append({**c[field][0], "code": "X1"})  # added at the end, the others in order: no reordering
    assert [x.type for x in diff.clinical_changes(a, c)] == [f"{field[:-1]}_added"]


def test_dosing_changes_are_in_document_order_within_a_severity() -> None:
    """Found by a probe: grouped by route and phase, Spravato's major changes came as /dosing_ranges/0, /3,
    /1, /2. Removed ranges come first, by their position in version a (their paths point there)."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "phase": phase, "dose_max": high}
                          for phase, high in (("induction", 84), ("maintenance", 84), ("maintenance", 56),
                                              ("induction", 56))]
    b = copy.deepcopy(a)
    for item in b["dosing_ranges"]:
        item["dose_max"] += 1
    assert [c.path for c in diff.clinical_changes(a, b)] == [f"/dosing_ranges/{i}/dose_max" for i in range(4)]
    c = copy.deepcopy(b)
    del c["dosing_ranges"][3], c["dosing_ranges"][1]  # removes a's /1 and /3, and keeps two raised
    assert [(x.type, x.path) for x in diff.clinical_changes(a, c)] == [
        ("dosing_range_removed", "/dosing_ranges/1"), ("dosing_range_removed", "/dosing_ranges/3"),
        ("dose_max_increased", "/dosing_ranges/0/dose_max"), ("dose_max_increased", "/dosing_ranges/1/dose_max")]


# ------------------------------------- pairing when every identity changed, and the safety net (review 2)

REWORDED: dict[str, tuple[Any, Any]] = {
    "frequency_text": ("once weekly, weeks 5 to 8", "once weekly, from week 9"),
    "instructions": ("Weeks 5 to 8.", "From week 9."),
    "indications": (["F33.2", "F32.9"], ["R45.851", "F32.9"])}


@pytest.mark.parametrize("told_apart_by", sorted(REWORDED))
def test_doses_swapped_while_every_stage_is_reworded_are_dose_changes_of_each_stage(told_apart_by: str) -> None:
    """Found in review: with both stages' texts (or instructions; or both given one code more) reworded in
    the revision that swapped their doses, every pairing differed by one identity mark, the tie fell to
    dose closeness and paired them crosswise: two rewordings (moderate) and no dose change, while the
    patch replaced dose_min and dose_max at both paths. How alike the identities are ranks the pairings
    before the doses now (the indications by the codes they share: both ranges gaining F32.9 keep F33.2
    and R45.851 apart)."""
    a, b = _reworded_swap(told_apart_by)
    result = diff.diff_documents(a, b)
    assert [(c.type, c.path, c.before, c.after) for c in result.changes if c.type.startswith("dose_")] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min", 56, 28),
        ("dose_max_decreased", "/dosing_ranges/0/dose_max", 84, 56),
        ("dose_min_increased", "/dosing_ranges/1/dose_min", 28, 56),
        ("dose_max_increased", "/dosing_ranges/1/dose_max", 56, 84)]
    assert result.highest_severity == "major"
    relabelled = [c for c in result.changes if not c.type.startswith("dose_")]
    marks = [[m] if told_apart_by == "indications" else m for m in STAGE_MARKS[told_apart_by]]
    assert [(c.path.split("/")[2], c.before, c.after) for c in relabelled] == [
        ("0", marks[0], REWORDED[told_apart_by][0]), ("1", marks[1], REWORDED[told_apart_by][1])]


def test_a_stage_removed_while_another_is_reworded_names_the_reworded_stages_dose() -> None:
    """Found in review: [weeks 5-8 56-84, week 9 onwards 28-56, weeks 1-4 84-84] -> [weeks 5 to 8 84-84,
    week 9 onwards 28-56] read "weeks 5-8 removed" and "weeks 1-4 reworded as weeks 5 to 8", and the
    patch's raise of /dosing_ranges/0/dose_min to 84 was named nowhere."""
    a = document()
    a["dosing_ranges"] = [_stage(56, 84, "weeks 5-8", "frequency_text"),
                          _stage(28, 56, "week 9 onwards", "frequency_text"),
                          _stage(84, 84, "weeks 1-4", "frequency_text")]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [_stage(84, 84, "weeks 5 to 8", "frequency_text"),
                          _stage(28, 56, "week 9 onwards", "frequency_text")]
    assert [(c.type, c.path, c.before if c.type != "dosing_range_removed" else c.before["frequency"]["text"])
            for c in diff.clinical_changes(a, b)] == [
        ("dosing_range_removed", "/dosing_ranges/2", "weeks 1-4"),
        ("dose_min_increased", "/dosing_ranges/0/dose_min", 56),
        ("frequency_text_changed", "/dosing_ranges/0/frequency/text", "weeks 5-8")]


def _r2_2(added: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Review 2's greedy case: four stages (text / instructions) X/I 56-84, Y/I 28-56, P/I 10-20, Q/I
    20-30 become X/J 28-56, Y2/I 56-84, P/J 10-20, Q/J 20-30, with ``added`` new stages after them."""
    i, j = "Observe 2 h.", "Observe 2 h; check BP."

    def stage(low: int, high: int, text: str, notes: str | None) -> dict[str, Any]:
        return {**_stage(low, high, text, "frequency_text"), "instructions": notes}

    a = document()
    a["dosing_ranges"] = [stage(56, 84, "X", i), stage(28, 56, "Y", i), stage(10, 20, "P", i), stage(20, 30, "Q", i)]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [stage(28, 56, "X", j), stage(56, 84, "Y2", i), stage(10, 20, "P", j), stage(20, 30, "Q", j),
                          *(stage(n, n + 1, f"N{n}", None) for n in range(1, added + 1))]
    return a, b


@pytest.mark.parametrize("added", [0, 3, 7])
def test_four_stages_against_seven_name_the_dose_changes_as_four_against_four_do(added: int) -> None:
    """Found in review: from 4 leftover ranges against 7 (more than 720 pairings) pairs were chosen
    greedily, and the cheapest single pair first (a rewording with equal doses) forced the last pair
    crosswise: no dose change named, where the same edit without the added ranges named all four. The
    assignment is exact now, for every size."""
    a, b = _r2_2(added)
    changes = diff.clinical_changes(a, b)
    assert [(c.type, c.path) for c in changes if c.type.startswith("dose_")] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min"), ("dose_max_decreased", "/dosing_ranges/0/dose_max"),
        ("dose_min_increased", "/dosing_ranges/1/dose_min"), ("dose_max_increased", "/dosing_ranges/1/dose_max")]
    assert [c.path for c in changes if c.type == "dosing_range_added"] == [f"/dosing_ranges/{n}"
                                                                           for n in range(4, 4 + added)]
    assert [(c.type, c.path) for c in changes if c.severity == "moderate"] == [
        ("instructions_changed", "/dosing_ranges/0/instructions"),
        ("frequency_text_changed", "/dosing_ranges/1/frequency/text"),
        ("instructions_changed", "/dosing_ranges/2/instructions"),
        ("instructions_changed", "/dosing_ranges/3/instructions")]
    assert not any(c.type == "dosing_range_rematched" for c in changes)


def _exhaustive(cost: list[list[tuple[int, ...]]]) -> list[tuple[int, int]]:
    """The search the module used up to 720 pairings: every pairing in lexicographic order, the first
    least (tuple sums compared lexicographically) wins."""
    rows, columns = len(cost), len(cost[0])
    size = min(rows, columns)
    if rows <= columns:
        pairings = (list(enumerate(js)) for js in itertools.permutations(range(columns), size))
    else:
        pairings = ([(i, j) for j, i in enumerate(is_)] for is_ in itertools.permutations(range(rows), size))
    return sorted(min(pairings, key=lambda pairing: tuple(map(sum, zip(*(cost[i][j] for i, j in pairing),
                                                                        strict=True)))))


def test_the_exact_assignment_is_the_exhaustive_searchs_first_least_pairing() -> None:
    """Where the exhaustive search applied, the assignment gives its pairing, ties included (document
    order: the least pairing first in enumeration); small values make ties common."""
    rng = random.Random(2)
    for _ in range(600):
        rows, columns = rng.randint(1, 5), rng.randint(1, 5)
        width, top = rng.randint(1, 4), rng.choice([1, 2, 5, 1000])
        cost = [[tuple(rng.randint(0, top) for _ in range(width)) for _ in range(columns)] for _ in range(rows)]
        assert diff._closest_pairs(cost) == _exhaustive(cost), cost
    assert diff._closest_pairs([]) == [] and diff._closest_pairs([[]]) == []


@pytest.mark.parametrize("told_apart_by", ["frequency_text", "instructions"])
def test_stages_given_one_label_while_their_doses_move_are_named_rematched(told_apart_by: str) -> None:
    """The safety net (found in review: a pairing must never rate a diff below what its patch shows).
    Both stages given the same new label while their doses swap: nothing tells which stage became which,
    so the ranges are paired by their doses (crosswise, two rewordings); each position's range changed
    dose against the range that stood there, so each is also named ``dosing_range_rematched``, major,
    with that range before and this one after."""
    a, b = _one_label_swap(told_apart_by)
    result = diff.diff_documents(a, b)
    assert result.highest_severity == "major"
    rematched = [c for c in result.changes if c.severity == "major"]
    assert [(c.type, c.path, c.before, c.after) for c in rematched] == [
        ("dosing_range_rematched", f"/dosing_ranges/{i}", a["dosing_ranges"][i], b["dosing_ranges"][i]) for i in (0, 1)]
    assert rematched[0].description.startswith(
        "This range was matched to range 1 of version a by what it is for"), rematched[0].description
    assert ("not to range 0 of version a, which stood in its place among the nasal route (46713006) maintenance "
            "ranges; compared with that range: minimum dose lowered from 56 to 28 mg; maximum dose lowered from 84 "
            "to 56 mg. Check which stage") in rematched[0].description
    assert (rematched[0].route, rematched[0].phase) == (NASAL, "maintenance")
    assert {c.type for c in result.changes if c.severity != "major"} == {
        "frequency_text_changed" if told_apart_by == "frequency_text" else "instructions_changed"}


@pytest.mark.parametrize("told_apart_by", ["frequency_text", "instructions"])
def test_the_net_counts_places_within_the_route_and_phase(told_apart_by: str) -> None:
    """A review: the net compared whole-list positions, so a range of another phase moved in front of the
    stages (here an induction range, first in version a and last in b) turned it off, and both stages given
    one label while their doses swapped read as two rewordings, moderate."""
    a, b = _one_label_swap(told_apart_by)
    induction = {**a["dosing_ranges"][0], "phase": "induction", "dose_min": 56, "dose_max": 84}
    a["dosing_ranges"].insert(0, induction)
    b["dosing_ranges"].append(copy.deepcopy(induction))
    result = diff.diff_documents(a, b)
    assert result.highest_severity == "major"
    assert [(c.type, c.path) for c in result.changes if c.severity == "major"] == [
        ("dosing_range_rematched", "/dosing_ranges/0"), ("dosing_range_rematched", "/dosing_ranges/1")]


def test_the_net_stays_out_when_the_pair_names_a_major_change_or_is_an_unchanged_range() -> None:
    """Stages reordered with one widened: the widened range names its own dose change (major) and the
    other is an unchanged range moved (nothing can hide in it): no ``dosing_range_rematched``."""
    a = _staged("frequency_text", [(56, 84), (28, 56)])
    b = copy.deepcopy(a)
    b["dosing_ranges"].reverse()
    b["dosing_ranges"][0]["dose_max"] = 60
    assert [(c.type, c.path) for c in diff.clinical_changes(a, b)] == [
        ("dose_max_increased", "/dosing_ranges/0/dose_max")]


DOSE_BEARING = ("route", "phase", "dose_min", "dose_max", "unit", "frequency", "max_per_period", "duration",
                "duration_min", "absolute_max", "indications")
_TEXTS = ("once weekly, weeks 1-4", "once weekly, weeks 5-8", "once weekly, week 9 onwards", None)
_NOTES = ("Observe for 2 hours.", "Weeks 5-8.", "Week 9 onwards.", None)


def _random_range(rng: random.Random, phase: str) -> dict[str, Any]:
    low = rng.choice((28, 56, 84))
    item: dict[str, Any] = {
        "route": NASAL, "phase": phase, "dose_min": low, "dose_max": low + rng.choice((0, 28)), "unit": "mg",
        "frequency": {"count": rng.choice((1, 2)), "period": rng.choice(("P1W", "P2W")), "text": rng.choice(_TEXTS)},
        "duration": None, "max_per_period": rng.choice((None, {"value": 84, "unit": "mg", "period": "P1D"})),
        "instructions": rng.choice(_NOTES)}
    if rng.random() < 0.4:
        item["indications"] = rng.choice((["F33.2"], ["R45.851"], ["F33.2", "R45.851"]))
    return item


def _reword(text: str | None, rng: random.Random) -> str:
    return rng.choice(("Revised: ", "")) + (text or "as directed").replace("-", " to ") + rng.choice(("", " (label)"))


def _random_edit(ranges: list[dict[str, Any]], rng: random.Random) -> None:
    """One edit a revision may make: a dose-bearing field, a rewording of one range or of every range, a
    dose swap between two ranges, two ranges trading places, a range removed, added or copied."""
    edit = rng.choice(("dose", "text", "notes", "reword_all", "swap_doses", "swap_places", "remove", "add",
                       "copy", "indications", "frequency"))
    if not ranges or edit == "add":
        ranges.insert(rng.randint(0, len(ranges)), _random_range(rng, rng.choice(("induction", "maintenance"))))
        return
    item = rng.choice(ranges)
    if edit == "dose":
        item[rng.choice(("dose_min", "dose_max"))] += rng.choice((-14, 14, 28))
    elif edit == "text":
        item["frequency"]["text"] = _reword(item["frequency"]["text"], rng)
    elif edit == "notes":
        item["instructions"] = _reword(item["instructions"], rng)
    elif edit == "reword_all":
        field = rng.choice(("text", "notes"))
        for each in ranges:
            if field == "text":
                each["frequency"]["text"] = _reword(each["frequency"]["text"], rng)
            else:
                each["instructions"] = _reword(each["instructions"], rng)
    elif edit == "swap_doses" and len(ranges) > 1:
        other = rng.choice(ranges)
        item["dose_min"], item["dose_max"], other["dose_min"], other["dose_max"] = (
            other["dose_min"], other["dose_max"], item["dose_min"], item["dose_max"])
    elif edit == "swap_places" and len(ranges) > 1:
        i, j = rng.sample(range(len(ranges)), 2)
        ranges[i], ranges[j] = ranges[j], ranges[i]
    elif edit == "remove":
        ranges.remove(item)
    elif edit == "copy":
        ranges.insert(rng.randint(0, len(ranges)), copy.deepcopy(item))
    elif edit == "indications":
        item["indications"] = rng.choice((["F33.2"], ["R45.851"], ["F33.2", "R45.851"]))
    else:
        item["frequency"]["count"] = 3 - item["frequency"]["count"]


def _same_stage_slot(a: list[dict[str, Any]], b: list[dict[str, Any]], i: int) -> bool:
    """Whether position i holds a range of one route and phase in both versions, and b's there is not an
    unchanged range of version a moved there (a reordering changes nothing; ranges moved between phases
    are paired within each phase, which is what the diff names)."""
    return (i < len(a) and i < len(b) and (a[i]["route"], a[i]["phase"]) == (b[i]["route"], b[i]["phase"])
            and b[i] not in a)


def _positions_whose_dose_changed(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[int]:
    """Where applying the patch changed a dose-bearing field of the range at a position (see
    :func:`_same_stage_slot`)."""
    def bearing(item: dict[str, Any]) -> tuple[Any, ...]:
        frequency = item.get("frequency") or {}
        codes = item.get("indications")
        return (*(item.get(f) for f in DOSE_BEARING if f not in ("frequency", "indications")),
                frequency.get("count"), frequency.get("period"), None if codes is None else sorted(codes))

    return [i for i in range(min(len(a), len(b))) if _same_stage_slot(a, b, i) and bearing(a[i]) != bearing(b[i])]


def _patched_dose_positions(patch: list[dict[str, Any]], a: list[dict[str, Any]], b: list[dict[str, Any]]
                            ) -> set[int]:
    """The positions (see :func:`_same_stage_slot`) whose dose-bearing fields the patch replaces, adds,
    removes or moves, read from a patch that touches only fields inside ranges (its list positions then
    are the documents'; a patch adding, removing or moving whole ranges names positions between its
    operations, and gives none here)."""
    positions: set[int] = set()
    for op in patch:
        for path in (op.get("path", ""), op.get("from", "")):
            parts = path.split("/")
            if len(parts) > 1 and parts[1] == "dosing_ranges":
                if len(parts) < 4:
                    return set()
                if parts[3] in DOSE_BEARING and parts[3:5] != ["frequency", "text"]:
                    positions.add(int(parts[2]))
    return {i for i in positions if _same_stage_slot(a, b, i)}


def test_random_revisions_never_rate_a_dose_change_of_the_patch_below_major() -> None:
    """Property (found in review: pairings hid dose changes the patch showed): over random revisions of
    a random two-phase protocol, whenever the patch changes a dose-bearing field of the range at a
    position (its route and phase kept, not an unchanged range moved there): read from the patch's
    operations when they only edit fields inside ranges, and from its result position by position
    always, the diff's highest severity is major. Pure reorderings are change-free. Seeded: the same 400
    cases each run."""
    rng = random.Random(924)
    for case in range(400):
        a = document()
        a["indications"].append(MDSI)
        a["dosing_ranges"] = [_random_range(rng, rng.choice(("induction", "maintenance")))
                              for _ in range(rng.randint(1, 5))]
        b = copy.deepcopy(a)
        b["version"] = 2
        if case % 5 == 0:
            rng.shuffle(b["dosing_ranges"])
            assert diff.clinical_changes(a, b) == [], (case, a["dosing_ranges"], b["dosing_ranges"])
            continue
        for _ in range(rng.randint(1, 3)):
            _random_edit(b["dosing_ranges"], rng)
        result = diff.diff_documents(a, b)
        patched = _patched_dose_positions(result.patch, a["dosing_ranges"], b["dosing_ranges"])
        if _positions_whose_dose_changed(a["dosing_ranges"], b["dosing_ranges"]) or patched:
            assert result.highest_severity == "major", (case, a["dosing_ranges"], b["dosing_ranges"],
                                                         [c.as_dict() for c in result.changes], result.patch)


def test_alternatives_are_paired_for_the_least_total_distance_at_any_size() -> None:
    """Four alternative ranges against seven (840 pairings, the greedy path's size; found in review): the
    closest single pair first (10-20 with 10-30) left 20-30 to 10-10, two dose changes where one each
    does it. The exact assignment names one change per range: 20-30 -> 10-30 and 10-20 -> 10-10."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": low, "dose_max": high}
                          for low, high in ((10, 20), (20, 30), (100, 200), (200, 300))]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [{**first, "dose_min": low, "dose_max": high}
                          for low, high in ((10, 30), (10, 10), (100, 300), (100, 100),
                                            (5000, 6000), (6000, 7000), (7000, 8000))]
    changes = diff.clinical_changes(a, b)
    assert [(c.type, c.path, c.before, c.after) for c in changes if c.type != "dosing_range_added"] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min", 20, 10),
        ("dose_max_decreased", "/dosing_ranges/1/dose_max", 20, 10),
        ("dose_min_decreased", "/dosing_ranges/2/dose_min", 200, 100),
        ("dose_max_decreased", "/dosing_ranges/3/dose_max", 200, 100)]
    assert len(changes) == 4 + 3


def test_stages_relabelled_outright_are_paired_by_their_order_in_the_phase() -> None:
    """Labels that share nothing ("A", "B" -> "C", "D") rank no pairing above another; the stages' order
    in the phase does, before the doses (which paired them crosswise): the first stage stays the first,
    its dose changes named. Alternatives (equal labels) share a place in that order, so theirs stays
    meaningless (test_ranges_that_changed_are_paired_with_their_closest_counterparts)."""
    a = _staged("frequency_text", [(56, 84), (28, 56)])
    a["dosing_ranges"][0]["frequency"]["text"], a["dosing_ranges"][1]["frequency"]["text"] = "A", "B"
    b = copy.deepcopy(a)
    b["dosing_ranges"][0].update(dose_min=28, dose_max=56, frequency={"count": 1, "period": "P1W", "text": "C"})
    b["dosing_ranges"][1].update(dose_min=56, dose_max=84, frequency={"count": 1, "period": "P1W", "text": "D"})
    assert [(c.type, c.path, c.before, c.after) for c in diff.clinical_changes(a, b)] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min", 56, 28),
        ("dose_max_decreased", "/dosing_ranges/0/dose_max", 84, 56),
        ("dose_min_increased", "/dosing_ranges/1/dose_min", 28, 56),
        ("dose_max_increased", "/dosing_ranges/1/dose_max", 56, 84),
        ("frequency_text_changed", "/dosing_ranges/0/frequency/text", "A", "C"),
        ("frequency_text_changed", "/dosing_ranges/1/frequency/text", "B", "D")]


@pytest.mark.parametrize("told_apart_by", sorted(REWORDED))
def test_stages_reworded_reordered_and_given_each_others_doses_are_paired_by_likeness(told_apart_by: str) -> None:
    """Both stages reworded (or each given a code more), their places swapped and their doses too: place
    and doses both point crosswise (the first range of b has the first range of a's doses), so only how
    alike the labels are (text likeness, the codes shared) pairs weeks 5-8 with weeks 5 to 8."""
    a, b = _reworded_swap(told_apart_by)
    b["dosing_ranges"].reverse()
    assert [(c.type, c.path, c.before, c.after) for c in diff.clinical_changes(a, b) if c.type.startswith("dose_")] == [
        ("dose_min_increased", "/dosing_ranges/0/dose_min", 28, 56),
        ("dose_max_increased", "/dosing_ranges/0/dose_max", 56, 84),
        ("dose_min_decreased", "/dosing_ranges/1/dose_min", 56, 28),
        ("dose_max_decreased", "/dosing_ranges/1/dose_max", 84, 56)]


def test_bounds_beyond_a_floats_range_are_paired_without_error() -> None:
    """A bound's move is counted in integers (so a pairing's total is exact); one beyond a float's range
    (1e-400 against 1e400 is an infinite log) counts as the farthest, not an OverflowError."""
    a = document()
    first = a["dosing_ranges"][0]
    a["dosing_ranges"] = [{**first, "dose_min": Decimal("1e-400"), "dose_max": Decimal("1e-400")},
                          {**first, "dose_min": 56, "dose_max": 84}]
    b = copy.deepcopy(a)
    b["dosing_ranges"] = [{**first, "dose_min": Decimal("1e400"), "dose_max": Decimal("1e400")},
                          {**first, "dose_min": 56, "dose_max": 90}]
    assert sorted((c.type, c.path) for c in diff.clinical_changes(a, b)) == [
        ("dose_max_increased", "/dosing_ranges/0/dose_max"), ("dose_max_increased", "/dosing_ranges/1/dose_max"),
        ("dose_min_increased", "/dosing_ranges/0/dose_min")]
