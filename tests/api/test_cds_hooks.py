"""CDS Hooks 2.0: discovery and the protocol-dose-check service, with realistic hook requests.

Request bodies follow the spec's order-select / order-sign examples, adapted to ketamine and
esketamine orders. Every MedicationRequest sent is first validated as FHIR with fhir.resources,
so the service is exercised with resources a real EHR could send.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from markdown_it import MarkdownIt

from protocols import cds, dosing, draft_orders, search, terminology
from protocols.timeutil import format_rfc3339, utcnow
from tests.factories import protocol_payload

RXNORM, SNOMED, UCUM, LOINC = terminology.RXNORM, terminology.SNOMED, terminology.UCUM, "http://loinc.org"
NASAL, IV, ORAL = "46713006", "47625008", "26643006"
ROUTE_DISPLAY = {NASAL: "Nasal route", IV: "Intravenous route", ORAL: "Oral route"}
KETAMINE = [{"system": RXNORM, "code": "238082", "display": "ketamine 10 MG/ML Injectable Solution"},
            {"system": RXNORM, "code": "6130", "display": "ketamine"}]
ESKETAMINE = [{"system": RXNORM, "code": "2201625", "display": "esketamine Nasal Spray [Spravato]"}]
MIDAZOLAM = [{"system": RXNORM, "code": "6960", "display": "midazolam"}]


# ------------------------------------------------------------------------------ builders


def medication_request(order_id: str, codings: list[dict[str, str]], route: str, *,
                       dose: tuple[Any, str] | None = None, dose_range: tuple[Any, Any, str] | None = None,
                       rate: tuple[Any, str] | None = None, frequency: tuple[int, Any, str] | None = None,
                       reason: tuple[str, str] | None = None) -> dict[str, Any]:
    """A draft MedicationRequest as an EHR sends it in context.draftOrders (validated as FHIR)."""
    dose_and_rate: dict[str, Any] = {"type": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/dose-rate-type", "code": "ordered", "display": "Ordered"}]}}
    if dose is not None:
        dose_and_rate["doseQuantity"] = {"value": dose[0], "unit": dose[1], "system": UCUM, "code": dose[1]}
    if dose_range is not None:
        low, high, unit = dose_range
        dose_and_rate["doseRange"] = {"low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                                      "high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}
    if rate is not None:
        dose_and_rate["rateQuantity"] = {"value": rate[0], "unit": rate[1], "system": UCUM, "code": rate[1]}
    dosage: dict[str, Any] = {
        "text": "as ordered",
        "route": {"coding": [{"system": SNOMED, "code": route, "display": ROUTE_DISPLAY.get(route, "route")}]},
        "doseAndRate": [dose_and_rate],
    }
    if frequency is not None:
        dosage["timing"] = {"repeat": {"frequency": frequency[0], "period": frequency[1], "periodUnit": frequency[2]}}
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": order_id, "status": "draft", "intent": "order",
        "medicationCodeableConcept": {"coding": codings, "text": codings[-1]["display"]},
        "subject": {"reference": "Patient/example"},
        "encounter": {"reference": "Encounter/89284"},
        "authoredOn": "2026-11-30", "requester": {"reference": "Practitioner/example"},
        "dosageInstruction": [dosage],
    }
    if reason is not None:
        resource["reasonCode"] = [{"coding": [{"system": reason[0], "code": reason[1]}]}]
    MedicationRequest.model_validate(resource)  # the test body itself must be valid FHIR
    return resource


#: When the fixtures' weights were observed: yesterday, so that they stay current (draft_orders.WEIGHT_MAX_AGE).
RECENT = format_rfc3339((utcnow() - timedelta(days=1)).replace(microsecond=0))


def days_ago(days: int) -> str:
    """The UTC date ``days`` before today, as FHIR writes a date."""
    return (utcnow() - timedelta(days=days)).date().isoformat()


def weight_bundle(value: Any, unit: str = "kg", when: str = RECENT) -> dict[str, Any]:
    observation = weight_observation(value, unit, when)
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 1,
              "entry": [{"fullUrl": "http://fhir.example.org/Observation/w1", "resource": observation}]}
    Bundle.model_validate(bundle)
    return bundle


def weight_observation(value: Any, unit: str = "kg", when: str = RECENT,
                       status: str = "final") -> dict[str, Any]:
    observation = {
        "resourceType": "Observation", "id": f"w-{uuid.uuid4().hex[:6]}", "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": "Patient/example"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    Observation.model_validate(observation)
    return observation


def hook_request(orders: list[dict[str, Any]], *, hook: str = "order-sign", weight: Any = None,
                 selections: list[str] | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "userId": "PractitionerRole/123", "patientId": "example", "encounterId": "89284",
        "draftOrders": {"resourceType": "Bundle", "type": "collection",
                        "entry": [{"resource": order} for order in orders]},
    }
    if selections is not None:
        context["selections"] = selections
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()), "fhirServer": "http://fhir.example.org", "hook": hook,
        "fhirAuthorization": {"access_token": "some-opaque-fhir-access-token", "token_type": "Bearer",
                              "expires_in": 300, "scope": "user/Patient.read user/Observation.read",
                              "subject": "cds-service4"},
        "context": context,
    }
    Bundle.model_validate(context["draftOrders"])
    if weight is not None:
        body["prefetch"] = {"weight": weight}
    return body


def call(client: Any, body: Any, service: str = "protocol-dose-check") -> Any:
    return client.post(f"/cds-services/{service}", data=json.dumps(body), content_type="application/json")


def cards(client: Any, body: Any, service: str = "protocol-dose-check") -> list[dict[str, Any]]:
    response = call(client, body, service)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert set(result) == {"cards"}
    for card in result["cards"]:
        assert card["indicator"] in ("info", "warning", "critical")
        assert len(card["summary"].encode("utf-16-le")) // 2 < 140  # CDS Hooks: "<140-character"
        assert card["source"]["label"] and card["uuid"]
    return list(result["cards"])


def cards_alone(client: Any, orders: list[dict[str, Any]], service: str = "protocol-dose-check",
                **kwargs: Any) -> list[dict[str, Any]]:
    """The cards of each order sent in a hook call of its own, in order: two orders of one protocol in
    one call are each "partly checked" (their sum is not added up), which is not what most tests here
    are about."""
    return [card for order in orders for card in cards(client, hook_request([order], **kwargs), service)]


def create(client: Any, **overrides: Any) -> dict[str, Any]:
    payload = protocol_payload(**overrides)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    return payload


def ketamine_protocol(client: Any, dose_min: Any = 1, dose_max: Any = 4.5, unit: str = "mg/kg",
                      indication: tuple[str, str, str] = (SNOMED, "399097000",
                                                          "Administration of anesthesia (procedure)"),
                      **overrides: Any) -> dict[str, Any]:
    return create(client, **{
        "drug": {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": ["Ketalar"], "dea_schedule": "CIII"},
        "indications": [{"system": indication[0], "code": indication[1], "display": indication[2]}],
        "routes": [{"system": SNOMED, "code": IV, "display": "Intravenous route"}],
        "dosing_ranges": [{"route": IV, "phase": "induction", "dose_min": dose_min, "dose_max": dose_max,
                           "unit": unit}],
        **overrides})


# ----------------------------------------------------------------------------- discovery


def test_discovery_lists_the_service_for_both_order_hooks(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    assert {s["hook"] for s in services} == {"order-select", "order-sign"}
    assert len({s["id"] for s in services}) == len(services)
    by_id = {s["id"]: s for s in services}
    assert by_id["protocol-dose-check"]["hook"] == "order-sign"
    for service in services:
        assert service["title"] and service["description"]
        (template,) = service["prefetch"].values()
        assert template.startswith("Observation?patient={{context.patientId}}")
        assert "http://loinc.org|29463-7" in template


# ------------------------------------------------------------------------------- verdicts


def test_ketamine_weight_based_cards(client):
    protocol = ketamine_protocol(client)
    for dose, indicator, verdict in ((140, "info", "within_range"), (70, "info", "within_range"),
                                     (315, "info", "within_range"), (315.1, "critical", "above_max"),
                                     (69.9, "warning", "below_min")):
        order = medication_request("ket-1", KETAMINE, IV, dose=(dose, "mg"))
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        assert card["indicator"] == indicator, dose
        assert f"**induction**: {verdict}" in card["detail"]
        assert "1\u20134.5 mg/kg \u00d7 70 kg = 70\u2013315 mg" in card["detail"]
        assert protocol["id"] in card["source"]["label"] and "version 1" in card["source"]["label"]
        assert card["source"]["url"].endswith(f"/v1/protocols/{protocol['id']}/versions/1")
        assert card["source"]["topic"]["code"] == f"{protocol['id']}/1"
        assert "applies if the order is for" not in card["detail"]  # the only protocol, no reason given
    for_depression = medication_request("ket-2", KETAMINE, IV, dose=(140, "mg"),
                                        reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2"))
    (card,) = cards(client, hook_request([for_depression], weight=weight_bundle(70)))
    assert ("None of the order's indications (F33.2) is listed by the one protocol in effect for this medication "
            "and route; the order was checked against it anyway. This card applies if the order is for: "
            "Administration of anesthesia (procedure) (399097000).") in card["detail"]


def test_protocol_text_in_a_card_is_shown_as_text_never_as_markup(client):
    """A card's detail is markdown (CDS Hooks); a protocol's title and instructions are data. A title
    made of a link and an image showed the prescriber "Approved dose: 500 mg" linking to another site
    and fetched its image (adversarial probe)."""
    title = "Ketamine** ![x](https://evil.example/t.png) [Approved dose: 500 mg](https://evil.example) **"
    instructions = "<script>alert(1)</script>\n# Heading\n- [ ] give 500 mg\n1. `code` &#x200B; ~~struck~~ _em_"
    ketamine_protocol(client, title=title,
                      dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                      "unit": "mg/kg", "instructions": instructions}])
    order = medication_request("ket-md", KETAMINE, IV, dose=(140, "mg"),
                               reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2"))
    (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
    tokens = MarkdownIt("commonmark").enable(["strikethrough", "table"]).parse(card["detail"])
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or []}
    assert kinds <= {"paragraph_open", "paragraph_close", "bullet_list_open", "bullet_list_close", "list_item_open",
                     "list_item_close", "inline", "text", "softbreak", "strong_open", "strong_close"}, kinds
    text = "".join(c.content for t in tokens for c in t.children or [])
    assert f"Checked against {title}" in text
    assert "Protocol instructions: " + " ".join(instructions.split()) in text
    assert "Administration of anesthesia (procedure) (399097000)" in text


def test_esketamine_per_period_and_range_cards(client):
    protocol = create(client)  # Spravato-like: 56-84 mg nasal, twice weekly, at most 84 mg per day
    twice_weekly = (2, 1, "wk")
    within = medication_request("esk-1", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=twice_weekly)
    above = medication_request("esk-2", ESKETAMINE, NASAL, dose=(112, "mg"), frequency=twice_weekly)
    twice_daily = medication_request("esk-3", ESKETAMINE, NASAL, dose=(56, "mg"), frequency=(2, 1, "d"))
    result = cards_alone(client, [within, above, twice_daily])
    assert [c["indicator"] for c in result] == ["info", "critical", "critical"]
    assert "exceeds protocol maximum per period" in result[2]["summary"]
    assert "112 mg per P1D > maximum 84 mg per P1D" in result[2]["detail"]
    assert all(protocol["id"] in c["source"]["label"] for c in result)


def test_dose_range_orders_are_judged_by_their_worse_end(client):
    create(client)
    inside = medication_request("esk-r1", ESKETAMINE, NASAL, dose_range=(56, 84, "mg"))
    straddles = medication_request("esk-r2", ESKETAMINE, NASAL, dose_range=(56, 112, "mg"))
    assert [c["indicator"] for c in cards_alone(client, [inside, straddles])] == ["info", "critical"]


def test_infusion_rate_orders(client):
    ketamine_protocol(client, dose_min=0.5, dose_max=1, unit="mg/kg/h",
                      dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.5, "dose_max": 1,
                                      "unit": "mg/kg/h"}])
    ok = medication_request("inf-1", KETAMINE, IV, rate=(16.6666666666, "ug/kg/min"))
    fast = medication_request("inf-2", KETAMINE, IV, rate=(16.6666666667, "ug/kg/min"))
    result = cards_alone(client, [ok, fast], weight=weight_bundle(80))
    assert [c["indicator"] for c in result] == ["info", "critical"]


def test_weight_units_and_latest_observation(client):
    ketamine_protocol(client)
    order = medication_request("ket-lb", KETAMINE, IV, dose=(315, "mg"))
    # 154.32 lb is 69.99... kg: 315 mg is then above 4.5 mg/kg.
    (card,) = cards(client, hook_request([order], weight=weight_bundle(154.32, "[lb_av]")))
    assert card["indicator"] == "critical"
    newest_first = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": weight_observation(60, when=f"{days_ago(400)}T00:00:00Z")},
        {"resource": weight_observation(70, when=f"{days_ago(3)}T00:00:00Z")},
        {"resource": weight_observation(90, when=f"{days_ago(2)}T00:00:00Z", status="entered-in-error")}]}
    (card,) = cards(client, hook_request([order], weight=newest_first))
    assert card["indicator"] == "info" and "\u00d7 70 kg" in card["detail"]
    (card,) = cards(client, hook_request([order], weight=weight_observation(70)))  # a bare Observation
    assert card["indicator"] == "info"


def test_the_newest_weight_wins_whatever_offset_its_time_carries(client):
    """10:00+09:00 is 01:00Z: earlier than 05:00Z, though it sorts after it as text."""
    ketamine_protocol(client)  # 1-4.5 mg/kg
    order = medication_request("ket-tz", KETAMINE, IV, dose=(100, "mg"))
    day = days_ago(3)
    weights = [weight_observation(70, when=f"{day}T10:00:00+09:00"),
               weight_observation(20, when=f"{day}T05:00:00Z")]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": w} for w in weights]}
    (card,) = cards(client, hook_request([order], weight=bundle))
    assert "\u00d7 20 kg" in card["detail"] and card["indicator"] == "critical"  # 100 mg > 4.5 mg/kg x 20 kg
    # A date without a time counts from its start: the next day is newer than both.
    bundle["entry"].append({"resource": weight_observation(50, when=days_ago(2))})
    (card,) = cards(client, hook_request([order], weight=bundle))
    assert "\u00d7 50 kg" in card["detail"] and card["indicator"] == "info"


def test_missing_or_implausible_weight_is_a_warning_not_an_error(client):
    ketamine_protocol(client)
    order = medication_request("ket-2", KETAMINE, IV, dose=(140, "mg"))
    (card,) = cards(client, hook_request([order]))
    assert card["indicator"] == "warning"
    assert "not checked" in card["summary"]
    assert "no body weight was prefetched" in card["detail"]
    (card,) = cards(client, hook_request([order], weight={"resourceType": "Bundle", "type": "searchset",
                                                          "entry": []}))
    assert card["indicator"] == "warning" and "no usable body weight" in card["detail"]
    (card,) = cards(client, hook_request([order], weight=weight_bundle(0.1)))
    assert card["indicator"] == "warning" and "between 0.3 and 500 kg" in card["detail"]
    assert "Body weight used" not in card["detail"]  # it was not (a probe read "used: 1000000 kg" above the refusal)
    assert f"Body weight prefetched: 0.1 kg (observed {RECENT}); not used: body weight must be" \
        in card["detail"]


def test_only_the_hook_patients_weight_and_orders_are_read(client):
    """Found by a probe: a prefetched weight of another patient was used (600 mg IV ketamine, critical at
    the patient's 70 kg, read "within range" at another's 140 kg), an order naming another patient was
    judged as this one's, and a weight coded outside UCUM was read from its unit text."""
    ketamine_protocol(client)  # 1-4.5 mg/kg
    order = medication_request("ket-who", KETAMINE, IV, dose=(600, "mg"))
    other = weight_observation(140)
    other["subject"] = {"reference": "Patient/someone-else"}
    (card,) = cards(client, hook_request([order], weight=other))
    assert card["indicator"] == "warning" and "Body weight used" not in card["detail"]
    assert "not of this patient (Patient/example)" in card["detail"]
    # beside the patient's own, another's newer weight is passed over; an absolute or versioned reference
    # to the patient is the patient
    own = weight_observation(70, when="2026-11-01T00:00:00Z")
    own["subject"] = {"reference": "http://fhir.example.org/Patient/example/_history/3"}  # on fhirServer
    both = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": other}, {"resource": own}]}
    (card,) = cards(client, hook_request([order], weight=both))
    assert card["indicator"] == "critical" and "\u00d7 70 kg" in card["detail"]
    nameless = weight_observation(140)
    del nameless["subject"]
    (card,) = cards(client, hook_request([order], weight=nameless))
    assert card["indicator"] == "warning" and "name no patient this service can match" in card["detail"]
    for unmatched in ("https://elsewhere.example.org/Patient/example", "Group/1/Patient/example", "#p1"):
        elsewhere = weight_observation(140)
        elsewhere["subject"] = {"reference": unmatched}
        (card,) = cards(client, hook_request([order], weight=elsewhere))
        assert card["indicator"] == "warning" and "Body weight used" not in card["detail"], unmatched
    # the patient's own weight, unusable (dated in the future), is the reason given, not the other's
    future = weight_observation(70, when="2099-01-01T00:00:00Z")
    mixed = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": other}, {"resource": future}]}
    (card,) = cards(client, hook_request([order], weight=mixed))
    assert card["indicator"] == "warning" and "no usable body weight" in card["detail"]
    coded_elsewhere = weight_observation(70)
    coded_elsewhere["valueQuantity"]["system"] = "http://snomed.info/sct"
    (card,) = cards(client, hook_request([order], weight=coded_elsewhere))
    assert card["indicator"] == "warning" and "no usable body weight" in card["detail"]

    for_another = medication_request("ket-other", KETAMINE, IV, dose=(600, "mg"))
    for_another["subject"] = {"reference": "Patient/someone-else"}
    response = call(client, hook_request([order, for_another], weight=weight_bundle(70)))
    assert response.status_code == 400
    assert list(response.get_json()["errors"]) == ["context.draftOrders.entry.1.resource.subject"]
    assert "Patient/someone-else" in response.get_json()["errors"]["context.draftOrders.entry.1.resource.subject"][0]
    # a subject that cannot be matched (an identifier, a contained patient, a urn) is judged, never green
    # (found in review: a 400 left every order of the call without a card)
    body = hook_request([order], weight=weight_bundle(70))
    body["context"]["patientId"] = "Patient/example"  # an id, not a reference: named once, as itself
    refused = call(client, body)
    assert refused.status_code == 400 and list(refused.get_json()["errors"]) == ["context.patientId"]
    for subject in ({"identifier": {"system": "urn:mrn", "value": "123"}}, {"reference": "#p1"},
                    {"reference": "urn:uuid:0b5a5d4c-3f0e-4c8e-9a51-2f0d0f2a3b11"}):
        unmatched_order = medication_request("ket-unmatched", KETAMINE, IV, dose=(140, "mg"))
        unmatched_order["subject"] = subject
        (card,) = cards(client, hook_request([unmatched_order], weight=weight_bundle(70)))
        assert card["indicator"] == "warning" and "partly checked" in card["summary"], subject
        assert "could not be matched to the hook's patient, Patient/example" in card["detail"], subject


