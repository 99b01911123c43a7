"""``POST /v1/protocols/{id}/dose-check`` and ``GET /v1/protocols/{id}/dose`` over HTTP.

The first half is table-driven over the curated catalog: it loads every catalog file with the CLI,
reads each protocol's served version and, for every dosing range found, derives the expected edges
from the range itself (min, max, a hair inside and outside, per kg at several weights, in g/mg/ug)
and checks the service's verdict. The second half covers the contract: versions and as_of, what is
required (weight, phase, concentration), validation, 404/410.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from protocols import catalog, terminology
from protocols.durations import parse_duration
from schemas.clinical import PHASES
from tests.factories import protocol_payload

CATALOG_IDS = [f.protocol_id for f in catalog.read_catalog()]
WEIGHTS = (Decimal("3.5"), Decimal("70"), Decimal("123.4"))
EPSILON = Decimal("1e-7")
MASS_IN_MG = {"g": Decimal(1000), "mg": Decimal(1), "ug": Decimal("0.001")}
FAVOURABLE = ("within_range", "below_min", "more_frequent_than_protocol", "exceeds_max_per_period", "above_max")
NASAL, IV, IM, ORAL = "46713006", "47625008", "78421000", "26643006"
IV_ROUTE = {"system": terminology.SNOMED, "code": IV, "display": "Intravenous route"}
IM_ROUTE = {"system": terminology.SNOMED, "code": IM, "display": "Intramuscular route"}


# ------------------------------------------------------------------------------ helpers


def load_catalog(app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["protocols", "load"])
    assert result.exit_code == 0, result.output


def served(client: Any, protocol_id: str, as_of: str | None = None) -> dict[str, Any]:
    url = f"/v1/protocols/{protocol_id}" + (f"?as_of={as_of}" if as_of else "")
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    return dict(json.loads(response.data, parse_float=Decimal))


def dose_check(client: Any, protocol_id: str, body: dict[str, Any]) -> Any:
    return client.post(f"/v1/protocols/{protocol_id}/dose-check", data=exact_json(body),
                       content_type="application/json")


def exact_json(body: Any) -> str:
    """JSON with Decimals written as their exact number text (``json`` would need floats)."""
    text = json.dumps(body, default=lambda d: f"{_MARK}{format(d.normalize(), 'f')}{_MARK}")
    return re.sub(f'"{_MARK}([0-9.]+){_MARK}"', r"\1", text)


_MARK = "@@number@@"


def as_json_number(value: Decimal) -> Decimal:
    return value


def number(value: Any) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def is_per_kg(unit: str) -> bool:
    return unit.split("/")[1:2] == ["kg"]


def amount_of(unit: str) -> str:
    return unit.split("/")[0]


def absolute_unit(unit: str) -> str:
    parts = unit.split("/")
    return "/".join(p for i, p in enumerate(parts) if not (i == 1 and p == "kg"))


def with_amount(unit: str, amount: str) -> str:
    return "/".join([amount, *unit.split("/")[1:]])


def seconds(iso: str) -> Decimal:
    return Decimal(int(parse_duration(iso).total_seconds()))


def expected_verdict(ranges: list[dict[str, Any]], dose_mg: Decimal, weight: Decimal | None,
                     frequency: dict[str, Any] | None = None) -> str:
    """What the verdict must be, computed from the ranges themselves: a dose (absolute, in the
    ranges' amount unit scaled to mg) against each alternative, the most favourable wins."""
    verdicts = []
    for dose_range in ranges:
        unit = dose_range["unit"]
        scale = MASS_IN_MG[amount_of(unit)]
        if is_per_kg(unit):
            assert weight is not None, "a per-kg range needs a weight"
            scale *= weight
        low, high = dose_range["dose_min"] * scale, dose_range["dose_max"] * scale
        ceiling = absolute_max_mg(dose_range, weight)
        if ceiling is not None:  # a weight-based range capped for heavy patients (CRPS: 25 mg/h)
            low, high = min(low, ceiling), min(high, ceiling)
        verdict = "below_min" if dose_mg < low else "above_max" if dose_mg > high else "within_range"
        limit = dose_range.get("max_per_period")
        if verdict in ("within_range", "below_min") and limit:  # a per-period breach outranks an underdose
            per_dose = dose_mg
            if len(unit.split("/")) > (2 if is_per_kg(unit) else 1):  # a rate: amount over the duration
                time_unit = unit.split("/")[-1]
                per_dose = dose_mg * seconds(dose_range["duration"]) / seconds(f"PT1{time_unit.upper()}")
            doses = 1
            if frequency:
                doses = max(1, math.ceil(Decimal(frequency["count"]) * seconds(limit["period"])
                                         / seconds(frequency["period"])))
            cap = limit["value"] * MASS_IN_MG[amount_of(limit["unit"])] * (
                weight if is_per_kg(limit["unit"]) else 1)
            if per_dose * doses > cap:
                verdict = "exceeds_max_per_period"
        protocol_frequency = dose_range.get("frequency")
        if verdict == "within_range" and frequency and protocol_frequency and (
                Fraction(frequency["count"]) / Fraction(seconds(frequency["period"]))
                > Fraction(protocol_frequency["count"]) / Fraction(seconds(protocol_frequency["period"]))):
            verdict = "more_frequent_than_protocol"
        is_rate = len(unit.split("/")) > (2 if is_per_kg(unit) else 1)
        if frequency and protocol_frequency and not is_rate and FAVOURABLE.index(verdict) < FAVOURABLE.index(
                "exceeds_max_per_period"):
            # The most the range's own regimen gives in its period: its maximum times its count.
            doses = max(1, math.ceil(Decimal(frequency["count"]) * seconds(protocol_frequency["period"])
                                     / seconds(frequency["period"])))
            if dose_mg * doses > high * protocol_frequency["count"]:
                verdict = "exceeds_max_per_period"
        verdicts.append(verdict)
    return min(verdicts, key=FAVOURABLE.index)


def absolute_max_mg(dose_range: dict[str, Any], weight: Decimal | None) -> Decimal | None:
    """A weight-based range's absolute maximum in mg (per the range's time unit for a rate), or None."""
    ceiling = dose_range.get("absolute_max")
    if not ceiling or weight is None:
        return None
    assert ceiling["unit"].split("/")[1:] == [p for p in dose_range["unit"].split("/")[1:] if p != "kg"]
    return ceiling["value"] * MASS_IN_MG[amount_of(ceiling["unit"])]


def edge_doses(low: Decimal, high: Decimal) -> list[Decimal]:
    """Both edges, a hair inside each (when the range has width) and a hair outside each."""
    doses = [low, high, high + EPSILON]
    if low - EPSILON > 0:
        doses.append(low - EPSILON)
    if high - low > 2 * EPSILON:
        doses += [low + EPSILON, high - EPSILON]
    return doses


def groups(document: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Dosing ranges by (route, phase): ranges sharing both are alternatives."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for dose_range in document["dosing_ranges"]:
        grouped.setdefault((dose_range["route"], dose_range["phase"]), []).append(dose_range)
    return grouped


# ------------------------------------------------------------------ catalog, table-driven


def check_range_edges_in_every_mass_unit(client: Any, protocol_id: str) -> None:
    document = served(client, protocol_id)
    for (route, phase), alternatives in groups(document).items():
        unit = alternatives[0]["unit"]
        assert all(r["unit"] == unit for r in alternatives), "alternatives in one unit keep this table simple"
        weights: tuple[Decimal | None, ...] = WEIGHTS if is_per_kg(unit) else (None,)
        for weight in weights:
            scale = weight if weight is not None else Decimal(1)
            for edge_range in alternatives:
                low, high = edge_range["dose_min"] * scale, edge_range["dose_max"] * scale
                ceiling = absolute_max_mg(edge_range, weight)
                if ceiling is not None:  # the edges are the capped range's (in the range's own mass unit)
                    ceiling /= MASS_IN_MG[amount_of(unit)]
                    low, high = min(low, ceiling), min(high, ceiling)
                for dose in edge_doses(low, high):
                    dose_mg = dose * MASS_IN_MG[amount_of(unit)]
                    expected = expected_verdict(alternatives, dose_mg, weight)
                    for amount, factor in MASS_IN_MG.items():
                        ordered_unit = with_amount(absolute_unit(unit), amount)
                        value = dose_mg / factor
                        body: dict[str, Any] = {"route": route, "phase": phase,
                                                "dose": {"value": as_json_number(value), "unit": ordered_unit}}
                        if weight is not None:
                            body["patient"] = {"weight_kg": as_json_number(weight)}
                        response = dose_check(client, protocol_id, body)
                        assert response.status_code == 200, (body, response.get_json())
                        result = response.get_json()
                        assert result["verdict"] == expected, (protocol_id, phase, weight, value, ordered_unit,
                                                               result["messages"])
                        assert result["protocol"]["id"] == protocol_id
                        assert result["protocol"]["version"] == document["version"]
                        absolute = result["absolute_range"]
                        if weight is not None:
                            chosen = document["dosing_ranges"][result["range_index"]]
                            cap_mg = absolute_max_mg(chosen, weight)
                            top = Decimal("Infinity") if cap_mg is None else cap_mg / MASS_IN_MG[amount_of(unit)]
                            assert number(absolute["min"]) == min(chosen["dose_min"] * weight, top)
                            assert number(absolute["max"]) == min(chosen["dose_max"] * weight, top)
                            assert absolute["unit"] == absolute_unit(unit)
                            assert f"\u00d7 {weight.normalize():f} kg =" in absolute["calculation"]


def check_doses_per_kg(client: Any, protocol_id: str) -> None:
    document = served(client, protocol_id)
    for (route, phase), alternatives in groups(document).items():
        unit = alternatives[0]["unit"]
        if not is_per_kg(unit):
            continue  # this test is about per-kg doses; fixed ranges are covered above
        for dose_range in alternatives:
            for per_kg in edge_doses(dose_range["dose_min"], dose_range["dose_max"]):
                weight = Decimal(70)
                expected = expected_verdict(alternatives, per_kg * weight * MASS_IN_MG[amount_of(unit)], weight)
                body = {"route": route, "phase": phase, "dose": {"value": as_json_number(per_kg), "unit": unit},
                        "patient": {"weight_kg": 70}}
                result = dose_check(client, protocol_id, body).get_json()
                assert result["verdict"] == expected, (protocol_id, per_kg, result["messages"])
                assert number(result["dose_in_range_unit"]["value"]) == per_kg


def check_per_period_maximum(client: Any, protocol_id: str) -> None:
    document = served(client, protocol_id)
    checked = 0
    for (route, phase), alternatives in groups(document).items():
        for dose_range in alternatives:
            limit = dose_range.get("max_per_period")
            unit = dose_range["unit"]
            if not limit or len(absolute_unit(unit).split("/")) > 1:
                continue  # per-period projections of amounts; rates are covered in the domain tests
            weight = Decimal(70) if is_per_kg(unit) else None
            scale = weight or Decimal(1)
            dose = dose_range["dose_max"] * scale
            cap = limit["value"] * (weight if is_per_kg(limit["unit"]) and weight else 1)
            too_many = int(cap // dose) + 1
            for count in (too_many - 1, too_many):
                if count < 1:
                    continue
                frequency = {"count": count, "period": limit["period"]}
                dose_mg = dose * MASS_IN_MG[amount_of(unit)]
                expected = expected_verdict(alternatives, dose_mg, weight, frequency)
                body: dict[str, Any] = {"route": route, "phase": phase, "frequency": frequency,
                                        "dose": {"value": as_json_number(dose), "unit": absolute_unit(unit)}}
                if weight is not None:
                    body["patient"] = {"weight_kg": 70}
                result = dose_check(client, protocol_id, body).get_json()
                assert result["verdict"] == expected, result["messages"]
                assert result["per_period"]["doses_per_period"] == count
                assert number(result["per_period"]["projected"]["value"]) == dose * count
                checked += 1
    limits = [r for r in document["dosing_ranges"] if r.get("max_per_period")
              and len(absolute_unit(r["unit"]).split("/")) == 1]
    assert checked >= len(limits)


def check_refusals(client: Any, protocol_id: str) -> None:
    document = served(client, protocol_id)
    by_route: dict[str, set[str]] = {}
    for route, phase in groups(document):
        by_route.setdefault(route, set()).add(phase)
    other_route = next(code for code in terminology.ROUTES if code not in by_route)
    result = dose_check(client, protocol_id, {"route": other_route, "dose": {"value": 1, "unit": "mg"}}).get_json()
    assert result["verdict"] == "route_not_in_protocol"
    assert result["matched_range"] is None and result["protocol"]["id"] == protocol_id
    for route, phases in by_route.items():
        ranges = [r for r in document["dosing_ranges"] if r["route"] == route]
        unit = ranges[0]["unit"]
        other_phase = next(p for p in PHASES if p not in phases)
        result = dose_check(client, protocol_id, {"route": route, "phase": other_phase,
                                                  "dose": {"value": 1, "unit": "mg"}}).get_json()
        assert result["verdict"] == "phase_not_in_protocol"
        without_phase = dose_check(client, protocol_id, {"route": route, "dose": {"value": 1, "unit": "mg"},
                                                         "patient": {"weight_kg": 70}})
        if len(phases) > 1:
            assert without_phase.status_code == 422
            assert "phase" in without_phase.get_json()["errors"]
        else:
            assert without_phase.status_code == 200
        if is_per_kg(unit):
            missing = dose_check(client, protocol_id, {"route": route, "phase": sorted(phases)[0],
                                                       "dose": {"value": 1, "unit": "mg"}})
            assert missing.status_code == 422
            assert list(missing.get_json()["errors"]) == ["patient.weight_kg"]
            # a dose per kg too: the REST answer gives absolute amounts (CDS Hooks compares per kg)
            per_kg = dose_check(client, protocol_id, {"route": route, "phase": sorted(phases)[0],
                                                      "dose": {"value": 1, "unit": "mg/kg"}})
            assert per_kg.status_code == 422 and list(per_kg.get_json()["errors"]) == ["patient.weight_kg"]


def check_as_of_each_version(client: Any, protocol_id: str) -> None:
    versions = client.get(f"/v1/protocols/{protocol_id}/versions?page_size=100").get_json()["items"]
    for version in versions:
        if version["status"] != "active":
            continue
        as_of = version["effective_from"]
        document = served(client, protocol_id, as_of)
        if document["version"] != version["version"]:
            continue  # superseded at the same instant by a later version; that one is in effect
        (route, phase), alternatives = next(iter(groups(document).items()))
        unit = alternatives[0]["unit"]
        weight = Decimal(70) if is_per_kg(unit) else None
        dose = alternatives[0]["dose_min"] * (weight or 1)
        body: dict[str, Any] = {"route": route, "phase": phase, "as_of": as_of,
                                "dose": {"value": as_json_number(dose), "unit": absolute_unit(unit)}}
        if weight is not None:
            body["patient"] = {"weight_kg": 70}
        result = dose_check(client, protocol_id, body).get_json()
        assert result["protocol"]["version"] == version["version"]
        etag = client.get(f"/v1/protocols/{protocol_id}/versions/{version['version']}").headers["ETag"]
        assert result["protocol"]["etag"] == etag
        assert result["verdict"] == expected_verdict(alternatives, dose * MASS_IN_MG[amount_of(unit)], weight)


def test_the_catalog_has_the_ranges_this_suite_is_about(client, app):
    load_catalog(app)
    ids = set(CATALOG_IDS)
    assert {"esketamine-nasal-spravato", "ketamine-iv-anesthesia-induction"} <= ids
    spravato = served(client, "esketamine-nasal-spravato")
    assert any(r["dose_min"] == 56 and r["dose_max"] == 84 and r["unit"] == "mg" for r in spravato["dosing_ranges"])


@pytest.mark.parametrize("protocol_id", CATALOG_IDS)
def test_every_curated_protocol_dosing_table(client, app, protocol_id):
    """Edges in g/mg/ug, per-kg doses at several weights, per-period maxima, refusals and as_of,
    for every dosing range of one curated protocol (one catalog load per protocol keeps it fast)."""
    load_catalog(app)
    check_range_edges_in_every_mass_unit(client, protocol_id)
    check_doses_per_kg(client, protocol_id)
    check_per_period_maximum(client, protocol_id)
    check_refusals(client, protocol_id)
    check_as_of_each_version(client, protocol_id)


# ----------------------------------------------------------------------- own protocols


def create(client: Any, **overrides: Any) -> tuple[str, Any]:
    payload = protocol_payload(**overrides)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    return payload["id"], response


def test_as_of_a_past_version_gives_a_different_verdict(client):
    past = protocol_payload(effective_from="2020-01-01T00:00:00Z", dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg"}])
    response = client.post("/v1/protocols", json=past)
    assert response.status_code == 201
    v1_etag = response.headers["ETag"]
    current = dict(past, effective_from="2024-01-01T00:00:00Z", dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 28, "dose_max": 56, "unit": "mg"}])
    response = client.put(f"/v1/protocols/{past['id']}", json=current, headers={"If-Match": v1_etag})
    assert response.status_code == 201
    v2_etag = response.headers["ETag"]
    body = {"route": NASAL, "dose": {"value": 84, "unit": "mg"}}
    now = dose_check(client, past["id"], body).get_json()
    assert (now["verdict"], now["protocol"]["version"], now["protocol"]["etag"]) == ("above_max", 2, v2_etag)
    before = dose_check(client, past["id"], {**body, "as_of": "2021-06-01T00:00:00Z"}).get_json()
    assert (before["verdict"], before["protocol"]["version"], before["protocol"]["etag"]) == (
        "within_range", 1, v1_etag)
    assert before["range_in_ordered_unit"] == {"min": 56, "max": 84, "unit": "mg"}
    edge = dose_check(client, past["id"], {**body, "as_of": "2024-01-01T00:00:00Z"}).get_json()
    assert edge["protocol"]["version"] == 2  # effective_from is inclusive
    too_early = dose_check(client, past["id"], {**body, "as_of": "2019-12-31T23:59:59Z"})
    assert too_early.status_code == 404


def test_response_shows_the_arithmetic(client):
    protocol_id, _ = create(client, routes=[{"system": terminology.SNOMED, "code": IV, "display": "Intravenous route"}],
                            dosing_ranges=[{"route": IV, "phase": "single", "dose_min": 0.5, "dose_max": 1.0,
                                            "unit": "mg/kg", "duration": "PT40M"}])
    response = dose_check(client, protocol_id, {"route": IV, "dose": {"value": 56, "unit": "mg"},
                                                "patient": {"weight_kg": 70}})
    assert response.status_code == 200
    result = response.get_json()
    assert result["verdict"] == "within_range"
    assert result["absolute_range"] == {"min": 35, "max": 70, "unit": "mg", "weight_kg": 70,
                                        "calculation": "0.5\u20131 mg/kg \u00d7 70 kg = 35\u201370 mg"}
    assert result["dose_in_range_unit"] == {"value": 0.8, "unit": "mg/kg"}
    assert result["route"] == {"code": IV, "display": "Intravenous route"}
    assert any("35\u201370 mg" in message for message in result["messages"])
    # The same dose as a rate over the protocol's 40 minutes: 56 mg / 40 min = 84 mg/h.
    rate = dose_check(client, protocol_id, {"route": IV, "dose": {"value": 84, "unit": "mg/h"},
                                            "patient": {"weight_kg": 70}}).get_json()
    assert rate["verdict"] == "within_range"
    assert number(rate["dose_in_range_unit"]["value"]) == Decimal("0.8")


def test_ug_mcg_and_g_are_the_same_dose(client):
    protocol_id, _ = create(client)  # factory: 56-84 mg nasal, max 84 mg per P1D
    for value, unit in ((84000, "ug"), (84000, "mcg"), (0.084, "g"), (84, "mg")):
        result = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": value, "unit": unit}}).get_json()
        assert result["verdict"] == "within_range", (unit, result["messages"])
    above = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": 84000.0001, "unit": "mcg"}})
    assert above.get_json()["verdict"] == "above_max"
    assert above.get_json()["dose"] == {"value": 84000.0001, "unit": "ug"}


def test_per_period_maximum_over_http(client):
    protocol_id, _ = create(client)
    result = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": 56, "unit": "mg"},
                                              "frequency": {"count": 2, "period": "P1D"}}).get_json()
    assert result["verdict"] == "exceeds_max_per_period"
    assert result["per_period"]["projected"] == {"value": 112, "unit": "mg"}
    assert result["per_period"]["maximum"] == {"value": 84, "unit": "mg"}
    assert result["per_period"]["exceeded"] is True
    ok = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": 84, "unit": "mg"},
                                          "frequency": {"count": 2, "period": "P1W"}}).get_json()
    assert ok["verdict"] == "within_range" and ok["per_period"]["doses_per_period"] == 1


