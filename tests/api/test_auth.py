"""Authentication and scopes: 401/403 paths, key storage, revocation, expiry, CLI and admin API."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import text

from api.auth import requires_scope
from protocols import keys
from protocols.timeutil import utcnow
from tests.factories import protocol_payload

READ = ["protocols:read"]
WRITE = ["protocols:write"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error_shape(response, status: int) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    assert body["code"] == status
    assert body["message"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# ------------------------------------------------------------------------------- 401 / 403


@pytest.mark.parametrize(("method", "path"), [("get", "/v1/protocols"), ("post", "/v1/protocols"),
                                              ("get", "/v1/admin/keys")])
def test_no_key_is_401_with_bearer_challenge(anon_client, method, path):
    response = getattr(anon_client, method)(path, json=protocol_payload() if method == "post" else None)
    assert_error_shape(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "tpk_abc"])
def test_malformed_authorization_is_401(anon_client, header):
    response = anon_client.get("/v1/protocols", headers={"Authorization": header})
    assert_error_shape(response, 401)
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("key", ["tpk_" + "A" * 43, "not-even-prefixed", "tpk_" + "x" * 300])
def test_unknown_key_is_401_invalid_token(anon_client, key):
    response = anon_client.get("/v1/protocols", headers=bearer(key))
    assert_error_shape(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_read_key_reads_but_cannot_write(anon_client, make_key):
    key = make_key(READ)
    assert anon_client.get("/v1/protocols", headers=bearer(key)).status_code == 200
    response = anon_client.post("/v1/protocols", json=protocol_payload(), headers=bearer(key))
    body = assert_error_shape(response, 403)
    assert body["required_scope"] == "protocols:write"
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="protocols:write"' in challenge


def test_write_key_without_read_scope_cannot_read(anon_client, make_key):
    key = make_key(WRITE)
    assert anon_client.post("/v1/protocols", json=protocol_payload(), headers=bearer(key)).status_code == 201
    assert_error_shape(anon_client.get("/v1/protocols", headers=bearer(key)), 403)


def test_admin_endpoints_need_admin_scope(anon_client, make_key):
    for scopes in (READ, WRITE, [*READ, *WRITE]):
        response = anon_client.get("/v1/admin/audit", headers=bearer(make_key(scopes)))
        assert assert_error_shape(response, 403)["required_scope"] == "admin"
    assert anon_client.get("/v1/admin/audit", headers=bearer(make_key(["admin"]))).status_code == 200


def test_public_endpoints_need_no_key(anon_client):
    for path in ("/v1/health", "/openapi.json", "/docs", "/docs-static/swagger-ui.css"):
        assert anon_client.get(path).status_code == 200, path
    options = anon_client.options("/v1/protocols")  # CORS preflights carry no credentials
    # Flask's own OPTIONS answer is empty: a 204 with Allow, not a 200 typed text/html (found by a probe)
    assert options.status_code == 204 and options.data == b"" and "Content-Type" not in options.headers
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}


def test_anonymous_reads_only_when_enabled(make_app):
    app = make_app(PROTOCOLS_ANONYMOUS_READS=True)
    anon = app.test_client()
    anon.environ_base.pop("HTTP_AUTHORIZATION")
    assert anon.get("/v1/protocols").status_code == 200
    assert anon.get("/v1/terminology/routes").status_code == 200
    assert_error_shape(anon.post("/v1/protocols", json=protocol_payload()), 401)
    assert_error_shape(anon.get("/v1/admin/keys"), 401)
    # a key that is sent is always checked, even where anonymous callers may read
    assert_error_shape(anon.get("/v1/protocols", headers=bearer("tpk_" + "B" * 43)), 401)


def test_unknown_route_is_404_not_401(anon_client):
    assert anon_client.get("/v1/nothing-here").status_code == 404


# ------------------------------------------------------------------ central scope resolution


def test_views_of_other_blueprints_are_protected_by_default(make_app, make_key):
    """A view that knows nothing of auth: GET needs read, POST needs write; /cds-services POSTs are
    reads; @requires_scope overrides."""
    app = make_app()

    def probe() -> str:
        return "ok"

    @requires_scope("admin")
    def guarded() -> str:
        return "ok"

    app.add_url_rule("/v1/probe", "probe", probe, methods=["GET", "POST"])
    app.add_url_rule("/cds-services/probe", "cds_probe", probe, methods=["POST"])
    app.add_url_rule("/v1/probe/guarded", "guarded", guarded, methods=["GET"])
    client = app.test_client()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    read, write = bearer(make_key(READ)), bearer(make_key(WRITE))
    assert client.get("/v1/probe").status_code == 401
    assert client.get("/v1/probe", headers=read).status_code == 200
    assert client.post("/v1/probe", headers=read).status_code == 403
    assert client.post("/v1/probe", headers=write).status_code == 200
    assert client.post("/cds-services/probe", headers=read).status_code == 200
    assert client.post("/cds-services/probe", headers=write).status_code == 403
    assert client.get("/v1/probe/guarded", headers=read).status_code == 403


def test_openapi_documents_bearer_scheme_and_every_operation_scope(anon_client):
    spec = anon_client.get("/openapi.json").get_json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = spec["paths"]
    assert paths["/v1/protocols"]["get"]["x-required-scope"] == "protocols:read"
    assert paths["/v1/protocols"]["post"]["x-required-scope"] == "protocols:write"
    assert paths["/v1/protocols/{protocol_id}"]["delete"]["x-required-scope"] == "protocols:write"
    assert paths["/v1/admin/audit"]["get"]["x-required-scope"] == "admin"
    assert paths["/v1/health"]["get"]["security"] == []
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            assert "security" in operation, (method, path)
            if operation["security"]:
                assert operation["security"] == [{"bearerAuth": []}]
                assert operation["x-required-scope"] in keys.SCOPES
                assert {"401", "403", "429"} <= set(operation["responses"])


# ---------------------------------------------------------------------------- key storage


def test_keys_are_random_prefixed_and_stored_only_as_sha256(db):
    info, plain = keys.create_key(db, "storage-check", READ)
    other = keys.create_key(db, "storage-check-2", READ)[1]
    assert plain.startswith("tpk_") and len(plain) >= 4 + 43 and plain != other
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, name, key_hash, scopes FROM api_keys")).all()
    assert hashlib.sha256(plain.encode()).hexdigest() in {r.key_hash for r in rows}
    for row in rows:
        assert all(plain not in str(value) and plain[4:] not in str(value) for value in row)
    assert keys.authenticate(db, plain) == info
    assert keys.authenticate(db, plain + "x") is None


def test_unknown_scope_is_refused(db):
    with pytest.raises(keys.InvalidScope):
        keys.create_key(db, "bad", ["protocols:delete"])
    with pytest.raises(keys.InvalidScope):
        keys.create_key(db, "none", [])


# --------------------------------------------------------------------- revocation and expiry


def test_revoked_key_stops_working_at_once_in_every_app(make_app, make_key, db):
    """Two app instances (as two workers would be): both accept the key, one revokes, both refuse."""
    worker_a, worker_b = make_app(), make_app()
    key = make_key(READ, name="soon-revoked")
    clients = [worker_a.test_client(), worker_b.test_client()]
    for client in clients:
        assert client.get("/v1/protocols", headers=bearer(key)).status_code == 200
    key_id = next(k.id for k in keys.list_keys(db) if k.name == "soon-revoked")
    assert worker_a.test_client().delete(f"/v1/admin/keys/{key_id}").status_code == 200
    for client in clients:
        assert_error_shape(client.get("/v1/protocols", headers=bearer(key)), 401)


def test_a_revocation_stamped_by_a_clock_ahead_of_this_one_takes_effect_at_once(anon_client, client, make_key, db):
    """``revoked_at`` comes from the revoking host's clock. Stamped two minutes ahead of the API's
    (the CLI on a host whose clock runs ahead), the key kept reading on the fast path and the Flask
    path, the admin view said revoked_at set and active true, and revoking again changed nothing."""
    key = make_key(READ, name="skewed-revocation")
    key_id = next(k.id for k in keys.list_keys(db) if k.name == "skewed-revocation")
    client.post("/v1/protocols", json=protocol_payload("skew-read"))
    keys.revoke_key(db, key_id, now=utcnow() + timedelta(minutes=2))
    for path in ("/v1/protocols/skew-read", "/v1/protocols"):  # the read fast path, then Flask's
        assert_error_shape(anon_client.get(path, headers=bearer(key)), 401)
    shown = client.get(f"/v1/admin/keys/{key_id}").get_json()
    assert shown["revoked_at"] is not None and shown["active"] is False, shown
    # The name is free once revoked, and the key that had it no longer works.
    assert client.post("/v1/admin/keys", json={"name": "skewed-revocation", "scopes": READ}).status_code == 201


def test_expired_key_is_401(anon_client, make_key):
    expired = make_key(READ, expires_at=utcnow() - timedelta(seconds=1))
    live = make_key(READ, expires_at=utcnow() + timedelta(hours=1))
    assert_error_shape(anon_client.get("/v1/protocols", headers=bearer(expired)), 401)
    assert anon_client.get("/v1/protocols", headers=bearer(live)).status_code == 200


# -------------------------------------------------------------------------------- the CLI


def test_cli_create_list_revoke(app, anon_client):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--name", "cli-made", "--scope", "protocols:read",
                                  "--scope", "protocols:write", "--expires", "P30D"])
    assert created.exit_code == 0, created.output
    plain = created.output.strip().rsplit(" ", 1)[-1]
    assert plain.startswith("tpk_")
    assert anon_client.post("/v1/protocols", json=protocol_payload(), headers=bearer(plain)).status_code == 201

    listed = runner.invoke(args=["keys", "list"])
    assert listed.exit_code == 0 and "cli-made" in listed.output and plain not in listed.output
    key_id = next(line.split()[0] for line in listed.output.splitlines() if "cli-made" in line)

    revoked = runner.invoke(args=["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert_error_shape(anon_client.get("/v1/protocols", headers=bearer(plain)), 401)
    assert "revoked" in runner.invoke(args=["keys", "list"]).output
    assert runner.invoke(args=["keys", "revoke", "nope"]).exit_code != 0
    bad_scope = runner.invoke(args=["keys", "create", "--name", "x", "--scope", "root"])
    assert bad_scope.exit_code != 0
    for name in ("catalog-loader", "a\nb", " x"):  # the service's own author name; control or edge blanks
        refused = runner.invoke(args=["keys", "create", "--name", name, "--scope", "protocols:write"])
        assert refused.exit_code != 0 and "--name" in refused.output, refused.output
    assert "catalog-loader" not in runner.invoke(args=["keys", "list"]).output
    assert runner.invoke(args=["keys", "create", "--name", "x", "--scope", "admin", "--expires",
                               "2001-01-01T00:00:00Z"]).exit_code != 0


# ---------------------------------------------------------------------- the admin HTTP API


def test_admin_api_creates_lists_and_revokes_keys(client, anon_client):
    response = client.post("/v1/admin/keys", json={"name": "ehr-prod", "scopes": ["protocols:read"]})
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    plain = created["key"]
    assert plain.startswith("tpk_") and created["scopes"] == ["protocols:read"] and created["active"] is True
    assert response.headers["Location"].endswith(f"/v1/admin/keys/{created['id']}")

    shown = client.get(f"/v1/admin/keys/{created['id']}").get_json()
    assert "key" not in shown and shown["name"] == "ehr-prod"
    listing = client.get("/v1/admin/keys")
    assert plain not in listing.get_data(as_text=True)
    assert {"ehr-prod", "test-all-scopes"} <= {k["name"] for k in listing.get_json()["items"]}

    assert anon_client.get("/v1/protocols", headers=bearer(plain)).status_code == 200
    revoked = client.delete(f"/v1/admin/keys/{created['id']}").get_json()
    assert revoked["active"] is False and revoked["revoked_at"].endswith("Z")
    again = client.delete(f"/v1/admin/keys/{created['id']}").get_json()
    assert again["revoked_at"] == revoked["revoked_at"]
    assert anon_client.get("/v1/protocols", headers=bearer(plain)).status_code == 401


@pytest.mark.parametrize(("body", "path"), [
    ({"name": "x", "scopes": ["protocols:delete"]}, "scopes.0"),
    ({"name": "x", "scopes": []}, "scopes"),
    ({"name": "", "scopes": ["admin"]}, "name"),
    ({"scopes": ["admin"]}, "name"),
    ({"name": "x", "scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "scopes": ["admin"], "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"name": "x", "scopes": ["admin"], "owner": "me"}, "owner"),
    # the name becomes the author of the key's writes (recorded_by)
    ({"name": "  ", "scopes": ["admin"]}, "name"),
    ({"name": " padded", "scopes": ["admin"]}, "name"),
    ({"name": "a\nb", "scopes": ["admin"]}, "name"),
    ({"name": "tab\there", "scopes": ["admin"]}, "name"),
    ({"name": "x" * 65, "scopes": ["admin"]}, "name"),
    ({"name": "catalog-loader", "scopes": ["protocols:write"]}, "name"),
    ({"name": "Catalog-Loader", "scopes": ["protocols:write"]}, "name"),
    ({"name": "cli", "scopes": ["protocols:write"]}, "name"),
    ({"name": "cli:root", "scopes": ["protocols:write"]}, "name"),
])
def test_admin_key_creation_rejects_bad_input(client, body, path):
    response = client.post("/v1/admin/keys", json=body)
    assert assert_error_shape(response, 422)["errors"].keys() == {path}


def test_the_last_live_admin_key_is_not_revoked_over_http(client, anon_client, make_key, db):
    """Found by a probe: an admin could revoke the last admin key, after which nobody could mint or
    revoke a key over HTTP. The refusal changes nothing but is a denied event in the audit log (someone
    tried to lock every admin out); another live admin key (not an expired one) lets it through; the
    shell still may revoke the last one."""
    own = next(k for k in client.get("/v1/admin/keys").get_json()["items"] if k["name"] == "test-all-scopes")
    audit_before = client.get("/v1/admin/audit", query_string={"page_size": 100}).get_json()["items"]
    make_key(["admin"], expires_at=utcnow() - timedelta(hours=1), now=utcnow() - timedelta(days=1))  # expired
    refused = client.delete(f"/v1/admin/keys/{own['id']}")
    assert assert_error_shape(refused, 409)["message"].startswith(f"key '{own['id']}' is the last live key")
    assert client.get(f"/v1/admin/keys/{own['id']}").get_json()["active"] is True
    audit_after = client.get("/v1/admin/audit", query_string={"page_size": 100}).get_json()["items"]
    assert audit_after[1:] == audit_before  # newest first: one event more, nothing else changed
    assert {k: audit_after[0][k] for k in ("action", "outcome", "actor", "target", "status_code")} == {
        "action": "keys.revoke", "outcome": "denied", "actor": "test-all-scopes", "target": own["id"],
        "status_code": 409}

    other = make_key(["protocols:read", "admin"], name="second-admin")
    assert client.delete(f"/v1/admin/keys/{own['id']}").status_code == 200
    assert anon_client.get("/v1/admin/keys", headers=bearer(other)).status_code == 200
    other_id = next(k["id"] for k in anon_client.get("/v1/admin/keys", headers=bearer(other)).get_json()["items"]
                    if k["name"] == "second-admin")
    assert assert_error_shape(anon_client.delete(f"/v1/admin/keys/{other_id}", headers=bearer(other)), 409)
    assert keys.revoke_key(db, other_id).revoked_at is not None  # flask keys revoke: the operator's call


def test_admin_unknown_key_is_404(client):
    assert_error_shape(client.get("/v1/admin/keys/0000"), 404)
    assert_error_shape(client.delete("/v1/admin/keys/0000"), 404)


def test_versions_record_the_key_name_and_request_id(anon_client, make_key):
    key = make_key([*READ, *WRITE], name="pharmacy-curator")
    payload = protocol_payload()
    created = anon_client.post("/v1/protocols", json=payload, headers={**bearer(key), "X-Request-ID": "req-123"})
    assert created.status_code == 201
    assert created.get_json()["recorded_by"] == "pharmacy-curator"
    assert created.get_json()["request_id"] == "req-123"
    versions = anon_client.get(f"/v1/protocols/{payload['id']}/versions", headers=bearer(key)).get_json()
    assert [(v["recorded_by"], v["request_id"]) for v in versions["items"]] == [("pharmacy-curator", "req-123")]


def test_the_domain_refuses_a_key_named_like_the_service_itself(db):
    """Whatever the caller (API, CLI, a script), a key cannot sign its writes as the curated catalog."""
    for name in ("catalog-loader", "cli:ops", "line\nbreak", ""):
        with pytest.raises(ValueError, match="key name"):
            keys.create_key(db, name, [keys.WRITE])
    assert all(info.name != "catalog-loader" for info in keys.list_keys(db))


def test_a_nul_in_an_admin_key_id_is_404(client):
    """Found by an adversarial probe: a 500 on PostgreSQL (NUL is refused in any text parameter)."""
    assert_error_shape(client.get("/v1/admin/keys/x%00"), 404)
    assert_error_shape(client.delete("/v1/admin/keys/x%00"), 404)


def test_writes_to_the_read_only_fhir_face_are_405_for_readers_and_not_audited(anon_client, make_key, db):
    """Found by an adversarial probe: a read key got 403 "lacks protocols:write" (and a denied-write
    audit row) for an operation that does not exist; the FHIR server is read-only."""
    from protocols import audit

    read = bearer(make_key(READ))
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = anon_client.open("/fhir/R4/MedicationKnowledge", method=method, headers=read,
                                    json={"resourceType": "MedicationKnowledge"})
        assert response.status_code == 405, (method, response.get_data(as_text=True))
    assert anon_client.post("/fhir/R4/MedicationKnowledge", json={}).status_code == 401
    assert audit.query(db, limit=50, outcome=audit.DENIED).items == []


def test_key_names_are_visible_and_distinct_among_live_keys(client, app, make_key):
    """Found by an adversarial probe: "\\u202enimda" (displays as "admin") and a second live key of
    an existing name were accepted; the name is the author recorded in every version it writes."""
    for name in ("\u202enimda", "zero\u200bwidth", "private\ue000use", "catalog-loader\ufe0f", "probe\u034f",
                 "cafe\u0301", "filler\u3164", "probe-admin\u2800"):
        response = client.post("/v1/admin/keys", json={"name": name, "scopes": ["protocols:read"]})
        assert response.status_code == 422 and "name" in response.get_json()["errors"], name
    first = client.post("/v1/admin/keys", json={"name": "ehr-prod", "scopes": ["protocols:read"]})
    assert first.status_code == 201
    again = client.post("/v1/admin/keys", json={"name": "ehr-prod", "scopes": ["protocols:read"]})
    assert again.status_code == 409 and "name" in again.get_json()["errors"]
    assert client.delete(f"/v1/admin/keys/{first.get_json()['id']}").status_code in (200, 204)
    assert client.post("/v1/admin/keys", json={"name": "ehr-prod", "scopes": ["protocols:read"]}).status_code == 201



def test_key_names_that_only_look_like_another_author_are_refused(client, db):
    """A Cyrillic a in 'catalog-loader', a non-breaking hyphen in it, a Cyrillic c in 'cli:root', an
    upper-case I for its l, and a no-break space in 'ehr prod' beside a live 'ehr prod' were accepted:
    each reads as the other author in version history and audit rows (adversarial probe)."""
    for name in ("c\u0430talog-loader", "catalog\u2011loader", "\u0441li:root", "cataIog-loader", "CLI",
                 "\uff43atalog-loader", "catalog-\u04c0oader", "c\u04c0i", "c\u0430talog-Loader",
                 "catalog\u02d7loader", "cat\u0251log-loader",
                 # colon look-alikes in 'cli:root': fullwidth, vertical form, ratio sign, modifier colons
                 "cli\uff1aroot", "cli\ufe13root", "cli\u2236root", "cli\ua789root", "cli\u02d0root",
                 "cli\u0589root",
                 # a security probe: lunate sigmas (NFKC made them sigmas before the table was read), a
                 # small capital C, bar-like signs and a dotless i
                 "\u03f2atalog-loader", "\u03f9ATALOG-LOADER", "\u1d04atalog-loader", "catalog-\u2223oader",
                 "\u03f2li:bob", "c\u05c0i:bob", "c\u2d4fi:bob", "cl\u0131:bob", "c\u029fi:bob",
                 # a review: a halfwidth bar (NFKC: box drawing's), box drawing's heavy one, a modifier small
                 # iota, a light vertical bar, Cherokee letters (Unicode's confusables list covers them)
                 "cata\uffe8og-loader", "c\u2503i:bob", "cl\u1da5:bob", "c\u2758i:bob", "\u13df\u13deI:bob",
                 # a second review: compatibility forms NFKC makes letters (a fullwidth hyphen-minus, modifier
                 # small l and r), which Unicode's list sent elsewhere when read before NFKC
                 "catalog\uff0dloader", "c\u02e1i:bob", "catalog-loade\u02b3", "cata\u02e1og-loader",
                 # a third review: letters whose prototype in Unicode's list is a Latin small capital (Cherokee
                 # small letters, a Cyrillic komi sje, a Deseret small eth), and vertical presentation forms
                 # of a bar and a colon, which NFKC makes a dash and two dots
                 "catalog-loa\uab70er", "catalo\u050d-loader", "catalo\u13fb-loader", "catalog-loade\uab71",
                 "ca\uab72alog-loader", "catalog-load\uab7cr", "cata\uabaeog-loader", "cata\U00010443og-loader",
                 "cata\ufe31og-loader", "c\ufe31i:bob", "cli\ufe30bob"):
        response = client.post("/v1/admin/keys", json={"name": name, "scopes": ["protocols:write"]})
        assert response.status_code == 422 and "name" in response.get_json()["errors"], name
    assert client.post("/v1/admin/keys", json={"name": "ehr prod", "scopes": ["protocols:read"]}).status_code == 201
    for look_alike in ("ehr\u00a0prod", "EHR Prod", "\u0435hr prod", "ehr\u2003prod", "\u0435hr pr\u1d0fd",
                       "\u0435hr \u1d18rod", "eh\u0433 prod"):  # a Cyrillic ghe for the r (Unicode's list)
        response = client.post("/v1/admin/keys", json={"name": look_alike, "scopes": ["protocols:read"]})
        assert response.status_code == 409 and "name" in response.get_json()["errors"], look_alike
        assert "looks the same" in response.get_json()["message"], response.get_json()
    assert client.post("/v1/admin/keys", json={"name": "admin-sync", "scopes": ["protocols:read"]}).status_code == 201
    for look_alike in ("ad\u217fin-sync", "adrnin-sync", "ADMIN-SYNC", "a\uab70min-sync"):  # roman m; r n; Cherokee
        response = client.post("/v1/admin/keys", json={"name": look_alike, "scopes": ["protocols:read"]})
        assert response.status_code == 409, look_alike
    # Still names of their own (a lower-case i and a capital L are letters of their own; review):
    for distinct in ("ehr prod 2", "ehr-prod", "caf\u00e9", "pharmacy", "ali", "all", "mail-sync", "mall-sync",
                     "CLL", "cll:research", "cli-tools", "ALI-ops", "ALL-ops", "PIC", "PLC", "LIS", "IIS"):
        assert client.post("/v1/admin/keys", json={"name": distinct, "scopes": ["protocols:read"]}).status_code == 201
    assert client.post("/v1/admin/keys", json={"name": "\u0441af\u0435\u0301", "scopes": ["protocols:read"]}
                       ).status_code == 409  # Cyrillic c, Cyrillic e + combining acute: "caf\u00e9"
    with pytest.raises(ValueError, match="looks like"):
        keys.create_key(db, "c\u0430talog-loader", [keys.WRITE])

def test_concurrent_creates_of_one_key_name_make_one_key(make_app):
    """Twelve workers create a key of one name at the same moment: one gets it, the others 409.
    On PostgreSQL each create's check ran beside the others and several found the name free."""
    from tests.api.test_protocols_api import all_at_once

    apps = [make_app() for _ in range(3)]
    clients = [app.test_client() for app in apps]

    def create(n: int) -> int:
        return clients[n % len(clients)].post(
            "/v1/admin/keys", json={"name": "raced-name", "scopes": ["protocols:read"]}).status_code

    statuses = all_at_once(12, create)
    assert sorted(statuses) == [201] + [409] * 11, statuses
    listed = clients[0].get("/v1/admin/keys").get_json()
    items = listed["items"] if isinstance(listed, dict) else listed
    assert [key["name"] for key in items].count("raced-name") == 1


