"""The audit trail: rows for changes and denied writes, the admin query API, immutability."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from protocols import audit
from tests.factories import protocol_payload


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_rows(db) -> list:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT actor, action, target, outcome, status_code, request_id, detail "
                                 "FROM audit_events ORDER BY seq")).all()


def test_changes_are_audited_with_actor_target_and_request_id(anon_client, make_key, db):
    key = make_key(["protocols:read", "protocols:write"], name="curator-1")
    payload = protocol_payload()
    pid = payload["id"]
    created = anon_client.post("/v1/protocols", json=payload, headers={**bearer(key), "X-Request-ID": "c-1"})
    assert created.status_code == 201
    revised = anon_client.put(f"/v1/protocols/{pid}", json={**payload, "title": "Changed title"},
                              headers={**bearer(key), "If-Match": created.headers["ETag"], "X-Request-ID": "r-1"})
    assert revised.status_code == 201
    retired = anon_client.delete(f"/v1/protocols/{pid}", headers={**bearer(key), "If-Match": revised.headers["ETag"]})
    assert retired.status_code == 200
    rows = audit_rows(db)
    assert [(r.actor, r.action, r.target, r.outcome, r.status_code) for r in rows] == [
        ("curator-1", "protocol.create", pid, "allowed", 201),
        ("curator-1", "protocol.revise", pid, "allowed", 201),
        ("curator-1", "protocol.retire", pid, "allowed", 200),
    ]
    assert [r.request_id for r in rows] == ["c-1", "r-1", retired.headers["X-Request-ID"]]


def test_reads_and_unchanged_writes_are_not_audited(client, db):
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    client.get(f"/v1/protocols/{payload['id']}")
    client.get("/v1/protocols")
    same = client.put(f"/v1/protocols/{payload['id']}", json=payload, headers={"If-Match": created.headers["ETag"]})
    assert same.status_code == 200  # content equals the newest version: nothing appended
    assert [r.action for r in audit_rows(db)] == ["protocol.create"]


def test_a_reads_precondition_failure_is_not_audited(make_app, db):
    """A GET refused by its If-Match (412) changes nothing and is no denied write: were it audited, any
    anonymous reader could write audit rows."""
    app = make_app(PROTOCOLS_ANONYMOUS_READS=True)
    client, anonymous = app.test_client(), FlaskClient(app, app.response_class)
    payload = protocol_payload()
    assert client.post("/v1/protocols", json=payload).status_code == 201
    before = audit_rows(db)
    for send in (anonymous.get, anonymous.head, client.get):
        assert send(f"/v1/protocols/{payload['id']}", headers={"If-Match": '"nope"'}).status_code == 412
    assert audit_rows(db) == before


def test_denied_writes_are_audited(anon_client, client, make_key, db):
    payload = protocol_payload()
    pid = payload["id"]
    assert client.post("/v1/protocols", json=payload).status_code == 201
    reader = make_key(["protocols:read"], name="read-only-bot")
    assert anon_client.post("/v1/protocols", json=protocol_payload(id="other-protocol")).status_code == 401
    assert anon_client.put(f"/v1/protocols/{pid}", json=payload, headers=bearer(reader)).status_code == 403
    changed = {**payload, "title": "New"}
    assert client.put(f"/v1/protocols/{pid}", json=changed).status_code == 428
    assert client.put(f"/v1/protocols/{pid}", json=changed, headers={"If-Match": '"1-stale"'}).status_code == 412
    assert anon_client.get("/v1/admin/audit", headers=bearer(reader)).status_code == 403
    assert anon_client.get("/v1/protocols", headers=bearer("tpk_" + "Z" * 43)).status_code == 401  # a read
    rows = audit_rows(db)[1:]
    assert [(r.actor, r.action, r.target, r.outcome, r.status_code) for r in rows] == [
        (None, "protocol.create", "/v1/protocols", "denied", 401),
        ("read-only-bot", "protocol.revise", pid, "denied", 403),
        ("test-all-scopes", "protocol.revise", pid, "denied", 428),
        ("test-all-scopes", "protocol.revise", pid, "denied", 412),
        ("read-only-bot", "admin.list_audit", "/v1/admin/audit", "denied", 403),
    ]
    assert '"required_scope":"protocols:write"' in rows[1].detail


def test_key_administration_is_audited_without_key_material(app, client, db):
    created = client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["protocols:read"]}).get_json()
    client.delete(f"/v1/admin/keys/{created['id']}")
    runner = app.test_cli_runner()
    output = runner.invoke(args=["keys", "create", "--name", "cli-key", "--scope", "admin"]).output
    cli_plain = output.strip().rsplit(" ", 1)[-1]
    cli_id = output.split()[2]
    runner.invoke(args=["keys", "revoke", cli_id])
    rows = audit_rows(db)
    assert [(r.action, r.target, r.outcome) for r in rows] == [
        ("keys.create", created["id"], "allowed"), ("keys.revoke", created["id"], "allowed"),
        ("keys.create", cli_id, "allowed"), ("keys.revoke", cli_id, "allowed")]
    assert rows[0].actor == "test-all-scopes" and rows[2].actor.startswith("cli")
    # What was minted, over HTTP as from the CLI (the HTTP row held only the creating key's id; probe).
    http_detail, cli_detail = json.loads(rows[0].detail), json.loads(rows[2].detail)
    assert (http_detail["name"], http_detail["scopes"], http_detail["expires_at"]) == ("svc", ["protocols:read"], None)
    assert (cli_detail["name"], cli_detail["scopes"], cli_detail["expires_at"]) == ("cli-key", ["admin"], None)
    dated = client.post("/v1/admin/keys", json={"name": "dated", "scopes": ["admin", "protocols:read"],
                                                "expires_at": "2031-01-01T01:00:00+01:00"}).get_json()
    dated_row = audit_rows(db)[-1]
    assert dated_row.target == dated["id"]
    assert json.loads(dated_row.detail)["expires_at"] == "2031-01-01T00:00:00Z"
    assert json.loads(dated_row.detail)["scopes"] == dated["scopes"] == ["protocols:read", "admin"]
    dumped = repr(rows)
    assert created["key"] not in dumped and cli_plain not in dumped


def test_admin_audit_query_filters_and_paginates(client, anon_client, make_key):
    curator = make_key(["protocols:read", "protocols:write"], name="curator-2")
    ids = [f"audit-proto-{n}" for n in range(5)]
    for pid in ids:
        response = anon_client.post("/v1/protocols", json=protocol_payload(id=pid), headers=bearer(curator))
        assert response.status_code == 201
    client.post("/v1/protocols", json=protocol_payload(id="by-admin"))
    anon_client.post("/v1/protocols", json=protocol_payload(id="nobody"))

    everything = client.get("/v1/admin/audit").get_json()["items"]
    assert len(everything) == 7 and everything[0]["seq"] > everything[-1]["seq"]  # newest first
    event = everything[0]
    assert event["outcome"] == "denied" and event["status_code"] == 401 and event["occurred_at"].endswith("Z")
    assert event["detail"]["method"] == "POST"

    by_actor = client.get("/v1/admin/audit?actor=curator-2").get_json()["items"]
    assert [e["target"] for e in by_actor] == list(reversed(ids))
    assert [e["target"] for e in client.get("/v1/admin/audit?protocol=audit-proto-3").get_json()["items"]] == [
        "audit-proto-3"]
    assert len(client.get("/v1/admin/audit?outcome=denied").get_json()["items"]) == 1
    assert len(client.get("/v1/admin/audit?action=protocol.create&outcome=allowed").get_json()["items"]) == 6
    assert client.get("/v1/admin/audit?since=2999-01-01T00:00:00Z").get_json()["items"] == []
    assert len(client.get("/v1/admin/audit?until=2999-01-01T00:00:00Z").get_json()["items"]) == 7

    first = client.get("/v1/admin/audit?actor=curator-2&page_size=2")
    page1 = first.get_json()
    assert [e["target"] for e in page1["items"]] == ids[4:2:-1] and page1["prev"] is None
    assert 'rel="next"' in first.headers["Link"]
    page2 = client.get(page1["next"]).get_json()
    assert [e["target"] for e in page2["items"]] == ids[2:0:-1]
    page3 = client.get(page2["next"]).get_json()
    assert [e["target"] for e in page3["items"]] == ids[0:1] and page3["next"] is None
    back = client.get(page3["prev"]).get_json()
    assert [e["target"] for e in back["items"]] == ids[2:0:-1]



def test_denied_key_administration_is_filed_under_the_allowed_actions_name(anon_client, client, make_key):
    """A request authentication refuses never reaches its view: a denied revoke was filed as
    admin.revoke_key, out of reach of ?action=keys.revoke (found by a probe)."""
    writer = make_key(["protocols:read", "protocols:write"], name="writer-bot")
    victim = client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["protocols:read"]}).get_json()
    assert anon_client.delete(f"/v1/admin/keys/{victim['id']}", headers=bearer(writer)).status_code == 403
    assert anon_client.post("/v1/admin/keys", json={"name": "mine", "scopes": ["admin"]},
                            headers=bearer(writer)).status_code == 403
    revokes = client.get("/v1/admin/audit?action=keys.revoke").get_json()["items"]
    assert [(e["actor"], e["target"], e["outcome"]) for e in revokes] == [("writer-bot", victim["id"], "denied")]
    creates = client.get("/v1/admin/audit?action=keys.create").get_json()["items"]
    assert [(e["actor"], e["outcome"]) for e in creates] == [("writer-bot", "denied"), ("test-all-scopes", "allowed")]


def test_refused_requests_with_a_nul_in_the_path_are_audited_on_both_databases(anon_client, make_key, client, db):
    """PostgreSQL text cannot hold NUL: the audit insert failed (only logged) and a refused request for
    /v1/protocols/abc%00def left no row there, where SQLite kept one (found by a probe)."""
    reader = make_key(["protocols:read"], name="nul-reader")
    assert anon_client.delete("/v1/protocols/abc%00def").status_code == 401
    assert anon_client.delete("/v1/admin/keys/abc%00", headers=bearer(reader)).status_code == 403
    rows = audit_rows(db)
    assert [(r.action, r.target, r.outcome, r.status_code) for r in rows] == [
        ("protocol.retire", "abc\ufffddef", "denied", 401), ("keys.revoke", "abc\ufffd", "denied", 403)]
    assert [e["target"] for e in client.get("/v1/admin/audit").get_json()["items"]] == ["abc\ufffd", "abc\ufffddef"]


def test_an_empty_audit_window_is_a_422(client):
    """Swapped bounds read as "nothing happened"; the version list already refused them."""
    response = client.get("/v1/admin/audit?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z")
    assert response.status_code == 422 and response.get_json()["errors"] == {"until": ["must be later than since"]}
    assert client.get("/v1/admin/audit?since=2020-01-01T00:00:00Z&until=2020-01-01T00:00:00Z").status_code == 422

@pytest.mark.parametrize(("query", "field"), [("cursor=garbage", "cursor"), ("page_size=1000", "page_size"),
                                              ("since=yesterday", "since"), ("who=me", "who"),
                                              ("outcome=maybe", "outcome")])
def test_admin_audit_query_rejects_bad_parameters(client, query, field):
    response = client.get(f"/v1/admin/audit?{query}")
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_audit_rows_are_immutable_in_the_database(db, backend):
    audit.record(db, action="test.event", outcome=audit.ALLOWED, actor="someone", target="x")
    statements = ["UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"]
    if backend == "postgres":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(DBAPIError, match="immutable"), db.engine.begin() as conn:
            conn.execute(text(statement))
    assert [(r.actor, r.action) for r in audit_rows(db)] == [("someone", "test.event")]


def test_catalog_loads_are_audited_once_per_changed_protocol(app, db):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load"]).exit_code == 0
    loaded = [r for r in audit_rows(db) if r.action == "protocol.load"]
    assert loaded and all(r.actor == "catalog-loader" and r.outcome == "allowed" for r in loaded)
    assert '"appended_versions":[1' in loaded[0].detail
    assert runner.invoke(args=["protocols", "load"]).exit_code == 0  # unchanged catalog: nothing new
    assert len([r for r in audit_rows(db) if r.action == "protocol.load"]) == len(loaded)


def test_a_refused_write_names_the_revoked_or_expired_key_in_the_audit_trail(anon_client, client, make_key, db):
    """A write with a revoked or expired key was audited with actor null, so the trail could not say
    which client still holds a key that was revoked (a leaked one, say). The client is still told only
    that the key is not valid, exactly as for an unknown key."""
    from datetime import timedelta

    from protocols.timeutil import utcnow

    assert client.post("/v1/protocols", json=protocol_payload("audit-keys")).status_code == 201
    leaked = make_key(["protocols:read", "protocols:write"], name="leaked-bot")
    leaked_id = next(k["id"] for k in client.get("/v1/admin/keys").get_json()["items"] if k["name"] == "leaked-bot")
    assert client.delete(f"/v1/admin/keys/{leaked_id}").status_code in (200, 204)
    stale = make_key(["protocols:write"], name="stale-bot", expires_at=utcnow() - timedelta(days=1))
    bodies = []
    for key in (leaked, stale, "tpk_" + "0" * 40):
        response = anon_client.delete("/v1/protocols/audit-keys", headers={**bearer(key), "If-Match": '"x"'})
        assert response.status_code == 401
        body = response.get_json()
        bodies.append((body["message"], body.get("reason"), response.headers["WWW-Authenticate"]))
    assert len(set(bodies)) == 1  # revoked, expired and unknown keys answer alike

    denied = [r for r in audit_rows(db) if r.outcome == "denied"]
    assert [r.actor for r in denied] == ["leaked-bot", "stale-bot", None]
    details = [json.loads(r.detail) for r in denied]
    assert [(d.get("key_id"), d.get("key_state")) for d in details] == [
        (leaked_id, "revoked"), (details[1]["key_id"], "expired"), (None, None)]
    assert details[1]["key_id"] not in (None, leaked_id)


def test_a_long_path_leaves_a_refused_writes_key_in_its_audit_detail(anon_client, client, make_key, db):
    """Found by a security probe: cut at the detail column's 4,000 characters after the client-chosen path,
    a revoked key's refused write to a 3,990-character path lost its key id and state (the row named only
    the key's name, which a newer live key may hold), and the detail was no longer JSON. The path is cut
    instead, and the detail says how long it was."""
    leaked = make_key(["protocols:read", "protocols:write"], name="rotated-bot")
    leaked_id = next(k["id"] for k in client.get("/v1/admin/keys").get_json()["items"] if k["name"] == "rotated-bot")
    assert client.delete(f"/v1/admin/keys/{leaked_id}").status_code in (200, 204)
    for path in ("x" * 3990, "\u00e9" * 1500, "%01" * 1300):
        response = anon_client.delete(f"/v1/protocols/{path}", headers={**bearer(leaked), "If-Match": '"x"'})
        assert response.status_code == 401
    denied = [r for r in audit_rows(db) if r.outcome == "denied"]
    assert len(denied) == 3
    for row in denied:
        detail = json.loads(row.detail)
        assert (row.actor, detail["key_id"], detail["key_state"]) == ("rotated-bot", leaked_id, "revoked")
        assert detail["required_scope"] == "protocols:write" and detail["path_length"] > 1000
        assert detail["path"].startswith("/v1/protocols/") and len(json.dumps(detail["path"])) <= 1000


def test_a_key_sent_in_the_path_is_redacted_in_audit_rows_and_the_request_log(anon_client, make_key, db, caplog):
    """Found by a security probe: a key sent where an id goes reached the request log and, for a refused
    write, the audit trail's target and detail, whose rows cannot be deleted."""
    key = make_key(["protocols:read"], name="reader-bot")
    with caplog.at_level("INFO", logger="api.access"):
        assert anon_client.get(f"/v1/protocols/{key}", headers=bearer(key)).status_code == 404
        assert anon_client.delete(f"/v1/protocols/{key}", headers=bearer(key)).status_code == 403
    (row,) = [r for r in audit_rows(db) if r.outcome == "denied"]
    assert row.target == "tpk_[redacted]" and json.loads(row.detail)["path"] == "/v1/protocols/tpk_[redacted]"
    paths = [record.path for record in caplog.records if record.name == "api.access"]
    assert paths == ["/v1/protocols/tpk_[redacted]"] * 2
    assert key[4:] not in caplog.text and key[4:] not in row.detail


def test_an_admin_action_refused_by_a_rule_is_audited_as_denied(client):
    """An admin's 409 is a refused attempt (here: a second key under a taken name), recorded like an
    authorization refusal; a 422 (a malformed body) is not an attempt at anything and is not."""
    assert client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["protocols:read"]}).status_code == 201
    assert client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["admin"]}).status_code == 409
    assert client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["nope"]}).status_code == 422
    creates = client.get("/v1/admin/audit?action=keys.create").get_json()["items"]
    assert [(e["outcome"], e["status_code"]) for e in creates] == [("denied", 409), ("allowed", 201)]
