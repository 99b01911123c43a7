"""The changes-feed counter only advances: no UPDATE lowers it, no DELETE, TRUNCATE or REPLACE resets it.

Every write takes the next ``protocol_versions.seq`` from ``change_counter``. One ``UPDATE
change_counter SET value = value - 3`` made every later write collide with a stored seq, and each
collision was answered as a lost race (a 412 naming the very ETag the client sent, or "already
exists" for an id that does not), until someone mended the row by hand; the failed write rolled back
its own increment, so the counter never caught up (found by an adversarial probe). The counter is
part of what keeps history in order, so the database refuses to move it back, as it refuses to move
a protocol's head (migration 0001). ``flask protocols check`` also reports a counter behind the newest
stored seq (``protocols/consistency.py``), for databases changed with the triggers off.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SQLITE = {
    "change_counter_only_advances": """CREATE TRIGGER change_counter_only_advances BEFORE UPDATE ON change_counter
       WHEN NEW.id IS NOT OLD.id OR NEW.value IS NULL OR NEW.value < OLD.value
       BEGIN SELECT RAISE(ABORT, 'change_counter may only advance'); END""",
    "change_counter_no_delete": """CREATE TRIGGER change_counter_no_delete BEFORE DELETE ON change_counter
       BEGIN SELECT RAISE(ABORT, 'change_counter may only advance'); END""",
    # REPLACE deletes the row in its way without firing the DELETE trigger (migration 0010)
    "change_counter_no_replace": """CREATE TRIGGER change_counter_no_replace BEFORE INSERT ON change_counter
       WHEN EXISTS (SELECT 1 FROM change_counter)
       BEGIN SELECT RAISE(ABORT, 'change_counter may only advance'); END""",
}

POSTGRES = [
    """CREATE FUNCTION forbid_counter_change() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'change_counter may only advance' USING ERRCODE = 'insufficient_privilege';
       END $$""",
    # The condition is the trigger's WHEN, evaluated without calling the function: every write advances
    # the counter, and only a write that moves it back pays for the call (and fails).
    """CREATE TRIGGER change_counter_only_advances BEFORE UPDATE ON change_counter FOR EACH ROW
       WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.value IS NULL OR NEW.value < OLD.value)
       EXECUTE FUNCTION forbid_counter_change()""",
    """CREATE TRIGGER change_counter_no_delete BEFORE DELETE ON change_counter
       FOR EACH ROW EXECUTE FUNCTION forbid_counter_change()""",
    """CREATE TRIGGER change_counter_no_truncate BEFORE TRUNCATE ON change_counter
       FOR EACH STATEMENT EXECUTE FUNCTION forbid_counter_change()""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE.values():
            op.execute(statement)
    else:
        for statement in POSTGRES:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        for trigger in ("change_counter_no_truncate", "change_counter_no_delete", "change_counter_only_advances"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON change_counter")
        op.execute("DROP FUNCTION IF EXISTS forbid_counter_change()")