def test_volume_needs_a_concentration_over_http(client):
    protocol_id, _ = create(client)
    response = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": 0.2, "unit": "mL"}})
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == ["concentration"]
    # Spravato: 28 mg per 0.2 mL device.
    within = dose_check(client, protocol_id, {"route": NASAL, "dose": {"value": 0.6, "unit": "mL"},
                                              "concentration": {"value": 140, "unit": "mg/mL"}}).get_json()
    assert within["verdict"] == "within_range"
    assert within["dose_in_range_unit"] == {"value": 84, "unit": "mg"}
    assert within["range_in_ordered_unit"] == {"min": 0.4, "max": 0.6, "unit": "mL"}


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"route": NASAL, "dose": {"value": 0, "unit": "mg"}}, "dose.value"),
    ({"route": NASAL, "dose": {"value": -5, "unit": "mg"}}, "dose.value"),
    ({"route": NASAL, "dose": {"value": "56", "unit": "mg"}}, "dose.value"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mmol"}}, "dose.unit"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg/mo"}}, "dose.unit"),
    ({"route": NASAL, "dose": {"value": 56}}, "dose.unit"),
    # An order is given at one frequency: a protocol's period range would be accepted and never checked.
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"},
      "frequency": {"count": 1, "period": "P1W", "period_max": "P2W"}}, "frequency.period_max"),
    ({"route": NASAL}, "dose"),
    ({"dose": {"value": 56, "unit": "mg"}}, "route"),
    ({"route": "nasal", "dose": {"value": 56, "unit": "mg"}}, "route"),
    ({"route": NASAL, "phase": "week-3", "dose": {"value": 56, "unit": "mg"}}, "phase"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "patient": {"weight_kg": 0.29}}, "patient.weight_kg"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "patient": {"weight_kg": 500.5}}, "patient.weight_kg"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "patient": {}}, "patient.weight_kg"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "frequency": {"count": 0, "period": "P1D"}},
     "frequency.count"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "frequency": {"count": 1, "period": "P1M"}},
     "frequency.period"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "concentration": {"value": 10, "unit": "mg/kg"}},
     "concentration.unit"),
    # UCUM annotations alone name no unit (they were a 500: an AttributeError in the unit parser)
    ({"route": NASAL, "dose": {"value": 2, "unit": "{spray}"}}, "dose.unit"),
    ({"route": NASAL, "dose": {"value": 2, "unit": "mg/{tbl}"}}, "dose.unit"),
    ({"route": NASAL, "dose": {"value": 2, "unit": "mg/kg/{h}"}}, "dose.unit"),
    ({"route": NASAL, "dose": {"value": 2, "unit": "mL"}, "concentration": {"value": 10, "unit": "mg/{spray}"}},
     "concentration.unit"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "as_of": "yesterday"}, "as_of"),
    ({"route": NASAL, "dose": {"value": 56, "unit": "mg"}, "surprise": True}, "surprise"),
]


