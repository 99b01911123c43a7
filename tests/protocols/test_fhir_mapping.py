"""protocols/fhir.py: protocol documents -> FHIR R4 dicts, checked by the fhir.resources validator.

Every curated catalog file (whatever is in protocols/catalog/ when the test runs, loaded through the
real ``flask protocols load`` command) and the factory payload must map to a MedicationKnowledge that
the R4B models accept; the clinical fields are then checked value by value.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.medicationknowledge import MedicationKnowledge
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.structuredefinition import StructureDefinition

from protocols import catalog, fhir, fhir_query, versioning
from protocols.fhir_query import InvalidSearch, parse_search
from tests.factories import protocol_payload

BASE = "https://protocols.example.org/fhir/R4"
DEA_NCI = {"CI": "C48672", "CII": "C48675", "CIII": "C48676", "CIV": "C48677", "CV": "C48679"}


def _document(payload: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A stored-document-shaped dict (what versioning serves) from a create payload."""
    doc = copy.deepcopy(payload or protocol_payload())
    doc.update({"version": 3, "status": "active", "effective_from": "2024-02-01T00:00:00Z",
                "recorded_at": "2024-01-15T08:30:00Z", "recorded_by": None, "request_id": None})
    doc.update(meta)
    return doc


def _guideline_dosages(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [dosage for guideline in resource["administrationGuidelines"] for group in guideline["dosage"]
            for dosage in group["dosage"]]


def _extensions(node: Any) -> list[dict[str, Any]]:
    """Every top-level extension object anywhere in a resource (not sub-extensions)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "extension":
                found.extend(value)
            else:
                found.extend(_extensions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_extensions(item))
    return found


def _ext_value(extensions: list[dict[str, Any]], name: str) -> list[Any]:
    url = fhir.extension_url(BASE, name)
    return [next(v for k, v in e.items() if k.startswith("value")) for e in extensions if e["url"] == url]


# --------------------------------------------------------------------------- the catalog


def test_every_curated_protocol_version_validates_as_r4_medication_knowledge(app, db):
    result = app.test_cli_runner().invoke(args=["protocols", "load"])
    assert result.exit_code == 0, result.output
    files = catalog.read_catalog()
    assert files, "protocols/catalog/ is empty"
    checked = 0
    for catalog_file in files:
        versions = versioning.list_versions(db, catalog_file.protocol_id, limit=100).items
        assert versions, catalog_file.protocol_id
        for stored in versions:
            if stored.status == "draft":
                with pytest.raises(ValueError):
                    fhir.to_medication_knowledge(stored.as_dict(), base_url=BASE)
                continue
            document = stored.as_dict()
            resource = fhir.to_medication_knowledge(document, base_url=BASE)
            MedicationKnowledge.model_validate(resource)  # raises on any structural error
            assert resource["id"] == catalog_file.protocol_id
            assert resource["meta"]["versionId"] == str(stored.version)
            drug = document["drug"]
            if drug.get("rxnorm_cui"):
                assert resource["code"]["coding"] == [{"system": fhir.RXNORM, "code": drug["rxnorm_cui"]}]
            assert len(resource["administrationGuidelines"]) == len(document["indications"])
            # each indication's ranges: those naming it, and those naming none (counted here, not by fhir's own rule)
            assert len(_guideline_dosages(resource)) == sum(
                1 for i in document["indications"] for r in document["dosing_ranges"]
                if "indications" not in r or i["code"] in r["indications"])
            sources = [e for e in resource["extension"] if e["url"] == fhir.extension_url(BASE, "source")]
            assert [next(p["valueUri"] for p in s["extension"] if p["url"] == "url") for s in sources] == [
                s["url"] for s in document["sources"]]
            checked += 1
    assert checked >= len(files)


# ------------------------------------------------------------------------ field by field


def test_factory_payload_maps_every_clinical_field():
    document = _document()
    resource = fhir.to_medication_knowledge(document, base_url=BASE)
    MedicationKnowledge.model_validate(resource)

    assert resource["resourceType"] == "MedicationKnowledge"
    # recorded 2024-01-15, in effect from 2024-02-01: published over FHIR when it took effect
    assert resource["meta"] == {"versionId": "3", "lastUpdated": "2024-02-01T00:00:00Z"}
    assert resource["status"] == "active"
    assert resource["code"] == {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                            "code": "2201625"}], "text": "esketamine"}
    assert resource["synonym"] == ["Spravato"]
    assert resource["intendedRoute"] == [{"coding": [{"system": "http://snomed.info/sct", "code": "46713006",
                                                      "display": "Nasal route"}], "text": "Nasal route"}]

    [guideline] = resource["administrationGuidelines"]
    assert guideline["indicationCodeableConcept"]["coding"] == [
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F33.2",
         "display": "Major depressive disorder, recurrent severe without psychotic features"}]
    assert _ext_value(guideline["extension"], "fda-approval-status") == ["approved"]
    [group] = guideline["dosage"]
    assert group["type"]["coding"] == [{"system": f"{BASE}/CodeSystem/dosing-phase", "code": "induction",
                                        "display": "Induction"}]
    [dosage] = group["dosage"]
    ucum = "http://unitsofmeasure.org"
    assert dosage["doseAndRate"] == [{"doseRange": {
        "low": {"value": 56, "unit": "mg", "system": ucum, "code": "mg"},
        "high": {"value": 84, "unit": "mg", "system": ucum, "code": "mg"}}}]
    assert dosage["maxDosePerPeriod"] == {
        "numerator": {"value": 84, "unit": "mg", "system": ucum, "code": "mg"},
        "denominator": {"value": 1, "unit": "day", "system": ucum, "code": "d"}}
    assert dosage["timing"] == {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"},
                                "code": {"text": "twice weekly"}}
    assert dosage["route"]["coding"][0]["code"] == "46713006"

    [regulatory] = resource["regulatory"]
    assert regulatory["regulatoryAuthority"]["display"] == "U.S. Food and Drug Administration"
    assert regulatory["schedule"] == [{"schedule": {
        "coding": [{"system": fhir.NCI_THESAURUS, "code": "C48676", "display": "CIII"}],
        "text": "DEA Schedule III (CIII)"}}]
    [approval] = _extensions(regulatory)
    assert approval["url"] == f"{BASE}/StructureDefinition/fda-approval"
    parts = {p["url"]: p for p in approval["extension"]}
    assert parts["status"]["valueCode"] == "approved"
    assert parts["applicationNumber"]["valueString"] == "NDA211243"
    assert parts["approvalDate"]["valueDate"] == "2019-03-05"
    assert parts["remsRequired"]["valueBoolean"] is True
    assert parts["boxedWarning"]["valueString"].startswith("Sedation")

    top = resource["extension"]
    assert _ext_value(top, "protocol-title") == [document["title"]]
    assert _ext_value(top, "protocol-status") == ["active"]
    assert _ext_value(top, "effective-from") == ["2024-02-01T00:00:00Z"]
    [source] = [e for e in top if e["url"] == f"{BASE}/StructureDefinition/source"]
    assert {p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in source["extension"]} == {
        "title": "Spravato prescribing information",
        "url": "https://www.accessdata.fda.gov/drugsatfda_docs/label/2019/211243s000lbl.pdf",
        "supports": "fda_approval"}


@pytest.mark.parametrize("schedule", sorted(DEA_NCI))
def test_dea_schedules_use_the_fda_spl_nci_codes(schedule):
    payload = protocol_payload()
    payload["drug"]["dea_schedule"] = schedule
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    assert resource["regulatory"][0]["schedule"][0]["schedule"]["coding"][0]["code"] == DEA_NCI[schedule]


def test_weight_based_ranges_are_said_by_the_ucum_per_kg_unit_only():
    payload = protocol_payload(
        routes=[{"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}],
        dosing_ranges=[{"route": "47625008", "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                        "unit": "mg/kg", "duration": "PT60S",
                        "max_per_period": {"value": 13, "unit": "mg/kg", "period": "P1D"}}])
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    low = dosage["doseAndRate"][0]["doseRange"]["low"]
    assert (low["value"], low["code"], low["system"]) == (1, "mg/kg", fhir.UCUM)
    assert dosage["doseAndRate"][0]["doseRange"]["high"]["value"] == 4.5
    assert dosage["maxDosePerPeriod"]["numerator"]["code"] == "mg/kg"
    assert dosage["timing"] == {"repeat": {"duration": 1, "durationUnit": "min"}}
    assert all("patientCharacteristics" not in g for g in resource["administrationGuidelines"])


def test_rate_units_become_rate_ranges_not_dose_ranges():
    payload = protocol_payload(
        routes=[{"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}],
        dosing_ranges=[{"route": "47625008", "phase": "infusion", "dose_min": 0.1, "dose_max": 0.5,
                        "unit": "mg/kg/h", "duration": "PT40M"}])
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    assert dosage["doseAndRate"] == [{"rateRange": {
        "low": fhir.quantity(0.1, "mg/kg/h"), "high": fhir.quantity(0.5, "mg/kg/h")}}]
    assert dosage["timing"]["repeat"] == {"duration": 40, "durationUnit": "min"}



def test_an_absolute_maximum_is_the_most_per_administration_or_said_in_the_text_for_a_rate():
    """A weight-based range capped for heavy patients: an amount cap is R4's maxDosePerAdministration; a
    rate has no element of its own in Dosage, so its cap is said in the text."""
    iv = [{"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}]
    amount = protocol_payload(routes=iv, dosing_ranges=[{
        "route": "47625008", "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg",
        "absolute_max": {"value": 500, "unit": "mg"}}])
    resource = fhir.to_medication_knowledge(_document(amount), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    assert dosage["maxDosePerAdministration"] == fhir.quantity(500, "mg") and "text" not in dosage
    rate = protocol_payload(routes=iv, dosing_ranges=[{
        "route": "47625008", "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h",
        "duration": "PT4H", "absolute_max": {"value": 25, "unit": "mg/h"}, "instructions": "Over 4 hours."}])
    resource = fhir.to_medication_knowledge(_document(rate), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    assert "maxDosePerAdministration" not in dosage
    assert dosage["text"] == "Over 4 hours. At most 25 mg/h whatever the weight."


def test_a_shortest_administration_time_is_said_in_the_text():
    """A push time ("over at least 60 seconds") holds whatever the dose; R4's Timing.repeat has a longest
    duration (durationMax) but no shortest one alone, so it is said in the text, after the instructions."""
    iv = [{"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}]
    pushed = protocol_payload(routes=iv, dosing_ranges=[{
        "route": "47625008", "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg",
        "duration": "PT60S", "duration_min": "PT60S", "instructions": "Administer slowly."}])
    resource = fhir.to_medication_knowledge(_document(pushed), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    assert dosage["text"] == "Administer slowly. Each dose given over at least 1 min."
    assert dosage["timing"]["repeat"] == {"duration": 1, "durationUnit": "min"}


@pytest.mark.parametrize(("period", "longest", "repeat"), [
    ("P1W", "P2W", {"period": 1, "periodMax": 2, "periodUnit": "wk"}),
    ("P1D", "P10D", {"period": 1, "periodMax": 10, "periodUnit": "d"}),
    ("P1W", "P10D", {"period": 7, "periodMax": 10, "periodUnit": "d"}),
    ("PT12H", "P1D", {"period": 12, "periodMax": 24, "periodUnit": "h"}),
])
def test_a_period_range_becomes_period_and_period_max_in_one_unit(period, longest, repeat):
    """FHIR's periodMax shares period's unit: "every 1 to 2 weeks" (Spravato from week 9) was 1 per 2
    weeks, half the label's most frequent dosing (found by a clinical review)."""
    payload = protocol_payload()
    payload["dosing_ranges"][0]["frequency"] = {"count": 1, "period": period, "period_max": longest}
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    [dosage] = _guideline_dosages(resource)
    assert dosage["timing"]["repeat"] == {"frequency": 1, **repeat}

def test_one_guideline_per_indication_each_with_all_phases():
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    payload = protocol_payload(
        indications=[{"system": icd, "code": "F33.2", "display": "Recurrent severe MDD"},
                     {"system": icd, "code": "F32.9", "display": "Major depressive disorder, single episode"}],
        dosing_ranges=[
            {"route": "46713006", "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg"},
            {"route": "46713006", "phase": "maintenance", "dose_min": 56, "dose_max": 84, "unit": "mg"},
            {"route": "46713006", "phase": "induction", "dose_min": 28, "dose_max": 28, "unit": "mg"}])
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    guidelines = resource["administrationGuidelines"]
    assert [g["indicationCodeableConcept"]["coding"][0]["code"] for g in guidelines] == ["F33.2", "F32.9"]
    for guideline in guidelines:
        assert [group["type"]["coding"][0]["code"] for group in guideline["dosage"]] == ["induction", "maintenance"]
        assert [len(group["dosage"]) for group in guideline["dosage"]] == [2, 1]


def _codes_and_timings(resource: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    return {g["indicationCodeableConcept"]["coding"][0]["code"]: [
        (group["type"]["coding"][0]["code"], dosage["timing"]["code"]["text"])
        for group in g.get("dosage", []) for dosage in group["dosage"]] for g in resource["administrationGuidelines"]}


def test_each_indication_holds_only_the_ranges_for_it():
    """Found by a clinical probe: every range went under every indication, so Spravato's MDSI code
    (R45.851, 84 mg twice weekly for 4 weeks) read the TRD maintenance schedules and the depression codes
    the MDSI regimen. A range naming its indications goes under those only; one without goes under all."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    nasal = {"route": "46713006", "dose_min": 56, "dose_max": 84, "unit": "mg"}
    payload = protocol_payload(
        indications=[{"system": icd, "code": "F33.9", "display": "MDD, recurrent"},
                     {"system": icd, "code": "R45.851", "display": "Suicidal ideations"}],
        dosing_ranges=[
            {**nasal, "phase": "induction", "frequency": {"count": 2, "period": "P1W", "text": "TRD weeks 1-4"},
             "indications": ["F33.9"]},
            {**nasal, "phase": "maintenance", "frequency": {"count": 1, "period": "P1W", "text": "TRD weeks 5-8"},
             "indications": ["F33.9"]},
            {**nasal, "phase": "induction", "frequency": {"count": 2, "period": "P1W", "text": "MDSI 4 weeks"},
             "indications": ["R45.851"]},
            {**nasal, "phase": "single", "frequency": {"count": 1, "period": "P1D", "text": "both"}}])
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    assert _codes_and_timings(resource) == {
        "F33.9": [("induction", "TRD weeks 1-4"), ("maintenance", "TRD weeks 5-8"), ("single", "both")],
        "R45.851": [("induction", "MDSI 4 weeks"), ("single", "both")]}


def test_an_indication_no_range_is_for_keeps_its_guideline_without_a_dosage():
    """Its guideline still says the medication is for it (and a search by indication finds it), with no
    regimen claimed for it: neither the other indications' ranges nor an empty list (R4: dosage 0..*)."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    payload = protocol_payload(
        indications=[{"system": icd, "code": "F33.9", "display": "MDD, recurrent"},
                     {"system": icd, "code": "R45.851", "display": "Suicidal ideations"}])
    payload["dosing_ranges"][0]["indications"] = ["F33.9"]
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    first, second = resource["administrationGuidelines"]
    assert len(first["dosage"]) == 1 and "dosage" not in second
    assert second["indicationCodeableConcept"]["coding"][0]["code"] == "R45.851"
    assert _ext_value(second["extension"], "fda-approval-status") == ["approved"]


def test_optional_facts_are_left_out_not_invented():
    payload = protocol_payload()
    payload["drug"] = {"name": "psilocybin", "rxnorm_cui": None, "brand_names": [], "dea_schedule": None}
    payload["fda_approval"] = {"status": "investigational", "application_number": None, "approval_date": None,
                               "approved_indication": None, "rems_required": False, "boxed_warning": None}
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    assert resource["code"] == {"text": "psilocybin"}
    assert "synonym" not in resource
    assert "schedule" not in resource["regulatory"][0]
    parts = resource["regulatory"][0]["extension"][0]["extension"]
    assert {p["url"] for p in parts} == {"status", "remsRequired"}
    assert _ext_value(resource["administrationGuidelines"][0]["extension"], "fda-approval-status") == [
        "investigational"]


def test_lifecycle_status_retired_is_inactive_and_drafts_are_never_mapped():
    retired = fhir.to_medication_knowledge(_document(status="retired"), base_url=BASE)
    MedicationKnowledge.model_validate(retired)
    assert retired["status"] == "inactive"
    assert _ext_value(retired["extension"], "protocol-status") == ["retired"]
    with pytest.raises(ValueError, match="draft"):
        fhir.to_medication_knowledge(_document(status="draft"), base_url=BASE)


def test_narrative_escapes_markup():
    resource = fhir.to_medication_knowledge(_document(protocol_payload(title="A <b>bold</b> & risky title")),
                                            base_url=BASE)
    MedicationKnowledge.model_validate(resource)
    assert "A &lt;b&gt;bold&lt;/b&gt; &amp; risky title" in resource["text"]["div"]


@pytest.mark.parametrize(("unit", "rate"), [
    ("mg", False), ("mg/kg", False), ("mL", False), ("ug", False),
    ("mg/h", True), ("mg/kg/h", True), ("ug/kg/min", True), ("mg/d", True), ("mg/kg/d", True),
])
def test_rate_units_are_recognised_by_their_time_denominator(unit, rate):
    assert fhir.is_rate_unit(unit) is rate


@pytest.mark.parametrize(("duration", "expected"), [
    ("P1W", (1, "wk")), ("P1D", (1, "d")), ("P2W", (2, "wk")), ("P14D", (2, "wk")), ("PT40M", (40, "min")),
    ("PT60S", (1, "min")), ("PT90S", (90, "s")), ("PT2H", (2, "h")), ("P1DT12H", (36, "h")),
])
def test_time_amounts_are_exact(duration, expected):
    assert fhir.time_amount(duration) == expected


# ------------------------------------------------------------------ definitions served


def test_every_emitted_extension_has_a_valid_structure_definition_with_matching_types():
    payload = protocol_payload(verification_notes=["approval day unverified"])
    resource = fhir.to_medication_knowledge(_document(payload), base_url=BASE)
    emitted = _extensions(resource)
    assert {e["url"] for e in emitted} == {fhir.extension_url(BASE, name) for name in fhir.EXTENSIONS}
    for ext in emitted:
        name = ext["url"].rsplit("/", 1)[1]
        definition = fhir.structure_definition(name, BASE)
        StructureDefinition.model_validate(definition)
        assert definition["url"] == ext["url"]
        elements = {e["id"]: e for e in definition["differential"]["element"]}
        if "extension" in ext:
            for part in ext["extension"]:
                slice_id = f"Extension.extension:{part['url']}"
                assert slice_id in elements, (name, part["url"])
                [value_key] = [k for k in part if k.startswith("value")]
                declared = elements[f"{slice_id}.value[x]"]["type"][0]["code"]
                assert value_key.lower() == f"value{declared}".lower()
        else:
            [value_key] = [k for k in ext if k.startswith("value")]
            assert value_key.lower() == "value" + elements["Extension.value[x]"]["type"][0]["code"].lower()


def test_code_systems_validate_and_cover_every_code_the_schema_allows():
    from schemas.clinical import DEA_SCHEDULES, FDA_STATUSES, PHASES

    assert set(fhir.DEA_SCHEDULES) == set(DEA_SCHEDULES)  # every schedule the wire accepts is mapped

    for name in fhir.CODE_SYSTEMS:
        CodeSystem.model_validate(fhir.code_system(name, BASE))
    phases = {c["code"] for c in fhir.code_system("dosing-phase", BASE)["concept"]}
    statuses = {c["code"] for c in fhir.code_system("fda-approval-status", BASE)["concept"]}
    assert phases == set(PHASES)
    assert statuses == set(FDA_STATUSES)


def test_operation_outcome_validates():
    outcome = fhir.operation_outcome([fhir.Issue("error", "not-found", "gone", ("MedicationKnowledge.id",))])
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["expression"] == ["MedicationKnowledge.id"]


# --------------------------------------------------------------------- search parsing


def test_search_parsing_applies_fhir_token_and_date_grammar():
    spec = parse_search([("code", f"{fhir.RXNORM}|6130,2201625"), ("code", f"{fhir.SNOMED}|123"),
                         ("_lastUpdated", "ge2024-01"), ("_lastUpdated", "lt2024-01-31T12:30+01:00"),
                         ("_count", "500"), ("status", "active")])
    assert spec.codes == [(frozenset({"6130", "2201625"}), False), (frozenset(), False)]
    assert spec.last_updated[0] == fhir_query.DateBound("ge", datetime(2024, 1, 1), datetime(2024, 2, 1))
    assert spec.last_updated[1] == fhir_query.DateBound("lt", datetime(2024, 1, 31, 11, 30),
                                                        datetime(2024, 1, 31, 11, 31))
    assert spec.count == fhir_query.MAX_COUNT
    assert spec.protocol_statuses == {"active"}
    assert ("_count", "100") in spec.applied


def test_search_parsing_collects_unsupported_and_rejects_malformed():
    spec = parse_search([("code:text", "ketamine"), ("_sort", "-_lastUpdated"), ("_lastUpdated", "ap2024")])
    assert [u.param for u in spec.unsupported] == ["code:text", "_sort", "_lastUpdated"]
    assert spec.applied == []
    for pairs, param in [([("_count", "-1")], "_count"), ([("_count", "1"), ("_count", "2")], "_count"),
                         ([("_lastUpdated", "yesterday")], "_lastUpdated"),
                         ([("_lastUpdated", "2024-02-30")], "_lastUpdated"),
                         ([("status", "retired")], "status"), ([("_cursor", "bogus")], "_cursor")]:
        with pytest.raises(InvalidSearch) as caught:
            parse_search(pairs)
        assert caught.value.details["param"] == param