def test_an_implausible_weight_is_refused_once_and_a_fixed_dose_is_still_checked(client):
    """Found by a review: the dose check refused the whole order for an implausible prefetched weight,
    so a fixed-dose range (no weight needed) read "dose not checked" beside 1,000,000 kg. The weight
    is now refused once, where it is read: a weight-based range says why it could not be checked, a
    fixed-dose range is judged, and the card's weight line says the weight was not used."""
    ketamine_protocol(client, dose_min=50, dose_max=150, unit="mg")
    order = medication_request("ket-fixed", KETAMINE, IV, dose=(100, "mg"))
    (card,) = cards(client, hook_request([order], weight=weight_bundle(1000000)))
    assert card["indicator"] == "info" and card["summary"].startswith("within protocol range")
    assert (f"Body weight prefetched: 1000000 kg (observed {RECENT}); not used: body weight must be "
            "between 0.3 and 500 kg") in card["detail"]
    assert "Body weight used" not in card["detail"]

    ketamine_protocol(client, protocol_id="ketamine-weight-based")
    cards_by_protocol = {c["source"]["topic"]["code"].split("/")[0]: c
                         for c in cards(client, hook_request([order], weight=weight_bundle(1000000)))}
    weight_based = cards_by_protocol["ketamine-weight-based"]
    assert weight_based["indicator"] == "warning" and "dose not checked" in weight_based["summary"]
    assert ("is weight-based; send the patient's body weight in kg (the prefetched 1000000 kg is not used: body "
            "weight must be between 0.3 and 500 kg") in weight_based["detail"]


def test_volume_orders_without_a_strength_are_a_warning(client):
    create(client)
    order = medication_request("esk-ml", ESKETAMINE, NASAL, dose=(0.6, "mL"))
    (card,) = cards(client, hook_request([order]))
    assert card["indicator"] == "warning" and "concentration" in card["detail"]


# ------------------------------------------------------------------------ which protocols


def test_no_protocol_means_no_cards(client):
    create(client)
    ketamine_protocol(client)
    assert cards_alone(client, [medication_request("mid-1", MIDAZOLAM, IV, dose=(2, "mg"))],
                       weight=weight_bundle(70)) == []
    assert cards_alone(client, []) == []


def test_a_medication_ordered_by_a_route_no_protocol_gives_gets_a_warning_naming_the_routes_it_has(client):
    """Found by a clinical probe: Spravato ordered IV and ketamine ordered by mouth (compounded forms FDA
    warned about) got no card at all, as if nothing applied, where the REST check answers
    route_not_in_protocol. The card names each protocol for the medication and the routes it gives."""
    spravato = create(client)
    ketamine = ketamine_protocol(client)
    oral, iv = cards_alone(client, [medication_request("ket-po", KETAMINE, ORAL, dose=(50, "mg")),
                                    medication_request("esk-iv", ESKETAMINE, IV, dose=(56, "mg"))],
                           weight=weight_bundle(70))
    for card, protocol, route in ((oral, ketamine, "oral route"), (iv, spravato, "intravenous route")):
        assert card["indicator"] == "warning"
        assert card["summary"].startswith("route not in any protocol: ") and route in card["summary"]
        assert f"(protocol {protocol['id']} v1)" in card["summary"]
        assert f"protocol {protocol['id']} v1): " in card["detail"] and "the dose was not checked" in card["detail"]
        assert [link["url"].rsplit("/v1/", 1)[1] for link in card["links"]] == [
            f"protocols/{protocol['id']}/versions/1"]
    assert "Nasal route (46713006)" in iv["detail"] and "Intravenous route (47625008)" in oral["detail"]


def test_other_draft_orders_are_ignored(client):
    create(client)
    lab = {"resourceType": "ServiceRequest", "id": "lab-1", "status": "draft", "intent": "order",
           "code": {"coding": [{"system": LOINC, "code": "2160-0"}]}, "subject": {"reference": "Patient/example"}}
    order = medication_request("esk-4", ESKETAMINE, NASAL, dose=(56, "mg"))
    assert len(cards(client, hook_request([lab, order]))) == 1


def test_several_protocols_and_reason_codes(client):
    anaesthesia = ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"))
    order = medication_request("ket-3", KETAMINE, IV, dose=(35, "mg"))
    both = cards(client, hook_request([order], weight=weight_bundle(70)))
    indicators = {c["source"]["topic"]["code"].split("/")[0]: c["indicator"] for c in both}
    assert indicators == {anaesthesia["id"]: "warning", depression["id"]: "info"}
    # Without a reason, each card says it was one of several and which indications it is about.
    by_protocol = {c["source"]["topic"]["code"].split("/")[0]: c["detail"] for c in both}
    assert ("The order names no indication (reasonCode), so it was checked against all 2 protocols in effect "
            "for this medication and route. This card applies if the order is for: Administration of "
            "anesthesia (procedure) (399097000).") in by_protocol[anaesthesia["id"]]
    assert "applies if the order is for: Major depressive disorder, recurrent severe without psychotic " \
           "features (F33.2)." in by_protocol[depression["id"]]
    for_depression = medication_request("ket-4", KETAMINE, IV, dose=(35, "mg"),
                                        reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2"))
    (card,) = cards(client, hook_request([for_depression], weight=weight_bundle(70)))
    assert depression["id"] in card["source"]["label"] and card["indicator"] == "info"
    assert "applies if the order is for" not in card["detail"]  # the order said why: nothing to add
    unknown_reason = medication_request("ket-5", KETAMINE, IV, dose=(35, "mg"), reason=(SNOMED, "22298006"))
    fallback = cards(client, hook_request([unknown_reason], weight=weight_bundle(70)))
    assert len(fallback) == 2
    assert all("None of the order's indications (22298006) is listed by the protocols in effect for this "
               "medication and route, so it was checked against all 2." in c["detail"] for c in fallback)


def test_cards_name_the_version_in_effect_now(client):
    payload = protocol_payload(effective_from="2020-01-01T00:00:00Z")
    created = client.post("/v1/protocols", json=payload)
    revised = dict(payload, effective_from="2024-01-01T00:00:00Z", dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 28, "dose_max": 56, "unit": "mg"}])
    response = client.put(f"/v1/protocols/{payload['id']}", json=revised, headers={"If-Match": created.headers["ETag"]})
    assert response.status_code == 201
    future = dict(revised, effective_from="2999-01-01T00:00:00Z", dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 84, "dose_max": 112, "unit": "mg"}])
    assert client.put(f"/v1/protocols/{payload['id']}", json=future,
                      headers={"If-Match": response.headers["ETag"]}).status_code == 201
    order = medication_request("esk-5", ESKETAMINE, NASAL, dose=(84, "mg"))
    (card,) = cards(client, hook_request([order]))
    assert "version 2" in card["source"]["label"] and card["indicator"] == "critical"


def test_retired_protocols_give_no_cards(client):
    payload = create(client)
    etag = client.get(f"/v1/protocols/{payload['id']}").headers["ETag"]
    assert client.delete(f"/v1/protocols/{payload['id']}", headers={"If-Match": etag}).status_code == 200
    assert cards(client, hook_request([medication_request("esk-6", ESKETAMINE, NASAL, dose=(56, "mg"))])) == []


def test_order_select_checks_only_the_selected_orders(client):
    create(client)
    first = medication_request("esk-a", ESKETAMINE, NASAL, dose=(112, "mg"))
    second = medication_request("esk-b", ESKETAMINE, NASAL, dose=(56, "mg"))
    body = hook_request([first, second], hook="order-select", selections=["MedicationRequest/esk-b"])
    (card,) = cards(client, body, service="protocol-dose-check-select")
    # within range; the unselected draft is signed with it, so their sum was not checked (a review)
    assert card["indicator"] == "warning" and card["summary"].startswith("within protocol range, partly checked")
    assert "2 orders of this call are for this medication (MedicationRequest/esk-a, " \
           "MedicationRequest/esk-b)" in card["detail"]
    alone = hook_request([second], hook="order-select", selections=["MedicationRequest/esk-b"])
    assert [c["indicator"] for c in cards(client, alone, service="protocol-dose-check-select")] == ["info"]
    assert len(cards(client, hook_request([first, second]), service="protocol-dose-check-select")) == 2
    # an unselected draft that cannot be read, or is another patient's, is not the call's business
    unreadable = copy.deepcopy(first)
    unreadable["dosageInstruction"] = "not a list"
    other_patient = copy.deepcopy(first)
    other_patient["subject"] = {"reference": "Patient/someone-else"}
    for extra in (unreadable, other_patient):
        body = hook_request([second], hook="order-select", selections=["MedicationRequest/esk-b"])
        body["context"]["draftOrders"]["entry"].insert(0, {"resource": extra})
        assert [c["indicator"] for c in cards(client, body, service="protocol-dose-check-select")] == ["info"]


# ---------------------------------------------------------------------- catalog, realistic


def test_catalog_ketamine_and_esketamine_orders(client, app):
    result = app.test_cli_runner().invoke(args=["protocols", "load"])
    assert result.exit_code == 0, result.output
    listing = client.get("/v1/protocols?page_size=100").get_json()["items"]
    documents = [json.loads(json.dumps(d), parse_float=Decimal) for d in listing]
    iv_ketamine = {d["id"] for d in documents
                   if d["drug"].get("rxnorm_cui") == "6130" and IV in {r["code"] for r in d["routes"]}}
    order = medication_request("ket-cat", KETAMINE, IV, dose=(140, "mg"))
    result_cards = cards_alone(client, [order], weight=weight_bundle(70))
    assert {c["source"]["topic"]["code"].split("/")[0] for c in result_cards} == iv_ketamine
    anaesthesia = next(d for d in documents if d["id"] == "ketamine-iv-anesthesia-induction")
    iv_ranges = [r for r in anaesthesia["dosing_ranges"] if r["route"] == IV]  # the bolus and the alternative
    low, high = min(r["dose_min"] for r in iv_ranges), max(r["dose_max"] for r in iv_ranges)
    indication = anaesthesia["indications"][0]
    for dose, indicator in ((high * 70, "info"), (low * 70, "info"), (high * 70 + Decimal("0.1"), "critical"),
                            (low * 70 - Decimal("0.1"), "warning")):
        narrowed = medication_request("ket-an", KETAMINE, IV, dose=(float(dose), "mg"),
                                      reason=(indication["system"], indication["code"]))
        (card,) = cards_alone(client, [narrowed], weight=weight_bundle(70))
        assert card["source"]["label"] == f"Treatment protocol ketamine-iv-anesthesia-induction version " \
                                          f"{anaesthesia['version']}"
        assert card["indicator"] == indicator, card["detail"]
    spravato = next(d for d in documents if d["id"] == "esketamine-nasal-spravato")
    high = max(r["dose_max"] for r in spravato["dosing_ranges"])
    ok = medication_request("esk-cat", ESKETAMINE, NASAL, dose=(float(high), "mg"), frequency=(2, 1, "wk"))
    too_much = medication_request("esk-cat2", ESKETAMINE, NASAL, dose=(float(high) + 28, "mg"), frequency=(2, 1, "wk"))
    assert [c["indicator"] for c in cards_alone(client, [ok, too_much])] == ["info", "critical"]


# --------------------------------------------------------------------------- bad requests


def _valid_body() -> dict[str, Any]:
    return hook_request([medication_request("esk-x", ESKETAMINE, NASAL, dose=(56, "mg"))])


def _without(path: str) -> dict[str, Any]:
    body = _valid_body()
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[last]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = _valid_body()
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


MALFORMED: list[tuple[Any, str]] = [
    (_without("hook"), "hook"),
    (_without("hookInstance"), "hookInstance"),
    (_without("context"), "context"),
    (_without("context.draftOrders"), "context.draftOrders"),
    (_without("context.userId"), "context.userId"),
    (_with("hook", "patient-view"), "hook"),
    (_with("context.draftOrders", {"resourceType": "MedicationRequest"}), "context.draftOrders"),
    (_with("context.draftOrders.entry", {"resource": {}}), "context.draftOrders.entry"),
    (_with("context.draftOrders.entry.0", {"fullUrl": "x"}), "context.draftOrders.entry.0.resource"),
    (_with("prefetch", {"weight": "70 kg"}), "prefetch.weight"),
    (_with("prefetch", {"weight": {"resourceType": "Patient"}}), "prefetch.weight"),
    ({**_valid_body(), "hook": "order-select"}, "context.selections"),
    ([], "body"),  # a JSON array: the body as a whole
]


def test_malformed_hook_requests_are_400_with_a_reason(client):
    for body, field in MALFORMED:  # one app for the whole table keeps the suite fast
        response = call(client, body)
        assert response.status_code == 400, (field, response.get_json())
        errors = response.get_json()["errors"]
        assert field in errors, (field, errors)


def test_invalid_fhir_medication_request_is_400_naming_the_element(client):
    body = _valid_body()
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    del order["subject"]
    response = call(client, body)
    assert response.status_code == 400
    assert "context.draftOrders.entry.0.resource.subject" in response.get_json()["errors"]
    body = _valid_body()
    body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0][
        "doseQuantity"]["value"] = "lots"
    response = call(client, body)
    assert response.status_code == 400
    assert any(path.endswith("doseQuantity.value") for path in response.get_json()["errors"])


def test_a_dose_no_order_can_have_is_400_naming_the_value(client):
    """The numbers dose-check refuses (zero, negative, outside 1e-12…1e12, over 12 significant digits)
    are refused here too, at once: exact arithmetic on 1e999999 took minutes of a worker."""
    ketamine_protocol(client)
    where = "context.draftOrders.entry.0.resource.dosageInstruction.0.doseAndRate.0"
    placeholder = 987654321
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"dose": (placeholder, "mg")}, "doseQuantity", "1e99999"),
        ({"dose": (placeholder, "mg")}, "doseQuantity", "0"),
        ({"dose": (placeholder, "mg")}, "doseQuantity", "-5"),
        ({"dose": (placeholder, "mg")}, "doseQuantity", "1.0000000000001"),
        ({"dose_range": (1, placeholder, "mg")}, "doseRange.high", "1e400"),
        ({"rate": (placeholder, "mg/h")}, "rateQuantity", "1e-30")]
    for order_args, element, number in cases:
        order = medication_request("ket-n", KETAMINE, IV, **order_args)
        text = json.dumps(hook_request([order], weight=weight_bundle(70))).replace(str(placeholder), number)
        response = client.post("/cds-services/protocol-dose-check", data=text, content_type="application/json")
        assert response.status_code == 400, (number, response.get_json())
        assert f"{where}.{element}.value" in response.get_json()["errors"], (number, response.get_json())