def test_invalid_requests_name_the_field(client):
    protocol_id, _ = create(client)
    for body, field in INVALID_BODIES:  # one app for the whole table keeps the suite fast
        response = dose_check(client, protocol_id, body)
        assert response.status_code == 422, (body, response.get_json())
        assert field in response.get_json()["errors"], (body, response.get_json())


def test_unknown_and_retired_protocols(client):
    body = {"route": NASAL, "dose": {"value": 56, "unit": "mg"}}
    assert dose_check(client, "no-such-protocol", body).status_code == 404
    protocol_id, created = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": created.headers["ETag"]})
    assert retired.status_code == 200
    response = dose_check(client, protocol_id, body)
    assert response.status_code == 410
    assert "retired" in response.get_json()["message"]
    assert client.get(f"/v1/protocols/{protocol_id}/dose?route={NASAL}").status_code == 410


def test_non_json_body_is_refused(client):
    protocol_id, _ = create(client)
    response = client.post(f"/v1/protocols/{protocol_id}/dose-check", data="route=1", content_type="text/plain")
    assert response.status_code == 415
    response = client.post(f"/v1/protocols/{protocol_id}/dose-check", data="{bad", content_type="application/json")
    assert response.status_code == 400


# ---------------------------------------------------------------------------- GET /dose


