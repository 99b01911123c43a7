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

from alembic import op

from protocols.indexing import rederive_drug_terms

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rederive_drug_terms(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: older code reads normalized terms as it read the case-folded ones."""
