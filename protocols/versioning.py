"""The versioning rules: append a version, resolve the version in effect, page through history.

Every public function here owns its transaction. Writes follow one recipe so that the If-Match
check holds inside the database, not only in Python:

1. read the head row and the newest version, compare ``If-Match`` with the newest ETag;
2. advance the head with ``UPDATE protocols SET latest_version = n+1 WHERE id = :id AND
   latest_version = n`` — on PostgreSQL a concurrent writer blocks on the row lock and then sees
   zero rows (412); on SQLite the transaction began with ``BEGIN IMMEDIATE`` so writers queue;
3. take the next changes-feed sequence from ``change_counter`` (its row lock is held until commit,
   so the sequence follows commit order), insert the version (``UNIQUE(protocol_id, version)``
   is the last line of defence) and rebuild the derived rows, then commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from protocols import fulltext, record
from protocols.db import Database
from protocols.errors import (
    NotInEffect,
    PreconditionFailed,
    PreconditionRequired,
    ProtocolExists,
    ProtocolNotFound,
    ProtocolRetired,
    VersionNotFound,
)
from protocols.indexing import search_terms
from protocols.models import (
    ChangeCounter,
    EffectivePeriod,
    Protocol,
    ProtocolVersion,
    SearchTerm,
)
from protocols.timeutil import parse_rfc3339, utcnow

STATUSES = ("draft", "active", "retired")
IN_EFFECT_STATUSES = ("active", "retired")


@dataclass(frozen=True)
class StoredVersion:
    """One immutable version as stored: the served document, its ETag and the keys around it."""

    protocol_id: str
    version: int
    status: str
    effective_from: datetime
    recorded_at: datetime
    etag: str
    document: str
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.document))


@dataclass(frozen=True)
class VersionPage:
    items: list[StoredVersion]
    has_more: bool


VERSION_COLUMNS = (
    ProtocolVersion.protocol_id,
    ProtocolVersion.version,
    ProtocolVersion.status,
    ProtocolVersion.effective_from,
    ProtocolVersion.recorded_at,
    ProtocolVersion.etag,
    ProtocolVersion.document,
    ProtocolVersion.seq,
)


def stored_version(row: Any) -> StoredVersion:
    """A row selected with ``VERSION_COLUMNS`` as a ``StoredVersion``."""
    return StoredVersion(row.protocol_id, row.version, row.status, row.effective_from, row.recorded_at,
                         row.etag, row.document, row.seq)


# --------------------------------------------------------------------------------------- writes


@dataclass(frozen=True)
class WriteContext:
    """Who is writing and under which request: recorded on the version for the audit trail."""

    actor: str | None = None
    request_id: str | None = None


def create(
    db: Database,
    protocol_id: str,
    content: Mapping[str, Any],
    *,
    status: str = "active",
    effective_from: datetime | None = None,
    change_note: str | None = None,
    ctx: WriteContext = WriteContext(),
    now: datetime | None = None,
) -> StoredVersion:
    """Create version 1 of a new protocol. An id that exists (or ever existed) is a conflict."""
    now = now or utcnow()
    try:
        with db.write.begin() as session:
            exists = session.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).first()
            if exists is not None:
                raise ProtocolExists(f"protocol '{protocol_id}' already exists; ids are never reused",
                                     protocol_id=protocol_id)
            session.add(Protocol(id=protocol_id, created_at=now, latest_version=1))
            session.flush()
            return _append(session, protocol_id, 1, content, status=status,
                           effective_from=effective_from or now, change_note=change_note, ctx=ctx,
                           now=now)
    except IntegrityError as exc:
        # A concurrent creator won the race between our existence check and the insert.
        raise ProtocolExists(f"protocol '{protocol_id}' already exists; ids are never reused",
                             protocol_id=protocol_id) from exc


def revise(
    db: Database,
    protocol_id: str,
    content: Mapping[str, Any],
    *,
    if_match: Sequence[str] | None,
    status: str = "active",
    effective_from: datetime | None = None,
    change_note: str | None = None,
    ctx: WriteContext = WriteContext(),
    now: datetime | None = None,
) -> tuple[StoredVersion, bool]:
    """Append the next version unless its content equals the newest one (then return that).

    Returns ``(version, created)``.
    """
    now = now or utcnow()
    try:
        with db.write.begin() as session:
            newest = _newest_for_write(session, protocol_id, if_match)
            same_content = record.content_hash(content) == _content_hash(session, newest)
            if (same_content and status == newest.status
                    and (effective_from is None or effective_from == newest.effective_from)):
                return newest, False
            _advance_head(session, protocol_id, newest)
            stored = _append(session, protocol_id, newest.version + 1, content, status=status,
                             effective_from=effective_from or now, change_note=change_note, ctx=ctx,
                             now=now)
            return stored, True
    except IntegrityError as exc:
        raise _lost_race(db, protocol_id) from exc


def retire(
    db: Database,
    protocol_id: str,
    *,
    if_match: Sequence[str] | None,
    effective_from: datetime | None = None,
    change_note: str | None = None,
    ctx: WriteContext = WriteContext(),
    now: datetime | None = None,
) -> tuple[StoredVersion, bool]:
    """Retire a protocol by appending a ``retired`` version; nothing is erased.

    The retired version repeats the content of the newest non-draft version (what clinicians last
    saw in effect). Retiring an already retired protocol appends nothing.
    """
    now = now or utcnow()
    try:
        with db.write.begin() as session:
            newest = _newest_for_write(session, protocol_id, if_match)
            if newest.status == "retired" and effective_from is None:
                return newest, False
            basis = session.execute(
                select(*VERSION_COLUMNS)
                .where(ProtocolVersion.protocol_id == protocol_id, ProtocolVersion.status != "draft")
                .order_by(ProtocolVersion.version.desc()).limit(1)
            ).first()
            source = stored_version(basis) if basis is not None else newest
            _, content = record.split_document(source.document)
            _advance_head(session, protocol_id, newest)
            stored = _append(session, protocol_id, newest.version + 1, content, status="retired",
                             effective_from=effective_from or now,
                             change_note=change_note or "Protocol retired", ctx=ctx, now=now)
            return stored, True
    except IntegrityError as exc:
        raise _lost_race(db, protocol_id) from exc


def import_version(session: Session, document: Mapping[str, Any], *, seq_hint: int | None = None) -> None:
    """Restore one exported version exactly (same bytes, same ETag) inside the caller's transaction.

    Used by backup/restore: versions must arrive in order, starting at 1 for each protocol.
    """
    meta, content = record.split_document(document)
    protocol_id = str(meta["id"])
    version = int(meta["version"])
    recorded_at = parse_rfc3339(str(meta["recorded_at"]))
    effective_from = parse_rfc3339(str(meta["effective_from"]))
    head = session.execute(select(Protocol).where(Protocol.id == protocol_id)).scalar_one_or_none()
    if version == 1:
        if head is not None:
            raise ProtocolExists(f"protocol '{protocol_id}' already exists", protocol_id=protocol_id)
        session.add(Protocol(id=protocol_id, created_at=recorded_at, latest_version=1))
        session.flush()
    else:
        if head is None or head.latest_version != version - 1:
            raise VersionNotFound(f"protocol '{protocol_id}' version {version} arrives out of order")
        _advance_head(session, protocol_id, _newest(session, protocol_id))
    _append(session, protocol_id, version, content, status=str(meta["status"]),
            effective_from=effective_from, change_note=meta.get("change_note"),
            ctx=WriteContext(meta.get("recorded_by"), meta.get("request_id")), now=recorded_at)


def _newest(session: Session, protocol_id: str) -> StoredVersion:
    row = session.execute(
        select(*VERSION_COLUMNS)
        .join(Protocol, and_(Protocol.id == ProtocolVersion.protocol_id,
                             Protocol.latest_version == ProtocolVersion.version))
        .where(Protocol.id == protocol_id)
    ).first()
    if row is None:
        raise ProtocolNotFound(f"protocol '{protocol_id}' does not exist", protocol_id=protocol_id)
    return stored_version(row)


def _newest_for_write(session: Session, protocol_id: str, if_match: Sequence[str] | None) -> StoredVersion:
    newest = _newest(session, protocol_id)
    check_if_match(newest, if_match)
    return newest


def check_if_match(newest: StoredVersion, if_match: Sequence[str] | None) -> None:
    if not if_match:
        raise PreconditionRequired(
            "this write requires an If-Match header with the ETag of the newest version",
            current_version=newest.version, current_etag=newest.etag)
    if "*" in if_match:
        raise PreconditionRequired(
            "If-Match: * is not accepted; send the ETag of the newest version",
            current_version=newest.version, current_etag=newest.etag)
    if newest.etag not in if_match:
        raise PreconditionFailed(
            f"If-Match does not name the newest version; the newest is version {newest.version}",
            current_version=newest.version, current_etag=newest.etag)


def _content_hash(session: Session, version: StoredVersion) -> str:
    return str(session.execute(
        select(ProtocolVersion.content_hash).where(ProtocolVersion.seq == version.seq)
    ).scalar_one())


def _advance_head(session: Session, protocol_id: str, newest: StoredVersion) -> None:
    result = session.execute(
        update(Protocol)
        .where(Protocol.id == protocol_id, Protocol.latest_version == newest.version)
        .values(latest_version=newest.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        # Another writer appended after we read the newest version: our If-Match is stale.
        raise PreconditionFailed(
            f"protocol '{protocol_id}' was changed concurrently; fetch the newest version and retry",
            current_version=None, current_etag=None)


def _lost_race(db: Database, protocol_id: str) -> PreconditionFailed:
    try:
        newest = latest(db, protocol_id)
        return PreconditionFailed(
            f"protocol '{protocol_id}' was changed concurrently; the newest is version {newest.version}",
            current_version=newest.version, current_etag=newest.etag)
    except ProtocolNotFound:
        return PreconditionFailed(f"protocol '{protocol_id}' was changed concurrently")


def _next_seq(session: Session) -> int:
    value = session.execute(
        update(ChangeCounter).where(ChangeCounter.id == 1).values(value=ChangeCounter.value + 1)
        .returning(ChangeCounter.value)
    ).scalar_one()
    return int(value)


def _append(
    session: Session,
    protocol_id: str,
    version: int,
    content: Mapping[str, Any],
    *,
    status: str,
    effective_from: datetime,
    change_note: str | None,
    ctx: WriteContext,
    now: datetime,
) -> StoredVersion:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    meta = {
        "id": protocol_id,
        "version": version,
        "status": status,
        "effective_from": effective_from,
        "recorded_at": now,
        "recorded_by": ctx.actor,
        "request_id": ctx.request_id,
        "change_note": change_note,
    }
    document = record.build_document(meta, content)
    etag = record.make_etag(version, document)
    seq = _next_seq(session)
    session.execute(insert(ProtocolVersion).values(
        seq=seq, protocol_id=protocol_id, version=version, status=status, effective_from=effective_from,
        recorded_at=now, recorded_by=ctx.actor, request_id=ctx.request_id, change_note=change_note,
        content_hash=record.content_hash(content), etag=etag, document=document,
    ))
    terms = sorted(set(search_terms(record.canonical_content(content), status)))
    if terms:
        session.execute(insert(SearchTerm), [
            {"protocol_id": protocol_id, "version": version, "kind": kind, "value": value[:200]}
            for kind, value in terms
        ])
    fulltext.index_version(session, seq, record.canonical_content(content))
    _rebuild_periods(session, protocol_id)
    return StoredVersion(protocol_id, version, status, effective_from, now, etag, document, seq)


def _rebuild_periods(session: Session, protocol_id: str) -> None:
    """Recompute when each active/retired version of a protocol is the one in effect.

    The latest ``effective_from`` wins; ties go to the higher version, so the lower one's interval
    is empty and is not stored.
    """
    protocol_seq = session.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).scalar_one()
    rows = session.execute(
        select(ProtocolVersion.version, ProtocolVersion.status, ProtocolVersion.effective_from)
        .where(ProtocolVersion.protocol_id == protocol_id,
               ProtocolVersion.status.in_(IN_EFFECT_STATUSES))
        .order_by(ProtocolVersion.effective_from, ProtocolVersion.version)
    ).all()
    session.execute(delete(EffectivePeriod).where(EffectivePeriod.protocol_id == protocol_id))
    periods = []
    for index, row in enumerate(rows):
        until = rows[index + 1].effective_from if index + 1 < len(rows) else None
        if until is not None and until <= row.effective_from:
            continue
        periods.append({"protocol_id": protocol_id, "version": row.version, "protocol_seq": protocol_seq,
                        "status": row.status, "valid_from": row.effective_from, "valid_until": until})
    if periods:
        session.execute(insert(EffectivePeriod), periods)


# ---------------------------------------------------------------------------------------- reads


#: ``effective()`` is the hot path of every medication order. It runs one fixed SELECT on a pooled
#: DBAPI connection instead of an ORM Session: no Session/Connection set-up, no statement building or
#: cache-key lookup, no explicit BEGIN/ROLLBACK (a single SELECT is atomic on its own; on PostgreSQL
#: it runs in autocommit, saving two round trips). Column types still go through SQLAlchemy's own
#: bind/result processors, and driver errors are wrapped exactly as SQLAlchemy wraps them, so callers
#: see the same values and exceptions as before. Measured in docs/performance.md (bench/).
_EFFECTIVE_SQL = (
    "SELECT protocol_id, version, status, effective_from, recorded_at, etag, document, seq"
    " FROM protocol_versions WHERE protocol_id = {mark} AND status IN ({statuses})"
    " AND effective_from <= {mark} ORDER BY effective_from DESC, version DESC LIMIT 1"
)


@dataclass(frozen=True)
class _ReadPlan:
    sql: str
    bind_time: Any
    read_time: Any
    autocommit: bool


_PLANS: dict[Any, _ReadPlan] = {}


def _identity(value: Any) -> Any:
    return value


def _plan(dialect: Any) -> _ReadPlan:
    plan = _PLANS.get(dialect)
    if plan is None:
        time_type = ProtocolVersion.__table__.c.effective_from.type.dialect_impl(dialect)
        statuses = ", ".join(f"'{s}'" for s in IN_EFFECT_STATUSES)  # constants, not input
        plan = _ReadPlan(
            sql=_EFFECTIVE_SQL.format(mark="?" if dialect.paramstyle == "qmark" else "%s", statuses=statuses),
            bind_time=time_type.bind_processor(dialect) or _identity,
            read_time=time_type.result_processor(dialect, None) or _identity,
            autocommit=dialect.name == "postgresql")
        _PLANS[dialect] = plan
    return plan


def _effective_row(db: Database, protocol_id: str, at: datetime) -> StoredVersion | None:
    dialect = db.engine.dialect
    plan = _plan(dialect)
    params = (protocol_id, plan.bind_time(at))
    conn = db.engine.raw_connection()
    try:
        raw = conn.dbapi_connection
        try:
            if plan.autocommit:
                raw.autocommit = True  # type: ignore[union-attr]
            cursor = conn.cursor()
            try:
                cursor.execute(plan.sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
                if plan.autocommit:
                    raw.autocommit = False  # type: ignore[union-attr]
        except dialect.loaded_dbapi.Error as exc:
            disconnected = dialect.is_disconnect(exc, raw, None)
            if disconnected:
                conn.invalidate(exc)
            raise DBAPIError.instance(plan.sql, params, exc, dialect.loaded_dbapi.Error,
                                      connection_invalidated=disconnected, dialect=dialect) from exc
    finally:
        conn.close()
    if row is None:
        return None
    return StoredVersion(row[0], row[1], row[2], plan.read_time(row[3]), plan.read_time(row[4]), row[5],
                         row[6], row[7])


def effective(db: Database, protocol_id: str, at: datetime | None = None) -> StoredVersion:
    """The version in effect at ``at`` (default now); raises when none is or it is a retirement."""
    at = at or utcnow()
    found = _effective_row(db, protocol_id, at)
    if found is None:
        with db.read() as session:
            _require_protocol(session, protocol_id)
        raise NotInEffect(f"protocol '{protocol_id}' has no version in effect at the requested time",
                          protocol_id=protocol_id)
    stored = found
    if stored.status == "retired":
        raise ProtocolRetired(f"protocol '{protocol_id}' was retired in version {stored.version}",
                              version=stored)
    return stored


#: Versions are stored as 32-bit integers; a larger number in a URL cannot name one (and would make the
#: database driver overflow: a 500 found by contract fuzzing).
MAX_VERSION = 2**31 - 1


def get_version(db: Database, protocol_id: str, version: int) -> StoredVersion:
    with db.read() as session:
        row = None
        if 1 <= version <= MAX_VERSION:
            row = session.execute(
                select(*VERSION_COLUMNS)
                .where(ProtocolVersion.protocol_id == protocol_id, ProtocolVersion.version == version)
            ).first()
        if row is None:
            _require_protocol(session, protocol_id)
            raise VersionNotFound(f"protocol '{protocol_id}' has no version {version}",
                                  protocol_id=protocol_id)
    return stored_version(row)


def latest(db: Database, protocol_id: str) -> StoredVersion:
    with db.read() as session:
        return _newest(session, protocol_id)


def keyset_descending(query: Any, column: Any, after: int | None, before: int | None) -> Any:
    """Order by ``column`` descending, continuing after ``after`` (next page) or, reading backwards,
    before ``before`` (previous page; the caller reverses those rows)."""
    if before is not None:
        return query.where(column > before).order_by(column.asc())
    if after is not None:
        query = query.where(column < after)
    return query.order_by(column.desc())


def list_versions(
    db: Database,
    protocol_id: str,
    *,
    limit: int,
    after_version: int | None = None,
    before_version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> VersionPage:
    """Versions newest first. ``after_version`` pages towards older versions, ``before_version``
    towards newer ones; ``since``/``until`` bound ``recorded_at`` (inclusive, exclusive)."""
    with db.read() as session:
        _require_protocol(session, protocol_id)
        query = select(*VERSION_COLUMNS).where(ProtocolVersion.protocol_id == protocol_id)
        if since is not None:
            query = query.where(ProtocolVersion.recorded_at >= since)
        if until is not None:
            query = query.where(ProtocolVersion.recorded_at < until)
        query = keyset_descending(query, ProtocolVersion.version, after_version, before_version)
        rows = session.execute(query.limit(limit + 1)).all()
    items = [stored_version(r) for r in rows[:limit]]
    if before_version is not None:
        items.reverse()
    return VersionPage(items, len(rows) > limit)


@dataclass(frozen=True)
class EffectiveRow:
    protocol_seq: int
    version: StoredVersion


@dataclass(frozen=True)
class EffectivePage:
    items: list[EffectiveRow]
    has_more: bool


def list_effective(
    db: Database,
    *,
    at: datetime | None = None,
    limit: int,
    after_seq: int | None = None,
    before_seq: int | None = None,
    statuses: Sequence[str] = ("active",),
    extra_filters: Sequence[Any] = (),
) -> EffectivePage:
    """Protocols whose version in effect at ``at`` has one of ``statuses``, newest protocol first.

    Keyset pagination on the protocol's creation sequence: immutable, so a write between two
    page fetches neither repeats nor skips a protocol.
    """
    at = at or utcnow()
    query = (
        select(EffectivePeriod.protocol_seq, *VERSION_COLUMNS)
        .join(ProtocolVersion, and_(ProtocolVersion.protocol_id == EffectivePeriod.protocol_id,
                                    ProtocolVersion.version == EffectivePeriod.version))
        .where(EffectivePeriod.valid_from <= at,
               or_(EffectivePeriod.valid_until.is_(None), EffectivePeriod.valid_until > at),
               EffectivePeriod.status.in_(list(statuses)), *extra_filters)
    )
    query = keyset_descending(query, EffectivePeriod.protocol_seq, after_seq, before_seq)
    with db.read() as session:
        rows = session.execute(query.limit(limit + 1)).all()
    items = [EffectiveRow(r.protocol_seq, stored_version(r)) for r in rows[:limit]]
    if before_seq is not None:
        items.reverse()
    return EffectivePage(items, len(rows) > limit)


def _require_protocol(session: Session, protocol_id: str) -> None:
    if session.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).first() is None:
        raise ProtocolNotFound(f"protocol '{protocol_id}' does not exist", protocol_id=protocol_id)
