"""openapi.yaml is generated from the app; this fails when the committed file drifts."""

from pathlib import Path

from api.extensions import API_KEY
from tests.factories import protocol_payload

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_the_app(app, tmp_path):
    out = tmp_path / "openapi.yaml"
    result = app.test_cli_runner().invoke(args=["openapi", "write", "--format=yaml", str(out)])
    assert result.exit_code == 0, result.output
    committed = (ROOT / "openapi.yaml").read_text()
    assert out.read_text() == committed, "openapi.yaml is stale: run `make openapi` and commit it"


def _documented(app, method: str, path: str) -> set[str]:
    """The statuses the app's OpenAPI document (what openapi.yaml is written from) lists."""
    spec = app.extensions[API_KEY].spec.to_dict()
    return set(spec["paths"][path][method.lower()]["responses"])


def test_the_contract_lists_the_statuses_these_requests_get(app, client):
    """304 on conditional GETs, 404 for a protocol that does not exist: answered by every such
    operation, and listed by each (not left to ``default``)."""
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    assert created.status_code == 201
    pid = payload["id"]
    conditional = [("/v1/protocols", "/v1/protocols"),
                   (f"/v1/protocols/{pid}/versions", "/v1/protocols/{protocol_id}/versions"),
                   (f"/v1/protocols/{pid}/versions/1", "/v1/protocols/{protocol_id}/versions/{version}"),
                   (f"/v1/protocols/{pid}/versions/latest", "/v1/protocols/{protocol_id}/versions/latest"),
                   ("/v1/changes", "/v1/changes"), ("/v1/terminology/routes", "/v1/terminology/routes")]
    for url, template in conditional:
        etag = client.get(url).headers["ETag"]
        response = client.get(url, headers={"If-None-Match": etag})
        assert response.status_code == 304, url
        assert "304" in _documented(app, "GET", template), template
    missing = [("PUT", "/v1/protocols/no-such-protocol", "/v1/protocols/{protocol_id}"),
               ("DELETE", "/v1/protocols/no-such-protocol", "/v1/protocols/{protocol_id}"),
               ("GET", "/v1/protocols/no-such-protocol/versions", "/v1/protocols/{protocol_id}/versions"),
               ("GET", "/v1/protocols/no-such-protocol/versions/1", "/v1/protocols/{protocol_id}/versions/{version}"),
               ("GET", "/v1/protocols/no-such-protocol/versions/latest",
                "/v1/protocols/{protocol_id}/versions/latest")]
    for method, url, template in missing:
        body = {k: v for k, v in payload.items() if k != "id"} if method == "PUT" else None
        response = client.open(url, method=method, json=body, headers={"If-Match": created.headers["ETag"]})
        assert response.status_code == 404, (method, url, response.get_json())
        assert "404" in _documented(app, method, template), (method, template)


def test_the_contract_is_a_valid_openapi_document(app):
    """Found by a documentation probe: ``@blp.doc(responses=...)`` replaced the responses
    ``@blp.response`` built, so the 200/201 of read, create, revise and retire had neither
    description, body schema nor ETag header, and an OpenAPI validator refused the document; its
    ``\\A...\\Z`` patterns were Python's, not the ECMA-262 regexes OpenAPI names."""
    import re

    from openapi_spec_validator import OpenAPIV30SpecValidator

    spec = app.extensions[API_KEY].spec.to_dict()
    assert [error.message for error in OpenAPIV30SpecValidator(spec).iter_errors()] == []
    one = spec["paths"]["/v1/protocols/{protocol_id}"]
    for method, status, header in (("get", "200", "ETag"), ("put", "200", "ETag"), ("put", "201", "ETag"),
                                   ("delete", "200", "ETag")):
        response = one[method]["responses"][status]
        assert response["description"] and "application/json" in response["content"], (method, status)
        assert header in response["headers"], (method, status)
        assert "GetVersion" in response["links"], (method, status)
    created = spec["paths"]["/v1/protocols"]["post"]["responses"]["201"]
    assert {"ETag", "Location"} <= set(created["headers"]) and "ReviseProtocol" in created["links"]

    patterns: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                patterns.append(value) if key == "pattern" and isinstance(value, str) else collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(spec)
    assert patterns and not [p for p in patterns if "\\A" in p or "\\Z" in p]
    rxcui = next(p for p in patterns if "[1-9][0-9]{0,7}" in p)
    assert re.fullmatch(rxcui, "2201625") and not re.search(rxcui, "A2201625Z")


