"""The changes feed: every version ever recorded, across all protocols, in commit order.

Why ``protocol_versions.seq`` is a safe feed position: every writer takes its ``seq`` from the single
``change_counter`` row with an ``UPDATE ... RETURNING`` and holds that row lock until it commits (on
SQLite, ``BEGIN IMMEDIATE`` serializes writers outright). A writer therefore cannot obtain seq n+1
before the holder of seq n has committed or rolled back (a rollback also undoes the counter, so the
number is reused, not skipped). So when a reader sees seq n, every seq below n is already visible,
and nothing committed later can land below it: a client that stores the last seq it consumed and
asks for ``seq > last`` never misses a version, even when transactions start in one order and
commit in another.

That holds within one database. Another database numbers other versions with the same seqs (a
restore through import, a copy restored from an older backup), so a position is only read together
with the feed it came from (``feed_identity``, migration 0008), and a position beyond the newest
committed change was never issued at all: both are refused (:class:`UnknownFeedPosition`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from protocols.db import Database
from protocols.errors import UnknownFeedPosition
from protocols.models import ChangeCounter, FeedIdentity, ProtocolVersion


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
    #: The feed the positions belong to (``feed_identity``): cursors carry it.
    feed_id: str

    @property
    def last_seq(self) -> int | None:
        return self.items[-1].seq if self.items else None


def list_changes(db: Database, *, after_seq: int = 0, feed_id: str | None = None, limit: int,
                 protocol_id: str | None = None) -> ChangePage:
    """Versions with ``seq > after_seq`` in seq (= commit) order; ``protocol_id`` narrows to one.

    ``feed_id`` is the feed ``after_seq`` came from (None for positions issued before feeds were
    named, and for the start). Raises :class:`UnknownFeedPosition` for another feed's position, or one
    beyond the newest committed change: the committed counter never goes back, so every position
    this feed issued is at most its value."""
    version = ProtocolVersion
    query = (select(version.seq, version.protocol_id, version.version, version.status, version.effective_from,
                    version.recorded_at, version.recorded_by, version.change_note, version.etag)
             .where(version.seq > after_seq))
    if protocol_id is not None:
        query = query.where(version.protocol_id == protocol_id)
    with db.read() as session:
        newest, current_feed = session.execute(select(
            select(ChangeCounter.value).where(ChangeCounter.id == 1).scalar_subquery(),
            select(FeedIdentity.value).where(FeedIdentity.id == 1).scalar_subquery())).one()
        if feed_id is not None and feed_id != current_feed:
            raise UnknownFeedPosition("this position comes from another changes feed (another database, or "
                                      "this one before it was restored)", reason="other_feed")
        if after_seq > newest:
            raise UnknownFeedPosition(f"this position is beyond the newest change ({newest}): this feed never "
                                      "issued it", reason="beyond_newest")
        rows = session.execute(query.order_by(version.seq.asc()).limit(limit + 1)).all()
    return ChangePage([_change(row) for row in rows[:limit]], len(rows) > limit, current_feed)


def _change(row: Any) -> Change:
    return Change(int(row.seq), row.protocol_id, int(row.version), row.status, row.effective_from,
                  row.recorded_at, row.recorded_by, row.change_note, row.etag)


def new_feed_id(db: Database) -> str:
    """Give this database's feed a new random id and return it: every cursor issued before is refused
    from now on. For a database restored from a copy (a file or a ``pg_dump`` backup), which brings
    back the id of the database it copied: positions clients took after the backup number other
    versions here. (An import into a fresh database needs none of this: migration made it a new id.)"""
    value = secrets.token_hex(8)
    with db.write.begin() as session:
        session.execute(update(FeedIdentity).where(FeedIdentity.id == 1).values(value=value))
    return value