def test_patient_dose_range(client):
    protocol_id, _ = create(client, routes=[IM_ROUTE],
                            dosing_ranges=[{"route": IM, "phase": "induction", "dose_min": 6.5, "dose_max": 13,
                                            "unit": "mg/kg",
                                            "max_per_period": {"value": 26, "unit": "mg/kg", "period": "P1D"}}])
    response = client.get(f"/v1/protocols/{protocol_id}/dose?route={IM}&weight_kg=70.5")
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    (only,) = result["ranges"]
    assert only["absolute_range"] == {"min": 458.25, "max": 916.5, "unit": "mg", "weight_kg": 70.5,
                                      "calculation": "6.5\u201313 mg/kg \u00d7 70.5 kg = 458.25\u2013916.5 mg"}
    assert only["max_per_period"] == {"value": 1833, "unit": "mg", "period": "P1D"}
    assert result["protocol"]["id"] == protocol_id and result["protocol"]["version"] == 1
    assert result["phase"] == "induction"


def test_the_patient_range_says_when_its_top_breaks_the_maximum_per_period(client, app):
    """Found by a clinical QA probe: for the CRPS infusion (0.35 mg/kg/h over 4 h, at most 100 mg a day)
    at 80 kg, /dose showed 28 mg/h with "at most 100 mg per P1D" and nothing more, while dose-check
    called 28 mg/h for 4 h once a day (112 mg) critical. At 70 kg (98 mg) there is nothing to say; no
    other curated range says it at 70 kg either. (The curated CRPS range is capped at 25 mg/h since its
    version 7, which keeps it within 100 mg a day: a range without the cap shows the mechanism.)"""
    load_catalog(app)
    uncapped = protocol_payload(id="crps-uncapped", routes=[{"system": terminology.SNOMED, "code": IV,
                                                            "display": "Intravenous route"}],
                                dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35,
                                                "unit": "mg/kg/h", "duration": "PT4H",
                                                "frequency": {"count": 1, "period": "P1D"},
                                                "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    assert client.post("/v1/protocols", json=uncapped).status_code == 201
    heavy = client.get(f"/v1/protocols/crps-uncapped/dose?route={IV}&weight_kg=80").get_json()
    light = client.get(f"/v1/protocols/crps-uncapped/dose?route={IV}&weight_kg=70").get_json()
    warning = "comes to more than its maximum for this patient: 112 mg \u00d7 1 dose = 112 mg per P1D"
    assert any(warning in m for r in heavy["ranges"] for m in r["messages"]), heavy
    assert not any("comes to more than its maximum" in m for r in light["ranges"] for m in r["messages"])
    check = dose_check(client, "crps-uncapped", {
        "route": IV, "dose": {"value": 28, "unit": "mg/h"}, "patient": {"weight_kg": 80},
        "frequency": {"count": 1, "period": "P1D"}})
    assert check.get_json()["verdict"] == "exceeds_max_per_period"  # the two endpoints agree
    capped = client.get(f"/v1/protocols/ketamine-iv-crps-off-label/dose?route={IV}&weight_kg=80").get_json()
    (capped_range,) = capped["ranges"]
    assert capped_range["absolute_range"]["max"] == 25, capped_range
    assert not any("comes to more than its maximum" in m for m in capped_range["messages"])
    for protocol_id in CATALOG_IDS:
        content = client.get(f"/v1/protocols/{protocol_id}").get_json()
        for route in {r["route"] for r in content["dosing_ranges"]}:
            for phase in {r["phase"] for r in content["dosing_ranges"] if r["route"] == route}:
                answer = client.get(f"/v1/protocols/{protocol_id}/dose?route={route}&phase={phase}&weight_kg=70")
                assert answer.status_code == 200, (protocol_id, route, phase, answer.get_json())
                assert not any("comes to more than its maximum" in m for r in answer.get_json()["ranges"]
                               for m in r["messages"]), (protocol_id, route, phase)


INVALID_QUERIES = [
    (f"route={IM}", "weight_kg"),
    (f"route={IM}&weight_kg=0.2", "weight_kg"),
    (f"route={IM}&weight_kg=abc", "weight_kg"),
    (f"route={IM}&weight_kg=1e3", "weight_kg"),
    (f"route={IV}&weight_kg=70", "route"),
    (f"route={IM}&weight_kg=70&phase=maintenance", "phase"),
    ("weight_kg=70", "route"),
    (f"route={IM}&weight_kg=70&dose=5", "dose"),
]


def test_patient_dose_errors_name_the_parameter(client):
    protocol_id, _ = create(client, routes=[IM_ROUTE],
                            dosing_ranges=[{"route": IM, "phase": "induction", "dose_min": 6.5, "dose_max": 13,
                                            "unit": "mg/kg"}])
    for query, field in INVALID_QUERIES:
        response = client.get(f"/v1/protocols/{protocol_id}/dose?{query}")
        assert response.status_code == 422, (query, response.get_json())
        assert field in response.get_json()["errors"], (query, response.get_json())


def test_patient_dose_with_several_phases_requires_phase(client):
    protocol_id, _ = create(client, dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg"},
        {"route": NASAL, "phase": "maintenance", "dose_min": 56, "dose_max": 84, "unit": "mg"},
        {"route": NASAL, "phase": "maintenance", "dose_min": 28, "dose_max": 56, "unit": "mg"}])
    response = client.get(f"/v1/protocols/{protocol_id}/dose?route={NASAL}")
    assert response.status_code == 422
    assert "phase" in response.get_json()["errors"]
    maintenance = client.get(f"/v1/protocols/{protocol_id}/dose?route={NASAL}&phase=maintenance").get_json()
    assert [r["range_index"] for r in maintenance["ranges"]] == [1, 2]
    assert [r["absolute_range"]["calculation"] for r in maintenance["ranges"]] == [
        "56\u201384 mg (not weight-based)", "28\u201356 mg (not weight-based)"]


