"""protocols.draft_orders without an app or a database: reading draft orders and prefetched weights.
(What the cards make of them, judged against stored protocols over HTTP: tests/api/test_cds_hooks.py.)"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

import pytest

from protocols import draft_orders
from protocols.errors import MalformedOrder

PATIENT = draft_orders.HookPatient("example")


def weight(value: object, unit: str = "kg", when: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "effectiveDateTime": when,
            "code": {"coding": [{"system": draft_orders.LOINC, "code": draft_orders.BODY_WEIGHT_LOINC}]},
            "subject": {"reference": "Patient/example"},
            "valueQuantity": {"value": value, "unit": unit, "code": unit}}


def test_a_malformed_order_names_its_path_without_any_http_in_sight():
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "MedicationRequest",
                                                                "status": "not-a-status"}}]}
    with pytest.raises(MalformedOrder) as raised:
        draft_orders.draft_medication_requests(bundle, "order-sign", [], PATIENT)
    (path,) = raised.value.details["errors"]
    assert path.startswith("context.draftOrders.entry.0.resource")
    with pytest.raises(MalformedOrder) as raised:
        draft_orders.draft_medication_requests({"resourceType": "Patient"}, "order-sign", [], PATIENT)
    assert raised.value.details["errors"] == {"context.draftOrders": ["must be a FHIR Bundle"]}


def test_the_newest_usable_weight_wins_in_kilograms():
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": [
        {"resource": weight(70, when="2026-01-01T10:00:00+09:00")},   # 01:00Z: older
        {"resource": weight(154, "[lb_av]", when="2026-01-01T05:00:00Z")},
        {"resource": weight(True)},                                    # not a weight of 1 kg
    ]}
    newest = draft_orders.prefetched_weight({"weight": bundle}, patient=PATIENT)
    assert isinstance(newest, draft_orders.Weight) and newest.kg == Fraction(154) * Fraction("0.45359237")
    assert newest.observed_at == datetime(2026, 1, 1, 5, 0)
    assert draft_orders.prefetched_weight({}, patient=PATIENT) == "no body weight was prefetched"
    assert (draft_orders.prefetched_weight({"weight": weight(0)}, patient=PATIENT)
            == "the prefetched observations hold no usable body weight")
    # The newest weight is implausible: none is used (an older one is no safer), and the card says why.
    bundle["entry"].append({"resource": weight(1000000, when="2026-02-01T00:00:00Z")})
    refused = draft_orders.prefetched_weight({"weight": bundle}, patient=PATIENT)
    assert isinstance(refused, draft_orders.Weight) and refused.kg == 1000000 and refused.usable_kg is None
    assert refused.refused is not None and refused.refused.startswith("body weight must be between 0.3 and 500 kg")
    assert newest.usable_kg == newest.kg and newest.refused is None
    with pytest.raises(MalformedOrder):
        draft_orders.prefetched_weight({"weight": ["not", "a", "resource"]}, patient=PATIENT)


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
    chosen = draft_orders.prefetched_weight({"weight": bundle}, patient=PATIENT, now=datetime(2026, 12, 1))
    assert isinstance(chosen, draft_orders.Weight)
    assert (chosen.kg, chosen.observed_at) == (Fraction(100), datetime(2026, 2, 1, 0, 10))


def test_an_observation_time_with_more_digits_than_microseconds_is_read_not_dated_unknown():
    """fhir_query.date_start reads FHIR's longer fractions (.NET writes seven) from the first stored
    microsecond they stand for; it used to give None, "date unknown" on the card."""
    from protocols import fhir_query

    assert fhir_query.date_start("2024-06-01T10:00:00.1234567Z") == datetime(2024, 6, 1, 10, 0, 0, 123457)
    assert fhir_query.date_start("2024-06-01T10:00:00.123456000+01:00") == datetime(2024, 6, 1, 9, 0, 0, 123456)
    assert fhir_query.date_start("2024-06-01T10:00:00.1234567891Z") is None  # past nine digits: not FHIR
