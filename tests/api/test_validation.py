"""Every validation rule's error path: a 4xx naming the field by its dotted path, and nothing stored."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from api.config import MAX_BODY_BYTES
from protocols.fhir_query import SEARCH_CURSOR, history_cursor
from tests.factories import ICD10CM, SNOMED, protocol_payload


def mutate(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with ``...`` delete) the value at a dotted path."""
    node: Any = payload
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return payload


CASES = [
    # (mutation path, value, error path expected in body.errors)
    ("unexpected", 1, "unexpected"),
    ("drug.unexpected", "x", "drug.unexpected"),
    ("dosing_ranges.0.dose_min", 100, "dosing_ranges.0.dose_max"),
    ("dosing_ranges.0.dose_min", -1, "dosing_ranges.0.dose_min"),
    ("dosing_ranges.0.dose_min", 0, "dosing_ranges.0.dose_min"),
    ("dosing_ranges.0.dose_max", "84", "dosing_ranges.0.dose_max"),
    ("dosing_ranges.0.dose_max", True, "dosing_ranges.0.dose_max"),
    ("dosing_ranges.0.dose_max", 1e300, "dosing_ranges.0.dose_max"),
    ("dosing_ranges.0.dose_max", 84.00000000000001, "dosing_ranges.0.dose_max"),
    ("dosing_ranges.0.unit", "furlong", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.route", "47625008", "dosing_ranges.0.route"),
    ("dosing_ranges.0.phase", "whenever", "dosing_ranges.0.phase"),
    ("dosing_ranges.0.max_per_period.period", "P1M", "dosing_ranges.0.max_per_period.period"),
    ("dosing_ranges.0.frequency.count", 0, "dosing_ranges.0.frequency.count"),
    ("dosing_ranges", [], "dosing_ranges"),
    ("routes.0.code", "999999999", "routes.0.code"),
    ("routes.0.display", "Intravenous route", "routes.0.display"),
    ("routes.0.system", "http://example.org/routes", "routes.0.system"),
    ("indications.0.code", "F3", "indications.0.code"),
    ("indications.0.system", "ICD-10", "indications.0.system"),
    ("indications", [], "indications"),
    ("fda_approval.status", "sort-of", "fda_approval.status"),
    ("fda_approval.application_number", "NDA21124", "fda_approval.application_number"),
    ("fda_approval.application_number", None, "fda_approval.application_number"),
    ("fda_approval.approval_date", None, "fda_approval.approval_date"),
    ("fda_approval.approval_date", "05/03/2019", "fda_approval.approval_date"),
    ("fda_approval.approval_date", "20190305", "fda_approval.approval_date"),
    ("fda_approval.approval_date", "2019-W10-2", "fda_approval.approval_date"),
    ("fda_approval.rems_required", "yes", "fda_approval.rems_required"),
    ("fda_approval.rems_required", 1, "fda_approval.rems_required"),
    ("drug.dea_schedule", "C3", "drug.dea_schedule"),
    ("drug.rxnorm_cui", "abc", "drug.rxnorm_cui"),
    ("drug.name", "", "drug.name"),
    ("drug", ..., "drug"),
    ("title", "x" * 201, "title"),
    ("title", None, "title"),
    ("title", "nul\x00byte", "title"),
    ("summary", "\ud800", "summary"),
    ("sources", [], "sources"),
    ("sources.0.url", "javascript:alert(1)", "sources.0.url"),
    ("sources.0.supports", ["dosing_ranges.7"], "sources.0.supports"),
    ("effective_from", "2020-01-01T00:00:00", "effective_from"),
    ("effective_from", "2020-01-01", "effective_from"),
    ("effective_from", "9999-12-31T23:59:59-01:00", "effective_from"),
    # ISO 8601 forms that are not RFC 3339 (datetime.fromisoformat takes them all)
    ("effective_from", "20200101T000000Z", "effective_from"),
    ("effective_from", "2020-W01-3T00:00:00Z", "effective_from"),
    ("effective_from", "2020-01-01T00Z", "effective_from"),
    ("effective_from", "2020-01-01T00:00:00,5Z", "effective_from"),
    ("effective_from", "2020-01-01T00:00:00+01:00:30", "effective_from"),
    ("effective_from", "2020-01-01T00:00:00 Z", "effective_from"),
    ("effective_from", "2020-01-01T00:00:00.Z", "effective_from"),
    ("effective_from", "2020-01-01T00:00:0\u0661Z", "effective_from"),
    ("status", "published", "status"),
    ("id", "Bad Id!", "id"),
    ("id", "../../etc", "id"),
    # Found by adversarial probes: "$" matched before a final newline, \d and isdigit() took any script's
    # digits, UCUM powers of ten had no bound (a 40 s conversion, then a 500), blank and control text.
    ("id", "nl-test\n", "id"),
    ("drug.rxnorm_cui", "2201625\n", "drug.rxnorm_cui"),
    ("fda_approval.application_number", "NDA211243\n", "fda_approval.application_number"),
    ("dosing_ranges.0.frequency.period", "P1W\n", "dosing_ranges.0.frequency.period"),
    ("dosing_ranges.0.frequency.period", "P\uff11W", "dosing_ranges.0.frequency.period"),
    ("dosing_ranges.0.duration", "PT\u0664\u0660M", "dosing_ranges.0.duration"),
    ("sources.0.supports", ["dosing_ranges.\u00b2"], "sources.0.supports"),
    ("sources.0.supports", ["dosing_ranges.\u0661"], "sources.0.supports"),
    ("dosing_ranges.0.unit", "10*999999.mg", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.unit", "10*-400.mg", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.unit", "2.mg", "dosing_ranges.0.unit"),
    ("dosing_ranges.0.max_per_period.unit", "10*9999999.mg", "dosing_ranges.0.max_per_period.unit"),
    ("dosing_ranges.0.max_per_period.value", 1, "dosing_ranges.0.max_per_period.value"),
    ("drug.brand_names", ["Spravato", "SPRAVATO"], "drug.brand_names"),
    ("title", "   ", "title"),
    ("title", "\u200b\u200b", "title"),
    ("title", "tab\there", "title"),
    ("title", "carriage\rreturn", "title"),
    ("title", "next\u0085line", "title"),
    ("title", "non\uffffcharacter", "title"),
    ("drug.name", " ", "drug.name"),
    ("verification_notes", ["  \n "], "verification_notes.0"),
    ("fda_approval.approval_date", "2099-01-01", "fda_approval.approval_date"),
    ("fda_approval.approval_date", "1066-01-01", "fda_approval.approval_date"),
]


@pytest.mark.parametrize(("path", "value", "error_path"), CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_invalid_create_is_422_naming_the_field_and_stores_nothing(client, path, value, error_path):
    payload = mutate(protocol_payload(), path, value)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == 422 and body["status"] == "Unprocessable Entity" and body["message"]
    assert error_path in body["errors"], body["errors"]
    assert all(isinstance(m, str) for messages in body["errors"].values() for m in messages)
    if isinstance(payload.get("id"), str):
        assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404


def test_investigational_forbids_application_number_and_date(client):
    payload = protocol_payload()
    payload["fda_approval"] = {"status": "investigational", "application_number": "NDA211243",
                               "approval_date": "2019-03-05", "rems_required": False}
    errors = client.post("/v1/protocols", json=payload).get_json()["errors"]
    assert {"fda_approval.application_number", "fda_approval.approval_date"} <= set(errors)


def test_off_label_may_omit_application_number(client):
    payload = protocol_payload()
    payload["fda_approval"] = {"status": "off_label", "rems_required": False}
    assert client.post("/v1/protocols", json=payload).status_code == 201


def test_duplicate_routes_are_rejected(client):
    payload = protocol_payload()
    payload["routes"] = payload["routes"] * 2
    assert "routes" in client.post("/v1/protocols", json=payload).get_json()["errors"]


def test_several_errors_are_reported_together(client):
    payload = protocol_payload()
    payload["dosing_ranges"][0]["unit"] = "parsec"
    payload["title"] = ""
    payload["fda_approval"]["application_number"] = "X"
    errors = client.post("/v1/protocols", json=payload).get_json()["errors"]
    assert {"dosing_ranges.0.unit", "title", "fda_approval.application_number"} <= set(errors)


def test_valid_indication_and_route_systems(client):
    payload = protocol_payload()
    payload["indications"].append({"system": SNOMED, "code": "370143000",
                                   "display": "Major depressive disorder"})
    payload["indications"].append({"system": ICD10CM, "code": "F32.A", "display": "Depression, unspecified"})
    assert client.post("/v1/protocols", json=payload).status_code == 201, \
        client.post("/v1/protocols", json=payload).get_json()


def test_decimal_doses_are_kept_exactly(client):
    payload = protocol_payload()
    payload["dosing_ranges"][0].update(dose_min=0.35, dose_max=84.0000001)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201
    assert b'"dose_min":0.35' in response.data and b'"dose_max":84.0000001' in response.data


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"{not json", "application/json", 400),
    (b'{"title": NaN}', "application/json", 400),
    (b'{"title": Infinity}', "application/json", 400),
    (b'{"title": "a", "title": "b"}', "application/json", 400),
    (b'{"title": "\xff\xfe"}', "application/json", 400),
    (b"[" * 100000 + b"]" * 100000, "application/json", 400),
    (b"", "application/json", 400),
    (b'{"id": "x"}', "text/plain", 415),
    (b'{"id": "x"}', "application/x-www-form-urlencoded", 415),
    (b'"just a string"', "application/json", 422),
    (b"null", "application/json", 422),
])
def test_malformed_bodies(client, body, content_type, status):
    response = client.post("/v1/protocols", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["code"] == status


def test_oversize_body_is_413_in_the_error_shape(client):
    payload = protocol_payload(summary="x" * (300 * 1024))
    response = client.post("/v1/protocols", data=json.dumps(payload), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["code"] == 413


def test_unknown_route_is_404_json(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and response.get_json()["code"] == 404


def test_wrong_method_is_405_json(client):
    response = client.patch("/v1/protocols")
    assert response.status_code == 405 and response.get_json()["code"] == 405


@pytest.mark.parametrize("query", ["page_size=0", "page_size=101", "page_size=abc", "as_of=yesterday",
                                   "as_of=2020-01-01", "as_of=20200101T000000Z", "as_of=2020-01-01T00Z",
                                   "as_of=2020-01-01T00:00:00%20Z", "cursor=bogus", "unknown=1"])
def test_bad_list_parameters_are_422_naming_the_parameter(client, query):
    response = client.get(f"/v1/protocols?{query}")
    assert response.status_code == 422
    assert query.split("=")[0] in response.get_json()["errors"]


@pytest.mark.parametrize("path", ["/v1/protocols?page_size=1&drug=ketamine&drug=esketamine",
                                  "/v1/protocols?page_size=1&page_size=100",
                                  "/v1/protocols?q=ketamine&q=pain",
                                  "/v1/changes?page_size=1&page_size=2"])
def test_a_single_valued_query_parameter_given_twice_is_422_naming_it(client, path):
    """Which of the values would count? webargs read the first; the next-page link kept the last."""
    response = client.get(path)
    assert response.status_code == 422, response.get_json()
    name = path.rsplit("&", 1)[1].split("=")[0]
    assert list(response.get_json()["errors"]) == [name]


def test_an_empty_q_gets_one_message(client):
    """Found by a probe: ``q=`` was refused for its length and again for holding no words."""
    response = client.get("/v1/protocols?q=")
    assert response.status_code == 422 and response.get_json()["errors"] == {"q": ["Length must be between 1 and 500."]}
    words = client.get("/v1/protocols?q=%20%2C")  # not empty, but no words: the words message alone
    assert words.status_code == 422 and len(words.get_json()["errors"]["q"]) == 1


def test_a_repeated_parameter_is_named_beside_the_other_bad_ones(client):
    """Found by a probe: a repeat was refused before anything else was read, so ``foo`` and ``as_of``
    went unnamed beside ``page_size``."""
    response = client.get("/v1/protocols?page_size=2&page_size=3&foo=1&as_of=bad&cursor=bm90LWEtY3Vyc29y")
    assert response.status_code == 422
    body = response.get_json()
    assert set(body["errors"]) == {"page_size", "foo", "as_of", "cursor"}
    assert body["errors"]["page_size"] == ["Give this parameter once."]
    assert body["message"] == "The request is not valid; see errors for each offending field."


def test_a_repeated_single_valued_parameter_is_422_on_the_dose_endpoint_too(client):
    payload = protocol_payload()
    assert client.post("/v1/protocols", json=payload).status_code == 201
    route = payload["dosing_ranges"][0]["route"]
    response = client.get(f"/v1/protocols/{payload['id']}/dose?route={route}&weight_kg=70&weight_kg=5")
    assert response.status_code == 422 and "weight_kg" in response.get_json()["errors"]


def test_cursor_from_another_listing_is_rejected(client):
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    etag = created.headers["ETag"]
    client.put(f"/v1/protocols/{payload['id']}", json=created.get_json() | {"title": "2"}, headers={"If-Match": etag})
    versions_cursor = client.get(f"/v1/protocols/{payload['id']}/versions?page_size=1").get_json()["next"]
    token = versions_cursor.split("cursor=")[1]
    assert client.get(f"/v1/protocols?cursor={token}").status_code == 422


@pytest.mark.parametrize(("path", "cursor_param"), [
    ("/v1/protocols?page_size=0&cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("/v1/protocols?q=ketamine&page_size=0&cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("/v1/protocols/{pid}/versions?page_size=0&cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("/v1/admin/audit?page_size=0&cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("/v1/changes?page_size=0&after=bm90LWEtY3Vyc29y", "after"),
    # the other listing's cursor: a ranked search takes no newest-first cursor, and the reverse
    ("/v1/protocols?q=ketamine&page_size=0&cursor={plain}", "cursor"),
    ("/v1/protocols?page_size=0&cursor={ranked}", "cursor"),
])
def test_a_bad_cursor_is_named_beside_the_other_bad_parameters(client, path, cursor_param):
    """Found by a probe: a listing read its cursor only once its other parameters had passed, so a 422
    for ``page_size`` did not name the cursor, and a client fixing one error met the next."""
    payload = protocol_payload(title="Ketamine cursor test")
    assert client.post("/v1/protocols", json=payload).status_code == 201
    assert client.post("/v1/protocols", json=protocol_payload(title="Ketamine cursor test 2")).status_code == 201
    plain = client.get("/v1/protocols?page_size=1").get_json()["next"].split("cursor=")[1]
    ranked = client.get("/v1/protocols?q=ketamine&page_size=1").get_json()["next"].split("cursor=")[1].split("&")[0]
    url = path.format(pid=payload["id"], plain=plain, ranked=ranked)
    response = client.get(url)
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == {"page_size", cursor_param}
    # the cursor alone: the same message as before
    alone = client.get(url.replace("page_size=0&", ""))
    assert alone.status_code == 422 and set(alone.get_json()["errors"]) == {cursor_param}
    assert alone.get_json()["errors"][cursor_param] == response.get_json()["errors"][cursor_param]
    # a good cursor beside a bad parameter is not named
    good = client.get(f"/v1/protocols?page_size=0&cursor={plain}")
    assert good.status_code == 422 and set(good.get_json()["errors"]) == {"page_size"}


def _json_body_operations(client) -> list[tuple[str, str, dict]]:
    spec = client.get("/openapi.json").get_json()
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}) if isinstance(operation, dict) else {}
            if "application/json" in body.get("content", {}):
                # a CDS service id must name a service (an unknown one is 404 before its body is read)
                url = re.sub(r"\{[^}]+\}", "body-errors-probe",
                             path.replace("{service_id}", "protocol-dose-check"))
                found.append((method.upper(), url, operation))
    return found


@pytest.mark.parametrize(("status", "body", "content_type"), [
    (415, b"{}", "text/plain"),
    (400, b'{"title": "unterminated",', "application/json"),
    (400, b'{"a": 1, "a": 2}', "application/json"),
    (400, b"", "application/json"),
    (413, b'{"summary": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}', "application/json"),
])
def test_every_operation_with_a_json_body_answers_and_documents_body_errors(client, status, body, content_type):
    """Each operation that takes a JSON body answers a non-JSON, malformed or oversized body with its
    status in the error shape, and its OpenAPI responses list that status (api.parsing.BODY_ERRORS)."""
    operations = _json_body_operations(client)
    assert len(operations) >= 5  # create, revise, dose check, admin keys, CDS service
    for method, url, operation in operations:
        response = client.open(url, method=method, data=body, content_type=content_type,
                               headers={"If-Match": '"probe"'})
        assert response.status_code == status, (method, url, response.get_data(as_text=True)[:300])
        assert response.get_json()["code"] == status, (method, url)
        assert str(status) in operation["responses"], f"{method} {url} does not document {status}"


def test_an_operation_that_takes_no_query_parameters_refuses_them_and_changes_nothing(client):
    """Found by an adversarial probe: ``PUT ...?effective_from=2030-...`` answered 201 and put the
    version in effect at once; ``dose-check?as_of=`` judged against the current version."""
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    assert created.status_code == 201
    pid, etag = payload["id"], created.headers["ETag"]
    revised = created.get_json() | {"title": "never written"}
    response = client.put(f"/v1/protocols/{pid}?effective_from=2030-01-01T00:00:00Z", json=revised,
                          headers={"If-Match": etag})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["errors"] == {"effective_from": ["Unknown field."]}
    assert client.get(f"/v1/protocols/{pid}/versions/latest").get_json()["version"] == 1
    other = protocol_payload()
    response = client.post("/v1/protocols?status=draft&bogus=1", json=other)
    assert response.status_code == 422 and set(response.get_json()["errors"]) == {"status", "bogus"}
    assert client.get(f"/v1/protocols/{other['id']}/versions/latest").status_code == 404
    route = payload["dosing_ranges"][0]["route"]
    dose = payload["dosing_ranges"][0]["dose_min"]
    unit = payload["dosing_ranges"][0]["unit"]
    for method, url, body in [
        ("POST", f"/v1/protocols/{pid}/dose-check?as_of=2020-01-01T00:00:00Z",
         {"route": route, "dose": {"value": dose, "unit": unit}, "patient": {"weight_kg": 70}}),
        ("GET", f"/v1/protocols/{pid}/versions/latest?as_of=2020-01-01T00:00:00Z", None),
        ("GET", f"/v1/protocols/{pid}/versions/1?as_of=2020-01-01T00:00:00Z", None),
        ("GET", f"/v1/protocols/{pid}/versions/1/diff/1?bogus", None),
        ("GET", "/v1/terminology/routes?system=x", None),
        ("GET", "/cds-services?x=1", None),
    ]:
        response = client.open(url, method=method, json=body)
        assert response.status_code == 422, (url, response.get_json())
        assert set(response.get_json()["errors"]) == {url.split("?")[1].split("=")[0]}, url


def test_the_contract_names_the_422_of_every_operation_without_query_parameters(client):
    spec = client.get("/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or path.startswith("/v1/health"):
                continue
            assert "422" in operation["responses"], f"{method.upper()} {path}"


def _forged(kind: str, key: Any, direction: str = "n") -> str:
    """A cursor of ``kind`` with any key: what api/http.py and protocols/fhir_query.py encode."""
    import base64
    raw = json.dumps({"t": kind, "k": key, "d": direction}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("key", [2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**70])
def test_forged_cursor_keys_of_any_size_are_a_client_error_or_an_empty_page(client, key):
    """Found by an adversarial probe: a key larger than its column (versions are 32-bit, sequences
    64-bit) was a 500 on PostgreSQL ("integer out of range"), and on SQLite past 64 bits."""
    payloads = [protocol_payload(), protocol_payload()]
    for payload in payloads:
        assert client.post("/v1/protocols", json=payload).status_code == 201
    pid, word = payloads[0]["id"], payloads[0]["drug"]["name"]
    listing = client.get("/v1/protocols?page_size=1").get_json()["next"]
    list_kind = json.loads(base64_decode(listing.split("cursor=")[1].split("&")[0]))["t"]
    ranked = client.get(f"/v1/protocols?q={word}&page_size=1").get_json()["next"]
    ranked_kind = json.loads(base64_decode(ranked.split("cursor=")[1].split("&")[0]))["t"]
    urls = [f"/v1/protocols/{pid}/versions?cursor={_forged(f'versions:{pid}', key)}",
            f"/fhir/R4/MedicationKnowledge?_cursor={_forged(SEARCH_CURSOR, key)}",
            f"/fhir/R4/MedicationKnowledge/{pid}/_history?_cursor={_forged(history_cursor(pid), key)}"]
    urls += [f"/v1/protocols?page_size=1&cursor={_forged(list_kind, key)}",
             f"/v1/protocols?q={word}&page_size=1&cursor={_forged(ranked_kind, [1, key])}",
             f"/v1/protocols?q={word}&page_size=1&cursor={_forged(ranked_kind, [key, 1])}"]
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 400, 422), (url, response.status_code, response.get_data(as_text=True))


def base64_decode(token: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_an_effective_from_whose_utc_year_is_out_of_bounds_is_refused_and_an_accepted_one_round_trips(client):
    payload = protocol_payload(effective_from="1900-01-01T00:00:00+05:00")  # 1899 in UTC
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422 and "effective_from" in response.get_json()["errors"]
    payload = protocol_payload(effective_from="1899-12-31T23:00:00-01:00")  # 1900 in UTC
    created = client.post("/v1/protocols", json=payload)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["effective_from"] == "1900-01-01T00:00:00Z"
    again = client.put(f"/v1/protocols/{payload['id']}", json=body | {"title": "round trip"},
                       headers={"If-Match": created.headers["ETag"]})
    assert again.status_code == 201, again.get_json()


def test_an_exact_duplicate_dosing_range_is_refused(client):
    payload = protocol_payload()
    payload["dosing_ranges"] = payload["dosing_ranges"] * 2
    errors = client.post("/v1/protocols", json=payload).get_json()["errors"]
    assert errors == {"dosing_ranges.1": ["repeats dosing_ranges.0 exactly"]}


def test_prose_fields_may_span_lines_and_a_failed_field_gets_one_error(client):
    payload = protocol_payload(summary="First line.\nSecond line.", verification_notes=["one\ntwo"])
    assert client.post("/v1/protocols", json=payload).status_code == 201
    # A source backing a field that failed its own check used to get "no such field" on top.
    payload = protocol_payload()
    payload["drug"]["dea_schedule"] = "CVI"
    payload["sources"][0]["supports"] = ["drug.dea_schedule"]
    errors = client.post("/v1/protocols", json=payload).get_json()["errors"]
    assert set(errors) == {"drug.dea_schedule"}, errors


def test_numbers_in_paths_and_queries_are_ascii_digits_and_queries_are_utf8(client):
    """Found by an adversarial probe: /versions/\u0661 served version 1 under a second (immutable) URL,
    page_size=\uff12 and ' 5' were taken and echoed in next links, weight_kg=70%0A passed, q=%FF%FE
    searched for replacement characters (200, no items), since > until answered an empty 200."""
    created = client.post("/v1/protocols", json=protocol_payload("ascii-only"))
    assert created.status_code == 201
    assert client.get("/v1/protocols/ascii-only/versions/1").status_code == 200
    assert client.get("/v1/protocols/ascii-only/versions/\u0661").status_code == 404
    assert client.get("/v1/protocols/ascii-only/versions/1/diff/\u0661").status_code == 404
    assert client.get("/v1/protocols/ascii-only/versions/01").status_code == 404  # one URL per version
    for query, field in (("page_size=%EF%BC%92", "page_size"), ("page_size=%205", "page_size"),
                         ("page_size=05", "page_size"),
                         ("q=%FF%FE", "q"), ("drug=%C3", "drug")):
        response = client.get(f"/v1/protocols?{query}")
        assert response.status_code == 422, (query, response.get_json())
        assert field in response.get_json()["errors"], (query, response.get_json())
    window = client.get("/v1/protocols/ascii-only/versions?since=2030-01-01T00:00:00Z&until=2000-01-01T00:00:00Z")
    assert window.status_code == 422 and "until" in window.get_json()["errors"]
    dose = client.get("/v1/protocols/ascii-only/dose?route=46713006&weight_kg=70%0A")
    assert dose.status_code == 422 and "weight_kg" in dose.get_json()["errors"]
    changes = client.get("/v1/changes?page_size=%D9%A1")
    assert changes.status_code == 422 and "page_size" in changes.get_json()["errors"]


@pytest.mark.parametrize(("body", "field"), [
    ('{"route": "46713006", "dose": {"value": 1, "unit": "10*400.g"}}', "dose.unit"),
    ('{"route": "46713006", "dose": {"value": 56, "unit": "10*9999999.g"}}', "dose.unit"),
    ('{"route": "46713006", "dose": {"value": 56, "unit": "mg"}, '
     '"patient": {"weight_kg": 70.0000000000000000000000000000001}}', "patient.weight_kg"),
    ('{"route": "46713006", "dose": {"value": 84.0000000000000000000000000000001, "unit": "mg"}}', "dose.value"),
])
def test_dose_checks_refuse_unbounded_units_and_numbers_past_twelve_digits(client, body, field):
    """A power of ten in a unit, or a 34-digit number (counted after rounding to 28 digits, it had 2),
    was a 500 or a verdict on a number other than the one sent. Bodies are raw JSON: the numbers must
    arrive with every digit."""
    assert client.post("/v1/protocols", json=protocol_payload("bounded")).status_code == 201
    response = client.post("/v1/protocols/bounded/dose-check", data=body, content_type="application/json")
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"], response.get_json()


def test_a_body_in_another_charset_is_415_and_malformed_json_names_the_body(client):
    """Found by an adversarial probe: a body declared charset=latin-1 was decoded as UTF-8 all the same,
    and 400s for malformed JSON named no location."""
    body = json.dumps(protocol_payload()).encode()
    response = client.post("/v1/protocols", data=body, content_type="application/json; charset=latin-1")
    assert response.status_code == 415 and "Content-Type" in response.get_json()["errors"]
    ok = client.post("/v1/protocols", data=body, content_type="application/json; charset=UTF-8")
    assert ok.status_code == 201
    for broken in (b'{"title": "a", "title": "b"}', b'{"dose": NaN}', b""):
        response = client.post("/v1/protocols", data=broken, content_type="application/json")
        assert response.status_code == 400 and list(response.get_json()["errors"]) == ["body"], broken


def test_input_errors_name_what_the_client_sent(client, app):
    """Found by an adversarial probe: a JSON array body was named "_schema" (other body errors say
    "body"), a body over the limit and a malformed Authorization header had no ``errors`` at all."""
    array = client.post("/v1/protocols", json=[1, 2])
    assert array.status_code == 422 and "body" in array.get_json()["errors"], array.get_json()
    huge = client.post("/v1/protocols", data=b"{" + b" " * (app.config["MAX_CONTENT_LENGTH"] + 1) + b"}",
                       content_type="application/json")
    assert huge.status_code == 413 and "body" in huge.get_json()["errors"], huge.get_json()
    basic = app.test_client().get("/v1/protocols", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and "Authorization" in basic.get_json()["errors"], basic.get_json()
    assert basic.get_json()["reason"] == "malformed_authorization"


def test_a_body_with_a_content_coding_or_a_patch_media_type_is_415_and_writes_nothing(client):
    """Found by a contract probe: Content-Encoding was never read. A plain JSON body labelled gzip or br
    was stored (a protocol, an API key), and a really gzipped one was "not valid UTF-8"; a JSON Patch or
    Merge Patch media type sent to PUT was applied as a whole record. Other +json types stay JSON."""
    import gzip

    plain = json.dumps(protocol_payload("coded-body")).encode()
    for coding, data in (("gzip", plain), ("br", plain), ("gzip", gzip.compress(plain)), ("identity, gzip", plain)):
        refused = client.post("/v1/protocols", data=data, content_type="application/json",
                              headers={"Content-Encoding": coding})
        assert refused.status_code == 415, (coding, refused.get_json())
        assert list(refused.get_json()["errors"]) == ["Content-Encoding"]
        assert refused.headers["Accept-Encoding"] == "identity"
    key = client.post("/v1/admin/keys", data=json.dumps({"name": "coded", "scopes": ["protocols:read"]}),
                      content_type="application/json", headers={"Content-Encoding": "br"})
    assert key.status_code == 415
    for patch_type in ("application/merge-patch+json", "application/json-patch+json"):
        refused = client.post("/v1/protocols", data=plain, content_type=patch_type)
        assert refused.status_code == 415 and list(refused.get_json()["errors"]) == ["Content-Type"]
    assert client.get("/v1/protocols/coded-body").status_code == 404
    assert all(k["name"] != "coded" for k in client.get("/v1/admin/keys").get_json()["items"])
    accepted = client.post("/v1/protocols", data=plain, content_type="application/vnd.example+json",
                           headers={"Content-Encoding": "identity"})
    assert accepted.status_code == 201, accepted.get_json()


def test_an_empty_parameter_or_field_name_is_named_as_sent(client):
    """Found by probes: ``?=1`` and a body key ``""`` were reported under marshmallow's ``_schema`` (the
    whole object), not under the (empty) name the client sent, as /v1/terminology/routes?=1 already was."""
    for url in ("/v1/protocols?=1", "/v1/changes?=1", "/v1/terminology/routes?=1"):
        response = client.get(url)
        assert response.status_code == 422 and list(response.get_json()["errors"]) == [""], (url, response.get_json())
    body = protocol_payload("empty-key") | {"": 1}
    response = client.post("/v1/protocols", json=body)
    assert response.status_code == 422 and list(response.get_json()["errors"]) == [""]
    nested = protocol_payload("empty-key")
    nested["drug"][""] = 1
    assert list(client.post("/v1/protocols", json=nested).get_json()["errors"]) == ["drug."]
