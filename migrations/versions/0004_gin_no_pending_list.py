"""Full-text GIN indexes without a pending list (PostgreSQL): search cost must not depend on how
recently rows were written.

With GIN's default ``fastupdate = on``, new entries go to an unsorted pending list that every
index scan reads in full until VACUUM (or an insert that overflows ``gin_pending_list_limit``,
4 MB) merges it. A ranked search asks a per-field index for "versions whose *drug* holds this
word", usually none; after the benchmark's 99,000-row load that scan read the drug index's 257
pending pages (36,603 entries) to return nothing: 4 ms instead of ~0.1 ms, and the broad-search
page cost 2 x its cost at 1,000 protocols (docs/performance.md). The PostgreSQL manual's advice
for this trade ("GIN Tips": if consistent response time matters more than update speed, turn
``fastupdate`` off) fits a catalog that is read on every medication order and written by hand.
Each append then updates the trees directly, and no write pays for merging 4 MB of other writes'
entries while it holds the change-feed lock.

The setting does not flush what is already pending, so the upgrade also merges it
(``gin_clean_pending_list``). Index options only: no rows change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Every GIN index of the schema (0002: the combined vector; 0003: one per field).
GIN_INDEXES = ("ix_protocol_fts_document", "ix_protocol_fts_title", "ix_protocol_fts_drug",
               "ix_protocol_fts_indication", "ix_protocol_fts_summary")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for name in GIN_INDEXES:
        op.execute(f"ALTER INDEX {name} SET (fastupdate = off)")
        op.execute(f"SELECT gin_clean_pending_list('{name}'::regclass)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for name in GIN_INDEXES:
        op.execute(f"ALTER INDEX {name} RESET (fastupdate)")