def test_a_maximum_per_period_in_a_rate_unit_is_refused_at_write_time(client):
    """"30 mg/h per day" cannot be checked: the dose check adds up the doses given in the period."""
    payload = protocol_payload(dosing_ranges=[
        {"route": NASAL, "phase": "induction", "dose_min": 10, "dose_max": 20, "unit": "mg/h", "duration": "PT2H",
         "max_per_period": {"value": 30, "unit": "mg/h", "period": "P1D"}}])
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422, response.get_json()
    assert "dosing_ranges.0.max_per_period.unit" in response.get_json()["errors"]
    assert client.get(f"/v1/protocols/{payload['id']}").status_code == 404


def test_a_dose_given_more_often_than_the_protocol_says_is_its_own_verdict(client):
    protocol_id, _ = create(client, dosing_ranges=[{
        "route": NASAL, "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg",
        "frequency": {"count": 2, "period": "P1W", "text": "twice weekly"}}])
    body = {"route": NASAL, "dose": {"value": 84, "unit": "mg"}}
    # The regimen's projection is data, not only a message: doses in the regimen's week, and their sum
    # against the most it gives (2 x 84 = 168 mg), whichever way the verdict goes.
    for dose, frequency, verdict, doses_a_week in (
            (56, {"count": 3, "period": "P1W"}, "more_frequent_than_protocol", 3),  # 168 mg a week: 2 x 84
            (84, {"count": 3, "period": "P1W"}, "exceeds_max_per_period", 3),  # 252 mg > 168 mg the regimen gives
            (84, {"count": 5, "period": "P1D"}, "exceeds_max_per_period", 35),
            (84, {"count": 1, "period": "P1D"}, "exceeds_max_per_period", 7),  # 588 mg a week (clinical QA probe)
            (84, {"count": 2, "period": "P1W"}, "within_range", 2), (84, None, "within_range", None)):
        sent = {**body, "dose": {"value": dose, "unit": "mg"}, **({"frequency": frequency} if frequency else {})}
        result = dose_check(client, protocol_id, sent).get_json()
        assert result["verdict"] == verdict, (dose, frequency, result["messages"])
        regimen = result["regimen"]
        if doses_a_week is None:
            assert regimen is None
            continue
        assert regimen == {"period": "P1W", "doses_per_period": doses_a_week,
                           "projected": {"value": dose * doses_a_week, "unit": "mg"},
                           "maximum": {"value": 168, "unit": "mg"}, "exceeded": dose * doses_a_week > 168,
                           "calculation": regimen["calculation"]}, regimen
        total = dose * doses_a_week
        assert regimen["calculation"].startswith(f"{dose} mg \u00d7 {doses_a_week} doses = {total} mg per P1W")
        assert result["evaluations"][0]["regimen"] == regimen
        assert any(m.startswith("Regimen exceeded") for m in result["messages"]) == regimen["exceeded"]
    too_much = dose_check(client, protocol_id, {**body, "dose": {"value": 90, "unit": "mg"},
                                                "frequency": {"count": 5, "period": "P1D"}}).get_json()
    assert too_much["verdict"] == "above_max"  # a worse verdict is not hidden by the frequency


def test_the_order_can_say_how_long_an_administration_runs(client):
    """A rate converts to an amount through the order's duration when it sends one (clinical QA probe:
    an infusion run for 24 h was judged as the protocol's 4 h), and a single-dose range is not a
    schedule (psilocybin 25 mg every day read as within range)."""
    protocol_id, _ = create(client, dosing_ranges=[{
        "route": NASAL, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35, "unit": "mg/kg/h",
        "duration": "PT4H", "frequency": {"count": 1, "period": "P1D"},
        "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}}])
    body = {"route": NASAL, "dose": {"value": 0.35, "unit": "mg/kg/h"}, "patient": {"weight_kg": 60},
            "frequency": {"count": 1, "period": "P1D"}}
    assert dose_check(client, protocol_id, body).get_json()["verdict"] == "within_range"
    day = dose_check(client, protocol_id, {**body, "duration": "PT24H"}).get_json()
    assert day["verdict"] == "exceeds_max_per_period", day["messages"]
    assert dose_check(client, protocol_id, {**body, "duration": "P1X"}).status_code == 422
    single_id, _ = create(client, dosing_ranges=[{"route": NASAL, "phase": "single", "dose_min": 25, "dose_max": 25,
                                                  "unit": "mg"}])
    once = {"route": NASAL, "dose": {"value": 25, "unit": "mg"}}
    assert dose_check(client, single_id, once).get_json()["verdict"] == "within_range"
    daily = dose_check(client, single_id, {**once, "frequency": {"count": 1, "period": "P1D"}}).get_json()
    assert daily["verdict"] == "more_frequent_than_protocol", daily["messages"]


def test_rounded_numbers_stay_on_the_side_of_the_bound_they_broke(client):
    """Numbers in a response have at most 12 significant digits. Rounded to the nearest, 3.00000000001
    mg/h at 3 kg (1.0000000000033 mg/kg/h, above a 1 mg/kg/h maximum) was shown as 1 next to above_max,
    and 6.66666666667 mg six times a day (40.00000000002 mg) as 40 next to a maximum of 40 and
    exceeded: true (adversarial probe). A rounded value is now rounded away from the bound it broke."""
    rate_id, _ = create(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.5, "dose_max": 1,
                                                "unit": "mg/kg/h"}], routes=[IV_ROUTE])
    above = dose_check(client, rate_id, {"route": IV, "dose": {"value": Decimal("3.00000000001"), "unit": "mg/h"},
                                         "patient": {"weight_kg": 3}}).get_json()
    assert above["verdict"] == "above_max"
    assert Decimal(str(above["dose_in_range_unit"]["value"])) > 1, above["dose_in_range_unit"]
    assert any("≈1.00000000001 mg/kg/h" in m for m in above["messages"]), above["messages"]
    below = dose_check(client, rate_id, {"route": IV, "dose": {"value": Decimal("1.49999999999"), "unit": "mg/h"},
                                         "patient": {"weight_kg": 3}}).get_json()
    assert below["verdict"] == "below_min"
    assert Decimal(str(below["dose_in_range_unit"]["value"])) < Decimal("0.5"), below["dose_in_range_unit"]
    capped_id, _ = create(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 5, "dose_max": 10,
                                                  "unit": "mg",
                                                  "max_per_period": {"value": 40, "unit": "mg", "period": "P1D"}}],
                          routes=[IV_ROUTE])
    over = dose_check(client, capped_id, {"route": IV, "dose": {"value": Decimal("6.66666666667"), "unit": "mg"},
                                          "frequency": {"count": 6, "period": "P1D"}}).get_json()
    per_period = over["per_period"]
    assert over["verdict"] == "exceeds_max_per_period" and per_period["exceeded"]
    assert Decimal(str(per_period["projected"]["value"])) > Decimal(str(per_period["maximum"]["value"])), per_period
    assert "> maximum 40 mg" in per_period["calculation"] and "= ≈40.0000000001 mg" in per_period["calculation"]
    # The bounds too (review): 0.35 mg/kg/h at 71.4285714285 kg is 24.999999999975 mg/h, below 25 mg/h.
    capped, _ = create(client, dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.35, "dose_max": 0.35,
                                               "unit": "mg/kg/h"}], routes=[IV_ROUTE])
    fast = dose_check(client, capped, {"route": IV, "dose": {"value": 25, "unit": "mg/h"},
                                       "patient": {"weight_kg": Decimal("71.4285714285")}}).get_json()
    assert fast["verdict"] == "above_max"
    assert Decimal(str(fast["range_in_ordered_unit"]["max"])) < 25, fast["range_in_ordered_unit"]
    assert Decimal(str(fast["absolute_range"]["max"])) < 25, fast["absolute_range"]
    assert fast["absolute_range"]["calculation"].endswith("= ≈24.9999999999 mg/h")  # the text too (probe)
    assert any("= ≈24.9999999999 mg/h" in m for m in fast["messages"]), fast["messages"]


