"""The audit event of a protocol write is part of the write's transaction: it commits with the
version and rolls back with it. Denied and failed requests are still recorded after the response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from protocols import audit, keys, versioning
from protocols.db import Database
from tests.api.test_audit import audit_rows
from tests.factories import protocol_payload


@pytest.fixture
def commits(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def on_commit(_conn: Any) -> None:
        seen.append("commit")

    event.listen(db.engine, "commit", on_commit)
    yield seen
    event.remove(db.engine, "commit", on_commit)


def version_count(db: Database, protocol_id: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM protocol_versions WHERE protocol_id = :p"),
                                {"p": protocol_id}).scalar_one())


def test_a_put_commits_the_version_and_its_audit_row_in_one_transaction(client, db, backend, commits):
    payload = protocol_payload()
    created = client.post("/v1/protocols", json=payload)
    commits.clear()
    revised = client.put(f"/v1/protocols/{payload['id']}", json={**payload, "title": "Changed"},
                         headers={"If-Match": created.headers["ETag"], "X-Request-ID": "put-1"})
    assert revised.status_code == 201
    if backend == "postgres":
        # One statement on an autocommit connection: both rows carry the id of the transaction that
        # inserted them (xmin), and it is the same one.
        with db.engine.connect() as conn:
            version_xid, audit_xid = conn.execute(text(
                "SELECT v.xmin::text, a.xmin::text FROM protocol_versions v JOIN audit_events a"
                " ON a.request_id = v.request_id WHERE v.request_id = 'put-1'")).one()
        assert version_xid == audit_xid
    else:
        assert commits == ["commit"]  # the version, its derived rows and the audit row: one COMMIT
    rows = audit_rows(db)
    assert [(r.action, r.outcome, r.status_code, r.request_id) for r in rows] == [
        ("protocol.create", "allowed", 201, created.headers["X-Request-ID"]),
        ("protocol.revise", "allowed", 201, "put-1")]
    detail = json.loads(rows[1].detail)
    assert detail["method"] == "PUT" and detail["path"] == f"/v1/protocols/{payload['id']}" and detail["key_id"]
    with db.engine.connect() as conn:
        occurred_at, recorded_at = conn.execute(text(
            "SELECT a.occurred_at, v.recorded_at FROM audit_events a JOIN protocol_versions v"
            " ON v.request_id = a.request_id WHERE a.request_id = 'put-1'")).one()
    assert occurred_at == recorded_at


def test_a_failing_append_leaves_neither_version_nor_allowed_audit_row(app, db, monkeypatch):
    client = app.test_client()
    payload = protocol_payload()
    pid = payload["id"]
    created = client.post("/v1/protocols", json=payload)
    write = versioning._write

    def explode(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)  # every row of the append, the audit row included, then a failure
        raise RuntimeError("fails after the rows were written, before COMMIT")

    monkeypatch.setattr(versioning, "_write", explode)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # A retirement appends in an explicit transaction on both databases (a PostgreSQL revision is one
    # statement, with no moment between its rows and its commit: the trigger test below covers it).
    failed = client.delete(f"/v1/protocols/{pid}", headers={"If-Match": created.headers["ETag"]})
    assert failed.status_code == 500
    monkeypatch.undo()
    assert version_count(db, pid) == 1
    assert [(r.action, r.outcome) for r in audit_rows(db)] == [("protocol.create", "allowed")]


def test_a_failing_audit_insert_rolls_back_the_version(client, db, backend, monkeypatch):
    """The other direction: if the audit row cannot be written, the version is not written either."""
    payload = protocol_payload()
    pid = payload["id"]
    created = client.post("/v1/protocols", json=payload)
    install, remove = _refuse_audit_inserts(backend)
    with db.engine.begin() as conn:
        for statement in install:
            conn.execute(text(statement))
    try:
        # SQLite reports RAISE(ABORT) as an integrity error (a 412 to the client), PostgreSQL as an error;
        # either way the refusal must be the trigger's, not some other failure before anything was written
        with pytest.raises(Exception) as raised:
            versioning.revise(db, pid, {**payload, "title": "Never"}, if_match=[created.headers["ETag"]],
                              ctx=versioning.WriteContext(
                                  actor="x", audit=versioning.audit_events.Pending("protocol.revise", 201)))
        chain: list[BaseException] = []
        error: BaseException | None = raised.value
        while error is not None and error not in chain:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert any("audit refused" in str(e) for e in chain), chain
    finally:
        with db.engine.begin() as conn:
            for statement in remove:
                conn.execute(text(statement))
    assert version_count(db, pid) == 1
    assert versioning.latest(db, pid).etag == created.headers["ETag"]


def _refuse_audit_inserts(backend: str) -> tuple[list[str], list[str]]:
    if backend == "postgres":
        return ([
            "CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_events"
            " FOR EACH ROW EXECUTE FUNCTION test_refuse_audit()",
        ], ["DROP TRIGGER test_refuse_audit ON audit_events", "DROP FUNCTION test_refuse_audit()"])
    return (["CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_events"
             " BEGIN SELECT RAISE(ABORT, 'audit refused'); END"],
            ["DROP TRIGGER test_refuse_audit"])


def test_denied_writes_are_still_recorded_after_the_response(client, db):
    payload = protocol_payload()
    client.post("/v1/protocols", json=payload)
    stale = client.put(f"/v1/protocols/{payload['id']}", json={**payload, "title": "x"},
                       headers={"If-Match": '"1-0000000000000000"'})
    assert stale.status_code == 412
    assert [(r.action, r.outcome, r.status_code) for r in audit_rows(db)][-1] == ("protocol.revise", "denied", 412)


def _key_and_audit_xids(db: Database, request_id: str) -> tuple[str, str]:
    with db.engine.connect() as conn:
        key_xid, audit_xid = conn.execute(text(
            "SELECT k.xmin::text, a.xmin::text FROM audit_events a JOIN api_keys k ON k.id = a.target"
            " WHERE a.request_id = :r"), {"r": request_id}).one()
        return key_xid, audit_xid


def test_minting_and_revoking_a_key_commit_with_their_audit_rows(client, db, backend, commits):
    commits.clear()
    created = client.post("/v1/admin/keys", json={"name": "integration-x", "scopes": ["protocols:read"]},
                          headers={"X-Request-ID": "key-create-1"})
    assert created.status_code == 201
    key_id = created.get_json()["id"]
    if backend == "postgres":
        key_xid, audit_xid = _key_and_audit_xids(db, "key-create-1")
        assert key_xid == audit_xid
    else:
        assert commits == ["commit"]  # the key and its audit row: one COMMIT, nothing after the response
    commits.clear()
    revoked = client.delete(f"/v1/admin/keys/{key_id}", headers={"X-Request-ID": "key-revoke-1"})
    assert revoked.status_code == 200
    if backend == "postgres":
        key_xid, audit_xid = _key_and_audit_xids(db, "key-revoke-1")  # the revocation's UPDATE is the row's xmin
        assert key_xid == audit_xid
    else:
        assert commits == ["commit"]
    again = client.delete(f"/v1/admin/keys/{key_id}", headers={"X-Request-ID": "key-revoke-2"})
    assert again.status_code == 200 and again.get_json()["revoked_at"] == revoked.get_json()["revoked_at"]
    rows = [(r.action, r.target, r.outcome, r.status_code, r.request_id) for r in audit_rows(db)
            if r.target == key_id]
    assert rows == [("keys.create", key_id, "allowed", 201, "key-create-1"),
                    ("keys.revoke", key_id, "allowed", 200, "key-revoke-1")]  # revoking again changed nothing


@pytest.mark.parametrize("operation", ["create", "revoke"])
def test_a_key_change_whose_audit_row_fails_is_not_made(db, monkeypatch, operation):
    """The audit row is written inside the key's transaction: if it cannot be written, no key is minted
    and no key is revoked."""
    existing, _ = keys.create_key(db, "keep-me", [keys.READ])

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("audit write failed")

    monkeypatch.setattr(keys, "insert_allowed", failing)
    action = audit.KEY_CREATE if operation == "create" else audit.KEY_REVOKE
    ctx = audit.WriteContext(actor="tester", audit=audit.Pending(action))
    with pytest.raises(RuntimeError):
        if operation == "create":
            keys.create_key(db, "never-minted", [keys.READ], ctx=ctx)
        else:
            keys.revoke_key(db, existing.id, ctx=ctx)
    names = {k.name: k for k in keys.list_keys(db)}
    assert "never-minted" not in names
    assert names["keep-me"].revoked_at is None
