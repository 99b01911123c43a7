"""A random identity for this database's changes feed, carried in every feed cursor.

Feed positions are ``protocol_versions.seq`` values, and another database (a restore through import,
a copy restored from an older backup) hands out the same numbers for other versions: a client polling
with a position from before the restore skipped every version numbered up to it, silently (found by
an adversarial probe). Cursors now name the feed they came from; a cursor of another feed is refused.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 19:45:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("feed_identity",
                    sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("value", sa.String(32), nullable=False))
    op.execute(sa.text("INSERT INTO feed_identity (id, value) VALUES (1, :value)").bindparams(
        value=secrets.token_hex(8)))


def downgrade() -> None:
    op.drop_table("feed_identity")
