"""Stored history cannot be altered through SQL: the database itself refuses it (both databases)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from protocols import versioning
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