def test_a_number_or_boolean_sent_as_a_string_is_400_naming_it(client):
    """FHIR JSON carries decimals, integers and booleans as JSON numbers and booleans; fhir.resources
    read "35" and "3.5e1" as 35, and the order got a card saying it was within range, where
    /dose-check refuses the same value (adversarial probe). A string element ("value" of an
    Identifier) stays a string."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 100, "dose_max": 200,
                                              "unit": "mg", "max_per_period": {"value": 200, "unit": "mg",
                                                                               "period": "P1D"}}])
    where = "context.draftOrders.entry.0.resource"
    order = medication_request("ket-s", KETAMINE, IV, dose=(150, "mg"), frequency=(1, 1, "d"))
    order["identifier"] = [{"system": "urn:oid:1.2.3", "value": "123"}]
    assert cards(client, hook_request([order]))[0]["indicator"] == "info"
    for element, value in (("dosageInstruction.0.doseAndRate.0.doseQuantity.value", "150"),
                           ("dosageInstruction.0.doseAndRate.0.doseQuantity.value", "1.5e2"),
                           ("dosageInstruction.0.timing.repeat.frequency", "1"),
                           ("dosageInstruction.0.sequence", "1"),
                           ("substitution.allowedBoolean", "true")):
        sent = copy.deepcopy(order)
        *parents, last = element.split(".")
        node: Any = sent
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
        response = call(client, hook_request([sent]))
        assert response.status_code == 400, (element, response.get_json())
        assert list(response.get_json()["errors"]) == [f"{where}.{element}"], response.get_json()
    contained = _with_strength(copy.deepcopy(order), 100, 1)
    contained["contained"][0]["ingredient"][0]["strength"]["numerator"]["value"] = "100"
    response = call(client, hook_request([contained]))
    assert response.status_code == 400
    assert list(response.get_json()["errors"]) == [f"{where}.contained.0.ingredient.0.strength.numerator.value"]


def test_not_json_and_unknown_service(client):
    response = client.post("/cds-services/protocol-dose-check", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert call(client, _valid_body(), service="no-such-service").status_code == 404


def test_extension_members_are_ignored(client):
    create(client)
    body = copy.deepcopy(_valid_body())
    body["extension"] = {"com.example.cds": {"flag": True}}
    body["context"]["extension"] = {"x": 1}
    assert len(cards(client, body)) == 1


def test_medication_reference_to_a_contained_medication(client):
    create(client)
    order = medication_request("esk-ref", ESKETAMINE, NASAL, dose=(112, "mg"))
    del order["medicationCodeableConcept"]
    order["contained"] = [{"resourceType": "Medication", "id": "med1", "code": {"coding": ESKETAMINE}}]
    order["medicationReference"] = {"reference": "#med1"}
    MedicationRequest.model_validate(order)
    (card,) = cards(client, hook_request([order]))
    assert card["indicator"] == "critical"


def test_a_repeated_dose_against_a_range_without_frequency_or_maximum_is_partly_checked(client):
    """An induction dose in range, ordered every 5 minutes, read "within protocol range" on a green card,
    though the protocol gives no frequency or maximum per period that the repetition could be checked
    against (1,680 mg an hour at 70 kg; adversarial probe). The single dose stays a plain pass."""
    # 1-4.5 mg/kg with no frequency or maximum per period; the maintenance range has a frequency, and the
    # card's verdict is its most favourable range's (a review found the induction pass still green).
    ketamine_protocol(client, dosing_ranges=[
        {"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg"},
        {"route": IV, "phase": "maintenance", "dose_min": 0.5, "dose_max": 1, "unit": "mg/kg",
         "frequency": {"count": 1, "period": "P1D"}}])
    once = medication_request("ket-once", KETAMINE, IV, dose=(2, "mg/kg"))
    (card,) = cards(client, hook_request([once], weight=weight_bundle(70)))
    assert card["indicator"] == "info", card["summary"]
    repeated = medication_request("ket-every-5-min", KETAMINE, IV, dose=(2, "mg/kg"), frequency=(1, 5, "min"))
    (card,) = cards(client, hook_request([repeated], weight=weight_bundle(70)))
    assert card["indicator"] == "warning" and "partly checked" in card["summary"], card["summary"]
    assert ("  - Not checked: the order repeats its dose, and this range gives no frequency or maximum per period "
            "to check the repetition against.") in card["detail"]


@pytest.mark.parametrize("reference", ["Medication/spr", "urn:uuid:5b1f0f0e-8d3a-4c51-9d0a-0c2f6c1b7e11"])
def test_medication_reference_to_a_medication_of_the_draft_orders_bundle(client, reference):
    """A Medication carried as its own draftOrders entry, named by ``Medication/<id>`` or by its entry's
    ``fullUrl``: only ``#id`` was followed, and a 112 mg Spravato order got no card at all (probe)."""
    create(client)
    order = medication_request("esk-bundled", ESKETAMINE, NASAL, dose=(112, "mg"))
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": reference}
    body = hook_request([order])
    medication: dict[str, Any] = {"resourceType": "Medication", "id": "spr", "code": {"coding": ESKETAMINE}}
    body["context"]["draftOrders"]["entry"].insert(0, {"fullUrl": "urn:uuid:5b1f0f0e-8d3a-4c51-9d0a-0c2f6c1b7e11",
                                                        "resource": medication})
    (card,) = cards(client, body)
    assert card["indicator"] == "critical"

    order["medicationReference"] = {"reference": "Medication/elsewhere"}  # not carried: nothing to read
    assert cards(client, body) == []
    order["medicationReference"] = {"reference": "Medication/spr/_history/2"}  # a versioned reference
    (card,) = cards(client, body)
    assert card["indicator"] == "critical"

    # Two entries a reference names (a shared id): refused, never read as the first (review).
    twin = copy.deepcopy(body)
    twin["context"]["draftOrders"]["entry"].insert(1, {"resource": {
        "resourceType": "Medication", "id": "spr", "code": {"coding": KETAMINE}}})
    twin["context"]["draftOrders"]["entry"][2]["resource"]["medicationReference"] = {"reference": "Medication/spr"}
    response = call(client, twin)
    assert response.status_code == 400, response.get_json()
    assert list(response.get_json()["errors"]) == ["context.draftOrders.entry.2.resource.medicationReference.reference"]
    order["medicationReference"] = {"reference": reference}

    order["medicationReference"] = {"reference": reference}
    medication["code"] = {"coding": [{"system": RXNORM, "code": 2201625}]}  # a number where FHIR wants a string
    response = call(client, body)
    assert response.status_code == 400, response.get_json()
    assert list(response.get_json()["errors"]) == ["context.draftOrders.entry.0.resource.code.coding.0.code"]

    medication["code"] = {"coding": ESKETAMINE}
    medication["ingredient"] = [{"itemCodeableConcept": {"text": "esketamine"}, "strength": {
        "numerator": {"value": "28", "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        "denominator": {"value": 0.2, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}}}]
    response = call(client, body)  # a strength sent as a string is refused, as in a contained Medication
    assert response.status_code == 400, response.get_json()
    assert list(response.get_json()["errors"]) == [
        "context.draftOrders.entry.0.resource.ingredient.0.strength.numerator.value"]

    order["medicationReference"] = {"reference": "#absent"}  # an invalid Medication nobody names is not read
    assert cards(client, body) == []


# ------------------------------------------------------------------------------- worker start-up


def test_the_warm_up_order_is_valid_fhir_and_reads_like_a_real_one():
    """gunicorn.conf.py runs draft_orders.warm_up() in every worker before its first request: the order it
    parses must be valid (or workers would not start) and go through every element the service reads."""
    (bundle_entry,) = draft_orders._WARM_UP_ORDERS["entry"]
    MedicationRequest.model_validate(bundle_entry["resource"])
    draft_orders.warm_up()
    (order,) = draft_orders.draft_medication_requests(draft_orders._WARM_UP_ORDERS, "order-sign", [],
                                                      draft_orders.HookPatient("warm-up"))
    assert order.rxnorm == ["6130"] and order.reasons == ["35489007"]  # via the contained Medication
    assert [(line.route, line.label, line.frequency is not None) for line in order.lines] == [
        ("47625008", "70 mg at 1 mg/kg/h", True), ("47625008", "1 mg/kg to 2 mg/kg", True)]


_FIRST_ORDER = """
import json, sys
from protocols import draft_orders
if sys.argv[1] == "warm":
    draft_orders.warm_up()
before = set(sys.modules)
draft_orders.draft_medication_requests(json.loads(sys.argv[2]), "order-sign", [], draft_orders.HookPatient("example"))
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith(("fhir", "pydantic")))))
"""


def first_order_imports(mode: str) -> list[str]:
    """The FHIR and pydantic modules a fresh worker imports while parsing its first draft order."""
    orders = hook_request([medication_request("o1", KETAMINE, IV, dose=(70, "mg"), frequency=(1, 8, "h"),
                                              reason=(SNOMED, "35489007"))])["context"]["draftOrders"]
    done = subprocess.run([sys.executable, "-c", _FIRST_ORDER, mode, json.dumps(orders)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_after_the_warm_up_the_first_draft_order_imports_nothing():
    assert first_order_imports("warm") == []
    assert "fhir.resources.R4B.medicationrequest" in first_order_imports("cold")  # the control


# ------------------------------------------------------------------- found by an adversarial probe


def test_a_rate_is_judged_even_when_the_entry_also_has_a_dose(client):
    """98 mg at 70 mg/h for 70 kg is 1 mg/kg/h against a 0.35 mg/kg/h protocol: the rate was dropped
    whenever a dose came with it, and the card said "within protocol range"."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.35,
                                              "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    both = medication_request("crps-1", KETAMINE, IV, dose=(98, "mg"), rate=(70, "mg/h"))
    rate_only = medication_request("crps-2", KETAMINE, IV, rate=(70, "mg/h"))
    fitting = medication_request("crps-3", KETAMINE, IV, dose=(98, "mg"), rate=(24.5, "mg/h"))
    result = cards_alone(client, [both, rate_only, fitting], weight=weight_bundle(70))
    assert [c["indicator"] for c in result] == ["critical", "critical", "info"]
    assert "98 mg at 70 mg/h" in result[0]["summary"]
    assert "70 mg/h" in result[0]["detail"] and "98 mg" in result[0]["detail"]


def test_frequency_max_and_timing_codes_are_checked_at_their_most_frequent(client):
    create(client)  # Spravato-like: at most 84 mg per P1D
    up_to_three = medication_request("esk-fm", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(1, 1, "d"))
    up_to_three["dosageInstruction"][0]["timing"]["repeat"]["frequencyMax"] = 3
    bid = medication_request("esk-bid", ESKETAMINE, NASAL, dose=(56, "mg"))
    bid["dosageInstruction"][0]["timing"] = {"code": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "BID"}]}}
    weekly = medication_request("esk-wk", ESKETAMINE, NASAL, dose=(84, "mg"))
    weekly["dosageInstruction"][0]["timing"] = {"code": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "WK"}]}}
    for order in (up_to_three, bid, weekly):
        MedicationRequest.model_validate(order)
    result = cards_alone(client, [up_to_three, bid, weekly])
    assert [c["indicator"] for c in result] == ["critical", "critical", "info"]
    assert "252 mg per P1D > maximum 84 mg per P1D" in result[0]["detail"]
    assert "3 per 1 d" in result[0]["detail"]
    assert "112 mg per P1D > maximum 84 mg per P1D" in result[1]["detail"]
    assert "timing code BID" in result[1]["detail"]



def test_a_period_max_below_the_period_is_checked_at_the_shorter(client, app):
    """periodMax is the upper end of the period; written below it (7 d, periodMax 2 d), the order was
    checked weekly and read within range, where 2 d to 7 d was critical (found by a probe)."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    answers = []
    for period, longest in ((2, 7), (7, 2)):
        order = medication_request(f"esk-pm-{period}", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(1, period, "d"))
        order["dosageInstruction"][0]["timing"]["repeat"]["periodMax"] = longest
        MedicationRequest.model_validate(order)
        answers.append([c["indicator"] for c in cards(client, hook_request([order]))])
    assert answers[0] == answers[1] and "critical" in answers[0], answers

def test_a_period_too_long_to_check_is_partly_checked_and_the_other_orders_still_get_cards(client):
    """It was a 400 naming the period: valid FHIR, and every other order of the call went without a
    card (found in review)."""
    create(client)
    order = medication_request("esk-long", ESKETAMINE, NASAL, dose=(56, "mg"), frequency=(1, 10000, "wk"))
    fits = medication_request("esk-2y", ESKETAMINE, NASAL, dose=(56, "mg"), frequency=(1, 104, "wk"))
    long_card, card = cards(client, hook_request([order, fits]))
    assert long_card["indicator"] == "warning" and "partly checked" in long_card["summary"]
    assert "(10000 wk) is longer than a dosing period this service can check" in long_card["detail"]
    assert "(10000 wk)" not in card["detail"] and "within protocol range" in card["summary"]
    # partly checked only because two orders of one protocol are not added up
    assert card["indicator"] == "warning"
    assert "2 orders of this call are for this medication" in card["detail"]


def test_prefetched_weights_that_are_not_numbers_or_not_shaped_like_fhir_are_no_weight(client):
    """true is an int to Python (it read as 1 kg); a list where FHIR has an object was a 500."""
    ketamine_protocol(client)
    order = medication_request("ket-w", KETAMINE, IV, dose=(3, "mg"))
    boolean = weight_observation(70)
    boolean["valueQuantity"]["value"] = True
    annotation = weight_observation(70)
    annotation["valueQuantity"]["code"] = "{kg}"
    shapes = [boolean, annotation,
              {"resourceType": "Observation", "status": "final", "code": [1]},
              {"resourceType": "Observation", "status": ["final"]},
              {**weight_observation(70), "code": {"coding": {"system": LOINC, "code": "29463-7"}}}]
    for weight in shapes:
        (card,) = cards(client, hook_request([order], weight=weight))
        assert card["indicator"] == "warning", weight
        assert "no usable body weight" in card["detail"], weight


def test_an_unknown_service_is_404_whatever_its_body(client):
    response = call(client, {}, service="nope")
    assert response.status_code == 404, response.get_json()
    assert "no CDS service 'nope'" in response.get_json()["message"]


def test_a_malformed_body_is_400_with_a_message_of_its_own(client):
    response = call(client, {})
    assert response.status_code == 400
    body = response.get_json()
    assert "browser" not in body["message"].lower()
    assert "see errors" in body["message"] and "hook" in body["errors"]


def test_a_weight_dated_past_the_dates_the_server_handles_sorts_oldest(client):
    """9999-12-31 and 0001-01-01T00:00:00+14:00 are valid FHIR dateTimes; working out where they
    start overflowed (a 500). An unreadable time sorts oldest, as documented."""
    ketamine_protocol(client)
    order = medication_request("ket-far", KETAMINE, IV, dose=(100, "mg"))
    for when in ("9999-12-31", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"):
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": weight_observation(20, when=when)},
            {"resource": weight_observation(70, when="2024-06-01T00:00:00Z")}]}
        (card,) = cards(client, hook_request([order], weight=bundle))
        assert "\u00d7 70 kg" in card["detail"], when


def test_a_rate_that_cannot_be_compared_never_hides_the_doses_verdict(client):
    """Found in review: against an amount range with no duration the rate cannot be converted, and
    that discarded the dose's verdict: 400 mg (above 4.5 mg/kg x 70 kg) at 50 mg/h read "not checked"."""
    ketamine_protocol(client)  # 1-4.5 mg/kg IV, no duration
    over = medication_request("ket-or", KETAMINE, IV, dose=(400, "mg"), rate=(50, "mg/h"))
    fits = medication_request("ket-fr", KETAMINE, IV, dose=(100, "mg"), rate=(50, "mg/h"))
    result = cards_alone(client, [over, fits], weight=weight_bundle(70))
    # A rate ordered with its dose runs for dose / rate (8 h and 2 h here): the rate is judged as that
    # dose (clinical QA probe: the label's 1-2 mg/kg at 0.5 mg/kg/min read "below minimum" over 60 s).
    assert [c["indicator"] for c in result] == ["critical", "info"]
    assert "not checked" not in result[1]["detail"]
    alone = medication_request("ket-ra", KETAMINE, IV, rate=(50, "mg/h"))
    result = cards_alone(client, [alone], weight=weight_bundle(70))
    assert result[0]["summary"].startswith("dose not checked"), result[0]  # a rate alone: no duration
    assert "could not be checked: 50 mg/h: mg/h is a rate" in result[0]["detail"]


def test_an_order_more_frequent_than_the_protocol_is_a_warning_not_within_range(client):
    """Found by an adversarial probe: each dose in range, five a day against "2-3 times weekly", read
    "within protocol range" (the frequency was only a line of the detail) when no per-period maximum
    caught it."""
    ketamine_protocol(client, dose_min=0.5, dose_max=0.5, dosing_ranges=[{
        "route": IV, "phase": "induction", "dose_min": 0.5, "dose_max": 0.5, "unit": "mg/kg", "duration": "PT40M",
        "frequency": {"count": 3, "period": "P1W", "text": "2-3 times weekly"}}])
    often = medication_request("trd-5d", KETAMINE, IV, dose=(35, "mg"), frequency=(5, 1, "d"))
    weekly = medication_request("trd-2w", KETAMINE, IV, dose=(35, "mg"), frequency=(2, 1, "wk"))
    result = cards_alone(client, [often, weekly], weight=weight_bundle(70))
    # Five a day gives 35 doses a week against the regimen's 3: above the most it gives (critical, a
    # clinical QA probe: a warning for 3.5 times the weekly exposure was too mild).
    assert [c["indicator"] for c in result] == ["critical", "info"]
    assert "exceeds protocol maximum per period" in result[0]["summary"]
    assert "more frequent than the protocol's (2-3 times weekly)" in result[0]["detail"]
    assert "Regimen exceeded" in result[0]["detail"]


# --------------------------------------------- orders read in part (second adversarial probe, 2026-12-03)


def _esketamine_order(order_id: str, dose: int = 84, **dosage: Any) -> dict[str, Any]:
    order = medication_request(order_id, ESKETAMINE, NASAL, dose=(dose, "mg"))
    order["dosageInstruction"][0].update(dosage)
    MedicationRequest.model_validate(order)
    return order


def test_named_times_of_day_and_hourly_codes_count_every_dose(client):
    """MORN and EVE (or two timeOfDay) were counted as one dose: 168 mg a day read as 84 mg against an
    84 mg-per-day maximum; Q12H (outside the base abbreviations, common in EHRs) and a code sent as
    text only read as one dose a day too."""
    create(client)  # Spravato-like: 56-84 mg, at most 84 mg per P1D
    morning_evening = _esketamine_order("esk-when", timing={"repeat": {"when": ["MORN", "EVE"], "period": 1,
                                                                       "periodUnit": "d"}})
    two_times = _esketamine_order("esk-tod", timing={"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}})
    q12h = _esketamine_order("esk-q12", timing={"code": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "Q12H"}]}})
    bid_text = _esketamine_order("esk-bidt", timing={"code": {"text": "BID"}})
    result = cards(client, hook_request([morning_evening, two_times, q12h, bid_text]))
    assert [c["indicator"] for c in result] == ["critical"] * 4, [c["summary"] for c in result]
    assert all(c["summary"].startswith("exceeds protocol maximum per period") for c in result)


def test_an_order_read_in_part_is_never_an_info_card(client):
    """A timing without a fixed frequency, a frequency without a period, an open-ended dose range, the
    order's own maxDosePerPeriod and concurrent instructions (same sequence) were each ignored, and the
    card read "info, within protocol range". (An own maximum that can be read is compared: the next test.)"""
    create(client)
    orders = [
        _esketamine_order("esk-mo", timing={"repeat": {"frequency": 60, "period": 1, "periodUnit": "mo"}}),
        _esketamine_order("esk-noper", timing={"repeat": {"frequency": 3}}),
        _esketamine_order("esk-max", asNeededBoolean=True, maxDosePerPeriod={
            "numerator": {"value": 84, "unit": "mg", "system": UCUM, "code": "mg"},
            "denominator": {"value": 1, "unit": "mo", "system": UCUM, "code": "mo"}}),
    ]
    open_ended = medication_request("esk-open", ESKETAMINE, NASAL, dose=(56, "mg"))
    open_ended["dosageInstruction"][0]["doseAndRate"][0] = {"doseRange": {"low": {
        "value": 56, "unit": "mg", "system": UCUM, "code": "mg"}}}
    up_to = medication_request("esk-up-to", ESKETAMINE, NASAL, dose=(56, "mg"))  # "up to 84 mg": 0-84 mg
    up_to["dosageInstruction"][0]["doseAndRate"][0] = {"doseRange": {"high": {
        "value": 84, "unit": "mg", "system": UCUM, "code": "mg"}}}
    concurrent = medication_request("esk-seq", ESKETAMINE, NASAL, dose=(56, "mg"))
    concurrent["dosageInstruction"] = [{**concurrent["dosageInstruction"][0], "sequence": 1} for _ in range(2)]
    for order in (open_ended, up_to, concurrent):
        MedicationRequest.model_validate(order)
    result = cards(client, hook_request([*orders, open_ended, up_to, concurrent]))
    assert [c["indicator"] for c in result] == ["warning"] * 7, [c["summary"] for c in result]
    assert all("partly checked" in c["summary"] for c in result)
    details = "\n".join(c["detail"] for c in result)
    for reason in ("has no fixed length", "a frequency without a period", "maxDosePerPeriod could not be read",
                   "no upper end", "no lower end", "same sequence"):
        assert reason in details, reason


def _own_maximum(value: Any, unit: str, per: Any, per_unit: str) -> dict[str, Any]:
    return {"numerator": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            "denominator": {"value": per, "unit": per_unit, "system": UCUM, "code": per_unit}}


def test_an_orders_own_maximum_per_period_without_timing_is_compared_with_the_protocols(client):
    """Found by a clinical probe: Spravato 84 mg as needed, "at most 840 mg a day" (maxDosePerPeriod), read
    "within protocol range" and "Per-period maximum respected: 84 mg x one dose", the order's own maximum
    in a footnote. With no timing (as needed or not said), the order repeats at will within that maximum:
    above the protocol's (84 mg per day), over as many of the order's periods as the protocol's spans, it is
    critical. Within it the card stays partly checked: 84 mg every day is within 84 mg a day and far beyond
    twice weekly (a review)."""
    create(client)  # Spravato-like: 56-84 mg twice weekly, at most 84 mg per P1D

    def card_for(maximum: dict[str, Any], as_needed: bool = True, **dosage: Any) -> dict[str, Any]:
        extra = {"asNeededBoolean": True} if as_needed else {}
        (card,) = cards(client, hook_request([_esketamine_order("esk", maxDosePerPeriod=maximum, **extra, **dosage)],
                                             weight=weight_bundle(70)))
        return card

    over = card_for(_own_maximum(840, "mg", 1, "d"))
    assert over["indicator"] == "critical" and over["summary"].startswith("exceeds protocol maximum per period: ")
    assert ("The order's own maximum, 840 mg per 1 d, allows up to 840 mg per P1D > maximum 84 mg per P1D."
            in over["detail"])
    not_said = card_for(_own_maximum(840, "mg", 1, "d"), as_needed=False)  # no timing and no asNeeded: the same
    assert not_said["indicator"] == "critical" and "allows up to 840 mg per P1D" in not_said["detail"]
    twice = card_for(_own_maximum(84, "mg", 12, "h"))  # 84 mg every 12 h: 168 mg in a day
    assert twice["indicator"] == "critical"
    assert "84 mg per 12 h, allows up to 168 mg per P1D (2 of its periods) > maximum 84 mg per P1D" in twice["detail"]
    every_10_h = card_for(_own_maximum(42, "mg", 10, "h"))  # a day spans three 10 h periods, not two: 126 mg
    assert every_10_h["indicator"] == "critical"
    assert "allows up to 126 mg per P1D (3 of its periods)" in every_10_h["detail"]
    per_kg = card_for(_own_maximum(1.5, "mg/kg", 1, "d"))  # 105 mg for 70 kg
    assert per_kg["indicator"] == "critical" and "allows up to 105 mg per P1D" in per_kg["detail"]
    held = card_for(_own_maximum(0.084, "g", 1, "d"))
    assert held["indicator"] == "warning" and held["summary"].startswith("within protocol range, partly checked: ")
    assert "allows up to 84 mg per P1D ≤ maximum 84 mg per P1D" in held["detail"]
    assert "its doses per the protocol's schedule were not checked" in held["detail"]
    unreadable = card_for(_own_maximum(84, "mg", 0, "h"))  # noted, not a 400 that loses every card (a review)
    assert unreadable["indicator"] == "warning" and "maxDosePerPeriod could not be read" in unreadable["detail"]
    # A timing of one administration (repeat.count 1) is no order that repeats at will (a review: 84 mg once,
    # at most 168 mg a day, read critical and "the order has no timing")
    once = card_for(_own_maximum(168, "mg", 1, "d"), as_needed=False, timing={"repeat": {"count": 1}})
    assert once["indicator"] == "info" and "own maximum" not in once["detail"], once["summary"]
    # As needed with no route: the route note does not drop the one-dose note (a review)
    (no_route,) = cards(client, hook_request([_esketamine_order("esk", asNeededBoolean=True, route=None)]))
    assert "checked for one dose" in no_route["detail"], no_route["detail"]
    weekly = card_for(_own_maximum(168, "mg", 1, "wk"))  # a week's maximum may all fall on one day
    assert weekly["indicator"] == "critical"
    assert "allows up to 168 mg per P1D > maximum 84 mg per P1D" in weekly["detail"]
    # A scheduled order is judged by its schedule, which its own maximum can only lower.
    scheduled = card_for(_own_maximum(840, "mg", 1, "d"), timing={"repeat": {"frequency": 1, "period": 1,
                                                                               "periodUnit": "wk"}})
    assert scheduled["indicator"] == "info" and "own maximum" not in scheduled["detail"]
    # Without a maximum, an as-needed order is still checked for one dose, and says so.
    (bare,) = cards(client, hook_request([_esketamine_order("esk", asNeededBoolean=True)]))
    assert bare["indicator"] == "warning" and "checked for one dose" in bare["detail"]


def test_a_dose_repeated_within_a_minute_is_judged_at_that_frequency(client):
    """Found by a probe: 84 mg every 30 s (or 0.5 min, 0.01 h, twice a second) was a yellow card reading
    "Per-period maximum respected: 84 mg x one dose (no frequency was sent)", while every 90 s was
    critical. Any whole number of seconds is a period now; a timing that still cannot be read says so."""
    create(client)
    repeats = [{"frequency": 1, "period": 30, "periodUnit": "s"}, {"frequency": 1, "period": 0.5, "periodUnit": "min"},
               {"frequency": 1, "period": 0.01, "periodUnit": "h"}, {"frequency": 2, "period": 1, "periodUnit": "s"},
               {"frequency": 1, "period": 0.5, "periodUnit": "s"}, {"frequency": 1, "period": 90, "periodUnit": "s"}]
    orders = [_esketamine_order(f"esk-fast-{n}", timing={"repeat": repeat}) for n, repeat in enumerate(repeats)]
    result = cards_alone(client, orders)
    assert [c["indicator"] for c in result] == ["critical"] * len(repeats), [c["summary"] for c in result]
    assert not any("no frequency was sent" in c["detail"] for c in result)
    half_second = next(c for c in result if "esk-fast-4" in c["detail"] or "0.5 s" in c["detail"]
                       or "2 per 1 s" in c["detail"])
    assert "Checked at the most frequent the timing allows: 2 per 1 s" in half_second["detail"]
    (unread,) = cards_alone(client, [_esketamine_order("esk-monthly", timing={
        "repeat": {"frequency": 60, "period": 1, "periodUnit": "mo"}})])
    assert unread["indicator"] != "info" and "has no fixed length" in unread["detail"]
    assert "one dose (the order's timing could not be read; see below)" in unread["detail"]
    once = _esketamine_order("esk-once",
                             timing={"repeat": {"count": 1, "frequency": 2, "period": 1, "periodUnit": "d"}})
    (card,) = cards_alone(client, [once])
    assert "one dose (the timing gives one administration)" in card["detail"], card["detail"]
    assert "no frequency was sent" not in unread["detail"]


def test_a_period_with_a_fraction_of_a_second_or_too_long_never_refuses_the_call(client):
    """Found in review: 3.333 d (287,971.2 s), scaled to whole seconds like a sub-second period, was no
    duration the service writes, and the call was a 400: no card for any order, a critical one beside it
    too. It is rounded down to whole seconds (at least as many doses); a period longer than the service
    handles is "partly checked" instead of a 400."""
    create(client)
    over = _esketamine_order("esk-over", timing={"repeat": {"frequency": 1, "period": 30, "periodUnit": "s"}})
    odd = [_esketamine_order(f"esk-odd-{n}", timing={"repeat": {"frequency": 1, "period": p, "periodUnit": u}})
           for n, (p, u) in enumerate([(3.333, "d"), (0.333, "wk"), (10.0005, "d"), (47.9999, "h"), (1e6, "wk")])]
    result = cards(client, hook_request([over, *odd]))
    # 3.333 d and 0.333 wk put 3 and 4 doses in some week (twice weekly: at most 2); 47.9999 h too
    # (10.0005 d is within: a warning only because the six orders of one protocol are not added up)
    assert [c["indicator"] for c in result] == ["critical", "critical", "critical", "warning", "critical", "warning"], \
        [c["summary"] for c in result]
    assert result[3]["summary"].startswith("within protocol range, partly checked")
    assert "1 per 287971 s" in result[1]["detail"]  # 3.333 d, rounded down to whole seconds
    assert "84 mg \u00d7 3 doses = 252 mg per P1W" in result[1]["detail"]
    assert "longer than a dosing period this service can check" in result[-1]["detail"]


def test_rate_ratios_rate_ranges_and_the_orders_maximum_per_administration_are_judged(client):
    """rateRatio was ignored (5000 mg per 1 min read "within range"), an order with only a rateRange got
    no card at all, and maxDosePerAdministration was never compared."""
    ketamine_protocol(client, dose_min=0.35, dose_max=0.35, unit="mg/kg/h", dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h",
        "duration": "PT4H"}])
    ratio = medication_request("ket-ratio", KETAMINE, IV)
    ratio["dosageInstruction"][0]["doseAndRate"][0] = {"rateRatio": {
        "numerator": {"value": 5000, "unit": "mg", "system": UCUM, "code": "mg"},
        "denominator": {"value": 1, "unit": "min", "system": UCUM, "code": "min"}}}
    rate_range = medication_request("ket-rr", KETAMINE, IV)
    rate_range["dosageInstruction"][0]["doseAndRate"][0] = {"rateRange": {
        "low": {"value": 10, "unit": "mg/h", "system": UCUM, "code": "mg/h"},
        "high": {"value": 1000, "unit": "mg/h", "system": UCUM, "code": "mg/h"}}}
    fitting_ratio = medication_request("ket-fit", KETAMINE, IV)
    fitting_ratio["dosageInstruction"][0]["doseAndRate"][0] = {"rateRatio": {
        "numerator": {"value": 49, "unit": "mg", "system": UCUM, "code": "mg"},
        "denominator": {"value": 2, "unit": "h", "system": UCUM, "code": "h"}}}
    # With its duration: without one, the protocol's 4 h is assumed and the card says so (partly checked).
    fitting_ratio["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 4, "durationUnit": "h"}}
    capped = medication_request("ket-cap", KETAMINE, IV, rate=(24.5, "mg/h"))
    capped["dosageInstruction"][0]["maxDosePerAdministration"] = {"value": 70, "unit": "mg/h", "system": UCUM,
                                                                  "code": "mg/h"}
    for order in (ratio, rate_range, fitting_ratio, capped):
        MedicationRequest.model_validate(order)
    result = cards_alone(client, [ratio, rate_range, fitting_ratio, capped], weight=weight_bundle(70))
    assert [c["indicator"] for c in result] == ["critical", "critical", "info", "critical"], [
        c["summary"] for c in result]
    assert "ketamine 24.5 mg/h intravenous route" in result[2]["summary"]  # 49 mg per 2 h
    assert f"Body weight used: 70 kg (observed {RECENT})" in result[0]["detail"]


def test_meal_codes_days_of_week_unreadable_rates_and_prn_orders(client):
    """Found in review: "C" (with meals) and dayOfWeek [mon, wed, fri] counted as one dose; a rate-only
    entry whose rateRatio is no exact rate got no card at all (as if no protocol applied); an
    as-needed order with no timing or maximum read "info"."""
    create(client)  # Spravato-like: 56-84 mg twice weekly, at most 84 mg per P1D
    with_meals = _esketamine_order("esk-c", timing={"repeat": {"when": ["C"], "period": 1, "periodUnit": "d"}})
    three_days = _esketamine_order("esk-dow", dose=56, timing={"repeat": {
        "frequency": 1, "period": 1, "periodUnit": "wk", "dayOfWeek": ["mon", "wed", "fri"]}})
    prn = _esketamine_order("esk-prn", dose=56, asNeededBoolean=True)
    thirds = medication_request("esk-ratio", ESKETAMINE, NASAL)
    thirds["dosageInstruction"][0]["doseAndRate"][0] = {"rateRatio": {
        "numerator": {"value": 100, "unit": "mg", "system": UCUM, "code": "mg"},
        "denominator": {"value": 3, "unit": "h", "system": UCUM, "code": "h"}}}
    MedicationRequest.model_validate(thirds)
    result = cards(client, hook_request([with_meals, three_days, prn, thirds]))
    assert [c["indicator"] for c in result] == ["critical", "warning", "warning", "warning"], [
        c["summary"] for c in result]
    assert result[1]["summary"].startswith("more frequent than the protocol")
    assert "partly checked" in result[2]["summary"] and "as needed" in result[2]["detail"]
    assert result[3]["summary"].startswith("dose not checked") and "rateRatio" in result[3]["detail"]


def test_days_of_the_week_times_their_doses_and_listed_times_are_never_read_as_fewer_doses(client):
    """Found by a clinical QA probe (2026-12-03, seventh session): MON and THU with MORN and EVE (four
    doses a week, 168 mg on each dosing day) were counted as two a week, and three 84 mg administrations
    listed in timing.event on one day as one dose: both read "info, within protocol range" against at
    most 84 mg a day. Days of the week without a period repeat weekly."""
    create(client)  # Spravato-like: 56-84 mg twice weekly, at most 84 mg per P1D
    days_and_times = _esketamine_order("esk-dow-when", timing={"repeat": {
        "period": 1, "periodUnit": "wk", "dayOfWeek": ["mon", "thu"], "when": ["MORN", "EVE"]}})
    days_and_clock = _esketamine_order("esk-dow-tod", dose=56, timing={"repeat": {
        "dayOfWeek": ["mon", "thu", "mon"], "timeOfDay": ["08:00:00", "20:00:00"]}})
    listed = _esketamine_order("esk-events", timing={"event": [
        "2026-12-07T09:00:00Z", "2026-12-07T13:00:00Z", "2026-12-07T17:00:00Z"]})
    one_day_a_week = _esketamine_order("esk-dow-once", dose=56, timing={"repeat": {"dayOfWeek": ["mon"]}})
    one_event = _esketamine_order("esk-event", timing={"event": ["2026-12-07T09:00:00Z"]})
    result = cards_alone(client, [days_and_times, days_and_clock, listed, one_day_a_week, one_event])
    assert [c["indicator"] for c in result] == ["critical", "critical", "warning", "info", "info"], [
        c["summary"] for c in result]
    assert all(c["summary"].startswith("exceeds protocol maximum per period") for c in result[:2])
    assert "4 per 1 wk" in result[0]["detail"] and "4 per 1 wk" in result[1]["detail"]  # a repeated day is one day
    assert "partly checked" in result[2]["summary"]
    assert "lists 3 administration times (timing.event)" in result[2]["detail"]


def test_doses_on_named_days_fall_on_those_days_and_stated_weekly_frequencies_are_not_multiplied(client):
    """Found by a probe of the named-days fix: doses on named days were spread over the week, so MON
    morning and evening (168 mg on Monday) read as 84 mg a day, "info, within range" (the old code had
    at least said "partly checked"); and a stated 2 a week on MON and THU "with meals" was multiplied to
    six a week, and two identical times of day counted twice: false critical cards."""
    create(client)  # Spravato-like: 56-84 mg twice weekly, at most 84 mg per P1D
    orders = [
        _esketamine_order("mon-twice", timing={"repeat": {"dayOfWeek": ["mon"], "when": ["MORN", "EVE"]}}),
        _esketamine_order("mon-freq", timing={"repeat": {"dayOfWeek": ["mon"], "frequency": 2}}),
        _esketamine_order("mon-weekly", timing={"repeat": {"dayOfWeek": ["mon"], "frequency": 2, "period": 1,
                                                           "periodUnit": "wk"}}),
        _esketamine_order("meals-stated", dose=56, timing={"repeat": {
            "frequency": 2, "period": 1, "periodUnit": "wk", "dayOfWeek": ["mon", "thu"], "when": ["C"]}}),
        _esketamine_order("same-time", dose=56, timing={"repeat": {
            "dayOfWeek": ["mon", "thu"], "timeOfDay": ["08:00:00", "08:00:00"]}}),
    ]
    result = cards_alone(client, orders)
    assert [c["indicator"] for c in result] == ["critical", "critical", "critical", "info", "info"], [
        c["summary"] for c in result]
    assert all("168 mg per P1D" in c["detail"] for c in result[:3]), [c["detail"] for c in result[:3]]
    assert "2 on each of 1 named day" in result[0]["detail"]


@pytest.mark.parametrize(("maximum", "protocol_frequency", "timing", "expected"), [
    # Found by the third probe of the named-days fix (hand calculations in the ids):
    # a stated frequency no longer hides named times: 2 x 60 on Monday = 120 mg a week > 100.
    ((100, "P1W"), None, {"frequency": 1, "period": 1, "periodUnit": "wk", "dayOfWeek": ["mon"],
                          "timeOfDay": ["08:00:00", "20:00:00"]}, "critical"),
    # MORN and EVE on Monday: 120 mg that day > 100.
    ((100, "P1D"), None, {"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "wk",
                          "dayOfWeek": ["mon", "thu"], "when": ["MORN", "EVE"]}, "critical"),
    # two of 40 mg on Monday against once a day: more often, whatever the weekly average (80 mg stays
    # within what the regimen gives in a day, 84; at 60 mg it is 120, past it: critical).
    (None, (1, "P1D"), {"dayOfWeek": ["mon"], "when": ["MORN", "EVE"], "_dose": 40}, "warning"),
    (None, (1, "P1D"), {"dayOfWeek": ["mon"], "when": ["MORN", "EVE"]}, "critical"),
    # every day, morning and evening, reads as the same order without days against 100 mg per 12 h.
    ((100, "PT12H"), None, {"dayOfWeek": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                            "when": ["MORN", "EVE"]}, "info"),
    # MON and THU are never two days apart: one 60 mg dose in any 2 days.
    ((100, "P2D"), None, {"dayOfWeek": ["mon", "thu"]}, "info"),
    # ... but MON and TUE are: 120 mg.
    ((100, "P2D"), None, {"dayOfWeek": ["mon", "tue"]}, "critical"),
    # 80 mg over 30 h started Monday morning and evening: a day from Monday 20:00 holds ~42 h of
    # infusion, 112 mg > 100 (read as 24 h, 64 mg, with the week's spacing).
    ((100, "P1D"), None, {"dayOfWeek": ["mon"], "when": ["MORN", "EVE"], "duration": 30, "durationUnit": "h",
                          "_dose": 80}, "critical"),
    # Found by the fourth probe (a brute-force model of named-day infusions):
    # 84 mg over 72 h on MON and WED: Wed 08:00-Fri 08:00 holds 28 + 56 = 84 mg > 70.
    ((70, "P2D"), None, {"dayOfWeek": ["mon", "wed"], "duration": 72, "durationUnit": "h", "_dose": 84}, "critical"),
    # 60 mg over 72 h on SUN and MON (wrapping the week): 80 mg in two days > 60.
    ((60, "P2D"), None, {"dayOfWeek": ["sun", "mon"], "duration": 72, "durationUnit": "h"}, "critical"),
    # one 100 mg infusion over 100 h a week: at most 24 mg in a day <= 50 (read as daily: 100 mg).
    ((50, "P1D"), None, {"dayOfWeek": ["mon"], "duration": 100, "durationUnit": "h", "_dose": 100}, "info"),
    # 80 mg over 30 h on Monday morning and evening: at most 112 mg in a day <= 120.
    ((120, "P1D"), None, {"dayOfWeek": ["mon"], "when": ["MORN", "EVE"], "duration": 30, "durationUnit": "h",
                          "_dose": 80}, "info"),
    # MON and TUE against once every two days, and MON and WED against once every three: more often.
    (None, (1, "P2D"), {"dayOfWeek": ["mon", "tue"], "_dose": 40}, "warning"),
    (None, (1, "P3D"), {"dayOfWeek": ["mon", "wed"], "_dose": 40}, "warning"),
], ids=["stated-plus-times", "frequencymax-plus-when", "crowded-day", "crowded-day-regimen", "seven-days", "apart",
        "adjacent", "overlapping-infusions", "long-apart-infusions", "long-wrapping-infusions", "weekly-long-infusion",
        "morning-evening-infusions", "two-days-running", "two-days-apart"])
def test_named_days_against_hand_calculations(client, maximum, protocol_frequency, timing, expected):
    dosing_range: dict[str, Any] = {"route": NASAL, "phase": "induction", "dose_min": 40, "dose_max": 100,
                                    "unit": "mg"}
    if maximum:
        dosing_range["max_per_period"] = {"value": maximum[0], "unit": "mg", "period": maximum[1]}
    if protocol_frequency:
        dosing_range["frequency"] = {"count": protocol_frequency[0], "period": protocol_frequency[1]}
    create(client, dosing_ranges=[dosing_range])
    timing = dict(timing)
    dose = timing.pop("_dose", 60)
    (card,) = cards(client, hook_request([_esketamine_order("named", dose=dose, timing={"repeat": timing})]))
    assert card["indicator"] == expected, (card["summary"], card["detail"])


# ------------------------------------------------- clinical QA probe (2026-12-03, third session)


def test_an_infusion_is_judged_for_as_long_as_the_order_runs_it(client):
    """0.35 mg/kg/h for 24 h a day (504 mg at 60 kg) read "Per-period maximum respected: 84 mg" against
    100 mg a day: the check assumed the protocol's 4-hour infusion and never read the order's duration."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "frequency": {"count": 1, "period": "P1D"}, "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    four = medication_request("crps-4h", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    day = medication_request("crps-24h", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    four["dosageInstruction"][0]["timing"]["repeat"].update(duration=4, durationUnit="h")
    day["dosageInstruction"][0]["timing"]["repeat"].update(duration=24, durationUnit="h")
    up_to_day = medication_request("crps-max", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    up_to_day["dosageInstruction"][0]["timing"]["repeat"].update(duration=4, durationMax=24, durationUnit="h")
    months = medication_request("crps-mo", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    months["dosageInstruction"][0]["timing"]["repeat"].update(duration=1, durationUnit="mo")
    result = cards_alone(client, [four, day, up_to_day, months], weight=weight_bundle(60))
    assert [c["indicator"] for c in result] == ["info", "critical", "critical", "warning"], result
    assert "504 mg per P1D > maximum 100 mg" in result[1]["detail"]
    assert "504 mg per P1D > maximum 100 mg" in result[2]["detail"]  # the longest the order allows
    assert "duration (1 mo) could not be read" in result[3]["detail"]


def test_a_rate_ordered_with_its_dose_is_judged_as_that_dose(client):
    """The Ketalar label's alternative induction, 1-2 mg/kg at 0.5 mg/kg/min: 140 mg at 0.5 mg/kg/min
    for 70 kg (4 minutes) read "below protocol minimum", the rate taken over the label's 60 s bolus."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                              "unit": "mg/kg", "duration": "PT60S"}])
    order = medication_request("ket-slow", KETAMINE, IV, dose=(140, "mg"), rate=(0.5, "mg/kg/min"))
    result = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert result[0]["indicator"] == "info", result[0]
    assert "4 min (140 mg at 0.5 mg/kg/min)" in result[0]["detail"]


def test_a_dose_in_ml_is_checked_through_the_ordered_products_strength(client):
    """3.5 mL of a 100 mg/mL product (350 mg, 5 mg/kg at 70 kg) read "dose not checked ... send
    concentration" though the order's contained Medication states its strength."""
    ketamine_protocol(client)  # 1-4.5 mg/kg IV
    order = medication_request("ket-ml", KETAMINE, IV, dose=(3.5, "mL"))
    concept = order.pop("medicationCodeableConcept")
    order["contained"] = [{"resourceType": "Medication", "id": "med", "code": concept, "ingredient": [{
        "itemCodeableConcept": concept, "strength": {
            "numerator": {"value": 100, "unit": "mg", "system": UCUM, "code": "mg"},
            "denominator": {"value": 1, "unit": "mL", "system": UCUM, "code": "mL"}}}]}]
    order["medicationReference"] = {"reference": "#med"}
    MedicationRequest.model_validate(order)
    result = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert result[0]["indicator"] == "critical" and "above protocol maximum" in result[0]["summary"], result[0]
    order["contained"][0]["ingredient"][0]["strength"]["numerator"]["value"] = 50  # 175 mg: 2.5 mg/kg
    assert cards(client, hook_request([order], weight=weight_bundle(70)))[0]["indicator"] == "info"


def test_orders_coded_by_product_or_a_specific_subcode_reach_their_protocol(client):
    """Ketamine ordered as the Ketalar product (RxCUI 206967, as EHRs code orders) matched no protocol
    coded by the ingredient (6130) and got no card at all; an order for F33.2 fell back to every ketamine
    protocol though one lists F33.9 (recurrent MDD, unspecified). A specific code matches an
    unspecified one of its subcategory only: R45.850 (homicidal) is not R45.851 (suicidal)."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    anaesthesia = ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        icd, "F33.9", "Major depressive disorder, recurrent, unspecified"))
    suicidal = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(icd, "R45.851", "Suicidal ideations"))
    ketalar = [{"system": RXNORM, "code": "206967", "display": "Ketalar 10 MG/ML Injectable Solution"}]
    by_product = medication_request("ket-brand", ketalar, IV, dose=(140, "mg"))
    assert len(cards(client, hook_request([by_product], weight=weight_bundle(70)))) == 3
    specific = medication_request("ket-f332", ketalar, IV, dose=(35, "mg"), reason=(icd, "F33.2"))
    (card,) = cards(client, hook_request([specific], weight=weight_bundle(70)))
    assert depression["id"] in card["source"]["label"], card["source"]
    other = medication_request("ket-r45850", ketalar, IV, dose=(35, "mg"), reason=(icd, "R45.850"))
    labels = [c["source"]["label"] for c in cards(client, hook_request([other], weight=weight_bundle(70)))]
    assert len(labels) == 3 and any(anaesthesia["id"] in label for label in labels)  # no narrowing
    exact = medication_request("ket-r45851", ketalar, IV, dose=(35, "mg"), reason=(icd, "R45.851"))
    (card,) = cards(client, hook_request([exact], weight=weight_bundle(70)))
    assert suicidal["id"] in card["source"]["label"]
    unknown = [{"system": RXNORM, "code": "999999", "display": "something else"}]
    assert cards(client, hook_request([medication_request("x", unknown, IV, dose=(140, "mg"))],
                                      weight=weight_bundle(70))) == []


def test_an_unspecified_code_covers_the_same_disorder_only(client):
    """F32.9 (major depressive disorder, single episode, unspecified) covered every code of F32, so an
    order for premenstrual dysphoric disorder (F32.81) or "depression, unspecified" (F32.A) read as one
    the MDD protocol treats, and its card lost the off-indication sentence (found by a clinical data
    audit). An MDD code (F32.2) is still covered; other disorders get the sentence."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        icd, "F32.9", "Major depressive disorder, single episode, unspecified"))
    for reason, treated in (("F32.2", True), ("F32.4", True), ("F32.81", False), ("F32.A", False),
                            ("F32.89", False)):
        order = medication_request(f"ket-{reason}", KETAMINE, IV, dose=(35, "mg"), reason=(icd, reason))
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        off_indication = f"None of the order's indications ({reason}) is listed" in card["detail"]
        assert off_indication is not treated, (reason, card["detail"])


# ---------------------------------------------------- adversarial probe (2026-12-03, fifth session)


def _with_strength(order: dict[str, Any], numerator: Any, denominator: Any) -> dict[str, Any]:
    concept = order.pop("medicationCodeableConcept")
    order["contained"] = [{"resourceType": "Medication", "id": "med", "code": concept, "ingredient": [{
        "itemCodeableConcept": concept, "strength": {
            "numerator": {"value": numerator, "unit": "mg", "system": UCUM, "code": "mg"},
            "denominator": {"value": denominator, "unit": "mL", "system": UCUM, "code": "mL"}}}]}]
    order["medicationReference"] = {"reference": "#med"}
    return order


def test_a_rate_in_ml_per_hour_its_amount_contradicts_at_the_products_strength_is_judged_and_named(client):
    """Found by a clinical probe: "35 mg in 100 mL over 40 min" (150 mL/h) of a 10 mg/mL ketamine, the
    usual depression infusion, reads the rate through the vial's strength as 1,000 mg ("14.3 mg/kg"), a
    critical card beside its own 35 mg. The bag's concentration is not sent. Not judging the rate hid a
    premixed bag's overdose (35 mg at 150 mL/h of a 1 mg/mL product over 40 min is 100 mg; a review), so
    the rate is judged at the product's strength and the card names the disagreement. A rate that agrees
    with an amount (within 1 %, or with either end of a dose range) gets no note."""
    ketamine_protocol(client, dose_min=0.5, dose_max=0.5, dosing_ranges=[{
        "route": IV, "phase": "induction", "dose_min": 0.5, "dose_max": 0.5, "unit": "mg/kg", "duration": "PT40M"}])

    def card_for(dose: Any, rate: Any, strength: Any = 10, dose_range: tuple[Any, Any] | None = None
                 ) -> dict[str, Any]:
        order = _with_strength(medication_request("ket", KETAMINE, IV, dose=None if dose_range else (dose, "mg"),
                                                  dose_range=(*dose_range, "mg") if dose_range else None,
                                                  rate=(rate, "mL/h")), strength, 1)
        order["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 40, "durationUnit": "min"}}
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        return card

    said = ("the rate 150 mL/h and the amount ordered with it disagree at the product's strength (10 mg/mL): the "
            "rate gives 1000 mg over 40 min, not 35 mg; both were judged, the rate at that strength, so if the "
            "infusion is diluted its verdict is not about what runs")
    diluted = card_for(35, 150)
    assert diluted["indicator"] == "critical" and said in diluted["detail"], diluted["detail"]
    premixed = card_for(35, 150, strength=1)  # 100 mg over 40 min: 1.43 mg/kg, an overdose (a review)
    assert premixed["indicator"] == "critical" and "the rate gives 100 mg over 40 min, not 35 mg" in premixed["detail"]
    # 5 % apart is no rounding (36.75 mg against 35 mg), 0.6 % is (35.2 mg): the tolerance is 1 %
    assert "disagree at the product's strength" in card_for(35, 5.5125)["detail"]
    assert "disagree at the product's strength" not in card_for(35, 5.28)["detail"]
    assert card_for(35, 5.25)["indicator"] == "info"  # 35 mg at 5.25 mL/h of 10 mg/mL over 40 min: in range
    ranged = card_for(None, 5.25, dose_range=(30, 35))  # the rate gives the range's top: it agrees (a review)
    assert "disagree at the product's strength" not in ranged["detail"]


def test_a_weight_based_range_capped_for_heavy_patients_is_judged_against_its_cap(client):
    """Found by a docs probe: CRPS ketamine at 49 mg/h for 2 h, 140 kg, got an info card: 0.35 mg/kg/h is
    49 mg/h at 140 kg, and the trial's cap ("not to exceed 25 mg/h") was in the instructions only. The
    range's absolute maximum caps it; without a weight a dose per kg is judged per kg and the cap is said
    not applied."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "absolute_max": {"value": 25, "unit": "mg/h"}}])

    def card_for(rate: tuple[Any, str], hours: int, weight: Any = None) -> dict[str, Any]:
        order = medication_request("ket", KETAMINE, IV, rate=rate)
        order["dosageInstruction"][0]["timing"] = {"repeat": {"duration": hours, "durationUnit": "h"}}
        (card,) = cards(client, hook_request([order], weight=None if weight is None else weight_bundle(weight)))
        return card

    fast = card_for((49, "mg/h"), 2, 140)
    assert fast["indicator"] == "critical" and fast["summary"].startswith("above protocol maximum: ")
    assert "0.35 mg/kg/h \u00d7 140 kg = 49 mg/h, at most 25 mg/h whatever the weight: 25 mg/h" in fast["detail"]
    assert card_for((25, "mg/h"), 4, 90)["indicator"] == "info"
    assert card_for((24.5, "mg/h"), 4, 70)["indicator"] == "info"  # 0.35 mg/kg/h at 70 kg: under the cap
    per_kg = card_for((0.35, "mg/kg/h"), 4)
    assert per_kg["indicator"] == "warning" and "partly checked" in per_kg["summary"]
    assert "the protocol's absolute maximum (25 mg/h whatever the weight) was not applied: no body weight" in (
        per_kg["detail"])


def test_a_push_faster_than_the_ranges_shortest_administration_time_is_a_warning(client):
    """Found by a clinical probe: Ketalar 70 mg IV over 15 s for a 70 kg patient (1 mg/kg; the label: "over a
    period of 60 seconds") got an info card, since read as a rate it was under 4.5 mg/kg per 60 s. A range's
    shortest administration time holds for every dose: the card says so and is a warning."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg", "duration": "PT60S",
        "duration_min": "PT60S"}])

    def card_for(seconds: int) -> dict[str, Any]:
        order = medication_request("ket", KETAMINE, IV, dose=(70, "mg"))
        order["dosageInstruction"][0]["timing"] = {"repeat": {"duration": seconds, "durationUnit": "s"}}
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        return card

    fast = card_for(15)
    assert fast["indicator"] == "warning", fast
    assert "the protocol gives each dose over at least PT60S" in fast["detail"]
    assert card_for(60)["indicator"] == "info"
    # Given over 30 to 90 s, it may be pushed in 30: judged and named at that (a review: it read "over 90 s")
    order = medication_request("ket", KETAMINE, IV, dose=(70, "mg"))
    order["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 30, "durationMax": 90, "durationUnit": "s"}}
    (ranged,) = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert ranged["indicator"] == "warning"
    assert "1 mg/kg over 30 s; the protocol gives each dose over at least PT60S" in ranged["detail"], ranged["detail"]


def test_a_dose_with_a_comparator_is_partly_checked_whichever_way_it_points(client):
    """Found by a clinical probe: "<140 mg" (any dose under 140 mg) was judged as exactly 140 mg, a full
    pass against 70-315 mg; ">= 140 mg" was already "partly checked". FHIR's SimpleQuantity allows no
    comparator in doseQuantity, but the service reads what it is sent."""
    ketamine_protocol(client)
    for comparator, note in (("<", "bounded above only (\\< 140 mg)"), ("<=", "bounded above only (\\<= 140 mg)"),
                             (">=", "open-ended (>= 140 mg)")):
        order = medication_request("ket", KETAMINE, IV, dose=(140, "mg"))
        order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["comparator"] = comparator
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        assert card["indicator"] == "warning" and "partly checked" in card["summary"], comparator
        assert note in card["detail"], comparator


def test_a_strength_in_thirds_is_exact_at_the_range_edges(client):
    """3 mL of 100 mg per 3 mL is exactly 100 mg: divided as a 28-digit Decimal first it read 'below
    protocol minimum' against 100-200 mg, and 3 mL of 200 mg per 3 mL read 'above maximum' (critical)."""
    ketamine_protocol(client, dose_min=100, dose_max=200, unit="mg")
    low = _with_strength(medication_request("third-lo", KETAMINE, IV, dose=(3, "mL")), 100, 3)
    high = _with_strength(medication_request("third-hi", KETAMINE, IV, dose=(3, "mL")), 200, 3)
    over = _with_strength(medication_request("third-over", KETAMINE, IV, dose=(3.01, "mL")), 200, 3)
    result = cards_alone(client, [low, high, over])
    assert [c["indicator"] for c in result] == ["info", "info", "critical"], result


def test_strength_and_timing_numbers_no_arithmetic_can_take_are_not_used_and_never_a_500(client):
    """A strength of 0 mg per 3 mL divided by zero and 1e5000 h as a duration or period overflowed the
    text of a message (500s); a negative strength made '3 mL (= -300 mg)'. They are not used: the dose
    in mL is not checked, the timing could not be read. A zero duration or period and more than 12
    significant digits are valid FHIR (tim-4, tim-5) and never refuse the hook call (a first fix did:
    a 400 for the whole request, so no card for any order in it)."""
    ketamine_protocol(client, dose_min=100, dose_max=200, unit="mg")
    for numerator, denominator in ((0, 3), (-100, 1), (100, 0), ("1e5000", 1)):
        order = _with_strength(medication_request("odd-strength", KETAMINE, IV, dose=(3, "mL")), 1, 1)
        text = json.dumps(hook_request([order]))
        text = text.replace('"value": 1, "unit": "mg"', f'"value": {numerator}, "unit": "mg"')
        text = text.replace('"value": 1, "unit": "mL"', f'"value": {denominator}, "unit": "mL"')
        response = client.post("/cds-services/protocol-dose-check", data=text, content_type="application/json")
        assert response.status_code == 200, (numerator, denominator, response.get_json())
        (card,) = response.get_json()["cards"]
        assert card["indicator"] == "warning" and "not checked" in card["summary"], card
    over = medication_request("too-much", KETAMINE, IV, dose=(300, "mg"), frequency=(1, 1, "d"))
    timings = (("duration", "durationUnit", "h", "1e5000"), ("period", "periodUnit", "d", "1e5000"),
               ("duration", "durationUnit", "h", "0"), ("period", "periodUnit", "h", "0"),
               ("period", "periodUnit", "h", "0.30000000000000004"))
    for name, unit_name, unit, value in timings:
        odd = medication_request("odd-timing", KETAMINE, IV, dose=(150, "mg"), frequency=(1, 1, "d"))
        odd["dosageInstruction"][0]["timing"]["repeat"].update({name: 1, unit_name: unit})
        text = json.dumps(hook_request([odd, over])).replace(f'"{name}": 1,', f'"{name}": {value},', 1)
        response = client.post("/cds-services/protocol-dose-check", data=text, content_type="application/json")
        assert response.status_code == 200, (name, value, response.get_json())
        cards_ = response.get_json()["cards"]
        assert [c["indicator"] for c in cards_][-1] == "critical", (name, value, cards_)  # the other order's card


def test_a_maximum_per_period_that_could_not_be_applied_keeps_the_card_from_green(client):
    """20 mg/h once a day against 10-20 mg/h, at most 100 mg a day, with no duration in the protocol or
    the order: the day's amount cannot be projected (the detail said so) and the card was the green
    'within protocol range' (run for 24 h it is 480 mg). With the order's 4 h it is 80 mg: green."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 10, "dose_max": 20,
                                              "unit": "mg/h",
                                              "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    open_ended = medication_request("no-duration", KETAMINE, IV, rate=(20, "mg/h"), frequency=(1, 1, "d"))
    four_hours = medication_request("four-hours", KETAMINE, IV, rate=(20, "mg/h"), frequency=(1, 1, "d"))
    four_hours["dosageInstruction"][0]["timing"]["repeat"].update(duration=4, durationUnit="h")
    result = cards_alone(client, [open_ended, four_hours])
    assert [c["indicator"] for c in result] == ["warning", "info"], result
    assert "partly checked" in result[0]["summary"]
    assert "maximum per period could not be applied" in result[0]["detail"]
    assert "80 mg per P1D" in result[1]["detail"]


# ------------------------------------- one hook call, one instant, one state of the history


def _esketamine_history(client: Any, *later: tuple[str, int, int]) -> dict[str, Any]:
    """Version 1 (in effect since 2020: 28-56 mg nasal) and one version per ``(effective_from, min, max)``."""
    payload = create(client, effective_from="2020-01-01T00:00:00Z", dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 28, "dose_max": 56, "unit": "mg"}])
    for effective_from, low, high in later:
        _revise(client, payload, effective_from, low, high)
    return payload


def _revise(client: Any, payload: dict[str, Any], effective_from: str, low: int, high: int) -> None:
    newest = client.get(f"/v1/protocols/{payload['id']}/versions/latest")
    revised = dict(payload, effective_from=effective_from, dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": low, "dose_max": high, "unit": "mg"}])
    response = client.put(f"/v1/protocols/{payload['id']}", json=revised, headers={"If-Match": newest.headers["ETag"]})
    assert response.status_code == 201, response.get_json()


def _two_orders() -> dict[str, Any]:
    return hook_request([medication_request("esk-a", ESKETAMINE, NASAL, dose=(84, "mg")),
                         medication_request("esk-b", ESKETAMINE, NASAL, dose=(84, "mg"))])


def _judged(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(card["source"]["topic"]["code"].rsplit("/", 1)[1], card["indicator"]) for card in found]


def test_one_hook_call_judges_every_order_at_one_instant(client, monkeypatch):
    """Two orders signed together straddling the moment a scheduled version takes effect: both are
    judged against the version in effect when the call began, never one against each (each order read
    its own "now", and the first got 84 mg "above maximum" from version 1, the second "within range"
    from version 2, for the same dose in the same signing)."""
    _esketamine_history(client, ("2030-01-01T00:00:00Z", 84, 112))
    switch = datetime(2030, 1, 1)  # naive UTC, as utcnow() returns
    clock = iter([switch - timedelta(milliseconds=1)] + [switch + timedelta(milliseconds=n) for n in range(1, 100)])
    monkeypatch.setattr(search, "utcnow", lambda: next(clock))
    monkeypatch.setattr(cds, "utcnow", lambda: switch - timedelta(milliseconds=1))
    assert _judged(cards(client, _two_orders())) == [("1", "critical"), ("1", "critical")]


def test_one_hook_call_reads_one_state_of_the_history(client, monkeypatch):
    """A back-dated correction committed while a hook call is judging its orders changes none of that
    call's cards (the orders of one signing are judged in one snapshot), and every card of the next call."""
    payload = _esketamine_history(client)
    lookup = search.applicable_protocols
    corrected: list[bool] = []

    def correct_after_first_lookup(*args: Any, **kwargs: Any) -> Any:
        found = lookup(*args, **kwargs)
        if not corrected:
            corrected.append(True)
            _revise(client, payload, "2021-01-01T00:00:00Z", 84, 112)
        return found

    monkeypatch.setattr(search, "applicable_protocols", correct_after_first_lookup)
    assert _judged(cards(client, _two_orders())) == [("1", "critical"), ("1", "critical")]
    assert corrected
    monkeypatch.setattr(search, "applicable_protocols", lookup)
    # within range (warnings: two orders of one protocol in one call are not added up)
    assert _judged(cards(client, _two_orders())) == [("2", "warning"), ("2", "warning")]


def test_a_bounded_infusion_runs_its_bounds_and_a_fast_push_is_never_an_info_card(client):
    """A review of the probe fixes: a rate bounded by ``boundsDuration`` (25 mg/h for 4 h, no frequency)
    was projected as running without a stop, 600 mg a day against a cap of 100 (a critical card for an
    order that gives exactly 100 mg); and a dose given faster than the protocol gives it reads "within
    protocol range, given faster than the protocol" (a warning), taking ``duration`` below
    ``durationMax`` as the shortest it may run."""
    ketamine_protocol(client, dose_min=10, dose_max=40, unit="mg/h",
                      dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 10, "dose_max": 40,
                                      "unit": "mg/h", "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    bounded = medication_request("ket-bounded", KETAMINE, IV, rate=(25, "mg/h"))
    bounded["dosageInstruction"][0]["timing"] = {"repeat": {"boundsDuration": {
        "value": 4, "unit": "h", "system": UCUM, "code": "h"}}}
    (card,) = cards(client, hook_request([bounded]))
    assert card["indicator"] == "info", card
    unbounded = medication_request("ket-unbounded", KETAMINE, IV, rate=(25, "mg/h"))
    (card,) = cards(client, hook_request([unbounded]))
    assert card["indicator"] == "critical" and "run without a stop" in card["detail"], card

    push = ketamine_protocol(client, protocol_id="ketamine-slow-push",
                             dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                             "unit": "mg/kg", "duration": "PT60S"}])
    assert push
    fast = medication_request("ket-fast", KETAMINE, IV, dose=(2, "mg/kg"), reason=(SNOMED, "399097000"))
    fast["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 5, "durationMax": 60, "durationUnit": "s"}}
    by_protocol = {c["source"]["topic"]["code"].split("/")[0]: c
                   for c in cards(client, hook_request([fast], weight=weight_bundle(70)))}
    card = by_protocol["ketamine-slow-push"]
    assert card["indicator"] == "warning", card
    assert card["summary"].startswith("within protocol range, given faster than the protocol"), card["summary"]
    assert "Given faster than the protocol: 2 mg/kg over" in card["detail"]


def test_a_timing_whose_count_is_one_is_one_administration(client):
    """``timing.repeat.count`` was never read: "56 mg once a day, 1 time in all" was judged as a daily
    regimen, more frequent than a twice-weekly protocol (a critical card for a single in-range dose;
    found in review). With a count of 1 it is one administration; a larger count stays the schedule."""
    create(client)  # Spravato-like: 56-84 mg twice weekly, at most 84 mg per P1D
    daily = {"frequency": 1, "period": 1, "periodUnit": "d"}
    once = _esketamine_order("esk-count-1", dose=56, timing={"repeat": {**daily, "count": 1}})
    course = _esketamine_order("esk-count-5", dose=56, timing={"repeat": {**daily, "count": 5}})
    single, repeated = cards_alone(client, [once, course])
    assert single["indicator"] == "info", single["summary"]
    assert repeated["indicator"] == "critical", repeated["summary"]


def test_an_infusion_run_longer_than_the_protocol_runs_it_is_never_a_green_card(client):
    """Found by an adversarial probe of the REST check: a range of rates with a duration (0.35 mg/kg/h for
    4 h daily, no maximum per period) judged 5.5 h of it on the rate alone. Once a day it is more than
    the regimen gives (critical); without timing it is one administration, and that one gives more in
    a day than the regimen does (critical too: a review found the verdict hung on the optional
    frequency); for 4 h it stays a plain pass."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "frequency": {"count": 1, "period": "P1D"}}])
    four = medication_request("crps-4h", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    four["dosageInstruction"][0]["timing"]["repeat"].update(duration=4, durationUnit="h")
    daily = medication_request("crps-5.5h-daily", KETAMINE, IV, rate=(0.35, "mg/kg/h"), frequency=(1, 1, "d"))
    daily["dosageInstruction"][0]["timing"]["repeat"].update(duration=5.5, durationUnit="h")
    once = medication_request("crps-5.5h", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    once["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 5.5, "durationUnit": "h"}}
    result = cards_alone(client, [four, daily, once], weight=weight_bundle(60))
    assert [c["indicator"] for c in result] == ["info", "critical", "critical"], [c["summary"] for c in result]
    assert "Regimen exceeded" in result[1]["detail"] and "Regimen exceeded" in result[2]["detail"]
    assert "Given for longer than the protocol: 0.35 mg/kg/h for" in result[2]["detail"]


def test_an_infusion_run_longer_than_a_range_without_a_schedule_is_a_warning_that_says_so(client):
    """A range of rates with a duration and no frequency has no regimen to compare amounts with: the
    longer administration is named, and the card is never "info"."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    once = medication_request("crps-5.5h", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    once["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 5.5, "durationUnit": "h"}}
    (card,) = cards(client, hook_request([once], weight=weight_bundle(60)))
    assert card["indicator"] == "warning" and "given for longer than the protocol" in card["summary"], card["summary"]
    assert "Given for longer than the protocol: 0.35 mg/kg/h for" in card["detail"]


def test_a_pump_rate_in_lower_case_millilitres_is_read(client):
    """Found in review: UCUM's lower-case litre (``ml/h``, a strength per ``ml``) was refused once ordered
    units were held to the units doses are written in, and 10 ml/h of 10 mg/mL (100 mg/h, 3.6 times the
    maximum at 80 kg) turned from a critical card into "dose not checked"."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.25, "dose_max": 0.35,
                                              "unit": "mg/kg/h"}])
    orders = []
    for index, (rate_unit, per) in enumerate([("ml/h", "mL"), ("mL/h", "ml"), ("ml/h", "ml")]):
        order = medication_request(f"ml-{index}", KETAMINE, IV, rate=(10, rate_unit))
        del order["medicationCodeableConcept"]
        order["contained"] = [{"resourceType": "Medication", "id": "m", "code": {"coding": KETAMINE},
                               "ingredient": [{"itemCodeableConcept": {"text": "ketamine"}, "strength": {
                                   "numerator": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"},
                                   "denominator": {"value": 1, "unit": per, "system": UCUM, "code": per}}}]}]
        order["medicationReference"] = {"reference": "#m"}
        MedicationRequest.model_validate(order)
        orders.append(order)
    result = cards(client, hook_request(orders, weight=weight_bundle(80)))
    assert [(c["indicator"], c["summary"].split(":")[0]) for c in result] == [
        ("critical", "above protocol maximum")] * 3, [c["summary"] for c in result]


def test_a_line_two_evaluations_share_is_shown_once_per_range(client):
    """Found in review: a dose range (two ends) or a dose with its rate is two evaluations of one range,
    and "Not checked: the order repeats its dose" (now one of each evaluation's messages) was shown twice."""
    ketamine_protocol(client)  # 1-4.5 mg/kg, no frequency
    ranged = medication_request("range-q5min", KETAMINE, IV, dose_range=(140, 210, "mg"), frequency=(1, 5, "min"))
    with_rate = medication_request("rate-q5min", KETAMINE, IV, dose=(140, "mg"), rate=(30, "mg/min"),
                                   frequency=(1, 5, "min"))
    for card in cards(client, hook_request([ranged, with_rate], weight=weight_bundle(70))):
        assert card["detail"].count("Not checked: the order repeats its dose") == 1, card["detail"]
        assert card["indicator"] == "warning" and "partly checked" in card["summary"], card["summary"]


def test_a_count_of_administrations_without_a_period_is_partly_checked(client):
    """Found in review: ``timing.repeat`` with ``count: 3`` and a 4-hour duration, no frequency or period,
    was read as one administration: a green card for three infusions of 0.35 mg/kg/h for 4 h (4.2 mg/kg,
    at most 1.4 a day if given within one). How they fall in a period is not known: "partly checked"."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "frequency": {"count": 1, "period": "P1D"}}])
    three = medication_request("count-3", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    three["dosageInstruction"][0]["timing"] = {"repeat": {"count": 3, "duration": 4, "durationUnit": "h"}}
    one = medication_request("count-1", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    one["dosageInstruction"][0]["timing"] = {"repeat": {"count": 1, "duration": 4, "durationUnit": "h"}}
    partly, plain = cards_alone(client, [three, one], weight=weight_bundle(60))
    assert partly["indicator"] == "warning" and "partly checked" in partly["summary"], partly["summary"]
    assert "the timing gives 3 administrations (repeat.count) with no period" in partly["detail"]
    assert plain["indicator"] == "info", plain["summary"]


def test_an_infusion_bounded_by_a_period_runs_for_that_period_and_one_without_a_duration_is_partly_checked(client):
    """Found by an adversarial probe: 0.35 mg/kg/h bounded by a one-day ``boundsPeriod`` (no duration) was
    judged over the protocol's 4 h, 98 mg a day, a green card; it runs the day: 588 mg against at most
    100. A rate with no duration at all is judged over the protocol's duration, and the card now says so."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    bounded = medication_request("bounded-day", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    bounded["dosageInstruction"][0]["timing"] = {"repeat": {"boundsPeriod": {
        "start": "2026-12-05T08:00:00Z", "end": "2026-12-06T08:00:00Z"}}}
    dated = medication_request("bounded-date", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    dated["dosageInstruction"][0]["timing"] = {"repeat": {"boundsPeriod": {"start": "2026-12-05", "end": "2026-12-05"}}}
    open_ended = medication_request("no-duration", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    for order in (bounded, dated):
        MedicationRequest.model_validate(order)
    result = cards(client, hook_request([bounded, dated, open_ended], weight=weight_bundle(70)))
    assert [c["indicator"] for c in result] == ["critical", "critical", "warning"], [c["summary"] for c in result]
    assert "588 mg per P1D > maximum 100 mg" in result[0]["detail"]
    assert "partly checked" in result[2]["summary"]
    assert dosing.RATE_DURATION_ASSUMED.format(duration="PT4H") in result[2]["detail"]


def test_a_dose_unit_coded_outside_ucum_is_not_read_from_its_text(client):
    """Found by an adversarial probe: ``unit: mg`` with SNOMED CT's code for gram was read as 84 mg, a green
    card for 84 g. A code of another system is not read, and neither is the text beside it."""
    create(client, dosing_ranges=[{"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg"}])
    order = _esketamine_order("coded-gram", dose=84)
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] = {
        "value": 84, "unit": "mg", "system": "http://snomed.info/sct", "code": "258682000"}
    MedicationRequest.model_validate(order)
    (card,) = cards(client, hook_request([order]))
    assert card["indicator"] == "warning" and card["summary"].startswith("dose not checked"), card["summary"]


def test_a_count_caps_the_administrations_a_frequency_gives(client):
    """Found by an adversarial probe: 84 mg once a day, 2 times in all, was projected as 7 doses a week
    (588 mg) against twice weekly, a critical card; it is two doses, 168 mg, as the regimen allows."""
    create(client, dosing_ranges=[{"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg",
                                   "frequency": {"count": 2, "period": "P1W"}}])
    two = _esketamine_order("two-doses", dose=84, timing={"repeat": {"frequency": 1, "period": 1, "periodUnit": "d",
                                                                     "count": 2}})
    daily = _esketamine_order("daily", dose=84, timing={"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}})
    capped, uncapped = cards(client, hook_request([two, daily]))
    assert capped["indicator"] == "warning" and "588 mg" not in capped["detail"], capped["detail"]
    assert capped["summary"].startswith("more frequent than the protocol"), capped["summary"]  # daily, not 2 a week
    assert uncapped["indicator"] == "critical"


def test_a_rate_ratio_whose_denominator_is_no_time_is_not_checked(client):
    """Found by an adversarial probe: a rateRatio of 1 mg per 1 kg was judged as a dose of 1 mg/kg."""
    ketamine_protocol(client)  # 1-4.5 mg/kg
    order = medication_request("ratio-per-kg", KETAMINE, IV)
    order["dosageInstruction"][0]["doseAndRate"][0] = {"rateRatio": {
        "numerator": {"value": 2, "unit": "mg", "system": UCUM, "code": "mg"},
        "denominator": {"value": 1, "unit": "kg", "system": UCUM, "code": "kg"}}}
    MedicationRequest.model_validate(order)
    (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert card["indicator"] == "warning" and card["summary"].startswith("dose not checked"), card["summary"]
    assert "its denominator is no time" in card["detail"]


def test_bounds_are_an_infusions_length_only_without_a_schedule_and_never_a_bolus(client):
    """Found in review: bounds were read as how long an administration runs for any order: a 150 mg bolus
    bounded by two days read as 75 mg a day (a green card against at most 100), and 84 mg on Monday
    morning and evening bounded by a week read as 24 mg a day (a warning, not the critical it is)."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "induction", "dose_min": 0.5, "dose_max": 1, "unit": "mg/kg",
        "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    bolus = medication_request("bolus-bounded", KETAMINE, IV, dose=(150, "mg"))
    bolus["dosageInstruction"][0]["timing"] = {"repeat": {"boundsPeriod": {"start": "2026-12-05", "end": "2026-12-06"}}}
    bolus_duration = medication_request("bolus-bounds-duration", KETAMINE, IV, dose=(150, "mg"))
    bolus_duration["dosageInstruction"][0]["timing"] = {"repeat": {"boundsDuration": {
        "value": 2, "unit": "d", "system": UCUM, "code": "d"}}}
    for order in (bolus, bolus_duration):
        MedicationRequest.model_validate(order)
    result = cards(client, hook_request([bolus, bolus_duration], weight=weight_bundle(150)))
    assert [c["indicator"] for c in result] == ["critical", "critical"], [c["summary"] for c in result]
    create(client, dosing_ranges=[{"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg",
                                   "max_per_period": {"value": 84, "unit": "mg", "period": "P1D"}}])
    monday = _esketamine_order("monday-twice", dose=84, timing={"repeat": {
        "dayOfWeek": ["mon"], "when": ["MORN", "EVE"],
        "boundsPeriod": {"start": "2026-12-07T00:00:00Z", "end": "2026-12-14T00:00:00Z"}}})
    (card,) = cards(client, hook_request([monday]))
    assert card["indicator"] == "critical", card["summary"]


def test_a_scheduled_infusion_without_a_duration_runs_until_its_next_start_within_its_bounds(client):
    """Found in review: 0.35 mg/kg/h once a day (QD, in the morning, or on Mondays) bounded by 24 h, with
    no duration, was judged over the protocol's 4 h (98 mg, a warning) once bounds were kept from
    scheduled orders; it may run until its next start: 24 h, 588 mg against at most 100 mg a day."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H",
        "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    bounds = {"boundsDuration": {"value": 24, "unit": "h", "system": UCUM, "code": "h"}}
    orders = []
    for name, repeat in (("qd", {"frequency": 1, "period": 1, "periodUnit": "d"}), ("morning", {"when": ["MORN"]}),
                         ("monday", {"dayOfWeek": ["mon"]})):
        order = medication_request(f"scheduled-{name}", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
        order["dosageInstruction"][0]["timing"] = {"repeat": {**repeat, **bounds}}
        MedicationRequest.model_validate(order)
        orders.append(order)
    twice = medication_request("scheduled-bid", KETAMINE, IV, rate=(0.35, "mg/kg/h"))
    twice["dosageInstruction"][0]["timing"] = {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d", **bounds}}
    MedicationRequest.model_validate(twice)
    result = cards(client, hook_request([*orders, twice], weight=weight_bundle(70)))
    assert [c["indicator"] for c in result] == ["critical"] * 4, [c["summary"] for c in result]
    assert all("588 mg per P1D > maximum 100 mg" in c["detail"] for c in result), [c["detail"] for c in result]


def test_an_amount_with_no_duration_against_an_infusion_is_partly_checked(client):
    """Found by a clinical probe: 98 mg IV with no duration against 0.35 mg/kg/h for 4 h (70 kg) was judged
    as the protocol's 4 h infusion, a green card, for what may be pushed in a minute (an anaesthetic
    induction dose). It is "partly checked" and says why; with its rate, or its own duration, it is a full
    pass. (A bolus range's duration is its instructions: tests/protocols/test_dosing.py.)"""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.35,
                                              "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    bare = medication_request("crps-bare", KETAMINE, IV, dose=(98, "mg"))
    timed = medication_request("crps-timed", KETAMINE, IV, dose=(98, "mg"))
    timed["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 4, "durationUnit": "h"}}
    at_rate = medication_request("crps-rate", KETAMINE, IV, dose=(98, "mg"), rate=(24.5, "mg/h"))
    partly, full, paired = cards_alone(client, [bare, timed, at_rate], weight=weight_bundle(70))
    assert partly["indicator"] == "warning" and partly["summary"].startswith("within protocol range, partly checked")
    assert dosing.DURATION_ASSUMED.format(duration="PT4H") in partly["detail"]
    assert [full["indicator"], paired["indicator"]] == ["info", "info"]



def test_orders_of_one_medication_in_one_call_are_each_partly_checked(client):
    """Found by a clinical probe: two Spravato orders of 84 mg twice weekly signed together each said "Per-
    period maximum respected: 84 mg per P1D" (together: 168 mg a day). Each order is judged alone, so each
    card now says that their sum was not added up. One order alone, or orders of different medications,
    keep their green cards."""
    create(client)
    ketamine_protocol(client)
    first = medication_request("esk-a", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(2, 1, "wk"))
    second = medication_request("esk-b", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(2, 1, "wk"))
    both = cards(client, hook_request([first, second]))
    assert [c["indicator"] for c in both] == ["warning", "warning"]
    for card in both:
        assert card["summary"].startswith("within protocol range, partly checked")
        assert ("2 orders of this call are for this medication (MedicationRequest/esk-a, "
                "MedicationRequest/esk-b); each was judged alone, and what they give together was not added up"
                in card["detail"])
    assert [c["indicator"] for c in cards(client, hook_request([first]))] == ["info"]
    other_drug = medication_request("ket-1", KETAMINE, IV, dose=(140, "mg"),
                                    reason=(SNOMED, "399097000"))
    assert [c["indicator"] for c in cards(client, hook_request([first, other_drug], weight=weight_bundle(70)))] \
        == ["info", "info"]


def test_without_an_indication_a_breach_of_another_protocol_is_a_warning_while_one_range_holds_the_dose(client):
    """Found by a clinical probe: ketamine 2 mg/kg IV with no reasonCode (the label's average induction dose;
    anaesthesia orders rarely carry one) got a critical card from the depression protocol beside the
    anaesthesia protocol's "within range". While one protocol's range holds the dose, the others' breaches
    are warnings that say so; a dose no range holds stays critical everywhere, and an order that names its
    indication is judged against that protocol alone."""
    anaesthesia = ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"))
    induction = medication_request("ket-2", KETAMINE, IV, dose=(140, "mg"))
    by_protocol = {c["source"]["topic"]["code"].split("/")[0]: c
                   for c in cards(client, hook_request([induction], weight=weight_bundle(70)))}
    assert by_protocol[anaesthesia["id"]]["indicator"] == "info"
    softened = by_protocol[depression["id"]]
    assert softened["indicator"] == "warning" and softened["summary"].startswith("above protocol maximum")
    assert (f"A warning, not critical: the order names no indication, and its dose is within the range of "
            f"protocol {anaesthesia['id']} v1, with nothing left unchecked.") in softened["detail"]

    overdose = medication_request("ket-10", KETAMINE, IV, dose=(700, "mg"))
    assert [c["indicator"] for c in cards(client, hook_request([overdose], weight=weight_bundle(70)))] \
        == ["critical", "critical"]
    for_depression = medication_request("ket-trd", KETAMINE, IV, dose=(140, "mg"),
                                        reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2"))
    (scoped,) = cards(client, hook_request([for_depression], weight=weight_bundle(70)))
    assert scoped["indicator"] == "critical" and f"protocol {depression['id']} v1" in scoped["summary"]


def test_an_old_or_undated_weight_makes_a_weight_based_check_partly_checked(client):
    """Found by a clinical probe: the only weight, 120 kg from 2012, made 500 mg of ketamine IV "within
    range" (4.17 mg/kg) for a patient who may now weigh 60 kg (8.3 mg/kg). A weight older than
    draft_orders.WEIGHT_MAX_AGE, or undated, is still used, and a weight-based card says it may no longer hold;
    a fixed dose does not use it and keeps its green card."""
    ketamine_protocol(client)
    create(client)
    order = medication_request("ket-old", KETAMINE, IV, dose=(500, "mg"))
    (card,) = cards(client, hook_request([order], weight=weight_bundle(120, when="2012-01-01T00:00:00Z")))
    assert card["indicator"] == "warning" and card["summary"].startswith("within protocol range, partly checked")
    assert ("the body weight was observed on 2012-01-01, more than 30 days ago, and may no longer hold; the "
            "weight-based dose was checked with it") in card["detail"]
    edge = f"{days_ago(draft_orders.WEIGHT_MAX_AGE.days - 1)}T00:00:00Z"
    assert [c["indicator"] for c in cards(client, hook_request([order], weight=weight_bundle(120, when=edge)))] \
        == ["info"]
    undated = weight_observation(120)
    del undated["effectiveDateTime"]
    (card,) = cards(client, hook_request([order], weight=undated))
    assert card["indicator"] == "warning" and "the body weight's observation has no date" in card["detail"]
    fixed = medication_request("esk-old", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(2, 1, "wk"))
    (card,) = cards(client, hook_request([fixed], weight=weight_bundle(120, when="2012-01-01T00:00:00Z")))
    assert card["indicator"] == "info"


def test_a_prefetch_the_ehr_could_not_make_is_no_weight_not_a_refused_call(client):
    """CDS Hooks 2.0: a client that could not prefetch sends an OperationOutcome in its place. It was a
    400, and the call's cards (a critical one for 112 mg of esketamine too) were lost (found by a
    conformance probe). It is now no weight, and the cards say what the EHR said."""
    create(client)
    ketamine_protocol(client)
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "timeout", "diagnostics": "Observation search timed out"}]}
    overdose = medication_request("esk-112", ESKETAMINE, NASAL, dose=(112, "mg"), frequency=(2, 1, "wk"))
    by_weight = medication_request("ket-w", KETAMINE, IV, dose=(140, "mg"))
    critical, unchecked = cards_alone(client, [overdose, by_weight], weight=outcome)
    assert critical["indicator"] == "critical"
    assert unchecked["indicator"] == "warning" and unchecked["summary"].startswith("dose not checked")
    assert "the EHR could not prefetch a body weight (Observation search timed out)" in unchecked["detail"]


def test_a_breach_is_softened_only_beside_a_full_pass_of_an_order_with_no_indication(client):
    """A review of the softening: a pass that was itself partly checked (the dose repeated every 5 minutes,
    24 induction doses an hour; a weight from 2012) took away the only critical card, and so did an order
    naming an indication no protocol lists (F32.A, depression unspecified, at 4 times the depression
    dose). None of those is softened; nor is a maximum per period exceeded."""
    ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"))

    def indicators(order: dict[str, Any], weight: Any) -> dict[str, str]:
        return {c["source"]["topic"]["code"].split("/")[0]: c["indicator"]
                for c in cards(client, hook_request([order], weight=weight))}

    every_5_min = medication_request("ket-q5", KETAMINE, IV, dose=(140, "mg"), frequency=(1, 5, "min"))
    assert indicators(every_5_min, weight_bundle(70))[depression["id"]] == "critical"
    old_weight = medication_request("ket-old", KETAMINE, IV, dose=(500, "mg"))
    assert indicators(old_weight, weight_bundle(120, when="2012-01-01T00:00:00Z"))[depression["id"]] == "critical"
    unlisted = medication_request("ket-f32a", KETAMINE, IV, dose=(140, "mg"),
                                  reason=("http://hl7.org/fhir/sid/icd-10-cm", "F32.A"))
    assert indicators(unlisted, weight_bundle(70))[depression["id"]] == "critical"


def test_an_amount_ordered_with_its_rate_is_still_judged_as_one_administration(client):
    """A review: judging the amount over the time its own rate takes made it the rate again, so 500 mg at
    24.5 mg/h (5 times the protocol's 98 mg for 70 kg) lost its critical card and 10 mg became a green
    card. The amount is judged as one administration of the range; the rate tells how fast it runs, so
    neither is "partly checked" for want of a duration."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.35,
                                              "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    over, under, fitting = cards_alone(client, [
        medication_request("crps-500", KETAMINE, IV, dose=(500, "mg"), rate=(24.5, "mg/h")),
        medication_request("crps-10", KETAMINE, IV, dose=(10, "mg"), rate=(24.5, "mg/h")),
        medication_request("crps-98", KETAMINE, IV, dose=(98, "mg"), rate=(24.5, "mg/h"))], weight=weight_bundle(70))
    assert over["indicator"] == "critical" and over["summary"].startswith("above protocol maximum")
    assert under["indicator"] == "warning" and under["summary"].startswith("below protocol minimum")
    assert fitting["indicator"] == "info"
    for card in (over, under, fitting):
        assert "no duration or rate" not in card["detail"]


def test_an_old_weight_behind_a_per_kg_maximum_per_period_is_partly_checked(client):
    """A review: a fixed-dose range whose maximum per period is per kg uses the weight too."""
    ketamine_protocol(client, dosing_ranges=[{
        "route": IV, "phase": "maintenance", "dose_min": 10, "dose_max": 50, "unit": "mg",
        "frequency": {"count": 1, "period": "P1D"}, "max_per_period": {"value": 1, "unit": "mg/kg", "period": "P1D"}}])
    order = medication_request("ket-mpp", KETAMINE, IV, dose=(50, "mg"), frequency=(1, 1, "d"))
    (current,) = cards(client, hook_request([order], weight=weight_bundle(120)))
    (old,) = cards(client, hook_request([order], weight=weight_bundle(120, when="2012-01-01T00:00:00Z")))
    assert current["indicator"] == "info" and old["indicator"] == "warning"
    assert "more than 30 days ago, and may no longer hold" in old["detail"]


def test_many_orders_of_one_protocol_are_counted_not_all_named_and_a_route_gets_one_card_per_order(client):
    """A review: the note named every order on every card (300 orders: a 2.5 MB answer); an order with an
    "ordered" and a "calculated" doseAndRate by a route no protocol gives got two identical cards."""
    create(client)
    orders = [medication_request(f"esk-{n}", ESKETAMINE, NASAL, dose=(56, "mg")) for n in range(8)]
    result = cards(client, hook_request(orders))
    assert len(result) == 8
    assert ("8 orders of this call are for this medication (MedicationRequest/esk-0, MedicationRequest/"
            "esk-1, MedicationRequest/esk-2, MedicationRequest/esk-3, MedicationRequest/esk-4, and 3 more)"
            in result[-1]["detail"])
    ketamine_protocol(client)
    oral = medication_request("ket-po", KETAMINE, ORAL, dose=(50, "mg"))
    calculated = copy.deepcopy(oral["dosageInstruction"][0]["doseAndRate"][0])
    calculated["type"]["coding"][0].update(code="calculated", display="Calculated")
    oral["dosageInstruction"][0]["doseAndRate"].append(calculated)
    assert [c["summary"].split(":")[0] for c in cards(client, hook_request([oral]))] == ["route not in any protocol"]


def test_a_prefetch_outcome_is_told_by_its_error_not_its_opening_information():
    """A review: an OperationOutcome often opens with an information issue."""
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "search ran"},
        {"severity": "error", "code": "forbidden", "details": {"text": "no consent for Observation"}}]}
    patient = draft_orders.HookPatient("example")
    assert draft_orders.prefetched_weight({"weight": outcome}, patient=patient) == \
        "the EHR could not prefetch a body weight (no consent for Observation)"
    assert draft_orders.prefetched_weight({"weight": {"resourceType": "OperationOutcome"}}, patient=patient) == \
        "the EHR could not prefetch a body weight (an OperationOutcome)"


def test_a_dose_per_kg_without_a_weight_is_judged_per_kg(client):
    """Found by a conformance probe: ketamine 50 mg/kg against 0.5 mg/kg (100 times the dose) with no weight
    prefetched was a "dose not checked" warning; per kg against per kg needs no weight."""
    ketamine_protocol(client, dose_min=0.5, dose_max=0.5)
    (card,) = cards(client, hook_request([medication_request("ket-50", KETAMINE, IV, dose=(50, "mg/kg"))]))
    assert card["indicator"] == "critical" and card["summary"].startswith("above protocol maximum")
    assert "0.5 mg/kg (compared per kg: no body weight used)" in card["detail"]
    (fits,) = cards(client, hook_request([medication_request("ket-05", KETAMINE, IV, dose=(0.5, "mg/kg"))]))
    assert fits["indicator"] == "info"


def test_a_call_judges_at_most_a_hundred_orders_with_protocols_and_names_the_rest(client):
    """Found by a security probe: about 470 orders fit the body limit, and one such call held a worker for
    3 s; a few of them delayed every other client. The first hundred orders for medications with protocols
    are judged and one warning card names the rest: a 400 left every order without a card, and counting
    orders of every medication let a hundred midazolam orders push a 10 mg/kg ketamine order out (reviews).
    A long order of another drug (a 21-step taper) is read, never refused."""
    create(client)
    ketamine_protocol(client)
    orders = [medication_request(f"esk-{n}", ESKETAMINE, NASAL, dose=(56, "mg")) for n in range(cds.MAX_DRAFT_ORDERS)]
    lab = {"resourceType": "ServiceRequest", "id": "lab-1", "status": "draft", "intent": "order",
           "code": {"coding": [{"system": LOINC, "code": "2160-0"}]}, "subject": {"reference": "Patient/example"}}
    result = cards(client, hook_request([*orders, lab]))
    assert len(result) == cds.MAX_DRAFT_ORDERS and all("doses not checked" not in c["summary"] for c in result)
    extra = [medication_request("esk-x", ESKETAMINE, NASAL, dose=(112, "mg")),
             medication_request("esk-y", ESKETAMINE, NASAL, dose=(56, "mg"))]
    result = cards(client, hook_request([*orders, *extra]))
    assert len(result) == cds.MAX_DRAFT_ORDERS + 1
    assert result[-1]["indicator"] == "warning"
    assert result[-1]["summary"].startswith("doses not checked: 2 orders beyond the first 100 (of 102 in this call)")
    assert "MedicationRequest/esk-x, MedicationRequest/esk-y. Check their doses by hand." in result[-1]["detail"]
    selected = hook_request([*orders, *extra], hook="order-select", selections=["MedicationRequest/esk-x"])
    (card,) = cards(client, selected, service="protocol-dose-check-select")  # only the selected one is judged
    assert card["indicator"] == "critical" and "112 mg" in card["summary"]

    others = [medication_request(f"mid-{n}", MIDAZOLAM, IV, dose=(2, "mg")) for n in range(cds.MAX_DRAFT_ORDERS + 1)]
    overdose = medication_request("ket-700", KETAMINE, IV, dose=(700, "mg"))
    assert [c["indicator"] for c in cards(client, hook_request([*others, overdose], weight=weight_bundle(70)))] \
        == ["critical"]
    assert cards(client, hook_request(others)) == []
    taper = medication_request("pred", [{"system": RXNORM, "code": "8640", "display": "prednisone"}], ORAL,
                               dose=(5, "mg"))
    taper["dosageInstruction"] = [dict(taper["dosageInstruction"][0], sequence=n) for n in range(1, 22)]
    assert [c["indicator"] for c in cards(client, hook_request([overdose, taper], weight=weight_bundle(70)))] \
        == ["critical"]
    many = medication_request("esk-many", ESKETAMINE, NASAL, dose=(56, "mg"), frequency=(2, 1, "wk"))
    many["dosageInstruction"] = [dict(many["dosageInstruction"][0], sequence=n) for n in range(1, 23)]
    result = cards(client, hook_request([many]))
    assert len(result) == draft_orders.MAX_DOSAGE_INSTRUCTIONS and all(c["indicator"] == "warning" for c in result)
    assert "the order has 22 dosage instructions; only the first 20 were read" in result[0]["detail"]

def test_a_reason_in_words_or_by_reference_is_a_reason(client):
    """Found by a clinical probe: 315 mg IV (9 times the depression dose at 70 kg) whose reasonCode was words
    only, "treatment-resistant depression", or a reasonReference, was softened to a warning beside the
    anaesthesia protocol's green card, as an order that "names no indication"."""
    ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"))
    in_words = medication_request("ket-words", KETAMINE, IV, dose=(315, "mg"))
    in_words["reasonCode"] = [{"text": "Treatment-resistant depression"}]
    by_reference = medication_request("ket-ref", KETAMINE, IV, dose=(315, "mg"))
    by_reference["reasonReference"] = [{"reference": "Condition/trd-1"}]
    for order in (in_words, by_reference):
        found = {c["source"]["topic"]["code"].split("/")[0]: c
                 for c in cards(client, hook_request([order], weight=weight_bundle(70)))}
        assert found[depression["id"]]["indicator"] == "critical"
        assert "The order's reason is not coded" in found[depression["id"]]["detail"]
        assert "names no indication" not in found[depression["id"]]["detail"]


def test_a_dose_per_kg_at_a_rate_per_kg_runs_its_time_without_a_weight(client):
    """A review and a clinical probe: 2 mg/kg at 0.5 mg/kg/min (the label's alternative induction) with no
    weight read "below protocol minimum" over the range's 60 s, and 0.5 mg/kg at 0.025 mg/kg/min
    "1 mg/kg", critical: the time the rate takes needs no weight when both are per kg."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 2,
                                              "unit": "mg/kg", "duration": "PT4M"}])
    (card,) = cards(client, hook_request([medication_request("ket-alt", KETAMINE, IV, dose=(2, "mg/kg"),
                                                             rate=(0.5, "mg/kg/min"))]))
    assert card["indicator"] == "info", card["detail"]
    assert "4 min (2 mg/kg at 0.5 mg/kg/min)" in card["detail"] and "below" not in card["summary"]


def test_a_route_coded_as_an_fda_route_is_read_and_one_not_read_is_judged_as_its_protocols_route(client):
    """Found by clinical probes: Spravato 560 mg a day with its route coded only as the FDA SPL code
    C38284 (which the route pick list pairs with SNOMED CT's nasal route), by EDQM, in words or not at all
    got no card, as if no protocol applied; then a "route not read" card alone, which left 840 mg a day
    unchecked. A route that is missing (FHIR's Dosage.route is optional) is read as the one route Spravato's
    protocols give; one written but unreadable (EDQM) is judged so too, and only a breach is shown then (the
    route written may be one no protocol gives: a review); the cards say so."""
    spravato = create(client)
    nci = medication_request("esk-nci", ESKETAMINE, NASAL, dose=(560, "mg"), frequency=(1, 1, "d"))
    nci["dosageInstruction"][0]["route"] = {"coding": [{"system": terminology.NCI_THESAURUS, "code": "C38284"}]}
    (card,) = cards(client, hook_request([nci]))
    assert card["indicator"] == "critical" and f"protocol {spravato['id']} v1" in card["summary"]
    assert "route not read" not in card["summary"]
    edqm_words = "http://standardterms.edqm.eu|20049000; Nasal use"
    for dose, route, indicator, verdict, said in (
            (560, "edqm", "critical", "above protocol maximum, route not read: ",
             f"the order's route ({edqm_words}) could not be read, so the dose was judged as given by the nasal "
             "route (46713006), the route its protocols give"),
            (560, "none", "critical", "above protocol maximum, route not read: ",
             "the order gives no route, so the dose was judged as given by the nasal route (46713006), the route "
             "its protocols give"),
            (56, "none", "warning", "within protocol range, partly checked, route not read: ",
             "the order gives no route, so the dose was judged as given by the nasal route"),
            (56, "edqm", "warning", "route not read: ",
             f"The order's route ({edqm_words}) is coded neither in SNOMED CT nor as an FDA SPL route code, so "
             "which protocol applies is not known")):
        order = medication_request("esk", ESKETAMINE, NASAL, dose=(dose, "mg"), frequency=(1, 1, "wk"))
        if route == "edqm":
            order["dosageInstruction"][0]["route"] = {
                "coding": [{"system": "http://standardterms.edqm.eu", "code": "20049000"}], "text": "Nasal use"}
        else:
            del order["dosageInstruction"][0]["route"]
        (card,) = cards(client, hook_request([order]))
        assert (card["indicator"], card["summary"].split(": ")[0] + ": ") == (indicator, verdict), (dose, route)
        assert said in card["detail"], (dose, route)
    midazolam = medication_request("mid", MIDAZOLAM, IV, dose=(2, "mg"))
    del midazolam["dosageInstruction"][0]["route"]
    assert cards(client, hook_request([midazolam])) == []  # no protocol for the medication: still nothing


def test_an_order_without_a_route_is_judged_as_every_route_its_protocols_give(client):
    """Found by a clinical probe: ketamine 20 mg/kg with no route, above the maximum of its protocols by
    every route (IV 4.5 mg/kg, IM 13 mg/kg), got one "route not read" card and no verdict. Now it gets a
    card per protocol and route, each critical and naming the route it was judged as. A dose that is not a
    breach by every route (2 mg/kg: the usual IV induction, below the IM range) keeps the one "route not
    read" card: any route may be meant (judged cards put the usual anaesthesia dose critical from the
    depression protocol; a review). A reason still narrows the protocols."""
    IM = "78421000"
    ketamine_protocol(client, id="ketamine-iv")
    ketamine_protocol(client, id="ketamine-im", dose_min=6.5, dose_max=13,
                      routes=[{"system": SNOMED, "code": IM, "display": "Intramuscular route"}],
                      dosing_ranges=[{"route": IM, "phase": "induction", "dose_min": 6.5, "dose_max": 13,
                                      "unit": "mg/kg"}])
    ketamine_protocol(client, id="ketamine-trd", dose_min=0.5, dose_max=0.5,
                      indication=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2", "Major depressive disorder, "
                                  "recurrent severe without psychotic features"))

    def found(dose: Any, reason: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        order = medication_request("ket", KETAMINE, IV, dose=(dose, "mg/kg"), reason=reason)
        del order["dosageInstruction"][0]["route"]
        return cards(client, hook_request([order], weight=weight_bundle(70)))

    def judged(dose: Any, reason: tuple[str, str] | None = None) -> list[tuple[str, str, str]]:
        result = found(dose, reason)
        for card in result:
            assert "judged as given by the" in card["detail"] and ", route not read: " in card["summary"]
        return sorted((card["source"]["topic"]["code"].split("/")[0],
                       card["summary"].split(": ")[0].removesuffix(", route not read"), card["indicator"])
                      for card in result)

    assert judged(20) == [("ketamine-im", "above protocol maximum", "critical"),
                          ("ketamine-iv", "above protocol maximum", "critical"),
                          ("ketamine-trd", "above protocol maximum", "critical")]
    assert "one of the 2 routes its protocols give, by each of which it breaks a maximum" in found(20)[0]["detail"]
    (card,) = found(2)
    assert card["indicator"] == "warning" and card["summary"].startswith("route not read: ")
    assert "it was judged as given by each route its protocols give (below); send the route" in card["detail"]
    assert "Intramuscular route (78421000)" in card["detail"] and "Intravenous route (47625008)" in card["detail"]
    assert "- As given by the intramuscular route: below protocol minimum (ketamine-im v1)" in card["detail"]
    # Above every IV protocol's maximum, within the IM range: critical, naming the route (a review: a
    # warning that named no breach).
    (card,) = found(10)
    assert card["indicator"] == "critical", card["summary"]
    assert card["summary"].startswith("route not read, a breach if intravenous route: ")
    (by_iv,) = [line for line in card["detail"].splitlines() if line.startswith("- As given by the intravenous")]
    assert "above protocol maximum (ketamine-iv v1)" in by_iv and "above protocol maximum (ketamine-trd v1)" in by_iv
    assert "- As given by the intramuscular route: within protocol range" in card["detail"]
    assert "Body weight used: 70 kg (observed" in card["detail"]  # what the verdicts rest on (a review)
    twice = medication_request("ket", KETAMINE, IV, dose=(10, "mg/kg"))
    del twice["dosageInstruction"][0]["route"]
    other = medication_request("ket-2", KETAMINE, IV, dose=(1, "mg/kg"))
    together = [c for c in cards(client, hook_request([twice, other], weight=weight_bundle(70)))
                if c["summary"].startswith("route not read")]
    assert together and "what they give together was not added up" in together[0]["detail"]
    assert judged(2, reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2")) == [
        ("ketamine-trd", "above protocol maximum", "critical")]


def test_a_dose_above_the_maximum_for_any_weight_is_critical_without_a_weight(client):
    """Found by a clinical probe: ketamine 3,000 mg IV with no weight read "dose not checked": it is above
    4.5 mg/kg for anyone under 667 kg, and the service accepts 0.3-500 kg. A dose that breaks the maximum
    at both ends breaks it at every weight; one that does not is still "not checked". The same for a weight
    the service refuses, and for a dose per kg against a maximum in mg (its breach grows with the weight)."""
    ketamine_protocol(client)
    no_weight = medication_request("ket", KETAMINE, IV, dose=(3000, "mg"))
    for weight in (None, weight_bundle(900)):
        (card,) = cards(client, hook_request([no_weight], weight=weight))
        assert card["indicator"] == "critical" and card["summary"].startswith("above protocol maximum: ")
        assert "3000 mg breaks the protocol's maximum for any body weight from 0.3 to 500 kg" in card["detail"]
        assert "the figures below are for 500 kg" in card["detail"]
    (card,) = cards(client, hook_request([medication_request("ket", KETAMINE, IV, dose=(2000, "mg"))]))
    assert card["indicator"] == "warning" and card["summary"].startswith("dose not checked: ")  # 4 mg/kg at 500 kg
    create(client, id="esk-per-kg", drug={"name": "esketamine", "rxnorm_cui": "2201625", "brand_names": ["Spravato"],
                                          "dea_schedule": "CIII"},
           dosing_ranges=[{"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg"}])
    per_kg = medication_request("esk", ESKETAMINE, NASAL, dose=(300, "mg/kg"))
    (card,) = cards(client, hook_request([per_kg]))
    assert card["indicator"] == "critical" and "the figures below are for 0.3 kg" in card["detail"]  # 90 mg
    (card,) = cards(client, hook_request([medication_request("esk", ESKETAMINE, NASAL, dose=(200, "mg/kg"))]))
    assert card["indicator"] == "warning" and card["summary"].startswith("dose not checked: ")  # 60 mg at 0.3 kg


def test_a_breach_at_any_weight_covers_the_maximum_per_period_and_not_a_rate_paced_by_its_dose(client):
    """2,000 mg four times a day against 1-4.5 mg/kg, at most 10 mg/kg a day: at 500 kg each dose is in range
    and the day's 16 mg/kg is over, at 0.3 kg each dose is over; critical without a weight. 0.5 mg/kg at
    400 mg/h runs for a time worked out through the weight: without one it is not called a breach "for any
    body weight" (it read critical, a warning at every weight; a review)."""
    ketamine_protocol(client, id="ket-daily", dosing_ranges=[{
        "route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg",
        "max_per_period": {"value": 10, "unit": "mg/kg", "period": "P1D"}}])
    daily = medication_request("ket", KETAMINE, IV, dose=(2000, "mg"), frequency=(4, 1, "d"))
    (card,) = cards(client, hook_request([daily]))
    assert card["indicator"] == "critical", card["summary"]
    assert card["summary"].startswith("exceeds protocol maximum per period: ")
    assert "the figures below are for 500 kg" in card["detail"]
    etag = client.get("/v1/protocols/ket-daily").headers["ETag"]
    assert client.delete("/v1/protocols/ket-daily", headers={"If-Match": etag}).status_code == 200
    ketamine_protocol(client, id="ket-trd", dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.5, "dose_max": 0.5, "unit": "mg/kg", "duration": "PT40M"}])
    paced = medication_request("ket", KETAMINE, IV, dose=(0.5, "mg/kg"), rate=(400, "mg/h"))
    (card,) = cards(client, hook_request([paced]))
    assert card["indicator"] == "warning" and "for any body weight" not in card["detail"], card["summary"]


def test_instructions_of_one_order_with_no_sequence_and_orders_of_one_medication_are_partly_checked(client):
    """Found by a clinical probe: two Mon/Thu 84 mg instructions of one order with no sequence were two full
    passes (168 mg on those days if both are given), and ketamine 35 mg IV for depression beside 24.5 mg/h
    for CRPS, two protocols of one medication, were both green. And "35 mg, up to 40 min" (durationMax
    alone) allows a push: its speed is not checked."""
    create(client)
    twice = medication_request("esk-2x", ESKETAMINE, NASAL, dose=(84, "mg"))
    twice["dosageInstruction"][0]["timing"] = {"repeat": {"dayOfWeek": ["mon", "thu"]}}
    twice["dosageInstruction"].append(copy.deepcopy(twice["dosageInstruction"][0]))
    result = cards(client, hook_request([twice]))
    assert [c["indicator"] for c in result] == ["warning", "warning"]
    assert "dosage instruction 0 may be given together with instruction(s) 1 (the same sequence, or none " \
           "stated)" in result[0]["detail"]
    sequenced = copy.deepcopy(twice)
    for number, dosage in enumerate(sequenced["dosageInstruction"], start=1):
        dosage["sequence"] = number
    assert [c["indicator"] for c in cards(client, hook_request([sequenced]))] == ["info", "info"]

    ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"), dosing_ranges=[{
            "route": IV, "phase": "infusion", "dose_min": 0.5, "dose_max": 0.5, "unit": "mg/kg", "duration": "PT40M"}])
    ketamine_protocol(client, indication=("http://hl7.org/fhir/sid/icd-10-cm", "G90.50",
                                          "Complex regional pain syndrome I, unspecified"), dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    trd = medication_request("ket-trd", KETAMINE, IV, dose=(35, "mg"),
                             reason=("http://hl7.org/fhir/sid/icd-10-cm", "F33.2"))
    trd["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 40, "durationUnit": "min"}}
    crps = medication_request("ket-crps", KETAMINE, IV, rate=(24.5, "mg/h"),
                              reason=("http://hl7.org/fhir/sid/icd-10-cm", "G90.50"))
    crps["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 4, "durationUnit": "h"}}
    assert [c["indicator"] for c in cards_alone(client, [trd, crps], weight=weight_bundle(70))] == ["info", "info"]
    both = cards(client, hook_request([trd, crps], weight=weight_bundle(70)))
    assert [c["indicator"] for c in both] == ["warning", "warning"]
    assert all("2 orders of this call are for this medication (MedicationRequest/ket-trd, MedicationRequest/"
               "ket-crps)" in c["detail"] for c in both)
    up_to = copy.deepcopy(trd)
    up_to["dosageInstruction"][0]["timing"] = {"repeat": {"durationMax": 40, "durationUnit": "min"}}
    (card,) = cards(client, hook_request([up_to], weight=weight_bundle(70)))
    assert card["indicator"] == "warning"
    assert dosing.DURATION_BOUNDED.format(duration="PT40M", bound="durationMax 40 min") in card["detail"]


def test_review_of_the_reasons_routes_and_groupings(client, caplog):
    """A review of the second round: a reason coded with a display only is a reason; an order of the same
    medication coded by its product, or given by a route no protocol gives, counts with the others; a
    text-only dosage instruction is given with nothing; a rate with its dose takes its own time within
    durationMax (140 mg at 35 mg/min "up to 10 min" read 350 mg); a known route wins over an unknown
    SNOMED CT code beside it."""
    anaesthesia = ketamine_protocol(client)
    depression = ketamine_protocol(client, dose_min=0.5, dose_max=0.5, indication=(
        "http://hl7.org/fhir/sid/icd-10-cm", "F33.2",
        "Major depressive disorder, recurrent severe without psychotic features"))
    shown = medication_request("ket-display", KETAMINE, IV, dose=(315, "mg"))
    shown["reasonCode"] = [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                        "display": "Treatment-resistant depression"}]}]
    found = {c["source"]["topic"]["code"].split("/")[0]: c["indicator"]
             for c in cards(client, hook_request([shown], weight=weight_bundle(70)))}
    assert found[depression["id"]] == "critical"

    by_product = medication_request("ket-product", [KETAMINE[0]], IV, dose=(140, "mg"),
                                    reason=(SNOMED, "399097000"))
    by_ingredient = medication_request("ket-ingredient", [KETAMINE[1]], IV, dose=(140, "mg"),
                                       reason=(SNOMED, "399097000"))
    oral = medication_request("ket-oral", [KETAMINE[1]], ORAL, dose=(50, "mg"))
    for pair in ([by_product, by_ingredient], [by_ingredient, oral]):
        result = cards(client, hook_request(pair, weight=weight_bundle(70)))
        judged = [c for c in result if not c["summary"].startswith("route not")]
        assert judged and all(c["indicator"] == "warning" and "2 orders of this call are for this medication"
                              in c["detail"] for c in judged), [c["summary"] for c in result]

    text_only = medication_request("ket-text", KETAMINE, IV, dose=(140, "mg"), reason=(SNOMED, "399097000"))
    text_only["dosageInstruction"].append({"text": "Titrate to effect; see the anaesthesia record."})
    (card,) = cards(client, hook_request([text_only], weight=weight_bundle(70)))
    assert card["indicator"] == "info", card["detail"]

    paced = medication_request("ket-paced", KETAMINE, IV, dose=(140, "mg"), rate=(35, "mg/min"),
                               reason=(SNOMED, "399097000"))
    paced["dosageInstruction"][0]["timing"] = {"repeat": {"durationMax": 10, "durationUnit": "min"}}
    (card,) = cards(client, hook_request([paced], weight=weight_bundle(70)))
    assert "350 mg" not in card["detail"] and "how fast the dose may be given was not checked" not in card["detail"]
    assert "4 min (140 mg at 35 mg/min)" in card["detail"]

    unknown_first = medication_request("ket-codes", KETAMINE, IV, dose=(140, "mg"), reason=(SNOMED, "399097000"))
    unknown_first["dosageInstruction"][0]["route"] = {"coding": [
        {"system": SNOMED, "code": "418114005"}, {"system": terminology.NCI_THESAURUS, "code": "C38276"}]}
    (card,) = cards(client, hook_request([unknown_first], weight=weight_bundle(70)))
    assert f"protocol {anaesthesia['id']} v1" in card["summary"] and card["indicator"] == "info"



def test_a_bound_on_the_time_is_a_floor_on_the_speed(client):
    """A review: with durationMax alone an amount was judged with no time at all, so 315 mg (4.5 mg/kg) "up
    to 10 s" against "over 60 s" was a green card, and 98 mg "up to 1 h" against 0.35 mg/kg/h for 4 h (at
    least 4 times the rate) a warning; and 98 mg at 24.5 mg/h "up to 1 h", which cannot run its 4 h
    within the hour, was green. Within its bound the dose goes at least that fast: a breach there is
    certain. A pass there is not (it may go faster), and the speed stays "partly checked"."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                              "unit": "mg/kg", "duration": "PT60S"}])

    def bounded(order_id: str, value: float, unit: str, rate: tuple[float, str] | None = None) -> dict[str, Any]:
        order = medication_request(order_id, KETAMINE, IV, dose=(value, "mg"), rate=rate)
        order["dosageInstruction"][0]["timing"] = {"repeat": {"durationMax": 10 if unit == "s" else 1,
                                                              "durationUnit": unit}}
        return order

    (fast,) = cards(client, hook_request([bounded("ket-10s", 315, "s")], weight=weight_bundle(70)))
    assert fast["indicator"] == "warning" and "given faster than the protocol" in fast["summary"]
    crps = ketamine_protocol(client, indication=("http://hl7.org/fhir/sid/icd-10-cm", "G90.50",
                                                 "Complex regional pain syndrome I, unspecified"), dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h", "duration": "PT4H"}])
    reason = ("http://hl7.org/fhir/sid/icd-10-cm", "G90.50")
    for order in (bounded("crps-1h", 98, "h"), bounded("crps-rate", 98, "h", rate=(24.5, "mg/h"))):
        order["reasonCode"] = [{"coding": [{"system": reason[0], "code": reason[1]}]}]
        (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
        assert card["indicator"] == "critical" and f"protocol {crps['id']} v1" in card["summary"], card["summary"]
    slow = bounded("crps-24h", 98, "h")
    slow["dosageInstruction"][0]["timing"]["repeat"]["durationMax"] = 24
    slow["reasonCode"] = [{"coding": [{"system": reason[0], "code": reason[1]}]}]
    (card,) = cards(client, hook_request([slow], weight=weight_bundle(70)))
    assert card["indicator"] == "warning" and card["summary"].startswith("within protocol range, partly checked")
    assert "the order gives only the longest it may take (durationMax 24 h)" in card["detail"]


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The routes of the protocol lookups (search.applicable_protocols) the test's calls make."""
    calls: list[Any] = []
    lookup = search.applicable_protocols

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("route"))
        return lookup(*args, **kwargs)

    monkeypatch.setattr(search, "applicable_protocols", counted)
    return calls


