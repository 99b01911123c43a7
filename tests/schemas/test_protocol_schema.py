"""The wire schema on its own: what it accepts, what it drops, what it refuses, and how it reports."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from api.errors import flatten_errors
from protocols.record import CONTENT_FIELDS
from schemas.clinical import DoseRangeSchema, FdaApprovalSchema
from schemas.protocol import ProtocolCreateSchema, ProtocolSchema, split_payload
from tests.factories import protocol_payload


def test_server_managed_fields_are_dropped_not_rejected():
    payload = protocol_payload() | {"version": 7, "recorded_at": "2020-01-01T00:00:00Z",
                                     "recorded_by": "someone", "request_id": "abc", "etag": '"7-x"'}
    loaded = ProtocolCreateSchema().load(payload)
    assert not {"version", "recorded_at", "recorded_by", "request_id", "etag"} & set(loaded)


def test_unknown_fields_are_rejected_at_every_level():
    payload = protocol_payload()
    payload["extra"] = 1
    payload["drug"]["extra"] = 1
    payload["dosing_ranges"][0]["frequency"]["extra"] = 1
    with pytest.raises(ValidationError) as info:
        ProtocolCreateSchema().load(payload)
    assert {"extra", "drug.extra", "dosing_ranges.0.frequency.extra"} <= set(flatten_errors(info.value.messages))


def test_numbers_load_as_exact_decimals_and_times_as_naive_utc():
    payload = protocol_payload(effective_from="2021-01-01T02:00:00+02:00")
    payload["dosing_ranges"][0].update(dose_min=Decimal("0.35"), dose_max=Decimal("84.0000001"))
    loaded = ProtocolCreateSchema().load(payload)
    dose = loaded["dosing_ranges"][0]
    assert dose["dose_min"] == Decimal("0.35") and dose["dose_max"] == Decimal("84.0000001")
    assert loaded["effective_from"] == datetime(2021, 1, 1, 0, 0, 0)


def test_defaults_make_every_content_field_present():
    payload = protocol_payload()
    del payload["verification_notes"], payload["status"], payload["change_note"]
    meta, content = split_payload(ProtocolCreateSchema().load(payload))
    assert meta["status"] == "active" and meta["effective_from"] is None and meta["change_note"] is None
    assert set(content) == set(CONTENT_FIELDS)


def test_put_schema_does_not_require_an_id():
    payload = protocol_payload()
    del payload["id"]
    assert "id" not in ProtocolSchema().load(payload)
    with pytest.raises(ValidationError) as info:
        ProtocolCreateSchema().load(payload)
    assert "id" in info.value.messages


@pytest.mark.parametrize(("low", "high", "ok"), [(56, 84, True), (84, 84, True), (84.5, 84, False)])
def test_dose_range_order(low, high, ok):
    dose = {"route": "46713006", "phase": "induction", "dose_min": Decimal(str(low)),
            "dose_max": Decimal(str(high)), "unit": "mg"}
    if ok:
        assert DoseRangeSchema().load(dose)["dose_max"] == Decimal(str(high))
    else:
        with pytest.raises(ValidationError) as info:
            DoseRangeSchema().load(dose)
        assert "dose_max" in info.value.messages


@pytest.mark.parametrize(("approval", "bad_fields"), [
    ({"status": "approved"}, {"application_number", "approval_date"}),
    ({"status": "investigational", "application_number": "NDA123456"}, {"application_number"}),
    ({"status": "off_label"}, set()),
    ({"status": "not_approved"}, set()),
])
def test_fda_approval_rules(approval, bad_fields):
    try:
        FdaApprovalSchema().load(approval)
        errors: set[str] = set()
    except ValidationError as exc:
        errors = set(exc.messages)
    assert errors == bad_fields


@pytest.mark.parametrize("value", ["yes", "on", "t", "TRUE", "true", 1, 0, "0", "off", 0.0, None])
def test_rems_required_is_a_json_boolean_only(value):
    with pytest.raises(ValidationError) as info:
        FdaApprovalSchema().load({"status": "off_label", "rems_required": value})
    assert "rems_required" in info.value.messages
    for boolean in (True, False):
        assert FdaApprovalSchema().load({"status": "off_label", "rems_required": boolean})["rems_required"] is boolean


def test_sources_supports_must_name_fields_of_the_record():
    payload = protocol_payload()
    payload["sources"][0]["supports"] = ["dosing_ranges.0.dose_max", "fda_approval.approval_date"]
    ProtocolCreateSchema().load(payload)
    # Each refused alone (a review: with both in one list, "password" alone made the error asserted): a
    # field the record does not have, and an index past the end of a list it has
    for refused in ("password", f"dosing_ranges.{len(payload['dosing_ranges'])}"):
        payload["sources"][0]["supports"] = [refused]
        with pytest.raises(ValidationError) as info:
            ProtocolCreateSchema().load(payload)
        assert "sources.0.supports" in flatten_errors(info.value.messages), refused


def test_a_frequency_may_span_a_range_of_periods_and_is_stored_unchanged_without_one():
    """Spravato from week 9: every 2 weeks or once weekly = 1 per P1W to P2W (FHIR periodMax). A range
    without period_max loads without the key, so records written before it existed hash the same."""
    payload = protocol_payload()
    payload["dosing_ranges"][0]["frequency"] = {"count": 1, "period": "P1W", "period_max": "P2W"}
    loaded = ProtocolCreateSchema().load(payload)
    assert loaded["dosing_ranges"][0]["frequency"] == {"count": 1, "period": "P1W", "period_max": "P2W", "text": None}
    payload["dosing_ranges"][0]["frequency"] = {"count": 1, "period": "P1W"}
    assert "period_max" not in ProtocolCreateSchema().load(payload)["dosing_ranges"][0]["frequency"]
    for longest in ("P1W", "P7D", "P6D", None, "2 weeks"):
        payload["dosing_ranges"][0]["frequency"] = {"count": 1, "period": "P1W", "period_max": longest}
        with pytest.raises(ValidationError) as info:
            ProtocolCreateSchema().load(payload)
        assert list(flatten_errors(info.value.messages)) == ["dosing_ranges.0.frequency.period_max"], longest


@pytest.mark.parametrize(("unit", "duration", "shortest", "error"), [
    ("mg/kg", "PT60S", "PT60S", None),
    ("mg/kg", None, "PT60S", None),
    ("mg", "PT4M", "PT1M", None),
    ("mg/kg", "PT60S", "PT2M", "is longer than the range's duration (PT60S)"),
    ("mg/kg/h", "PT4H", "PT1H", "a range of rates is paced by its rate"),
    ("mg/kg", None, "PT0S", "longer than zero"),
    ("mg/kg", None, "PT5.5S", "not a duration this service reads"),
])
def test_a_shortest_administration_time_belongs_to_a_range_of_amounts(unit, duration, shortest, error):
    """A label's push time ("administer slowly over 60 seconds") holds for every dose of a range of amounts;
    a range of rates is paced by its rate, and a shortest time longer than the range's own duration leaves
    no dose that could be given as the range says. A range without it loads without the key, so records
    written before it hash the same."""
    dose_range = {"route": "47625008", "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": unit,
                  "duration": duration, "duration_min": shortest}
    if error is None:
        assert DoseRangeSchema().load(dose_range)["duration_min"] == shortest
    else:
        with pytest.raises(ValidationError) as info:
            DoseRangeSchema().load(dose_range)
        assert error in str(info.value.messages)
        assert list(flatten_errors(info.value.messages)) == ["duration_min"], info.value.messages
    del dose_range["duration_min"]
    assert "duration_min" not in DoseRangeSchema().load(dose_range)


@pytest.mark.parametrize(("unit", "ceiling", "error"), [
    ("mg/kg/h", {"value": 25, "unit": "mg/h"}, None),
    ("mg/kg", {"value": 0.5, "unit": "g"}, None),
    ("mg", {"value": 500, "unit": "mg"}, "only a weight-based range"),
    ("mg/kg/h", {"value": 25, "unit": "mg"}, "is not 'mg/kg/h' without /kg"),
    ("mg/kg/h", {"value": 25, "unit": "mg/kg/h"}, "is not 'mg/kg/h' without /kg"),
    ("mg/kg", {"value": 25, "unit": "mL"}, "is not 'mg/kg' without /kg"),
    # a unit slip: 25 ug/h is below 0.35 mg/kg/h even for a 0.3 kg patient (0.105 mg/h)
    ("mg/kg/h", {"value": 25, "unit": "ug/h"}, "below the range's minimum (0.35 mg/kg/h) even for a 0.3 kg patient"),
    ("mg/kg/h", {"value": 105, "unit": "ug/h"}, None),  # exactly the lightest patient's minimum
])
def test_an_absolute_maximum_caps_a_weight_based_range_in_its_unit_without_kg(unit, ceiling, error):
    """0.35 mg/kg/h not exceeding 25 mg/h (the CRPS trial's cap): the cap is the range's own unit without
    /kg. A range that is not weight-based has nothing to cap, and another kind of dose is compared with
    nothing. A range without it loads without the key, so records written before it hash the same."""
    dose_range = {"route": "47625008", "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": unit,
                  "absolute_max": ceiling}
    if error is None:
        assert DoseRangeSchema().load(dose_range)["absolute_max"]["value"] == Decimal(str(ceiling["value"]))
    else:
        with pytest.raises(ValidationError) as info:
            DoseRangeSchema().load(dose_range)
        assert error in str(info.value.messages)
        assert all(path.startswith("absolute_max") for path in flatten_errors(info.value.messages)), info.value.messages
    del dose_range["absolute_max"]
    assert "absolute_max" not in DoseRangeSchema().load(dose_range)


def _two_indications() -> dict:
    """A record with a depression code and the MDSI code, and a range for each plus one for both."""
    payload = protocol_payload()
    payload["indications"].append({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R45.851",
                                   "display": "Suicidal ideations"})
    mdsi = {**payload["dosing_ranges"][0], "frequency": {"count": 2, "period": "P1W", "text": "twice weekly, 4 weeks"}}
    trd = payload["dosing_ranges"][0]
    payload["dosing_ranges"] = [{**trd, "indications": ["F33.2"]}, {**mdsi, "indications": ["R45.851"]},
                                {**trd, "phase": "maintenance"}]
    return payload


def test_a_range_may_name_the_indications_it_is_for_and_without_them_is_for_every_one():
    """Found by a clinical probe: FHIR gave Spravato's MDSI code the TRD maintenance schedules, the record
    having no link from a range to its indication. A range may list codes of the record's indications;
    a range without the field loads without the key, so records written before it hash the same."""
    loaded = ProtocolCreateSchema().load(_two_indications())
    assert [r.get("indications") for r in loaded["dosing_ranges"]] == [["F33.2"], ["R45.851"], None]
    assert "indications" not in loaded["dosing_ranges"][2]
    assert "indications" not in ProtocolCreateSchema().load(protocol_payload())["dosing_ranges"][0]


@pytest.mark.parametrize(("codes", "path", "error"), [
    (["F33.2", "F33.9"], "dosing_ranges.1.indications.1", "'F33.9' is not the code of one of the record's"),
    (["f33.2"], "dosing_ranges.1.indications.0", "'f33.2' is not the code"),
    ([], "dosing_ranges.1.indications", "Length must be between 1 and 50"),
    (["R45.851", "R45.851"], "dosing_ranges.1.indications", "duplicate indication codes: R45.851"),
    ("R45.851", "dosing_ranges.1.indications", "Not a valid list"),
    ([""], "dosing_ranges.1.indications.0", "Length must be between 1 and 40"),
])
def test_a_range_names_only_codes_of_the_record_at_least_one_and_none_twice(codes, path, error):
    payload = _two_indications()
    payload["dosing_ranges"][1]["indications"] = codes
    with pytest.raises(ValidationError) as info:
        ProtocolCreateSchema().load(payload)
    flat = flatten_errors(info.value.messages)
    assert list(flat) == [path], flat
    assert error in " ".join(flat[path])


def test_a_range_indications_error_keeps_the_route_error_beside_it():
    payload = _two_indications()
    payload["dosing_ranges"][0].update(route="47625008", indications=["F99"])
    with pytest.raises(ValidationError) as info:
        ProtocolCreateSchema().load(payload)
    assert set(flatten_errors(info.value.messages)) == {"dosing_ranges.0.route", "dosing_ranges.0.indications.0"}


def test_a_range_may_not_carry_unknown_fields_beside_its_indications():
    payload = _two_indications()
    payload["dosing_ranges"][0]["indication"] = "F33.2"
    with pytest.raises(ValidationError) as info:
        ProtocolCreateSchema().load(payload)
    assert list(flatten_errors(info.value.messages)) == ["dosing_ranges.0.indication"]
