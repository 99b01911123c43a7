"""Hostile input: every bad request gets a clear 4xx in the JSON error shape, and nothing is stored.

tests/api/test_validation.py covers each field rule; this file covers what an attacker or a broken
integration sends instead: non-finite and absurd numbers, mixed units, deep nesting, huge bodies,
invalid UTF-8, nulls in every field, duplicate keys, injection strings, path tricks, header
injection, bogus preconditions, cursors and instants. Plus: security headers and CORS on every
response, and no stack trace or SQL in any error body.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.config import MAX_BODY_BYTES
from tests.factories import protocol_payload, unique_id
from tests.reliability.servers import record_figures

LEAK_MARKERS = ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3", "SELECT ", "INSERT INTO",
                "OperationalError", "IntegrityError", "/work/", "site-packages")

_tried = {"bad_inputs": 0}


@pytest.fixture(autouse=True, scope="module")
def _report_figures() -> Iterator[None]:
    yield
    from tests.conftest import BACKEND

    record_figures("hostile_input", BACKEND, bad_inputs_tried=_tried["bad_inputs"])


def assert_clean_error(response: Any, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of ``statuses`` when given) in the JSON error shape, with no internals leaked."""
    _tried["bad_inputs"] += 1
    assert 400 <= response.status_code < 500, (response.status_code, response.data[:500])
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json", response.headers
    text = response.get_data(as_text=True)
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} leaked in {text[:500]}"
    body: dict[str, Any] = response.get_json()
    assert body["code"] == response.status_code and isinstance(body["message"], str) and body["message"]
    assert body.get("request_id")
    return body


def assert_nothing_stored(client: FlaskClient, protocol_id: Any = None) -> None:
    listing = client.get("/v1/protocols?page_size=100")
    assert listing.status_code == 200 and listing.get_json()["items"] == []
    if isinstance(protocol_id, str) and protocol_id:
        assert client.get(f"/v1/protocols/{protocol_id}/versions/latest").status_code == 404


def post_raw(client: FlaskClient, body: bytes | str, content_type: str = "application/json") -> Any:
    return client.post("/v1/protocols", data=body, content_type=content_type)


# ------------------------------------------------------------------------------------ numbers


NUMBER_CASES = [
    ("NaN", 400), ("-NaN", 400), ("Infinity", 400), ("-Infinity", 400), ("1e999999", 422),
    ("-5", 422), ("-0", 422), ("0.0", 422), ("1e-400", 422), ("1" * 101, 400), ("9" * 40, 422),
    ("1000000.0000001", 422), ('"84"', 422), ("true", 422), ("[84]", 422), ('{"value": 84}', 422),
    ("0x54", 400), ("084", 400), ("+84", 400), (".5", 400), ("84.", 400), ("1_000", 400),
]


@pytest.mark.parametrize("field", ["dose_min", "dose_max"])
def test_absurd_numbers_are_refused(client: FlaskClient, field: str) -> None:
    for literal, status in NUMBER_CASES:
        payload = protocol_payload()
        marker = "__NUMBER__"
        payload["dosing_ranges"][0][field] = marker
        body = json.dumps(payload).replace(f'"{marker}"', literal)
        error = assert_clean_error(post_raw(client, body), status)
        if status == 422:
            assert any(path.startswith("dosing_ranges.0.") for path in error["errors"]), (literal, error)
        assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404, literal
    assert_nothing_stored(client)


def test_non_finite_number_in_a_per_period_maximum(client: FlaskClient) -> None:
    payload = protocol_payload()
    payload["dosing_ranges"][0]["max_per_period"]["value"] = "__N__"
    assert_clean_error(post_raw(client, json.dumps(payload).replace('"__N__"', "Infinity")), 400)
    assert_nothing_stored(client, payload["id"])