def test_the_top_of_range_check_needs_no_weight_the_range_does_not(client):
    """Found by a probe of the fix: an amount range with a per-kg maximum asked /dose without a weight
    became a 422 (the new check projected the maximum, which needs one); it answers as before."""
    protocol_id, _ = create(client, routes=[IM_ROUTE], dosing_ranges=[{
        "route": IM, "phase": "induction", "dose_min": 10, "dose_max": 20, "unit": "mg",
        "max_per_period": {"value": 1, "unit": "mg/kg", "period": "P1D"}}])
    response = client.get(f"/v1/protocols/{protocol_id}/dose?route={IM}")
    assert response.status_code == 200, response.get_json()
    (only,) = response.get_json()["ranges"]
    assert not any("comes to more than its maximum" in m for m in only["messages"])
    heavy = client.get(f"/v1/protocols/{protocol_id}/dose?route={IM}&weight_kg=15").get_json()
    (capped,) = heavy["ranges"]
    assert any("the protocol gives no frequency" in m for m in capped["messages"]), capped["messages"]


def test_a_dose_given_faster_than_the_range_allows_is_named_in_the_answer(client):
    """Found by an adversarial probe: 0.5 mg/kg over one minute against 0.5 mg/kg over 40 minutes read
    within_range with nothing said. The answer names it in ``faster_than_protocol`` and a message."""
    payload = protocol_payload(dosing_ranges=[{"route": "47625008", "phase": "infusion", "dose_min": 0.5,
                                               "dose_max": 0.5, "unit": "mg/kg", "duration": "PT40M"}],
                               routes=[{"system": "http://snomed.info/sct", "code": "47625008",
                                        "display": "Intravenous route"}])
    assert client.post("/v1/protocols", json=payload).status_code == 201
    body = {"route": "47625008", "dose": {"value": 30, "unit": "mg/kg/h"}, "patient": {"weight_kg": 70},
            "duration": "PT1M"}
    answer = client.post(f"/v1/protocols/{payload['id']}/dose-check", json=body).get_json()
    assert answer["verdict"] == "within_range"
    assert answer["faster_than_protocol"].startswith("Given faster than the protocol: 0.5 mg/kg over PT1M")
    assert answer["faster_than_protocol"] in answer["messages"]
    slow = client.post(f"/v1/protocols/{payload['id']}/dose-check", json={**body, "duration": "PT40M",
                                                                        "dose": {"value": 0.75, "unit": "mg/kg/h"}})
    assert slow.get_json()["faster_than_protocol"] is None


def test_a_dose_pushed_in_less_than_the_ranges_shortest_administration_time_is_named(client):
    """Found by two clinical probes: against the Ketalar label's "1-4.5 mg/kg, administer slowly over 60
    seconds", read as a rate only (4.5 mg/kg per 60 s), 1 mg/kg pushed in 14 s and 2 mg/kg in 30 s were
    within range with nothing said. A push time holds for every dose: ``duration_min``. A range's
    duration alone stays a rate: 1 mg/kg over 2 minutes is the label's own 0.5 mg/kg/min against a
    range whose PT4M is the time its top dose takes at that rate."""
    iv = {"system": "http://snomed.info/sct", "code": "47625008", "display": "Intravenous route"}
    bolus = {"route": "47625008", "phase": "induction", "dose_min": 1, "dose_max": 4.5, "unit": "mg/kg",
             "duration": "PT60S", "duration_min": "PT60S"}
    pushed = protocol_payload(dosing_ranges=[bolus], routes=[iv])
    rate_only = {key: value for key, value in bolus.items() if key != "duration_min"}
    paced = protocol_payload(dosing_ranges=[{**rate_only, "dose_max": 2, "duration": "PT4M"}], routes=[iv])
    for payload in (pushed, paced):
        assert client.post("/v1/protocols", json=payload).status_code == 201, payload

    def check(protocol_id: str, value: float, duration: str) -> dict:
        answer = client.post(f"/v1/protocols/{protocol_id}/dose-check", json={
            "route": "47625008", "dose": {"value": value, "unit": "mg/kg"}, "patient": {"weight_kg": 70},
            "duration": duration})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    for value, duration in ((1, "PT14S"), (2, "PT30S"), (4.5, "PT54S")):
        answer = check(pushed["id"], value, duration)
        assert answer["verdict"] == "within_range"
        assert answer["faster_than_protocol"] == (
            f"Given faster than the protocol: {value} mg/kg over {duration}; the protocol gives each dose over at "
            "least PT60S.")
        assert answer["faster_than_protocol"] in answer["messages"]
    for value, duration in ((1, "PT55S"), (1, "PT60S"), (4.5, "PT2M")):  # within 10 %, or slower
        assert check(pushed["id"], value, duration)["faster_than_protocol"] is None, (value, duration)
    assert check(paced["id"], 1, "PT2M")["faster_than_protocol"] is None
    assert check(paced["id"], 1, "PT30S")["faster_than_protocol"].startswith("Given faster than the protocol: 1 mg/kg")


# --------------------------------------------------- found by the probe of 2026-12-05 (second)


@pytest.mark.parametrize(("field", "body"), [
    ("dose.unit", {"dose": {"value": 84, "unit": "mg{tbl}"}}),
    ("dose.unit", {"dose": {"value": 84, "unit": "mg.[iU]"}}),
    ("dose.unit", {"dose": {"value": 84, "unit": "Mg"}}),
    ("dose.unit", {"dose": {"value": 84, "unit": "mg%"}}),
    ("dose.unit", {"dose": {"value": 1, "unit": "mg/kg/ms"}, "patient": {"weight_kg": 70}}),
    ("concentration.unit", {"dose": {"value": 1, "unit": "mL"}, "concentration": {"value": 28, "unit": "mg.[pi]/mL"}}),
])
def test_an_ordered_unit_outside_the_units_doses_are_written_in_is_a_422_naming_it(client, field, body):
    """Found by an adversarial probe: 84 mg{tbl} and 84 mg.[iU] read as 84 mg within Spravato's 56-84 mg,
    and mg% as 0.84 mg. An ordered unit is held to the rules the pick list states for stored ones."""
    load_catalog(client.application)
    response = dose_check(client, "esketamine-nasal-spravato",
                          {"route": NASAL, "phase": "induction", **body})
    assert response.status_code == 422, response.get_json()
    assert list(response.get_json()["errors"]) == [field]


def test_a_range_stored_per_millisecond_is_refused(client):
    """Found by an adversarial probe: mg/kg/ms (one slip from mg/kg/min, a factor of 60,000) and mg/s were
    stored, though the pick list's rules name h, min, d and wk."""
    for unit in ("mg/kg/ms", "mg/s", "mg/kg/ks"):
        payload = protocol_payload(dosing_ranges=[{"route": NASAL, "phase": "induction", "dose_min": 1,
                                                   "dose_max": 2, "unit": unit}])
        response = client.post("/v1/protocols", json=payload)
        assert response.status_code == 422, (unit, response.get_json())
        assert "dosing_ranges.0.unit" in response.get_json()["errors"]


