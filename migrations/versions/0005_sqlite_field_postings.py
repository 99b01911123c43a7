"""Per-field posting lists on SQLite (``protocol_fts_fields``): the counterpart of 0003's per-field
GIN indexes.

A ranked search asks the index for "versions whose *drug* field holds every query word" (usually
none: see ``protocols.search``). FTS5 stores one posting list per term for all columns, so the
column filter ``drug : "depressive"*`` read the posting list of every version holding the word in
any field: 71,650 entries at 100,000 protocols, to return nothing, which made a broad search page
cost 2 x its cost at 1,000 (docs/performance.md). 0003 assumed a column filter reads one posting
list; it does not. This table stores each lexeme tagged with its field (``d_depressive``), so each
(field, word) has its own posting list. Contentless with ``detail=none``: it holds version ids per
term and nothing else (the lexemes themselves stay in ``protocol_fts``).

Backfilled from ``protocol_fts`` (the lexemes are stored there space-separated). Derived data, like
``protocol_fts``: ``protocols.fulltext.rebuild`` empties and refills both. PostgreSQL: nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:40:00
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CREATE = """CREATE VIRTUAL TABLE protocol_fts_fields USING fts5(
    terms, content = '', detail = none,
    tokenize = 'unicode61 remove_diacritics 0 tokenchars ''_''')"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    from protocols import fulltext

    connection = op.get_bind()
    connection.execute(text(CREATE))
    last = 0
    while True:
        rows = connection.execute(text(
            f"SELECT rowid, {', '.join(fulltext.FIELDS)} FROM protocol_fts WHERE rowid > :last ORDER BY rowid"
            " LIMIT 1000"), {"last": last}).all()
        if not rows:
            return
        for row in rows:
            lexemes = {name: (row[index + 1] or "").split() for index, name in enumerate(fulltext.FIELDS)}
            connection.execute(text(fulltext.SQLITE_FIELDS_INSERT),
                               {"seq": row[0], "terms": fulltext.tagged_terms(lexemes)})
        last = int(rows[-1][0])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TABLE protocol_fts_fields")