@pytest.mark.parametrize(("dose_unit", "cap_unit"), [("mg", "mL"), ("mL", "mg"), ("mg/kg", "mL"), ("ug", "mL")])
def test_mixed_units_in_a_dosing_range_are_refused(client: FlaskClient, dose_unit: str, cap_unit: str) -> None:
    payload = protocol_payload()
    payload["dosing_ranges"][0]["unit"] = dose_unit
    payload["dosing_ranges"][0]["max_per_period"]["unit"] = cap_unit
    error = assert_clean_error(client.post("/v1/protocols", json=payload), 422)
    assert "dosing_ranges.0.max_per_period.unit" in error["errors"]
    assert_nothing_stored(client, payload["id"])


@pytest.mark.parametrize("unit", ["mg mL", "mg,mL", "mg+mL", "mg;DROP", "mg/mL/kg/h", "", " ", "mg\u00a0"])
def test_garbled_units_are_refused(client: FlaskClient, unit: str) -> None:
    payload = protocol_payload()
    payload["dosing_ranges"][0]["unit"] = unit
    error = assert_clean_error(client.post("/v1/protocols", json=payload), 422)
    assert "dosing_ranges.0.unit" in error["errors"]


# ------------------------------------------------------------------------------ shape and size


@pytest.mark.parametrize("depth", [50, 1000, 100_000])
def test_deep_nesting_is_refused(client: FlaskClient, depth: int) -> None:
    payload = protocol_payload()
    payload["drug"] = "__DEEP__"
    deep = '{"a":' * depth + "1" + "}" * depth
    body = json.dumps(payload).replace('"__DEEP__"', deep)
    assert_clean_error(post_raw(client, body), 400, 413, 422)
    assert_nothing_stored(client, payload["id"])


@pytest.mark.parametrize("megabytes", [1, 5])
def test_multi_megabyte_strings_and_bodies_are_refused(client: FlaskClient, megabytes: int) -> None:
    payload = protocol_payload(title="x" * (megabytes * 1024 * 1024))
    assert_clean_error(client.post("/v1/protocols", json=payload), 413)
    padded = json.dumps(protocol_payload()).encode() + b" " * (megabytes * 1024 * 1024)
    assert_clean_error(post_raw(client, padded), 413)
    assert_nothing_stored(client, payload["id"])


