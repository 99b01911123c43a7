"""Search at catalog scale (issue #9): per-field full-text indexes on PostgreSQL.

A ranked page walks versions in protocol order and then asks the index only for the matches that
could still outrank the page (``protocols.search``): "versions whose *drug* field holds every query
word", for instance. PostgreSQL's GIN index on the combined ``document`` vector cannot answer that
without reading every match, so each field vector gets its own GIN index; a posting list per field
answers it from the index alone (usually: none). SQLite needs nothing new: FTS5 column filters
(``drug : (...)``) already read one posting list.

Indexes only: derived from the full-text rows, nothing to backfill, nothing written differently.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FIELDS = ("title", "drug", "indication", "summary")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for field in FIELDS:
        op.execute(f"CREATE INDEX ix_protocol_fts_{field} ON protocol_fts USING gin ({field})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for field in FIELDS:
        op.execute(f"DROP INDEX IF EXISTS ix_protocol_fts_{field}")