def test_orders_of_other_medications_cost_no_lookup_and_route_cards_cost_no_budget(client, lookups):
    """A review: every order was looked up twice (580 midazolam orders took 3.2 s), and 100 oral ketamine
    orders, which only get a route card, used up the budget that a 700 mg IV order then fell outside."""
    ketamine_protocol(client)
    others = [medication_request(f"mid-{n}", MIDAZOLAM, IV, dose=(2, "mg")) for n in range(50)]
    assert cards(client, hook_request(others)) == [] and lookups == []
    oral = [medication_request(f"ket-po-{n}", KETAMINE, ORAL, dose=(50, "mg")) for n in range(cds.MAX_DRAFT_ORDERS)]
    overdose = medication_request("ket-700", KETAMINE, IV, dose=(700, "mg"))
    result = cards(client, hook_request([*oral, overdose], weight=weight_bundle(70)))
    assert result[-1]["indicator"] == "critical" and "700 mg" in result[-1]["summary"]
    assert len(lookups) == 3  # oral, then any route, then IV: once each for the call


ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def test_a_rate_runs_its_own_time_within_a_bound_it_cannot_keep_and_lookups_are_shared(client, lookups):
    """A review: a rate cut to durationMax worked out less than the order gives, and 140 mg at 140 mg/min
    "up to 10 s" read "below protocol minimum"; it is given faster than the protocol. And orders with codes,
    reasons of their own each made lookups of their own (500 of them took 3.5-6.9 s): a lookup is made once
    per (indexed codes, route); and route cards have a budget of their own."""
    ketamine_protocol(client, dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                              "unit": "mg/kg", "duration": "PT60S"}])
    order = medication_request("ket-fast", KETAMINE, IV, dose=(140, "mg"), rate=(140, "mg/min"),
                               reason=(SNOMED, "399097000"))
    order["dosageInstruction"][0]["timing"] = {"repeat": {"durationMax": 10, "durationUnit": "s"}}
    (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert "below protocol minimum" not in card["summary"] and "given faster than the protocol" in card["summary"]

    crafted = []
    for n in range(30):
        own = medication_request(f"ket-own-{n}", [{"system": RXNORM, "code": str(900000 + n)}, *KETAMINE], IV,
                                 dose=(140, "mg"), reason=(ICD10CM, f"Z{n % 10}{n // 10}.1"))
        if n % 2:
            own["dosageInstruction"][0]["route"]["coding"][0]["code"] = str(100000000 + n * 7)  # not a route
        crafted.append(own)
    del lookups[:]  # the call above made its own
    cards(client, hook_request(crafted, weight=weight_bundle(70)))
    # IV once, and once each for the 15 routes no protocol holds (and then any route): not once per order
    assert sorted(set(map(str, lookups))) == sorted({IV, "None", *(str(100000000 + n * 7) for n in range(1, 30, 2))})
    assert len(lookups) == 17, lookups

    oral = [medication_request(f"ket-po-{n}", KETAMINE, ORAL, dose=(50, "mg")) for n in range(cds.MAX_DRAFT_ORDERS + 1)]
    result = cards(client, hook_request(oral))
    assert len(result) == cds.MAX_DRAFT_ORDERS + 1
    assert result[-1]["summary"].startswith("doses not checked: 1 order beyond the first 100")
    assert "this one was not checked" in result[-1]["detail"] and "MedicationRequest/ket-po-100" in result[-1]["detail"]


def test_an_order_for_one_indication_is_judged_against_the_ranges_for_it(client, app):
    """Found by a clinical probe: an MDSI order of Spravato (reasonCode R45.851) was judged against the
    TRD maintenance ranges too, and its card quoted them. The reasonCode narrows the ranges as it narrows
    the protocols: those for the indications it names (a range without ``indications`` is for every one);
    without a reasonCode, every range of the route, as before."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    icd = "http://hl7.org/fhir/sid/icd-10-cm"

    def detail(reason: tuple[str, str] | None) -> str:
        order = medication_request("esk-ind", ESKETAMINE, NASAL, dose=(84, "mg"), frequency=(1, 1, "wk"),
                                   reason=reason)
        (card,) = cards_alone(client, [order])
        return str(card["detail"])

    every = detail(None)
    assert "weeks 5-8" in every and "MDSI" in every
    mdsi = detail((icd, "R45.851"))
    assert "MDSI" in mdsi and "TRD" not in mdsi and "weeks 5-8" not in mdsi
    assert mdsi.count("- **") == 1  # the one MDSI range
    trd = detail((icd, "F33.2"))  # covered by F33.9, a TRD code of the record
    assert "weeks 5-8" in trd and "MDSI" not in trd and trd.count("- **") == 3


def test_ranges_for_narrows_by_indication_and_falls_back_to_every_range_of_the_route():
    content = {"routes": [{"code": NASAL}, {"code": IV}],
               "dosing_ranges": [{"route": NASAL, "phase": "induction", "indications": ["F33.9"]},
                                 {"route": NASAL, "phase": "single"},
                                 {"route": NASAL, "phase": "maintenance", "indications": ["R45.851"]},
                                 {"route": IV, "phase": "single", "indications": ["F33.9"]}]}
    assert [i for i, _ in dosing.ranges_for(content, NASAL)[0]] == [0, 1, 2]
    assert [i for i, _ in dosing.ranges_for(content, NASAL, ["R45.851"])[0]] == [1, 2]
    assert [i for i, _ in dosing.ranges_for(content, NASAL, ["F33.9", "R45.851"])[0]] == [0, 1, 2]
    assert dosing.ranges_for(content, NASAL, ["R45.851"])[1] is None
    # None for it: every range, saying so (a review: a green card, silently judged against other indications')
    ranges, note = dosing.ranges_for(content, IV, ["R45.851"])
    assert [i for i, _ in ranges] == [3]
    assert note == ("the dose against a range for the order's indication (R45.851): none of this protocol's ranges "
                    "for this route is for it, so it was judged against those for F33.9")


def test_an_order_for_an_indication_no_range_of_its_route_is_for_is_partly_checked(client):
    """Found in review: with every range of the route for another indication, an order whose reasonCode names
    this one was judged against them and got a green 'within protocol range' card saying nothing of it."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    ketamine_protocol(client, indications=[
        {"system": icd, "code": "F32.9", "display": "Major depressive disorder, single episode, unspecified"},
        {"system": icd, "code": "R45.851", "display": "Suicidal ideations"}],
        dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 0.5, "dose_max": 0.5, "unit": "mg/kg",
                        "duration": "PT40M", "indications": ["F32.9"]}])
    order = medication_request("ket", KETAMINE, IV, dose=(35, "mg"), reason=(icd, "R45.851"))
    order["dosageInstruction"][0]["timing"] = {"repeat": {"duration": 40, "durationUnit": "min"}}
    (card,) = cards(client, hook_request([order], weight=weight_bundle(70)))
    assert card["indicator"] == "warning" and "partly checked" in card["summary"], card
    assert ("Not checked: the dose against a range for the order's indication (R45.851): none of this protocol's "
            "ranges for this route is for it, so it was judged against those for F32.9.") in card["detail"]