def post_chunked(client: FlaskClient, body: bytes) -> Any:
    """A body without Content-Length, as gunicorn and werkzeug's server hand on a chunked upload."""
    return client.post("/v1/protocols", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("excess", [b"x", b" GARBAGE {{{{" * 500])
def test_a_chunked_body_over_the_limit_is_413_not_cut_at_the_limit(client: FlaskClient, excess: bytes) -> None:
    """A valid document padded to exactly the limit, then more bytes: the server must not stop reading
    at the limit and store the document it found there (werkzeug alone does)."""
    payload = protocol_payload()
    document = json.dumps(payload).encode()
    at_limit = document + b" " * (MAX_BODY_BYTES - len(document))
    assert_clean_error(post_chunked(client, at_limit + excess), 413)
    assert_nothing_stored(client, payload["id"])
    assert post_chunked(client, at_limit).status_code == 201  # exactly at the limit is allowed


def test_a_long_string_under_the_body_limit_is_a_422_naming_the_field(client: FlaskClient) -> None:
    payload = protocol_payload(summary="s" * 100_000)
    error = assert_clean_error(client.post("/v1/protocols", json=payload), 422)
    assert "summary" in error["errors"]
    assert len(json.dumps(error)) < 5000  # the message does not echo the 100 kB value


@pytest.mark.parametrize("raw", [
    b'{"title": "\xc3\x28"}', b'{"title": "\xed\xa0\x80"}', b'{"title": "\xf8\x88\x80\x80\x80"}',
    b'\xff\xfe{\x00}\x00', b'\xef\xbb\xbf{"title": "bom"}', b'{"title": "\x00"}',
])
def test_invalid_utf8_and_bom_are_refused(client: FlaskClient, raw: bytes) -> None:
    assert_clean_error(post_raw(client, raw), 400)
    assert_nothing_stored(client)


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every field path of a payload, containers included (``drug``, ``drug.name`` …)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _leaf_paths(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            path = f"{prefix}.{index}"
            yield path
            yield from _leaf_paths(value, path)


def _set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    node: Any = payload
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


NULLABLE = {"effective_from", "change_note", "drug.rxnorm_cui", "drug.dea_schedule",
            "dosing_ranges.0.frequency", "dosing_ranges.0.frequency.text", "dosing_ranges.0.duration",
            "dosing_ranges.0.max_per_period", "dosing_ranges.0.instructions",
            "fda_approval.approved_indication", "fda_approval.boxed_warning"}


def test_null_in_every_field_one_at_a_time(client: FlaskClient) -> None:
    """Each field set to null: refused naming that field (or its parent), or accepted where null is
    documented as allowed and then stored as null. Never a 500, never a half-stored record."""
    base = protocol_payload()
    paths = list(_leaf_paths(base))
    assert len(paths) > 40
    for path in paths:
        payload = copy.deepcopy(base)
        payload["id"] = unique_id("null")
        _set_path(payload, path, None)
        response = client.post("/v1/protocols", json=payload)
        if path in NULLABLE:
            assert response.status_code == 201, (path, response.get_json())
            continue
        if path == "id":
            assert_clean_error(response, 422)
            continue
        error = assert_clean_error(response, 422)
        parent = path.rsplit(".", 1)[0]
        assert any(key in (path, parent) or key.startswith(path + ".") or path.startswith(key + ".")
                   for key in error["errors"]), (path, error["errors"])
        assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404


@pytest.mark.parametrize("raw", [
    '{"id": "dup-keys-a", "id": "dup-keys-b"}',
    '{"drug": {"name": "a", "name": "b"}}',
    '{"dosing_ranges": [{"dose_max": 84, "dose_max": 8400}]}',
    '{"title": "a", "TITLE": "b", "title": "c"}',
])
def test_duplicate_json_keys_are_refused(client: FlaskClient, raw: str) -> None:
    body = assert_clean_error(post_raw(client, raw), 400)
    assert "duplicate" in body["message"]
    assert_nothing_stored(client)


# --------------------------------------------------------------------------------- injection

INJECTIONS = [
    "'; DROP TABLE protocol_versions; --",
    "\" OR \"1\"=\"1",
    "1; UPDATE protocols SET latest_version = 99",
    "<script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>",
    "{{7*7}} ${7*7} #{7*7}",
    "Robert'); DELETE FROM audit_events;--",
    "\u0645\u0631\u062d\u0628\u0627 right-to-left script",
]
#: Text that displays as something else: stored it would be a look-alike, so it is refused (422, naming
#: each field: tests/schemas/test_fields.py), in the drug filter and the search too; in ids and the
#: other parameters below it is a plain 4xx like the rest.
INVISIBLE = "\u202e\u0645\u0631\u062d\u0628\u0627 zero\u200bwidth"


def test_text_that_displays_as_something_else_is_refused_and_nothing_stored(client: FlaskClient) -> None:
    payload = protocol_payload(title=INVISIBLE, summary=f"summary {INVISIBLE}", change_note=INVISIBLE)
    body = assert_clean_error(client.post("/v1/protocols", json=payload), 422)
    assert {"title", "summary", "change_note"} <= set(body["errors"]), body
    assert_nothing_stored(client)
    # The filter it would have escaped, and the free-text search, refuse it as well (422 naming each).
    for name, value in (("drug", "esket\u200bamine"), ("drug", "esketamine\ufe0f"), ("q", "esket\u200bamine")):
        body = assert_clean_error(client.get("/v1/protocols", query_string={name: value}), 422)
        assert list(body["errors"]) == [name], body


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_stored_verbatim_and_never_executed(client: FlaskClient, db: Any, text: str) -> None:
    payload = protocol_payload(title=text[:200], summary=f"summary {text}", change_note=text)
    payload["drug"]["brand_names"] = [text[:100]]
    created = client.post("/v1/protocols", json=payload)
    assert created.status_code == 201, created.get_json()
    assert created.mimetype == "application/json"
    assert created.headers["X-Content-Type-Options"] == "nosniff"
    got = client.get(f"/v1/protocols/{payload['id']}").get_json()
    assert got["title"] == text[:200] and got["summary"] == f"summary {text}"
    assert got["drug"]["brand_names"] == [text[:100]] and got["change_note"] == text
    from sqlalchemy import text as sql

    with db.engine.connect() as conn:  # every table still there, nothing else changed
        assert conn.execute(sql("SELECT COUNT(*) FROM protocol_versions")).scalar_one() == 1
        assert conn.execute(sql("SELECT latest_version FROM protocols")).scalar_one() == 1


def test_injection_strings_in_urls_and_queries_are_plain_4xx_json(client: FlaskClient) -> None:
    from urllib.parse import quote

    for text in [*INJECTIONS, INVISIBLE, "x\x00y"]:
        assert_clean_error(client.get(f"/v1/protocols/{quote(text, safe='')}"), 404)
        assert_clean_error(client.get("/v1/protocols", query_string={"as_of": text}), 422)
        assert_clean_error(client.get("/v1/protocols", query_string={"cursor": text}), 422)
        response = client.get(f"/v1/protocols/{quote(text, safe='')}/versions/latest")
        assert_clean_error(response, 404)


# ------------------------------------------------------------------------------- path tricks

PATH_TRICKS = [
    "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc", "a%2Fb", "..", "%2e%2e", "esketamine%00",
    "%EF%BD%85sketamine",  # fullwidth e
    "\u0435sketamine-nasal",  # Cyrillic e
    "ESKETAMINE", "esketamine%20", "%C0%AE%C0%AE%2F", "a" * 300,
]


def test_path_tricks_in_ids_never_reach_anything(client: FlaskClient) -> None:
    real = protocol_payload("esketamine-nasal")
    assert client.post("/v1/protocols", json=real).status_code == 201
    for trick in PATH_TRICKS:
        for suffix in ("", "/versions", "/versions/latest", "/versions/1"):
            response = client.get(f"/v1/protocols/{trick}{suffix}")
            assert_clean_error(response, 404, 422)
            assert b"root:" not in response.data
        put = client.put(f"/v1/protocols/{trick}", json=protocol_payload(), headers={"If-Match": '"1-x"'})
        assert_clean_error(put, 404, 412, 422)
        # the look-alike id cannot be created either: ids are ASCII slugs
        payload = protocol_payload()
        payload["id"] = trick
        assert_clean_error(client.post("/v1/protocols", json=payload), 422)
    assert len(client.get("/v1/protocols").get_json()["items"]) == 1


@pytest.mark.parametrize("path", ["/docs-static/..%2F..%2F..%2Fetc%2Fpasswd", "/docs-static/../../pyproject.toml",
                                  "/docs-static/%2e%2e/%2e%2e/api/config.py"])
def test_static_files_cannot_escape_their_directory(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert b"[project]" not in response.data and b"root:" not in response.data and b"import" not in response.data


# ----------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("value", ["abc\r\nSet-Cookie: session=stolen", "abc\nX-Injected: 1", "a\rb",
                                   "<script>alert(1)</script>", "x" * 101, "id with spaces", "é-unicode"])
def test_unsafe_request_ids_are_replaced_not_echoed(client: FlaskClient, value: str) -> None:
    response = client.get("/v1/protocols/nope", environ_overrides={"HTTP_X_REQUEST_ID": value})
    assert response.status_code == 404
    echoed = response.headers["X-Request-ID"]
    assert echoed != value and "\r" not in echoed and "\n" not in echoed and len(echoed) == 32
    assert "Set-Cookie" not in response.headers and "X-Injected" not in response.headers
    assert response.get_json()["request_id"] == echoed
    _tried["bad_inputs"] += 1


def test_a_safe_request_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/v1/protocols", headers={"X-Request-ID": "ehr-42.a:b"})
    assert response.headers["X-Request-ID"] == "ehr-42.a:b"


BOGUS_IF_MATCH = ["garbage", '"unterminated', 'W/"1-abc"', "*", '"1-abc", garbage', ",", '""', "\x7f",
                  '"' + "a" * 5000 + '"', '"1-0000000000000000"']


def test_bogus_if_match_never_writes(client: FlaskClient) -> None:
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    changed = created.get_json() | {"title": "changed"}
    for value in BOGUS_IF_MATCH:
        put = client.put(f"/v1/protocols/{payload['id']}", json=changed, headers={"If-Match": value})
        body = assert_clean_error(put, 400, 412, 428)
        if put.status_code in (412, 428):
            assert body["current_etag"] == created.headers["ETag"], value
        delete = client.delete(f"/v1/protocols/{payload['id']}", headers={"If-Match": value})
        assert_clean_error(delete, 400, 412, 428)
    versions = client.get(f"/v1/protocols/{payload['id']}/versions").get_json()["items"]
    assert [v["version"] for v in versions] == [1]


def test_bogus_if_none_match_is_ignored_not_an_error(client: FlaskClient) -> None:
    payload = protocol_payload()
    client.post("/v1/protocols", json=payload)
    response = client.get(f"/v1/protocols/{payload['id']}", headers={"If-None-Match": "garbage\"\""})
    assert response.status_code == 200


def _cursor(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


BOGUS_CURSORS = [
    "bogus", "====", "%00", "a" * 501, _cursor([1, 2]), _cursor({"t": "protocols", "k": 2**70, "d": "n"}),
    _cursor({"t": "protocols", "k": -1, "d": "n"}), _cursor({"t": "protocols", "k": "1", "d": "n"}),
    _cursor({"t": "protocols", "k": True, "d": "p"}), _cursor({"t": "protocols", "k": 1, "d": "x"}),
    _cursor({"t": "protocols", "k": 1.5, "d": "n"}), _cursor({"t": "protocols", "k": None, "d": "n"}),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
]


def test_bogus_cursors_are_422_naming_the_cursor(client: FlaskClient) -> None:
    payload = protocol_payload()
    client.post("/v1/protocols", json=payload)
    versions_url = f"/v1/protocols/{payload['id']}/versions"
    for cursor in BOGUS_CURSORS:
        for url, token in (("/v1/protocols", cursor), (versions_url, _for_versions(cursor, payload["id"]))):
            body = assert_clean_error(client.get(url, query_string={"cursor": token}), 422)
            assert "cursor" in body["errors"], (cursor, body)


def _for_versions(cursor: str, protocol_id: str) -> str:
    """The same forged cursor, but naming the versions listing (so only its key is wrong)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        return cursor
    if isinstance(data, dict) and data.get("t") == "protocols":
        return _cursor({**data, "t": f"versions:{protocol_id}"})
    return cursor


BOGUS_INSTANTS = ["yesterday", "0000-00-00T00:00:00Z", "2020-13-01T00:00:00Z", "2020-02-30T00:00:00Z",
                  "2020-01-01T25:00:00Z", "2020-01-01T00:00:00+25:00", "NaN", "1e10", "-1", "",
                  "2020-01-01T00:00:00", "2020-01-01T00:00:00Z" + "0" * 100, "\u0662\u0660\u0662\u0660-01-01T00:00:00Z",
                  "10000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"]


def test_bogus_as_of_values_are_422_naming_the_parameter(client: FlaskClient) -> None:
    payload = protocol_payload()
    client.post("/v1/protocols", json=payload)
    for instant in BOGUS_INSTANTS:
        for url in ("/v1/protocols", f"/v1/protocols/{payload['id']}"):
            body = assert_clean_error(client.get(url, query_string={"as_of": instant}), 422)
            assert "as_of" in body["errors"], instant
        body = assert_clean_error(client.get(f"/v1/protocols/{payload['id']}/versions",
                                             query_string={"since": instant}), 422)
        assert "since" in body["errors"], instant


def test_extreme_but_valid_as_of_values_answer_cleanly(client: FlaskClient) -> None:
    payload = protocol_payload()
    client.post("/v1/protocols", json=payload)
    early = client.get(f"/v1/protocols/{payload['id']}", query_string={"as_of": "0001-01-01T00:00:00Z"})
    assert_clean_error(early, 404, 422)
    late = client.get(f"/v1/protocols/{payload['id']}", query_string={"as_of": "9998-12-31T23:59:59Z"})
    assert late.status_code == 200
    assert_clean_error(client.get(f"/v1/protocols/{payload['id']}", query_string={"as_of": "9999-12-31T23:59:59Z"}),
                       422)


# --------------------------------------------------------------------------- response headers


def _sample_responses(client: FlaskClient) -> list[Any]:
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    etag = created.headers["ETag"]
    pid = payload["id"]
    return [
        created,
        client.get(f"/v1/protocols/{pid}"),
        client.get(f"/v1/protocols/{pid}", headers={"If-None-Match": etag}),
        client.get(f"/v1/protocols/{pid}/versions/1"),
        client.get(f"/v1/protocols/{pid}/versions"),
        client.get("/v1/protocols"),
        client.get("/v1/protocols/missing-one"),
        client.post("/v1/protocols", json={"id": "x"}),
        client.post("/v1/protocols", data=b"x" * (300 * 1024), content_type="application/json"),
        client.put(f"/v1/protocols/{pid}", json=created.get_json(), headers={"If-Match": '"9-x"'}),
        client.patch("/v1/protocols"),
        client.get("/openapi.json"),
    ]


def test_security_headers_on_every_response(client: FlaskClient) -> None:
    for response in _sample_responses(client):
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.status
        cache = response.headers.get("Cache-Control", "")
        assert "private" in cache or "no-store" in cache, (response.status, cache)
        assert "public" not in cache
        assert response.headers.get("X-Request-ID")
        server = response.headers.get("Server", "")
        assert not any(ch.isdigit() for ch in server), server
        if response.status_code >= 400:
            assert_clean_error(response)


def test_anonymous_errors_carry_no_internals(anon_client: FlaskClient) -> None:
    for response in (anon_client.post("/v1/protocols", json=protocol_payload()),
                     anon_client.get("/v1/protocols", headers={"Authorization": "Bearer ' OR 1=1 --"}),
                     anon_client.get("/v1/protocols", headers={"Authorization": "Basic Zm9vOmJhcg=="})):
        if response.status_code >= 400:
            assert_clean_error(response)
        assert response.headers.get("X-Content-Type-Options") == "nosniff"


# ------------------------------------------------------------------------------------- CORS

ORIGIN = "https://ehr.example.org"


@pytest.fixture
def cors_client(make_app: Any) -> FlaskClient:
    app: Flask = make_app(PROTOCOLS_CORS_ORIGINS=[ORIGIN])
    return app.test_client()


def test_cors_preflight_for_a_listed_origin(cors_client: FlaskClient) -> None:
    response = cors_client.options("/v1/protocols/some-id", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "Authorization, If-Match, Content-Type"})
    assert response.status_code == 204 and response.data == b""
    assert "Content-Type" not in response.headers  # no body, no type (it said text/html; found in review)
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "if-match", "if-none-match", "content-type"} <= allowed
    assert "PUT" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers["Vary"]


def test_cors_lets_a_browser_send_prefer_and_read_the_fhir_warning(cors_client: FlaskClient) -> None:
    """The FHIR face documents Prefer: handling=lenient (an unsupported parameter is a 400 without it)
    and answers with a Warning header; the preflight refused Prefer (adversarial probe)."""
    preflight = cors_client.options("/fhir/R4/MedicationKnowledge", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,prefer"})
    assert preflight.status_code == 204, preflight.get_data(as_text=True)
    assert "prefer" in preflight.headers["Access-Control-Allow-Headers"].lower()
    lenient = cors_client.get("/fhir/R4/metadata?_sort=name", headers={"Origin": ORIGIN, "Prefer": "handling=lenient"})
    assert lenient.status_code == 200 and "Warning" in lenient.headers
    assert "Warning" in {h.strip() for h in lenient.headers["Access-Control-Expose-Headers"].split(",")}


def test_cors_simple_request_exposes_the_headers_clients_need(cors_client: FlaskClient) -> None:
    payload = protocol_payload()
    response = cors_client.post("/v1/protocols", json=payload, headers={"Origin": ORIGIN})
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    # RateLimit-* too: a browser client could not read them (adversarial probe)
    assert {"ETag", "Link", "X-Request-ID", "Location", "RateLimit-Limit", "RateLimit-Remaining",
            "RateLimit-Reset"} <= exposed
    assert all(name in response.headers for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"))
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("origin", ["https://evil.example", "null", ORIGIN + ".evil.example", "http://ehr.example.org",
                                    ORIGIN.upper(), "*"])
def test_cors_refuses_unlisted_origins(cors_client: FlaskClient, origin: str) -> None:
    preflight = cors_client.options("/v1/protocols", headers={"Origin": origin,
                                                              "Access-Control-Request-Method": "POST"})
    assert_clean_error(preflight, 403)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = cors_client.get("/v1/protocols", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers.get("Vary", "")


def test_cors_preflight_refuses_unlisted_methods_and_headers(cors_client: FlaskClient) -> None:
    for headers in ({"Access-Control-Request-Method": "PATCH"},
                    {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-Evil"}):
        response = cors_client.options("/v1/protocols", headers={"Origin": ORIGIN, **headers})
        assert_clean_error(response, 403)


def test_a_refused_preflight_under_fhir_is_an_operation_outcome(cors_client: FlaskClient) -> None:
    """Found by a probe: every error under /fhir/R4 is an OperationOutcome, but a refused CORS preflight
    there was the REST error body."""
    for headers in ({"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
                    {"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"}):
        response = cors_client.options("/fhir/R4/MedicationKnowledge/x", headers=headers)
        assert response.status_code == 403 and response.mimetype == "application/fhir+json"
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden"
        assert "CORS" in body["issue"][0]["diagnostics"]
        if headers["Origin"] != ORIGIN:
            assert "Access-Control-Allow-Origin" not in response.headers
    rest = cors_client.options("/v1/protocols", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "GET"})
    assert rest.get_json()["errors"] == {"Origin": ["not in PROTOCOLS_CORS_ORIGINS"]}


def test_cors_is_off_without_an_allow_list(client: FlaskClient) -> None:
    response = client.get("/v1/protocols", headers={"Origin": ORIGIN})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers


def test_with_origins_configured_every_response_varies_on_origin(make_app: Any) -> None:
    """Found by a contract probe: Vary: Origin came only with an Origin header, so a version cached for a
    year from a request without one (and without Access-Control-Allow-Origin) could be reused for a
    cross-origin fetch, which then failed. The fast path says it as Flask does; without configured
    origins nothing varies and nothing is added."""
    from tests.factories import protocol_payload

    fast = make_app(PROTOCOLS_CORS_ORIGINS=[ORIGIN]).test_client()
    slow = make_app(PROTOCOLS_CORS_ORIGINS=[ORIGIN], PROTOCOLS_READ_FAST_PATH=False).test_client()
    plain = make_app().test_client()
    assert fast.post("/v1/protocols", json=protocol_payload("vary-origin")).status_code == 201
    for path in ("/v1/protocols/vary-origin", "/v1/protocols/vary-origin/versions/1", "/v1/protocols"):
        for client in (fast, slow):
            response = client.get(path)
            assert response.status_code == 200 and "Origin" in response.headers.get("Vary", ""), (path, client)
            assert "Access-Control-Allow-Origin" not in response.headers
        assert "Origin" not in plain.get(path).headers.get("Vary", "")
    etag = fast.get("/v1/protocols/vary-origin").headers["ETag"]
    assert "Origin" in fast.get("/v1/protocols/vary-origin", headers={"If-None-Match": etag}).headers["Vary"]
