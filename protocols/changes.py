"""The changes feed: every version ever recorded, across all protocols, in commit order.

Why ``protocol_versions.seq`` is a safe feed position: every writer takes its ``seq`` from the single
``change_counter`` row with an ``UPDATE ... RETURNING`` and holds that row lock until it commits (on
SQLite, ``BEGIN IMMEDIATE`` serializes writers outright). A writer therefore cannot obtain seq n+1
before the holder of seq n has committed or rolled back (a rollback also undoes the counter, so the
number is reused, not skipped). So when a reader sees seq n, every seq below n is already visible,
and nothing committed later can land below it: a client that stores the last seq it consumed and
asks for ``seq > last`` never misses a version, even when transactions start in one order and
commit in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from protocols.db import Database
from protocols.models import ProtocolVersion


@dataclass(frozen=True)
class Change:
    """One recorded version, as the feed reports it."""

    seq: int
    protocol_id: str
    version: int
    status: str
    effective_from: datetime
    recorded_at: datetime
    recorded_by: str | None
    change_note: str | None
    etag: str

    @property
    def action(self) -> str:
        """``created`` (version 1), ``retired`` (a retirement) or ``revised`` (any other version)."""
        if self.version == 1:
            return "created"
        return "retired" if self.status == "retired" else "revised"


@dataclass(frozen=True)
class ChangePage:
    items: list[Change]
    has_more: bool

    @property
    def last_seq(self) -> int | None:
        return self.items[-1].seq if self.items else None


def list_changes(db: Database, *, after_seq: int = 0, limit: int, protocol_id: str | None = None) -> ChangePage:
    """Versions with ``seq > after_seq`` in seq (= commit) order; ``protocol_id`` narrows to one."""
    version = ProtocolVersion
    query = (select(version.seq, version.protocol_id, version.version, version.status, version.effective_from,
                    version.recorded_at, version.recorded_by, version.change_note, version.etag)
             .where(version.seq > after_seq))
    if protocol_id is not None:
        query = query.where(version.protocol_id == protocol_id)
    with db.read() as session:
        rows = session.execute(query.order_by(version.seq.asc()).limit(limit + 1)).all()
    return ChangePage([_change(row) for row in rows[:limit]], len(rows) > limit)


def _change(row: Any) -> Change:
    return Change(int(row.seq), row.protocol_id, int(row.version), row.status, row.effective_from,
                  row.recorded_at, row.recorded_by, row.change_note, row.etag)
