"""Search: full-text index of every version, ICD-10-CM prefix keys, and backfill of both.

* SQLite: ``protocol_fts`` is an FTS5 virtual table whose rowid is ``protocol_versions.seq``.
* PostgreSQL: ``protocol_fts`` holds one ``tsvector`` per searchable field plus a generated
  ``document`` vector (all fields) with a GIN index.

Both hold derived data written inside the write transaction (``protocols.fulltext.index_version``);
they may be emptied and rebuilt. Existing versions are indexed here, and their ``indication_key``
search terms (ICD-10-CM ancestor codes, see ``protocols.indexing``) are added.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 05:40:00
"""

from __future__ import annotations

import json

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE = [
    """CREATE VIRTUAL TABLE protocol_fts USING fts5(
         title, drug, indication, summary,
         tokenize = 'unicode61 remove_diacritics 0', prefix = '2 3')""",
]

POSTGRES = [
    """CREATE TABLE protocol_fts (
         seq BIGINT PRIMARY KEY REFERENCES protocol_versions (seq),
         title tsvector NOT NULL,
         drug tsvector NOT NULL,
         indication tsvector NOT NULL,
         summary tsvector NOT NULL,
         document tsvector GENERATED ALWAYS AS (title || drug || indication || summary) STORED)""",
    "CREATE INDEX ix_protocol_fts_document ON protocol_fts USING gin (document)",
]


def _backfill() -> None:
    from protocols import fulltext
    from protocols.indexing import search_terms
    from protocols.record import split_document

    connection = op.get_bind()
    fulltext.rebuild(connection, tagged=False)  # SQLite's tagged field terms: migration 0005
    rows = connection.execute(text("SELECT protocol_id, version, status, document FROM protocol_versions"))
    for protocol_id, version, status, document in rows.all():
        _, content = split_document(json.loads(document))
        for kind, value in sorted(set(search_terms(content, status))):
            if kind == "indication_key":
                connection.execute(
                    text("INSERT INTO search_terms (protocol_id, version, kind, value) VALUES (:p, :v, :k, :val)"),
                    {"p": protocol_id, "v": version, "k": kind, "val": value[:200]})


def upgrade() -> None:
    for statement in SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRES:
        op.execute(statement)
    _backfill()


def downgrade() -> None:
    op.execute("DELETE FROM search_terms WHERE kind = 'indication_key'")
    op.execute("DROP TABLE protocol_fts")
