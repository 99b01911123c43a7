"""Re-derive the ``drug`` search terms now that ``drug_term`` folds compatibility forms (NFKC).

A brand stored in fullwidth or mathematical letters, or with a dotless i (U+0131), is the same name to a
reader, and the ``drug`` filter did not find it by its plain spelling (nor the plain name by a
fullwidth query). Both sides now fold to NFKC casefold; versions whose stored drug terms differ from
what ``search_terms`` gives now get theirs replaced (``protocols.indexing.rederive_drug_terms``). On
most databases none do, and nothing is written. The versions themselves are untouched.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 02:20:00
"""

from __future__ import annotations

from alembic import op

from protocols.indexing import rederive_drug_terms

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    rederive_drug_terms(op.get_bind())


def downgrade() -> None:
    """Nothing is undone: the folded terms stay. Older code folds queries to NFC only, so a name whose
    folded term differs from its NFC form (fullwidth letters, ``™``, subscripts) is not found by its
    own spelling under older code until the terms are re-derived its way."""