def test_a_repeated_induction_dose_lists_what_was_not_checked(client):
    """Found by an adversarial probe: Ketalar IV 2 mg/kg every 5 minutes, and IM 13 mg/kg 24 times a day
    (21,840 mg a day), read a clean within_range. ``unchecked`` now says the repetition was not checked
    (the CDS Hooks card calls it "partly checked")."""
    load_catalog(client.application)
    body = {"route": IV, "dose": {"value": 2, "unit": "mg/kg"}, "patient": {"weight_kg": 70}}
    once = dose_check(client, "ketamine-iv-anesthesia-induction", body).get_json()
    assert once["verdict"] == "within_range" and once["unchecked"] == []
    every_5_min = dose_check(client, "ketamine-iv-anesthesia-induction",
                             {**body, "frequency": {"count": 1, "period": "PT5M"}}).get_json()
    assert every_5_min["verdict"] == "within_range"
    assert every_5_min["unchecked"] == [
        "the order repeats its dose, and this range gives no frequency or maximum per period to check the "
        "repetition against"]
    assert all(e["unchecked"] == every_5_min["unchecked"] for e in every_5_min["evaluations"])


def test_an_infusion_run_longer_than_the_protocol_is_named_and_its_regimen_exceeded(client):
    """Found by an adversarial probe: 0.5 mg/kg/h for a week against 0.25-0.5 mg/kg/h for PT1H once a week
    read within_range; and on the curated CRPS protocol 5.5 h instead of 4 h passed with nothing said."""
    protocol_id, _ = create(client, routes=[IV_ROUTE], dosing_ranges=[{
        "route": IV, "phase": "infusion", "dose_min": 0.25, "dose_max": 0.5, "unit": "mg/kg/h",
        "duration": "PT1H", "frequency": {"count": 1, "period": "P1W"}}])
    body = {"route": IV, "dose": {"value": 0.5, "unit": "mg/kg/h"}, "patient": {"weight_kg": 70},
            "duration": "P1W", "frequency": {"count": 1, "period": "P1W"}}
    answer = dose_check(client, protocol_id, body).get_json()
    assert answer["verdict"] == "exceeds_max_per_period"
    assert answer["regimen"]["exceeded"] is True
    assert (answer["regimen"]["projected"], answer["regimen"]["maximum"]) == (
        {"value": 84, "unit": "mg/kg"}, {"value": 0.5, "unit": "mg/kg"})
    assert answer["longer_than_protocol"].startswith("Given for longer than the protocol: 0.5 mg/kg/h for P1W")
    load_catalog(client.application)
    crps = {"route": IV, "dose": {"value": 0.35, "unit": "mg/kg/h"}, "patient": {"weight_kg": 50}}
    four_hours = dose_check(client, "ketamine-iv-crps-off-label", {**crps, "duration": "PT4H"}).get_json()
    assert four_hours["verdict"] == "within_range" and four_hours["longer_than_protocol"] is None
    longer = dose_check(client, "ketamine-iv-crps-off-label", {**crps, "duration": "PT5H30M"}).get_json()
    assert longer["longer_than_protocol"] is not None, longer["messages"]
    assert longer["longer_than_protocol"] in longer["messages"]


def test_a_point_range_shown_in_the_ordered_unit_never_has_min_above_max(client):
    """Found by an adversarial probe: CRPS's 0.35-0.35 mg/kg/h at 60 kg, ordered as 5.8333333333 ug/kg/min,
    showed min 5.83333333334 (rounded away from the dose it broke) and max 5.83333333333."""
    load_catalog(client.application)
    answer = dose_check(client, "ketamine-iv-crps-off-label", {
        "route": IV, "dose": {"value": Decimal("5.8333333333"), "unit": "ug/kg/min"},
        "patient": {"weight_kg": 60}}).get_json()
    shown = answer["range_in_ordered_unit"]
    assert shown["min"] <= shown["max"], shown
    assert answer["verdict"] == "below_min" and shown["min"] == shown["max"] > 5.8333333333


def test_the_bounds_of_an_ordered_number_are_in_the_contract_and_the_message_says_them(client, app):
    """Found by an adversarial probe: 1e-12 was accepted and 1e12 refused with "Must be between 1e-12 and
    1e12.", and the OpenAPI document said only ``type: number``."""
    load_catalog(app)
    body = {"route": NASAL, "phase": "induction"}
    spravato = "esketamine-nasal-spravato"
    smallest = dose_check(client, spravato, {**body, "dose": {"value": Decimal("1e-12"), "unit": "mg"}})
    assert smallest.status_code == 200
    too_big = dose_check(client, spravato, {**body, "dose": {"value": Decimal("1e12"), "unit": "mg"}})
    assert too_big.get_json()["errors"] == {"dose.value": ["Must be at least 1e-12 and less than 1e12."]}
    spec = client.get("/openapi.json").get_json()["components"]["schemas"]
    value = spec["DoseQuantity"]["properties"]["value"]
    assert (value["minimum"], value["maximum"], value["exclusiveMaximum"]) == (1e-12, 1e12, True)


def test_the_answer_names_the_protocols_title_and_fda_status(client, app):
    """Found by a clinical probe: psilocybin 25 mg answered a bare "within_range": nothing said the protocol
    is investigational (Schedule I, trials only), nor that the TRD and CRPS ketamine protocols are off-label.
    The protocol named in every answer carries its title and FDA status."""
    load_catalog(app)
    for protocol_id, route, dose, status in (
            ("psilocybin-oral-trd-investigational", ORAL, {"value": 25, "unit": "mg"}, "investigational"),
            ("esketamine-nasal-spravato", NASAL, {"value": 56, "unit": "mg"}, "approved")):
        document = client.get(f"/v1/protocols/{protocol_id}").get_json()
        phase = document["dosing_ranges"][0]["phase"]
        answer = dose_check(client, protocol_id, {"route": route, "phase": phase, "dose": dose}).get_json()
        assert answer["protocol"]["fda_status"] == status == document["fda_approval"]["status"], answer["protocol"]
        assert answer["protocol"]["title"] == document["title"]
        patient = client.get(f"/v1/protocols/{protocol_id}/dose?route={route}&phase={phase}").get_json()
        assert patient["protocol"]["fda_status"] == status


def test_of_equally_good_ranges_the_one_whose_frequency_is_the_orders_answers(client, app):
    """Found by a clinical probe: Spravato 84 mg every 2 weeks in maintenance is within both the weeks 5-8
    range (once weekly) and the week-9 one (every 2 weeks or weekly), and the answer quoted the weeks 5-8
    instructions ("once weekly"). On a tie the range whose own frequency is the order's answers."""
    load_catalog(app)
    spravato = "esketamine-nasal-spravato"
    ranges = client.get(f"/v1/protocols/{spravato}").get_json()["dosing_ranges"]
    maintenance = [i for i, r in enumerate(ranges) if r["phase"] == "maintenance"]
    week_9 = next(i for i in maintenance if ranges[i]["frequency"].get("period_max") == "P2W")
    weekly = next(i for i in maintenance if i != week_9)
    body = {"route": NASAL, "phase": "maintenance", "dose": {"value": 84, "unit": "mg"}}
    every_2_weeks = dose_check(client, spravato, {**body, "frequency": {"count": 1, "period": "P2W"}}).get_json()
    assert (every_2_weeks["verdict"], every_2_weeks["range_index"]) == ("within_range", week_9)
    assert any(ranges[week_9]["instructions"] in m for m in every_2_weeks["messages"])
    once_a_week = dose_check(client, spravato, {**body, "frequency": {"count": 1, "period": "P1W"}}).get_json()
    assert (once_a_week["verdict"], once_a_week["range_index"]) == ("within_range", weekly)  # both fit: the first


