"""Terminology: route, indication, RxNorm and UCUM checks, and each rejection through POST /v1/protocols."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from protocols import terminology, units
from tests.factories import ICD10CM, SNOMED, protocol_payload

URL = re.compile(r"^https?://\S+$")


# ------------------------------------------------------------------------------ bundled data


def test_every_bundled_code_has_a_source_url():
    for route in terminology.ROUTES.values():
        assert route.sources and all(URL.match(s) for s in route.sources)
    for indication in terminology.INDICATIONS.values():
        assert URL.match(indication.source), indication
    for rxnorm in terminology.RXNORM_CONCEPTS.values():
        assert URL.match(rxnorm.source), rxnorm


def test_bundled_codes_are_well_formed():
    for code, route in terminology.ROUTES.items():
        assert terminology.snomed_check_digit_ok(code), code
        assert route.spl_code and re.match(r"^C[0-9]+$", route.spl_code)
    for (system, code), indication in terminology.INDICATIONS.items():
        assert terminology.is_well_formed_indication(system, code), code
        if system == ICD10CM:
            assert indication.category == code[:3]
    for rxcui in terminology.RXNORM_CONCEPTS:
        assert terminology.RXNORM_PATTERN.match(rxcui)


def test_icd10cm_list_holds_the_catalog_categories():
    codes = {code for system, code in terminology.INDICATIONS if system == ICD10CM}
    assert {"F32", "F33", "F53", "F53.0", "G90.5", "G90.50", "G89", "R45.851"} <= codes


def test_an_unspecified_code_covers_exactly_the_listed_codes_of_its_disorder():
    """``covers`` is curated (protocols/search.py ``treats``), so it is checked against the titles: an
    unspecified code "<disorder>, unspecified" covers every listed code of its category titled
    "<disorder>..." and no other (F32.9 covers F32.0-F32.5, not F32.81 PMDD or F32.A); its source is
    a URL; a code that is not "unspecified" covers nothing."""
    icd10 = {code: concept for (system, code), concept in terminology.INDICATIONS.items() if system == ICD10CM}
    covering = {code: concept for code, concept in icd10.items() if concept.covers}
    assert set(covering) == {"F32.9", "F33.9", "G90.50"}
    for code, concept in icd10.items():
        if not concept.display.endswith(", unspecified"):
            assert not concept.covers, code
    for code, concept in covering.items():
        assert concept.covers_source is not None and URL.match(concept.covers_source), code
        stem = re.compile(re.escape(concept.display.removesuffix(", unspecified")) + r"\b")
        for other, listed in icd10.items():
            if listed.category != concept.category or other in (code, listed.category):
                continue  # the category heading (F33 "Major depressive disorder, recurrent") also files F33.8
            named = bool(stem.match(listed.display))
            assert other.startswith(concept.covers) is named, (code, other, listed.display)
        assert terminology.covered_codes(ICD10CM, code) == concept.covers
    assert terminology.covered_codes(ICD10CM, "F32.2") == () and terminology.covered_codes(SNOMED, "F32.9") == ()


def test_the_catalog_rxcuis_are_in_the_bundled_table():
    from protocols import catalog

    used = {entry["drug"]["rxnorm_cui"] for f in catalog.read_catalog() for entry in f.entries}
    assert used - {None} <= set(terminology.RXNORM_CONCEPTS)


# ------------------------------------------------------------------------------ unit checks


def test_route_checks():
    assert terminology.check_route("46713006", "Nasal route (qualifier value)") == {}
    assert "code" in terminology.check_route("46713007", "Nasal route")
    assert "display" in terminology.check_route("46713006", "Oral route")


@pytest.mark.parametrize(("system", "code", "display", "field"), [
    (ICD10CM, "F33.2", "Major depressive disorder, recurrent severe without psychotic features", None),
    (ICD10CM, "F53.0", "postpartum  depression", None),
    (SNOMED, "58703003", "Postpartum depression (disorder)", None),
    (ICD10CM, "F3.32", "x", "code"),
    (ICD10CM, "F41.1", "Generalized anxiety disorder", "code"),
    (ICD10CM, "F53.0", "Postpartum psychosis", "display"),
    (SNOMED, "370143001", "Major depressive disorder", "code"),
    (SNOMED, "284009009", "Route of administration value", "code"),
])
def test_indication_checks(system, code, display, field):
    errors = terminology.check_indication_coding(system, code, display)
    assert (next(iter(errors)) if errors else None) == field


def test_verhoeff_check_digit_catches_single_digit_typos():
    assert terminology.snomed_check_digit_ok("370143000")
    for index in range(9):
        digits = list("370143000")
        digits[index] = str((int(digits[index]) + 1) % 10)
        assert not terminology.snomed_check_digit_ok("".join(digits))


@pytest.mark.parametrize("unit", [*units.DOSE_UNITS, "g/kg", "ng/kg/min", "mg/d", "ug/kg/h", "L"])
def test_accepted_units_pass_the_full_ucum_check(unit):
    assert units.check_ucum_dose_unit(unit) is None


@pytest.mark.parametrize(("unit", "reason"), [
    ("mcg", "not a valid UCUM unit (did you mean 'ug'?)"),
    ("mg/kg/banana", "not a valid UCUM unit"),
    ("{tbl}", "names no unit"),
    ("mg/mL", "neither per kg body weight nor per unit of time"),
    ("mg/g", "per kilogram of body weight"),
    ("m", "is [length]"),
    ("%", "is dimensionless"),
    ("mL/h", "a volume dose is a plain volume"),
    ("mg/kg/mo", "variable"),
    ("mg/kg.h", "successive '/' parts"),
    ("mg/kg/h/min", "amount[/kg][/time]"),
])
def test_rejected_units_say_why(unit, reason):
    message = units.check_dose_unit(unit)
    assert message is not None and reason in message


def test_weight_based_detection():
    assert units.is_weight_based("mg/kg") and units.is_weight_based("ug/kg/min")
    assert not units.is_weight_based("mg") and not units.is_weight_based("mg/h")
    assert units.describe("mg/kg/h") == {"kind": "mass", "weight_based": True, "rate": True, "per": "h"}


# ------------------------------------------------------------------------ rejections over HTTP


def _with(path: str, value):
    payload = protocol_payload()
    node: Any = payload
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return payload


REJECTIONS = [
    ("routes.0.code", "12345678", "routes.0.code"),
    ("routes.0.display", "Intravenous route", "routes.0.display"),
    ("routes.0.system", "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "routes.0.system"),
    ("indications.0.code", "F3.32", "indications.0.code"),
    ("indications.0.code", "F41.1", "indications.0.code"),
    ("indications.0.display", "Depression", "indications.0.display"),
    ("indications.0", {"system": SNOMED, "code": "370143001", "display": "Major depressive disorder"},
     "indications.0.code"),
    ("indications.0.system", "http://hl7.org/fhir/sid/icd-10", "indications.0.system"),
    ("drug.rxnorm_cui", "RX123", "drug.rxnorm_cui"),
    ("dosing_ranges.0.unit", "mcg", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.unit", "mg/kg/banana", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.unit", "mg/mL", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.unit", "mL/h", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.max_per_period.unit", "%", "dosing_ranges.0.max_per_period.unit"),
    ("dosing_ranges.0.route", "26643006", "dosing_ranges.0.route"),
]


@pytest.mark.parametrize(("path", "value", "error_path"), REJECTIONS, ids=[f"{p}={v}" for p, v, _ in REJECTIONS])
def test_terminology_rejection_names_the_field(client, path, value, error_path):
    response = client.post("/v1/protocols", json=_with(path, value))
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert error_path in body["errors"], body["errors"]
    # a changed route code also leaves the dose's route dangling; nothing else may be reported
    assert set(body["errors"]) - ({"dosing_ranges.0.route"} - {error_path}) == {error_path}


def test_unit_rejection_message_reaches_the_client(client):
    body = client.post("/v1/protocols", json=_with("dosing_ranges.0.unit", "mcg")).get_json()
    assert "did you mean 'ug'" in json.dumps(body["errors"]["dosing_ranges.0.unit"])


@pytest.mark.parametrize("unit", ["mg/kg/h", "ug/kg/min", "ng/kg/min", "mL"])
def test_valid_ucum_dose_units_are_stored(client, unit):
    payload = _with("dosing_ranges.0.unit", unit)
    payload["dosing_ranges"][0]["max_per_period"] = None  # a maximum must be the same kind of amount
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["dosing_ranges"][0]["unit"] == unit


def test_snomed_indication_alternate_is_accepted(client):
    payload = protocol_payload(indications=[
        {"system": ICD10CM, "code": "F53.0", "display": "Postpartum depression"},
        {"system": SNOMED, "code": "58703003", "display": "Postpartum depression"},
    ])
    assert client.post("/v1/protocols", json=payload).status_code == 201


@pytest.mark.parametrize(("unit", "reason"), [
    ("Mg", "'Mg' is not a mass doses are written in; use g, mg, ug, ng"),
    ("kg", "'kg' is not a mass doses are written in"),
    ("kg/kg", "'kg' is not a mass doses are written in"),
    ("cg", "'cg' is not a mass"), ("dg/kg/h", "'dg' is not a mass"), ("[lb_av]", "'[lb_av]' is not a mass"),
    ("[gr]", "'[gr]' is not a mass"), ("ML", "'ML' is not a volume doses are written in; use mL, L"),
    ("mg{tbl}", "annotations in braces are not part of a dose unit (the check would read 'mg'"),
    ("mg{total}/kg", "annotations in braces"),
])
def test_amounts_one_slip_from_a_dose_unit_and_annotations_are_refused(unit, reason):
    """Found by an adversarial probe: a range of "1-2 Mg" (megagrams, 10^9 mg) was stored and judged
    1.5 mg below_min, and "mg{tbl}" was stored although the pick list's rules say annotations are
    refused. Doses are written in g, mg, ug or ng, or in mL or L."""
    problem = units.check_dose_unit(unit)
    assert problem is not None and reason in problem, problem


def test_the_nci_thesaurus_has_one_uri_and_it_is_hl7_terminologys():
    """Found by a clinical-data review: the route pick list served the NCI Thesaurus as
    ``http://ncithesaurus-stage.nci.nih.gov`` while the FHIR face coded DEA schedules with HL7
    Terminology's preferred URI (changed in 2022), so one code system had two URIs."""
    from protocols import fhir

    tho = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
    assert terminology.NCI_THESAURUS == fhir.NCI_THESAURUS == tho
    assert terminology._load("routes.json")["alternate_system"] == tho
