"""Stored history cannot be altered through SQL: the database itself refuses it (both databases)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from protocols import versioning
from protocols.record import split_document
from protocols.versioning import WriteContext
from schemas.protocol import ProtocolCreateSchema, split_payload
from tests.factories import protocol_payload


def _seed(db):
    meta, content = split_payload(ProtocolCreateSchema().load(protocol_payload()))
    first = versioning.create(db, meta["id"], content, ctx=WriteContext("tester"))
    changed = dict(content, title="Second")
    versioning.revise(db, meta["id"], changed, if_match=[first.etag])
    return meta["id"]


@pytest.mark.parametrize("statement", [
    "UPDATE protocol_versions SET document = '{}' WHERE protocol_id = :pid",
    "UPDATE protocol_versions SET status = 'retired' WHERE protocol_id = :pid AND version = 1",
    "DELETE FROM protocol_versions WHERE protocol_id = :pid",
    "DELETE FROM protocols WHERE id = :pid",
    "UPDATE protocols SET latest_version = 1 WHERE id = :pid",
    "UPDATE protocols SET id = 'renamed' WHERE id = :pid",
])
def test_raw_sql_cannot_change_history(db, statement):
    protocol_id = _seed(db)
    before = versioning.list_versions(db, protocol_id, limit=10).items
    with pytest.raises(DatabaseError), db.engine.begin() as conn:
        conn.execute(text(statement), {"pid": protocol_id})
    after = versioning.list_versions(db, protocol_id, limit=10).items
    assert [(v.version, v.document, v.etag) for v in after] == [(v.version, v.document, v.etag) for v in before]


def test_audit_rows_cannot_be_changed(db):
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_events (occurred_at, action, outcome) "
                          "VALUES ('2024-01-01 00:00:00', 'test', 'ok')"))
    for statement in ("UPDATE audit_events SET outcome = 'forged'", "DELETE FROM audit_events"):
        with pytest.raises(DatabaseError), db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT outcome FROM audit_events")).scalar_one() == "ok"


def test_wholesale_emptying_is_refused(db, backend):
    """PostgreSQL: TRUNCATE has its own trigger. SQLite has no TRUNCATE; its equivalent, an unqualified
    DELETE (the "truncate optimisation"), still fires the row trigger and is refused."""
    _seed(db)
    statement = "TRUNCATE protocol_versions CASCADE" if backend == "postgres" else "DELETE FROM protocol_versions"
    with pytest.raises(DatabaseError), db.engine.begin() as conn:
        conn.execute(text(statement))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM protocol_versions")).scalar_one() == 2


def test_head_advances_by_exactly_one(db):
    protocol_id = _seed(db)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE protocols SET latest_version = 3 WHERE id = :pid"), {"pid": protocol_id})
    with pytest.raises(DatabaseError), db.engine.begin() as conn:
        conn.execute(text("UPDATE protocols SET latest_version = 5 WHERE id = :pid"), {"pid": protocol_id})


def test_the_changes_feed_counter_only_advances(db, backend):
    """Found by an adversarial probe: one ``UPDATE change_counter SET value = value - 3`` made every later
    write collide with a stored seq and fail as a lost race (412, or "already exists" for a new id)
    until the row was mended. Migration 0011 refuses moving it back, deleting or replacing it."""
    protocol_id = _seed(db)
    statements = ["UPDATE change_counter SET value = value - 1", "UPDATE change_counter SET value = NULL",
                  "UPDATE change_counter SET id = 2", "DELETE FROM change_counter"]
    statements += (["TRUNCATE change_counter"] if backend == "postgres"
                   else ["REPLACE INTO change_counter (id, value) VALUES (1, 0)",
                         "INSERT OR REPLACE INTO change_counter (id, value) VALUES (1, 0)"])
    for statement in statements:
        with pytest.raises(DatabaseError), db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id, value FROM change_counter")).all() == [(1, 2)]
    with db.engine.begin() as conn:  # advancing it stays allowed (the writes' own UPDATE, bench/generate.py)
        conn.execute(text("UPDATE change_counter SET value = value + 5"))
    latest = versioning.latest(db, protocol_id)
    content = split_document(latest.document)[1]
    assert versioning.revise(db, protocol_id, dict(content, title="Third"), if_match=[latest.etag])[0].version == 3


_COLUMNS = ("seq, protocol_id, version, status, effective_from, recorded_at, recorded_by, request_id, change_note, "
            "content_hash, etag, document")
_FORGED_DOCUMENT = _COLUMNS.replace("document", "replace(document, 'title', 'forged')")
_NEW_SEQ = _COLUMNS.replace("seq,", "999999,", 1)
#: Statements that write a row over a stored one: SQLite's REPLACE (which deletes the row in the way
#: without firing its DELETE trigger) and PostgreSQL's upserts and MERGE.
_OVERWRITES = {
    "sqlite": [
        f"INSERT OR REPLACE INTO protocol_versions ({_COLUMNS}) SELECT {_FORGED_DOCUMENT} "
        "FROM protocol_versions WHERE protocol_id = :pid AND version = 1",
        f"REPLACE INTO protocol_versions ({_COLUMNS}) SELECT {_NEW_SEQ} "
        "FROM protocol_versions WHERE protocol_id = :pid AND version = 1",
        "INSERT OR REPLACE INTO protocols (seq, id, created_at, latest_version) "
        "SELECT seq, id, created_at, 1 FROM protocols WHERE id = :pid",
        "REPLACE INTO protocols (id, created_at, latest_version) "
        "SELECT id, created_at, 1 FROM protocols WHERE id = :pid",
        "REPLACE INTO audit_events (seq, occurred_at, actor, action, target, outcome) "
        "SELECT seq, occurred_at, 'someone-else', action, target, 'forged' FROM audit_events",
    ],
    "postgres": [
        f"INSERT INTO protocol_versions ({_COLUMNS}) SELECT {_COLUMNS} FROM protocol_versions WHERE protocol_id = :pid "
        "ON CONFLICT (seq) DO UPDATE SET document = '{}'",
        "INSERT INTO protocols (id, created_at, latest_version) "
        "SELECT id, created_at, 1 FROM protocols WHERE id = :pid ON CONFLICT (id) DO UPDATE SET latest_version = 1",
        "MERGE INTO protocol_versions v USING (SELECT 1) s ON v.protocol_id = :pid WHEN MATCHED THEN DELETE",
        "MERGE INTO audit_events a USING (SELECT 1) s ON true WHEN MATCHED THEN UPDATE SET outcome = 'forged'",
    ],
}


def _history(db, protocol_id):
    with db.engine.connect() as conn:
        versions = conn.execute(text(f"SELECT {_COLUMNS} FROM protocol_versions ORDER BY seq")).all()
        heads = conn.execute(text("SELECT seq, id, created_at, latest_version FROM protocols ORDER BY seq")).all()
        audit = conn.execute(text("SELECT * FROM audit_events ORDER BY seq")).all()
    return versions, heads, audit


def test_no_row_of_history_can_be_written_over(db, backend):
    """Found by an adversarial probe: on SQLite, ``INSERT OR REPLACE`` rewrote a stored version's dose
    under its old ETag, moved a head back and rewrote an audit row, past every UPDATE and DELETE
    trigger. Each such statement is now refused (or, for the head, changes nothing), on both databases
    with their own syntax."""
    protocol_id = _seed(db)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_events (occurred_at, actor, action, outcome) "
                          "VALUES ('2024-01-01 00:00:00', 'tester', 'test', 'ok')"))
    before = _history(db, protocol_id)
    for statement in _OVERWRITES[backend]:
        try:
            with db.engine.begin() as conn:
                conn.execute(text(statement), {"pid": protocol_id})
        except DatabaseError:
            pass
        assert _history(db, protocol_id) == before, statement


def test_without_the_0010_triggers_sqlites_replace_rewrites_history(db, backend):
    """The control for the test above: with migration 0010's trigger dropped (inside a transaction that
    is rolled back), SQLite's REPLACE does rewrite a stored version, so that test can fail. PostgreSQL
    needs no such trigger: its upsert is refused by the UPDATE trigger of migration 0001."""
    protocol_id = _seed(db)
    conn = db.engine.connect()
    try:
        transaction = conn.begin()
        if backend == "sqlite":
            conn.execute(text("DROP TRIGGER protocol_versions_no_replace"))
            conn.execute(text(_OVERWRITES["sqlite"][0]), {"pid": protocol_id})
            forged = conn.execute(text("SELECT document FROM protocol_versions WHERE protocol_id = :pid "
                                       "AND version = 1"), {"pid": protocol_id}).scalar_one()
            assert '"forged"' in forged
        else:
            with pytest.raises(DatabaseError):
                conn.execute(text(_OVERWRITES["postgres"][0]), {"pid": protocol_id})
        transaction.rollback()
    finally:
        conn.close()
    assert all('"forged"' not in v.document for v in versioning.list_versions(db, protocol_id, limit=10).items)
