"""SQLite: an INSERT may not replace a row of stored history (``INSERT OR REPLACE``, ``REPLACE``).

SQLite's REPLACE conflict resolution deletes the row in the way without firing its DELETE triggers
(unless ``PRAGMA recursive_triggers`` is on, which it is not by default, in the app or in an
operator's ``sqlite3`` shell), so ``INSERT OR REPLACE INTO protocol_versions …`` rewrote a stored
version's dose under its old, "immutable" ETag, moved a protocol's head back, and rewrote an audit
row's actor, past every trigger of migration 0001 (found by an adversarial probe). A BEFORE INSERT
trigger runs before the conflict is resolved: a new row whose key is taken is refused for versions
and audit events. For the head it is ignored (``RAISE(IGNORE)``), because the service creates a
protocol with ``INSERT … ON CONFLICT (id) DO NOTHING`` and reads "nothing inserted" as "the id
exists"; an ignored REPLACE changes nothing either. PostgreSQL has no REPLACE: its upserts and MERGE
update or delete through the row triggers of 0001, which refuse them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 02:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TRIGGERS = {
    "protocol_versions_no_replace": """CREATE TRIGGER protocol_versions_no_replace BEFORE INSERT ON protocol_versions
       WHEN EXISTS (SELECT 1 FROM protocol_versions WHERE seq = NEW.seq
                    OR (protocol_id = NEW.protocol_id AND version = NEW.version))
       BEGIN SELECT RAISE(ABORT, 'protocol_versions rows are immutable'); END""",
    "audit_events_no_replace": """CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
       WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq)
       BEGIN SELECT RAISE(ABORT, 'audit_events rows are immutable'); END""",
    "protocols_no_replace": """CREATE TRIGGER protocols_no_replace BEFORE INSERT ON protocols
       WHEN EXISTS (SELECT 1 FROM protocols WHERE id = NEW.id OR seq = NEW.seq)
       BEGIN SELECT RAISE(IGNORE); END""",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in TRIGGERS.values():
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