def test_an_absolute_maximum_is_read_in_its_own_unit_on_amount_and_rate_ranges(client):
    """The cap of a weight-based range, in any unit of its kind (25,000 ug/h is 25 mg/h; read as mg/h it
    would cap nothing), on a range of rates and on one of amounts (1-4.5 mg/kg, at most 300 mg). A dose per
    kg against a capped range names what it is for the patient (0.3 mg/kg/h is 27 mg/h for 90 kg; a review:
    the message gave the dose per kg only)."""
    rate_id, _ = create(client, routes=[{"system": terminology.SNOMED, "code": IV, "display": "Intravenous route"}],
                        dosing_ranges=[{"route": IV, "phase": "infusion", "dose_min": 0.3, "dose_max": 0.35,
                                        "unit": "mg/kg/h", "duration": "PT4H",
                                        "absolute_max": {"value": 25000, "unit": "ug/h"}}])
    body = {"route": IV, "patient": {"weight_kg": 90}, "duration": "PT4H"}
    over = dose_check(client, rate_id, {**body, "dose": {"value": 31.5, "unit": "mg/h"}}).get_json()
    assert over["verdict"] == "above_max" and over["absolute_range"]["max"] == 25, over["absolute_range"]
    per_kg = dose_check(client, rate_id, {**body, "dose": {"value": 0.3, "unit": "mg/kg/h"}}).get_json()
    assert per_kg["verdict"] == "above_max"  # 27 mg/h: the range is 25 mg/h for 90 kg
    assert any("0.3 mg/kg/h (= 27 mg/h for 90 kg) is above the protocol maximum" in m for m in per_kg["messages"])
    per_minute = dose_check(client, rate_id, {**body, "dose": {"value": 5, "unit": "ug/kg/min"}}).get_json()
    assert any("5 ug/kg/min (= 0.3 mg/kg/h = 27 mg/h for 90 kg) is above" in m for m in per_minute["messages"])
    amount_id, _ = create(client, routes=[{"system": terminology.SNOMED, "code": IV, "display": "Intravenous route"}],
                          dosing_ranges=[{"route": IV, "phase": "induction", "dose_min": 1, "dose_max": 4.5,
                                          "unit": "mg/kg", "absolute_max": {"value": 0.3, "unit": "g"}}])
    heavy = {"route": IV, "patient": {"weight_kg": 100}}
    assert dose_check(client, amount_id, {**heavy, "dose": {"value": 300, "unit": "mg"}}).get_json()["verdict"] == \
        "within_range"
    assert dose_check(client, amount_id, {**heavy, "dose": {"value": 350, "unit": "mg"}}).get_json()["verdict"] == \
        "above_max"
    light = dose_check(client, amount_id, {"route": IV, "patient": {"weight_kg": 50},
                                           "dose": {"value": 225, "unit": "mg"}}).get_json()
    assert light["verdict"] == "within_range"  # 4.5 mg/kg x 50 kg = 225 mg, under the cap
    patient = client.get(f"/v1/protocols/{amount_id}/dose?route={IV}&weight_kg=100").get_json()
    (capped,) = patient["ranges"]
    assert (capped["absolute_range"]["min"], capped["absolute_range"]["max"]) == (100, 300)


# ---------------------------------------------------------------- a range's indications


SPRAVATO = "esketamine-nasal-spravato"


def test_a_dose_check_for_one_indication_judges_only_its_ranges(app, client):
    """Found by a clinical probe: an MDSI order at a weekly maintenance schedule was judged against the TRD
    maintenance range. With ``indication``, only the ranges for it are judged: Spravato's MDSI regimen has
    no maintenance phase, and its twice-weekly induction is the MDSI range (index 3)."""
    load_catalog(app)
    weekly = {"route": NASAL, "phase": "maintenance", "dose": {"value": 84, "unit": "mg"},
              "frequency": {"count": 1, "period": "P1W"}}
    assert dose_check(client, SPRAVATO, weekly).get_json()["verdict"] == "within_range"  # every range, as before
    mdsi = dose_check(client, SPRAVATO, {**weekly, "indication": "R45.851"}).get_json()
    assert mdsi["verdict"] == "phase_not_in_protocol", mdsi
    assert "for indication R45.851" in mdsi["messages"][0] and "induction" in mdsi["messages"][0]
    trd = dose_check(client, SPRAVATO, {**weekly, "indication": "F33.9"}).get_json()
    assert trd["verdict"] == "within_range" and trd["range_index"] in (1, 2)
    induction = {"route": NASAL, "dose": {"value": 84, "unit": "mg"}, "frequency": {"count": 2, "period": "P1W"}}
    body = dose_check(client, SPRAVATO, {**induction, "indication": "R45.851"}).get_json()
    assert body["verdict"] == "within_range" and body["range_index"] == 3 and body["phase"] == "induction"
    assert [e["range_index"] for e in body["evaluations"]] == [3]  # not the TRD induction (range 0)
    both = dose_check(client, SPRAVATO, {**induction, "phase": "induction"}).get_json()
    assert [e["range_index"] for e in both["evaluations"]] == [0, 3]  # without indication: every range, as before
    assert body["matched_range"]["indications"] == ["R45.851"]
    # without a phase, the TRD codes have two phases on the route: phase is still required
    assert dose_check(client, SPRAVATO, {**induction, "indication": "F33.9"}).status_code == 422


def test_a_dose_check_indication_must_be_one_of_the_protocols(app, client):
    load_catalog(app)
    order = {"route": NASAL, "phase": "induction", "dose": {"value": 84, "unit": "mg"}, "indication": "F41.1"}
    response = dose_check(client, SPRAVATO, order)
    assert response.status_code == 422
    body = response.get_json()
    assert list(body["errors"]) == ["indication"] and "R45.851" in body["errors"]["indication"][0]
    assert dose_check(client, SPRAVATO, {**order, "indication": ""}).status_code == 422


def test_a_dose_check_indication_of_a_record_whose_ranges_name_none_judges_them_all(client):
    """A range without ``indications`` is for every indication of the record: a record written before the
    field existed answers with and without ``indication`` alike."""
    protocol_id, _ = create(client)
    order = {"route": NASAL, "phase": "induction", "dose": {"value": 84, "unit": "mg"}}
    without = dose_check(client, protocol_id, order).get_json()
    with_it = dose_check(client, protocol_id, {**order, "indication": "F33.2"}).get_json()
    assert without == with_it and without["verdict"] == "within_range"


def test_a_dose_check_for_an_indication_no_range_is_for_says_so(client):
    """Found in review: with every range for another indication, the answer said the protocol "doses by no
    route"."""
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    protocol_id, created = create(client, indications=[
        {"system": icd, "code": "F33.9", "display": "Major depressive disorder, recurrent, unspecified"},
        {"system": icd, "code": "R45.851", "display": "Suicidal ideations"}])
    ranges = [{**r, "indications": ["F33.9"]} for r in created.get_json()["dosing_ranges"]]
    revised = client.put(f"/v1/protocols/{protocol_id}", json={**created.get_json(), "dosing_ranges": ranges},
                         headers={"If-Match": created.headers["ETag"]})
    assert revised.status_code == 201, revised.get_json()
    order = {"route": NASAL, "phase": "induction", "dose": {"value": 84, "unit": "mg"}, "indication": "R45.851"}
    body = dose_check(client, protocol_id, order).get_json()
    assert body["verdict"] == "route_not_in_protocol"
    assert "no route for it (its dosing ranges are for its other indications)" in body["messages"][0], body