def test_an_expired_key_does_not_hold_its_name(client, db):
    """Found by an adversarial probe: names are distinct among *live* keys, but an expired key (which
    authenticates nothing) still held its name (409 "revoke it")."""
    from datetime import timedelta

    from protocols import keys
    from protocols.timeutil import utcnow

    keys.create_key(db, "short-lived", [keys.READ], expires_at=utcnow() - timedelta(seconds=1),
                    now=utcnow() - timedelta(seconds=5))
    live = client.post("/v1/admin/keys", json={"name": "short-lived", "scopes": ["protocols:read"]})
    assert live.status_code == 201, live.get_json()
    again = client.post("/v1/admin/keys", json={"name": "short-lived", "scopes": ["protocols:read"]})
    assert again.status_code == 409
    assert client.post("/v1/admin/keys", json={"name": "caf\u00e9", "scopes": ["protocols:read"]}).status_code == 201


def test_cli_database_failures_end_in_one_line(tmp_path):
    """`flask keys create` on a database not yet migrated (how an operator makes the first admin key,
    easily before migrating) printed SQLAlchemy's and the driver's tracebacks (adversarial probe)."""
    from api import create_app

    for url in (f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}", "postgresql://postgres@127.0.0.1:1/nowhere"):
        app = create_app({"PROTOCOLS_DATABASE_URL": url, "TESTING": True})
        for args in (["keys", "create", "--name", "first-admin", "--scope", "admin"], ["keys", "list"],
                     ["protocols", "load"]):
            result = app.test_cli_runner().invoke(args=args)
            assert result.exit_code == 1, (url, args, result.output)
            assert "flask protocols migrate" in result.output and "Traceback" not in result.output, result.output
        app.extensions["protocols_db"].dispose()


def test_the_reasons_and_the_scope_of_a_refusal_are_in_the_contract(anon_client, make_key):
    """Found by an adversarial probe: 401/403 bodies carry ``reason`` (and ``required_scope``), which the
    README promises to machines, but the published Error schema named neither."""
    schema = anon_client.get("/openapi.json").get_json()["components"]["schemas"]["Error"]["properties"]
    reasons = set(schema["reason"]["enum"])
    seen = {anon_client.get("/v1/changes").get_json()["reason"],
            anon_client.get("/v1/changes", headers={"Authorization": "Basic x"}).get_json()["reason"],
            anon_client.get("/v1/changes", headers={"Authorization": "Bearer tpk_unknown"}).get_json()["reason"]}
    write_only = make_key(["protocols:write"])
    refused = anon_client.get("/v1/changes", headers={"Authorization": f"Bearer {write_only}"}).get_json()
    seen.add(refused["reason"])
    assert seen <= reasons and refused["required_scope"] == "protocols:read"
    assert reasons - seen == {"protocol_not_found", "version_not_found", "not_in_effect", "clock_behind"}
    assert "required_scope" in schema
