"""Re-derive the ``drug`` search terms with the normalization the filter now applies to both sides.

``protocols.indexing.drug_term`` folds case, composes Unicode (NFC) and collapses white space. Terms
stored before were only case-folded, so a name stored with a trailing or doubled space, or with
decomposed accents, could not be found by any query. Versions whose stored drug terms differ from
what ``search_terms`` gives now get theirs replaced; on most databases none do, and nothing is written.
The versions themselves are untouched (the terms are derived rows).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 17:45:00
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    stored: dict[tuple[str, int], set[str]] = defaultdict(set)
    for protocol_id, version, value in connection.execute(
            text("SELECT protocol_id, version, value FROM search_terms WHERE kind = 'drug'")):
        stored[(protocol_id, int(version))].add(value)
    last = 0
    while True:  # in batches: a catalog's documents need not fit in memory at once
        rows = connection.execute(text("SELECT seq, protocol_id, version, status, document FROM protocol_versions "
                                       "WHERE seq > :last ORDER BY seq LIMIT 1000"), {"last": last}).all()
        if not rows:
            return
        last = int(rows[-1][0])
        for _, protocol_id, version, status, document in rows:
            _rederive(connection, stored.get((protocol_id, int(version)), set()), protocol_id, int(version),
                      status, document)


def _rederive(connection: Any, stored: set[str], protocol_id: str, version: int, status: str,
              document: str) -> None:
    """Replace one version's drug terms when they differ from what ``search_terms`` gives now."""
    from protocols.indexing import search_terms
    from protocols.record import split_document

    _, content = split_document(json.loads(document))
    wanted = {value[:200] for kind, value in search_terms(content, status) if kind == "drug"}
    if wanted == stored:
        return
    key = {"p": protocol_id, "v": version}
    connection.execute(text("DELETE FROM search_terms WHERE protocol_id = :p AND version = :v "
                            "AND kind = 'drug'"), key)
    for value in sorted(wanted):
        connection.execute(text("INSERT INTO search_terms (protocol_id, version, kind, value) "
                                "VALUES (:p, :v, 'drug', :value)"), {**key, "value": value})


def downgrade() -> None:
    """Nothing to undo: older code reads normalized terms as it read the case-folded ones."""
