"""protocols.cds without an app or a database: reading draft orders and prefetched weights.
(The cards, judged against stored protocols over HTTP, are tested in tests/api/test_cds_hooks.py.)"""

from __future__ import annotations

from fractions import Fraction

import pytest

from protocols import cds
from protocols.errors import MalformedOrder


def weight(value: object, unit: str = "kg", when: str = "2026-01-01T00:00:00Z") -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final", "effectiveDateTime": when,
            "code": {"coding": [{"system": cds.LOINC, "code": cds.BODY_WEIGHT_LOINC}]},
            "valueQuantity": {"value": value, "unit": unit, "code": unit}}


def test_a_malformed_order_names_its_path_without_any_http_in_sight():
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "MedicationRequest",
                                                                "status": "not-a-status"}}]}
    with pytest.raises(MalformedOrder) as raised:
        cds.draft_medication_requests(bundle, "order-sign", [])
    (path,) = raised.value.details["errors"]
    assert path.startswith("context.draftOrders.entry.0.resource")
    with pytest.raises(MalformedOrder) as raised:
        cds.draft_medication_requests({"resourceType": "Patient"}, "order-sign", [])
    assert raised.value.details["errors"] == {"context.draftOrders": ["must be a FHIR Bundle"]}


def test_the_newest_usable_weight_wins_in_kilograms():
    bundle = {"resourceType": "Bundle", "entry": [
        {"resource": weight(70, when="2026-01-01T10:00:00+09:00")},   # 01:00Z: older
        {"resource": weight(154, "[lb_av]", when="2026-01-01T05:00:00Z")},
        {"resource": weight(True)},                                    # not a weight of 1 kg
    ]}
    assert cds.prefetched_weight({"weight": bundle}) == Fraction(154) * Fraction("0.45359237")
    assert cds.prefetched_weight({}) == "no body weight was prefetched"
    assert cds.prefetched_weight({"weight": weight(0)}) == "the prefetched observations hold no usable body weight"
    with pytest.raises(MalformedOrder):
        cds.prefetched_weight({"weight": ["not", "a", "resource"]})
