"""GET /v1/terminology/*: the pick lists, and that everything listed is accepted by POST /v1/protocols."""

from __future__ import annotations

import pytest

from protocols import terminology, units
from tests.factories import ICD10CM, SNOMED, protocol_payload


def test_routes_list_snomed_codes_with_spl_alternates(client):
    response = client.get("/v1/terminology/routes")
    assert response.status_code == 200
    items = {item["code"]: item for item in response.get_json()["items"]}
    assert {"47625008", "78421000", "46713006", "26643006", "34206005"} <= set(items)
    nasal = items["46713006"]
    assert nasal["system"] == SNOMED and nasal["display"] == "Nasal route"
    assert nasal["alternates"] == [{"system": terminology.NCI_THESAURUS, "code": "C38284", "display": "NASAL"}]
    assert all(item["sources"] for item in items.values())


def test_units_list_the_pick_list_and_the_rule(client):
    body = client.get("/v1/terminology/units").get_json()
    items = {item["code"]: item for item in body["items"]}
    assert set(items) == set(units.DOSE_UNITS)
    assert items["mg/kg/h"] == {"system": terminology.UCUM, "code": "mg/kg/h", "kind": "mass",
                                "display": "milligram per kilogram body weight per hour",
                                "weight_based": True, "rate": True, "per": "h"}
    assert items["mL"]["kind"] == "volume"
    assert "amount[/kg][/time]" in body["rules"]


def test_indications_list_and_filter(client):
    items = client.get("/v1/terminology/indications").get_json()["items"]
    codes = {(item["system"], item["code"]) for item in items}
    assert (ICD10CM, "F53.0") in codes and (SNOMED, "370143000") in codes
    assert all(item["source"].startswith("http") for item in items)
    snomed = client.get("/v1/terminology/indications?system=snomed-ct").get_json()["items"]
    assert snomed and {item["system"] for item in snomed} == {SNOMED}
    icd = client.get("/v1/terminology/indications?system=icd-10-cm").get_json()["items"]
    assert len(icd) + len(snomed) == len(items)
    # an item's own system may be passed back (a documentation probe: it was a 422)
    for system, short in ((SNOMED, snomed), (ICD10CM, icd)):
        assert client.get("/v1/terminology/indications", query_string={"system": system}).get_json()["items"] == short
    category = next(item for item in icd if item["code"] == "F33")
    assert category["billable"] is False and category["category"] == "F33"
    assert category["covers"] == [] and category["covers_source"] is None
    recurrent = next(item for item in icd if item["code"] == "F33.9")
    assert recurrent["covers"] == ["F33.0", "F33.1", "F33.2", "F33.3", "F33.4"]  # not F33.8
    assert recurrent["covers_source"].startswith("https://")


@pytest.mark.parametrize("query", ["system=loinc", "bogus=1"])
def test_bad_query_is_422_naming_the_parameter(client, query):
    response = client.get(f"/v1/terminology/indications?{query}")
    assert response.status_code == 422
    assert query.split("=")[0] in response.get_json()["errors"]


def test_every_listed_term_is_accepted_by_the_protocols_api(client):
    """The pick lists and validation must never drift apart."""
    routes = client.get("/v1/terminology/routes").get_json()["items"]
    indications = client.get("/v1/terminology/indications").get_json()["items"]
    unit_items = client.get("/v1/terminology/units").get_json()["items"]
    payload = protocol_payload(
        routes=[{"system": r["system"], "code": r["code"], "display": r["display"]} for r in routes],
        indications=[{"system": i["system"], "code": i["code"], "display": i["display"]} for i in indications],
        dosing_ranges=[{"route": routes[0]["code"], "phase": "single", "dose_min": 1, "dose_max": 2,
                        "unit": u["code"]} for u in unit_items],
    )
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("path", ["/v1/terminology/routes", "/v1/terminology/units", "/v1/terminology/indications"])
def test_pick_lists_may_be_cached_by_the_caller_only(client, anon_client, path):
    """They need a key: a shared cache must not hand them to callers without one (RFC 9111, 3.5)."""
    response = client.get(path)
    assert response.status_code == 200
    directives = {d.strip() for d in response.headers["Cache-Control"].split(",")}
    assert "private" in directives and "public" not in directives and "max-age=3600" in directives
    assert anon_client.get(path).status_code == 401
