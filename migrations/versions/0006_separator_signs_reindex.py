"""Re-index the full text of versions holding the signs the tokenizer now treats as separators.

``protocols.fulltext.tokens`` now splits words at the New Tai Lue vowel signs (U+19B0-U+19C0, U+19C8,
U+19C9) and two Vedic signs (U+1CF2, U+1CF3), as SQLite FTS5's unicode61 tokenizer always did: before,
"a" + U+19B0 + "b" was one lexeme on PostgreSQL and two on SQLite (whose field-tagged terms then lost
their tag on the second), so the databases counted and paged different matches. Lexemes stored before
keep the old split; when any stored document holds one of these signs, the derived full-text rows are
rebuilt from the documents (``fulltext.rebuild``). Otherwise (almost every database) nothing is done.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:20:00
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SIGNS = [chr(code) for code in (*range(0x19B0, 0x19C1), 0x19C8, 0x19C9, 0x1CF2, 0x1CF3)]


def upgrade() -> None:
    from protocols import fulltext

    connection = op.get_bind()
    holds = " OR ".join(f"document LIKE :s{index}" for index in range(len(SIGNS)))
    params = {f"s{index}": f"%{sign}%" for index, sign in enumerate(SIGNS)}
    if connection.execute(text(f"SELECT 1 FROM protocol_versions WHERE {holds} LIMIT 1"), params).first():
        fulltext.rebuild(connection)


def downgrade() -> None:
    """Nothing to undo: the rows rebuilt are what any later rebuild gives."""