def test_every_documented_error_response_has_its_body(app):
    """The 409 of a key name, the 404 of an unknown CDS service and the 503 of readiness were listed
    without a body, though each answers the JSON error body (adversarial probe): a client generated
    from the contract would not expect one. Every 4xx/5xx the contract lists has a JSON schema."""
    spec = app.extensions[API_KEY].spec.to_dict()
    bodyless = [(method, path, status) for path, item in spec["paths"].items() for method, operation in item.items()
                if isinstance(operation, dict)
                for status, response in operation.get("responses", {}).items()
                if status[0] in "45" and "$ref" not in response
                and "schema" not in response.get("content", {}).get("application/json", {})]
    assert bodyless == [], bodyless


def test_the_contract_states_the_id_pattern_and_dose_bounds_the_server_enforces(app, client):
    """Found by a contract probe: ids and doses were bare strings and numbers in the contract, so clients
    generated from it sent ids ('AB', 'Esketamine_TRD') and doses (0, 1e13) the server refuses."""
    import re

    schemas = app.extensions[API_KEY].spec.to_dict()["components"]["schemas"]
    id_schema = next(s["properties"]["id"] for name, s in schemas.items()
                     if name.startswith("ProtocolCreate") and "id" in s.get("properties", {}))
    pattern = re.compile(id_schema["pattern"])
    for refused in ("AB", "ab", "-abc", "Esketamine_TRD"):
        assert not pattern.search(refused)
        response = client.post("/v1/protocols", json=protocol_payload(refused))
        assert response.status_code == 422 and "id" in response.get_json()["errors"]
    assert pattern.search("esketamine-trd")
    dose = next(s["properties"] for name, s in schemas.items() if name.startswith("DoseRange"))
    for bound in ("dose_min", "dose_max"):
        assert (dose[bound]["minimum"], dose[bound]["exclusiveMinimum"], dose[bound]["maximum"]) == (0, True, 1000000)


def test_a_429_carries_the_headers_the_contract_documents_for_it(make_app):
    """Found by a contract probe: 429 said "see Retry-After" and declared no header."""
    app = make_app(PROTOCOLS_RATE_LIMIT="1/minute")
    client = app.test_client()
    client.get("/v1/protocols")
    limited = client.get("/v1/protocols")
    assert limited.status_code == 429
    documented = app.extensions[API_KEY].spec.to_dict()["paths"]["/v1/protocols"]["get"]["responses"]["429"]
    assert set(documented["headers"]) == {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    assert all(name in limited.headers for name in documented["headers"])


def test_the_docs_static_files_answer_conditional_headers_as_every_get(client):
    """werkzeug's own conditional handling answered a failed If-Match with 412 and the whole 145 KB file,
    ``*`` and malformed lists with 412, and Range beside a failed If-Match with 206 (found by a probe)."""
    path = "/docs-static/swagger-ui.css"
    plain = client.get(path)
    assert plain.status_code == 200 and plain.mimetype == "text/css" and len(plain.data) > 10_000
    etag = plain.headers["ETag"]
    assert not etag.startswith("W/")
    assert client.get(path, headers={"If-Match": "*"}).status_code == 200
    assert client.get(path, headers={"If-Match": etag}).data == plain.data
    for headers in ({"If-Match": '"x"'}, {"If-Match": '"x"', "Range": "bytes=0-9"},
                    {"If-Match": '"x"', "If-None-Match": etag}):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 412 and refused.get_json()["current_etag"] == etag, headers
    assert client.get(path, headers={"If-Match": "garbage"}).status_code == 400
    for headers in ({"If-None-Match": etag}, {"If-None-Match": etag, "If-Match": etag}):
        cached = client.get(path, headers=headers)
        assert cached.status_code == 304 and cached.data == b"" and cached.headers["ETag"] == etag, headers
