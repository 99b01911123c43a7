"""The versioning rules: append a version, resolve the version in effect, page through history.

Every public function here owns its transaction. Writes follow one recipe so that the If-Match
check holds inside the database, not only in Python:

1. read the head row, the newest version and its content hash (one SELECT), compare ``If-Match``
   with the newest ETag; build the document, ETag, search terms, full-text lexemes and audit event;
2. advance the head with ``UPDATE protocols SET latest_version = n+1 WHERE id = :id AND
   latest_version = n`` (zero rows: a concurrent writer committed first, 412);
3. take the next changes-feed sequence from ``change_counter``: its row lock is held until commit (so
   the sequence follows commit order) and serializes writers from here to their commit;
4. insert the version (``UNIQUE(protocol_id, version)`` is the last line of defence, also a 412), its
   derived rows (full text, search terms, effective periods) and, for HTTP writes, the audit event.

On PostgreSQL steps 2-4 are one statement of data-modifying CTEs in which every row depends on the
guarded head, so a stale head writes nothing; it takes the counter's row lock (step 3's) before it
advances the head, the order in which every write transaction takes them (:func:`hold_feed_lock`
first), or a revision and a retirement of one protocol deadlock. A revision sends that statement on the thread's
autocommit connection, where it is a transaction by itself (2 round trips per revision); creates,
retirements and imports run it inside an explicit transaction. On SQLite the transaction begins with
``BEGIN IMMEDIATE``, so writers queue before step 1, and the steps are plain statements.

The recording time (``recorded_at``: when a version is published, and what ``updated_since`` and FHIR
polls compare) is read once the write is the only writer: after ``BEGIN IMMEDIATE`` on SQLite, after
taking the change counter's lock first in PostgreSQL's explicit transactions (:func:`hold_feed_lock`).
A PostgreSQL revision reads it just before its one statement, which gives up after waiting
:data:`QUEUED_LIMIT_MS` for other writers; the revision is then made in a transaction that queues first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, TextClause, and_, bindparam, delete, insert, or_, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import TextualSelect

from protocols import audit as audit_events
from protocols import fulltext, record
from protocols.audit import WriteContext
from protocols.db import Database
from protocols.errors import (
    ClockBehind,
    DomainError,
    InvalidRecord,
    NothingPublished,
    NotInEffect,
    PreconditionFailed,
    PreconditionRequired,
    ProtocolExists,
    ProtocolNotFound,
    ProtocolRetired,
    RetirementUndone,
    VersionNotFound,
)
from protocols.indexing import search_terms
from protocols.models import (
    EffectivePeriod,
    Protocol,
    ProtocolVersion,
)
from protocols.timeutil import format_rfc3339, parse_rfc3339, utcnow

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
#
# The write path is the other hot path (every curator edit, every catalog load), so it is written for
# round trips: one SELECT reads the head, the newest version and its content hash; Python then builds
# everything the version needs (document, ETag, hash, search terms, full-text lexemes, audit event)
# *before* the change-counter lock is taken; then the counter, then the rows. On PostgreSQL all rows
# (guarded head UPDATE, counter, version, full text, search terms, effective periods, audit event) go
# in one statement of data-modifying CTEs, so the counter lock is held for part of that one statement
# and its commit.
# On SQLite (in-process, no round trips; BEGIN IMMEDIATE serializes writers anyway) they are plain
# statements. Both run Core statements on a Connection: no ORM Session or flush on this path.


_TIME = DateTime()
_TIME_PARAMS = ("effective_from", "recorded_at", "created_at", "audit_occurred_at")


def _typed(sql: str) -> TextClause:
    """A textual statement whose datetime parameters go through the column type's bind processor
    (SQLite stores them as fixed-format strings: the same bytes the ORM writes and compares)."""
    statement = text(sql)
    names = [name for name in _TIME_PARAMS if f":{name}" in sql]
    return statement.bindparams(*(bindparam(name, type_=_TIME) for name in names)) if names else statement


_NEWEST_FOR_WRITE = (
    "SELECT v.protocol_id, v.version, v.status, v.effective_from, v.recorded_at, v.etag, v.document, v.seq,"
    " v.content_hash, p.seq AS protocol_seq{basis}"
    " FROM protocols p JOIN protocol_versions v ON v.protocol_id = p.id AND v.version = p.latest_version"
    " WHERE p.id = :protocol_id"
)
#: What a retirement at ``:effective_from`` needs besides the head, in the same SELECT: the content it
#: repeats (``_RETIRED_CONTENT``), the status in effect then (latest effective_from <= T, ties -> higher
#: version: whether the protocol is retired already), and the first active version taking effect later
#: that wins its instant (no later version of the same instant), which would undo the retirement.
_IN_EFFECT_AT = ("FROM protocol_versions b WHERE b.protocol_id = p.id AND b.status <> 'draft'"
                 " AND b.effective_from <= :effective_from ORDER BY b.effective_from DESC, b.version DESC LIMIT 1")
_UNDOING = ("FROM protocol_versions u WHERE u.protocol_id = p.id AND u.status = 'active'"
            " AND u.effective_from > :effective_from AND NOT EXISTS (SELECT 1 FROM protocol_versions w"
            " WHERE w.protocol_id = u.protocol_id AND w.status <> 'draft' AND w.effective_from = u.effective_from"
            " AND w.version > u.version) ORDER BY u.effective_from LIMIT 1")
#: The content a retirement at T repeats (``{column}`` of it): the version in effect just *before* T, or
#: the newest published one when none was. Not "at T": a version starting at T itself loses that
#: instant to the retirement (the higher version) and is never in effect. Cancelling a scheduled
#: version by retiring at its start recorded the cancelled content (found in review). One definition
#: for DELETE (``_BASIS``) and for PUT status=retired (``_RETIRING_SQL``).
_RETIRED_CONTENT = (
    "COALESCE((SELECT b.{column} FROM protocol_versions b WHERE b.protocol_id = p.id AND b.status <> 'draft'"
    " AND b.effective_from < :effective_from ORDER BY b.effective_from DESC, b.version DESC LIMIT 1),"
    " (SELECT n.{column} FROM protocol_versions n WHERE n.protocol_id = p.id AND n.status <> 'draft'"
    " ORDER BY n.version DESC LIMIT 1))")
_UNDONE_BY = (f"(SELECT u.version {_UNDOING}) AS undoing_version,"
              f" (SELECT u.effective_from {_UNDOING}) AS undoing_effective_from")
_BASIS = (f", {_RETIRED_CONTENT.format(column='document')} AS basis_document,"
          f" {_RETIRED_CONTENT.format(column='content_hash')} AS basis_hash,"
          f" (SELECT b.status {_IN_EFFECT_AT}) AS status_then, {_UNDONE_BY}")
_NEWEST_SQL = text(_NEWEST_FOR_WRITE.format(basis="")).columns(effective_from=_TIME, recorded_at=_TIME)
_NEWEST_WITH_BASIS_SQL = _typed(_NEWEST_FOR_WRITE.format(basis=_BASIS)).columns(
    effective_from=_TIME, recorded_at=_TIME, undoing_effective_from=_TIME)

_INSERT_PROTOCOL = _typed("INSERT INTO protocols (id, created_at, latest_version) VALUES (:protocol_id, :created_at, 1)"
                          " ON CONFLICT (id) DO NOTHING RETURNING seq")
_NEXT_SEQ = text("UPDATE change_counter SET value = value + 1 WHERE id = 1 RETURNING value")
_LOCK_COUNTER = text("SELECT 1 FROM change_counter WHERE id = 1 FOR UPDATE")

_ADVANCE_HEAD = ("UPDATE protocols SET latest_version = :version"
                 " WHERE id = :protocol_id AND latest_version = :expected")
_INSERT_VERSION = (
    "INSERT INTO protocol_versions (seq, protocol_id, version, status, effective_from, recorded_at, recorded_by,"
    " request_id, change_note, content_hash, etag, document) VALUES (:seq, :protocol_id, :version, :status,"
    " :effective_from, :recorded_at, :recorded_by, :request_id, :change_note, :content_hash, :etag, :document)"
)
# Effective periods, incrementally (see reference_periods for the definition they must equal): the new
# version N (the highest version) starts at E. The period in effect just before E now ends at E; the
# period that starts exactly at E loses the tie to N and disappears; N runs until the next period starts.
# The three statements touch disjoint rows (valid_from < E, = E, new key), so on PostgreSQL they can
# share one statement.
_TRUNCATE_PERIOD = ("UPDATE effective_periods SET valid_until = :effective_from WHERE protocol_id = :protocol_id"
                    " AND valid_from < :effective_from AND (valid_until IS NULL OR valid_until > :effective_from)")
_DROP_PERIOD = "DELETE FROM effective_periods WHERE protocol_id = :protocol_id AND valid_from = :effective_from"
_INSERT_PERIOD = (
    "INSERT INTO effective_periods (protocol_id, version, protocol_seq, status, valid_from, valid_until)"
    " VALUES (:protocol_id, :version, :protocol_seq, :status, :effective_from,"
    " (SELECT min(valid_from) FROM effective_periods WHERE protocol_id = :protocol_id"
    " AND valid_from > :effective_from))"
)
_INSERT_AUDIT = (
    "INSERT INTO audit_events (occurred_at, actor, action, target, outcome, status_code, request_id, detail)"
    " VALUES (:audit_occurred_at, :audit_actor, :audit_action, :audit_target, :audit_outcome, :audit_status_code,"
    " :audit_request_id, :audit_detail)"
)

# SQLite: one statement each.
_SQLITE_ADVANCE_HEAD = text(_ADVANCE_HEAD)
_SQLITE_INSERT_VERSION = _typed(_INSERT_VERSION)
_SQLITE_INSERT_TERM = text("INSERT INTO search_terms (protocol_id, version, kind, value)"
                           " VALUES (:protocol_id, :version, :kind, :value)")
_SQLITE_PERIODS = (_typed(_TRUNCATE_PERIOD), _typed(_DROP_PERIOD), _typed(_INSERT_PERIOD))
_SQLITE_INSERT_AUDIT = _typed(_INSERT_AUDIT)

# PostgreSQL: parameters appear in several sub-statements, so each occurrence outside a VALUES list
# names its type (otherwise the server could deduce different types for one parameter). The full-text
# row is fulltext's own, with its parameters prefixed, so it travels in the same statement.
_PG_FTS = fulltext.postgres_insert(prefix="fts_")
# The search terms arrive as one JSON array of [kind, value] pairs, as the lexemes do (see
# fulltext.postgres_lexemes for why not text arrays).
_PG_TERMS = ("INSERT INTO search_terms (protocol_id, version, kind, value)"
             " SELECT CAST(:protocol_id AS varchar), CAST(:version AS integer), t.term ->> 0, t.term ->> 1"
             " FROM json_array_elements(CAST(:terms AS json)) AS t(term)")
_PG_CASTS = {":protocol_id": "CAST(:protocol_id AS varchar)", ":version": "CAST(:version AS integer)",
             ":effective_from": "CAST(:effective_from AS timestamp)", ":expected": "CAST(:expected AS integer)",
             ":protocol_seq": "CAST(:protocol_seq AS bigint)", ":status": "CAST(:status AS varchar)",
             ":expected_etag": "CAST(:expected_etag AS varchar)"}
#: (guarded, in_effect, audited, verified): the variants of the append statement (_pg_append_statement).
_PlanKey = tuple[bool, bool, bool, bool]
_PG_PLANS: dict[_PlanKey, TextClause] = {}


def _pg_cast(sql: str) -> str:
    for name, cast in _PG_CASTS.items():
        sql = re.sub(re.escape(name) + r"\b", cast, sql)
    return sql


_SEQ_PARAM = re.compile(r":seq\b")


def _from_counter(sql: str) -> str:
    """``INSERT ... VALUES (...)`` as ``INSERT ... SELECT ... FROM counter``; ``UPDATE``/``DELETE``
    restricted to ``EXISTS (SELECT 1 FROM counter)``. ``counter`` holds one row (the new feed seq)
    exactly when the append goes ahead, so a failed head guard writes nothing at all."""
    if sql.startswith("INSERT"):
        head, _, values = sql.partition(" VALUES (")
        if head.endswith(")") and values.endswith(")"):
            return f"{head} SELECT {_SEQ_PARAM.sub('counter.value', values[:-1])} FROM counter"
        return f"{sql}, counter"  # INSERT ... SELECT ... FROM <source>: join the one-row counter
    return f"{sql} AND EXISTS (SELECT 1 FROM counter)"


#: A guarded append's head check, made exact: the head is still that very version (the protocol's
#: ``seq`` and the version's ETag, not only its number). A revision sends it, so that an append
#: built on a guess (protocols.db.RecentHeads) writes only where a head read would have let it.
_PG_VERIFY_HEAD = (" AND seq = :protocol_seq AND EXISTS (SELECT 1 FROM protocol_versions AS v"
                   " WHERE v.protocol_id = :protocol_id AND v.version = :expected AND v.etag = :expected_etag)")


#: How long a one-statement revision may wait for the writers ahead of it. Its ``recorded_at`` was read
#: before it was sent, and is when the version is published (FHIR ``_since`` / ``_lastUpdated``) and when
#: a version it cancels stops having taken effect: a revision that queued for seconds behind a long write
#: transaction committed a version recorded seconds in the past, which pollers that had read past that
#: instant never saw, and a cancelling one withdrew a scheduled version already served as published
#: (found by a probe). Past this bound the statement fails (see :data:`_PG_QUEUED_GUARD`) and the
#: revision is made again in a transaction that queues first and reads the clock after
#: (:func:`revise`). Measured on the database's clock alone (from the statement's arrival), so clock
#: skew between hosts cannot trip it; normal queueing is milliseconds (the benchmark's p99 is ~25 ms).
QUEUED_LIMIT_MS = 250
#: The counter's new value, or a division by zero (SQLSTATE 22012) once the statement has waited past
#: :data:`QUEUED_LIMIT_MS`: evaluated in ``RETURNING``, after the counter's row lock is granted, and
#: before any row that carries the seq is written, so the failed statement (a transaction of its own)
#: writes nothing.
_PG_QUEUED_GUARD = (f"value / CASE WHEN clock_timestamp() - statement_timestamp() > interval '{QUEUED_LIMIT_MS}"
                    " milliseconds' THEN 0 ELSE 1 END")
_DIVISION_BY_ZERO = "22012"


class _QueuedTooLong(Exception):
    """A one-statement revision waited past :data:`QUEUED_LIMIT_MS` and wrote nothing."""


def _pg_append_statement(guarded: bool, in_effect: bool, audited: bool, verified: bool = False) -> TextClause:
    """One statement writing every row of an append, the feed sequence included; returns the new seq,
    or no row when the guarded head did not advance (then nothing was written).

    Order inside the statement: the change counter's row lock (the writers' lock, held until commit,
    which keeps the feed in commit order, protocols.changes), then the guarded head ``UPDATE`` (row
    lock on the protocol), then the counter's increment and the rows that carry the seq. Locks are
    taken in the order of every write transaction (:func:`hold_feed_lock`, then the head), or a
    revision and a retirement of one protocol deadlock. The main query reads ``counter``, which reads ``head``, so
    PostgreSQL runs those two first; the remaining sub-statements run to completion after it.
    ``verified`` adds :data:`_PG_VERIFY_HEAD` to the guard (parameter ``expected_etag``)."""
    key = (guarded, in_effect, audited, verified)
    statement = _PG_PLANS.get(key)
    if statement is None:
        parts = []
        if guarded:
            # The writers' lock (the counter's row) before the head's row, as every write transaction
            # takes them (hold_feed_lock): the head is updated only once it is held. Head first, a
            # revision racing a retirement of the same protocol deadlocked (probe). The lock is asked
            # for only while the head is the expected one as this statement's snapshot sees it: a head
            # that has moved (a stale guess, protocols.db.RecentHeads) fails at once instead of queueing
            # behind every writer first (review); one that moves during the wait fails the UPDATE's
            # own recheck of the locked row, as before.
            advance = _ADVANCE_HEAD + (_PG_VERIFY_HEAD if verified else "") + " AND EXISTS (SELECT 1 FROM writers)"
            parts.append(_pg_cast("writers AS (SELECT 1 FROM change_counter WHERE id = 1 AND EXISTS (SELECT 1 FROM"
                                  " protocols WHERE id = :protocol_id AND latest_version = :expected)"
                                  " FOR UPDATE OF change_counter)"))
            parts.append(f"head AS ({_pg_cast(advance)} RETURNING 1)")
        parts.append("counter AS (UPDATE change_counter SET value = value + 1 WHERE id = 1"
                     + (" AND EXISTS (SELECT 1 FROM head)" if guarded else "")
                     + (f" RETURNING {_PG_QUEUED_GUARD} AS value)" if verified else " RETURNING value)"))
        parts += [f"version AS ({_from_counter(_pg_cast(_INSERT_VERSION))})",
                  f"fts AS ({_from_counter(_PG_FTS)})", f"terms AS ({_from_counter(_PG_TERMS)})"]
        if in_effect:
            parts += [f"truncated AS ({_from_counter(_pg_cast(_TRUNCATE_PERIOD))})",
                      f"dropped AS ({_from_counter(_pg_cast(_DROP_PERIOD))})",
                      f"period AS ({_from_counter(_pg_cast(_INSERT_PERIOD))})"]
        if audited:
            parts.append(f"audit AS ({_from_counter(_INSERT_AUDIT)})")
        statement = _typed("WITH " + ", ".join(parts) + " SELECT value FROM counter")
        _PG_PLANS[key] = statement
    return statement


@contextmanager
def _write_transaction(db: Database) -> Iterator[Connection]:
    """A write transaction on a pooled connection (``BEGIN IMMEDIATE`` on SQLite, see protocols.db)."""
    with db.engine.connect() as conn:
        conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn


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
    """Create version 1 of a new protocol. An id that exists (or ever existed) is a conflict.

    Recorded (``now`` unless given) once the transaction holds the writers' lock (:func:`hold_feed_lock`)."""
    if status == "retired":
        # Born retired, it would answer 410 with content never in effect, and escape retire()'s rules.
        raise InvalidRecord("a protocol cannot start retired: create it, then retire it with DELETE",
                            errors={"status": ["a new protocol cannot be 'retired'"]})
    exists = ProtocolExists(f"protocol '{protocol_id}' already exists; ids are never reused",
                            protocol_id=protocol_id)
    canonical = record.canonical_content(content)  # validation errors before any lock is taken
    content_hash = record.canonical_hash(canonical)
    try:
        with _write_transaction(db) as conn:
            hold_feed_lock(conn)
            at = now or utcnow()
            protocol_seq = _insert_protocol(conn, protocol_id, at)
            if protocol_seq is None:  # the id exists (ON CONFLICT DO NOTHING inserted nothing)
                raise exists
            prepared = _prepare(protocol_id, 1, content, status=status, effective_from=effective_from or at,
                                change_note=change_note, ctx=ctx, now=at, canonical=canonical,
                                content_hash=content_hash)
            return _write(conn, prepared, protocol_seq=protocol_seq, expected=None)
    except IntegrityError as exc:
        # A concurrent creator won the race between our existence check and the insert.
        raise exists from exc


def revise(
    db: Database,
    protocol_id: str,
    content: Mapping[str, Any],
    *,
    if_match: Sequence[str] | None,
    if_none_match: Sequence[str] | None = None,
    status: str = "active",
    effective_from: datetime | None = None,
    change_note: str | None = None,
    ctx: WriteContext = WriteContext(),
    now: datetime | None = None,
) -> tuple[StoredVersion, bool]:
    """Append the next version unless its content equals the newest one (then return that).

    Returns ``(version, created)``.
    """
    given_now = now
    canonical = record.canonical_content(content)
    content_hash = record.canonical_hash(canonical)

    def next_version(head: _Head, fetch: _Fetch) -> _Prepared | None:
        """The version to append on top of ``head``; None when it would repeat the newest one.
        Recorded no earlier than the version it follows: instances' clocks differ by milliseconds,
        and history (and import, which checks it) reads versions in recording order.

        "Now" is read here, with the head read (on SQLite inside ``BEGIN IMMEDIATE``, so after any
        wait for the write lock), not when the request arrived: a revision that queued behind
        another writer was recorded, and published over FHIR, seconds before it committed, and
        pollers that had read past that instant never saw it (found by a probe)."""
        now = given_now or utcnow()
        if given_now is None:
            check_clock(head.version, now)
        if _unchanged(head, content_hash, status, effective_from, now, fetch):
            return None
        at = max(now, head.version.recorded_at)
        return _prepare(protocol_id, head.version.version + 1, content, status=status,
                        effective_from=effective_from or at, change_note=change_note, ctx=ctx, now=at,
                        canonical=canonical, content_hash=content_hash)

    try:
        if db.engine.dialect.name == "postgresql":
            try:
                return _revise_in_one_statement(db, protocol_id, if_match, if_none_match, next_version)
            except _QueuedTooLong:
                pass  # nothing was written: queue first, then read the clock (below)
        with _write_transaction(db) as conn:
            hold_feed_lock(conn)
            head = _read_head(conn, protocol_id)

            def fetch(name: str, params: dict[str, Any]) -> Any:
                return conn.execute(_NAMED_READS[name], params).first()

            prepared = next_version(head, fetch)
            check_if_match(head.version, if_match, already_applied=prepared is None, if_none_match=if_none_match)
            if prepared is None:
                return head.version, False
            _check_retirement(prepared, fetch)
            return _write(conn, prepared, protocol_seq=head.protocol_seq, expected=head.version.version), True
    except IntegrityError as exc:
        raise _lost_race(db, protocol_id) from exc


#: Runs one of :data:`_NAMED_READS` by name: on the write transaction (SQLite) or on the thread's
#: autocommit connection (PostgreSQL).
_Fetch = Callable[[str, dict[str, Any]], Any]


def _unchanged(head: _Head, content_hash: str, status: str, effective_from: datetime | None,
               now: datetime, fetch: _Fetch) -> bool:
    """A write that would repeat the newest version (same content, status and start) appends nothing.

    Without ``effective_from`` a write means "from now": it repeats a newest version already in effect
    by now (the retry of a write whose answer was lost), but not one scheduled for later. With the newest
    scheduled for 2030, a PUT of its content without a date answered 200 and nothing took effect now
    (found by an adversarial probe)."""
    newest = head.version
    # A dateless write stores effective_from = recorded_at: a retry that started before the copy that
    # won (its ``now`` earlier than the winner's) still repeats it (found in review: 412 otherwise).
    if content_hash != head.content_hash or status != newest.status:
        return False
    if effective_from is not None:
        return effective_from == newest.effective_from
    until = max(now, newest.recorded_at)
    if newest.effective_from > until:
        return False
    # "From now" repeats the newest only if the newest is what is in effect now: a back-dated newest
    # can be outranked by an older version starting between its start and now. Then the write answered
    # 200 and the older version stayed in effect (found by an adversarial probe). Drafts are never in
    # effect; a dateless draft repeating the newest draft is a retry.
    return newest.status == "draft" or fetch("outranked", {
        "protocol_id": newest.protocol_id, "effective_from": newest.effective_from, "recorded_at": until}) is None


#: PostgreSQL's revise as two statements on the thread's autocommit connection (``db.reads``): the
#: head SELECT, then the one append statement, which is a transaction of its own (all of its rows or
#: none). No BEGIN, no separate COMMIT, no pool checkout: 2 round trips instead of 5. Lost updates are
#: still impossible: the statement advances the head only from the version the If-Match check saw,
#: and writes nothing when it does not (see _pg_append_statement).
_PG_RAW: dict[_PlanKey | str, str] = {}


def _pg_raw(dialect: Any, key: _PlanKey | str) -> str:
    """A statement compiled once to the driver's own paramstyle (named ``%(name)s``)."""
    sql = _PG_RAW.get(key)
    if sql is None:
        statement = _NAMED_READS[key] if isinstance(key, str) else _pg_append_statement(*key)
        sql = _PG_RAW[key] = str(statement.compile(dialect=dialect))
    return sql


def _revise_in_one_statement(db: Database, protocol_id: str, if_match: Sequence[str] | None,
                             if_none_match: Sequence[str] | None,
                             next_version: Callable[[_Head, _Fetch], _Prepared | None]
                             ) -> tuple[StoredVersion, bool]:
    dialect = db.engine.dialect

    def read_head() -> _Head:
        row = db.reads.fetch_one(_pg_raw(dialect, "head"), {"protocol_id": protocol_id})
        if row is None:
            raise ProtocolNotFound(f"protocol '{protocol_id}' does not exist", protocol_id=protocol_id)
        return _Head(StoredVersion(*row[:8]), str(row[8]), int(row[9]))

    def fetch(name: str, params: dict[str, Any]) -> Any:
        return db.reads.fetch_one(_pg_raw(dialect, name), params)

    def append(prepared: _Prepared, head: _Head) -> StoredVersion | None:
        """The guarded append on top of ``head``: the new version, or None when the head is not
        ``head`` any more (nothing written). Remembers the new head (:class:`RecentHeads`)."""
        params = {**prepared.params, "protocol_seq": head.protocol_seq, "expected": head.version.version,
                  "expected_etag": head.version.etag}
        try:
            written = db.reads.fetch_one(_pg_raw(dialect, (True, prepared.in_effect, prepared.audited, True)),
                                         _pg_append_params(prepared, params))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _DIVISION_BY_ZERO:
                db.heads.forget(protocol_id)
                raise _QueuedTooLong from exc
            raise
        if written is None:
            db.heads.forget(protocol_id)
            return None
        stored = replace(prepared.stored, seq=int(written[0]))
        db.heads.put(protocol_id, _Head(replace(stored, document=""), prepared.params["content_hash"],
                                        head.protocol_seq))
        return stored

    def after_head_moved(moved: _Head) -> tuple[StoredVersion, bool]:
        """The head moved after it was read. If it moved to this very change (an identical request
        racing this one: a client's retries), the change is made; otherwise this write is stale."""
        if next_version(moved, fetch) is None:
            return moved.version, False
        raise _changed_concurrently(moved.version)

    guess = db.heads.get(protocol_id)
    if guess is not None:
        # The head this process last wrote: if the request would append on top of it, try that without
        # reading the head. Every other outcome (a refusal, a repeat, a retirement, a guess that is
        # stale) is decided below from a head read, exactly as without the guess.
        prepared = next_version(guess, fetch)
        if prepared is not None and prepared.stored.status != "retired" and _precondition_holds(
                guess.version, if_match, if_none_match):
            stored = append(prepared, guess)
            if stored is not None:
                return stored, True
    head = read_head()
    prepared = next_version(head, fetch)
    check_if_match(head.version, if_match, already_applied=prepared is None, if_none_match=if_none_match)
    if prepared is None:
        return head.version, False
    try:
        _check_retirement(prepared, fetch)
    except DomainError:
        # The check reads after the head. If a version was appended in between, the refusal rests on
        # a state this write never saw, and the guarded append would have refused it as stale: say
        # that (412), as a write whose head moved does, rather than 409/422 about someone else's change.
        moved = read_head()
        if moved.version.version != head.version.version:
            return after_head_moved(moved)
        raise
    stored = append(prepared, head)
    if stored is None:
        return after_head_moved(read_head())
    return stored, True


def retire(
    db: Database,
    protocol_id: str,
    *,
    if_match: Sequence[str] | None,
    if_none_match: Sequence[str] | None = None,
    effective_from: datetime | None = None,
    change_note: str | None = None,
    ctx: WriteContext = WriteContext(),
    now: datetime | None = None,
) -> tuple[StoredVersion, bool]:
    """Retire a protocol by appending a ``retired`` version; nothing is erased.

    The retired version repeats the content of the version in effect just before its ``effective_from``
    (what clinicians last saw in effect), or of the newest non-draft version when none is in effect
    yet. Retiring a protocol that is retired now and stays so appends nothing; nor does a dated
    retirement whose newest version is that retirement, at that instant (a retry).

    The version in effect at T is the non-draft one with the latest ``effective_from`` <= T (issue #2),
    so a retirement is undone by any active version taking effect after it: one scheduled for later,
    or, for a retirement dated in the past, the version in effect now. Such a retirement would answer
    201 and change nothing from then on; it is refused (:class:`RetirementUndone`, naming the version)
    instead. To cancel a scheduled version and retire, retire at its ``effective_from`` (the later
    version wins the tie), then now.
    """
    attempt = (db, protocol_id, if_match, if_none_match, effective_from, change_note, ctx, now)
    try:
        return _retire_once(*attempt)
    except (ConcurrentChange, IntegrityError):
        # Lost a race. Once more on what is committed now: when the winner is this very retirement (the
        # same request sent twice, a client timeout's retry in flight), the answer is 200 with it, as on
        # SQLite, whose writers queue, and as revise() answers; PostgreSQL's loser answered 412 (found by
        # a probe). Otherwise If-Match no longer names the newest: 412 naming it.
        try:
            return _retire_once(*attempt)
        except IntegrityError as exc:
            raise _lost_race(db, protocol_id) from exc


def _retire_once(db: Database, protocol_id: str, if_match: Sequence[str] | None,
                 if_none_match: Sequence[str] | None, effective_from: datetime | None,
                 change_note: str | None, ctx: WriteContext,
                 now: datetime | None) -> tuple[StoredVersion, bool]:
    """One attempt of :func:`retire`, in one write transaction."""
    with _write_transaction(db) as conn:
        hold_feed_lock(conn)
        # "Now" (and, without ``effective_from``, the retirement's start), taken once the transaction
        # holds the writers' lock: an identical retirement queued behind another read a "now" from
        # before the winner's, found the protocol still active then, and answered 412 (found by this
        # session's concurrency test); and one recorded before its wait was published over FHIR
        # before pollers could see it (probe). A retry after a lost race reads it afresh.
        clock = now is None
        if now is None:
            now = utcnow()
        elif effective_from is None:
            now = max(now, utcnow())
        at = effective_from or now
        head, then = _read_head_for_retirement(conn, protocol_id, at)
        newest = head.version
        if clock:
            check_clock(newest, now)
        # A no-op answers with the newest version, so it must be that retirement: after a draft or a
        # back-dated version written since, a retire appends (found in review). A dated retirement
        # repeats the newest when it is that retirement, at that instant, of the same content (what
        # a PUT of it would be: _unchanged); its retry answered 412, or appended a copy with the new
        # ETag (found by a probe).
        if effective_from is None:
            already_retired = (newest.status == "retired" and then.undoing is None
                               and then.status == "retired")
        else:
            already_retired = (newest.status == "retired" and newest.effective_from == effective_from
                               and then.basis_hash == head.content_hash)
        check_if_match(newest, if_match, already_applied=already_retired, if_none_match=if_none_match)
        if already_retired:
            return newest, False
        if then.undoing is not None:
            raise _retirement_undone(protocol_id, at, *then.undoing)
        if then.basis_document is None:
            raise _nothing_published(protocol_id)
        _, content = record.split_document(then.basis_document)
        prepared = _prepare(protocol_id, newest.version + 1, content, status="retired",
                            effective_from=at,
                            change_note=change_note or "Protocol retired", ctx=ctx,
                            now=max(now, newest.recorded_at))  # recorded in order, as revise()
        return _write(conn, prepared, protocol_seq=head.protocol_seq, expected=newest.version), True


#: How far after this server's clock the newest version may have been recorded for a write on top of it:
#: instances' clocks differ by milliseconds, and a write is recorded no earlier than the version it follows.
CLOCK_SKEW_ALLOWED = timedelta(seconds=1)


def check_clock(newest: StoredVersion, now: datetime) -> None:
    """Refuse a write on top of ``newest`` when it was recorded more than :data:`CLOCK_SKEW_ALLOWED` after
    ``now`` (this server's clock). Recorded no earlier than it, the write would take that instant: a
    correction written "from now" on top of a version recorded 4 minutes ahead answered 201 and took effect
    4 minutes later, the old maximum dose still served until then, and a retirement in effect at once was
    recorded 4 minutes later than it took effect (found by a probe; an import then accepted versions
    recorded up to 5 minutes ahead). Refused loudly (503 with Retry-After), the clocks can be put right."""
    ahead = newest.recorded_at - now
    if ahead > CLOCK_SKEW_ALLOWED:
        raise ClockBehind(
            f"version {newest.version} of '{newest.protocol_id}' was recorded at "
            f"{format_rfc3339(newest.recorded_at)}, {ahead.total_seconds():.1f} s later than this server's clock "
            f"reads ({format_rfc3339(now)}): a version written now would be recorded, and without "
            "effective_from take effect, only then. Nothing was written; check the servers' clocks (NTP).",
            retry_after=math.ceil(ahead.total_seconds()))


def _retirement_undone(protocol_id: str, at: datetime, version: int, when: datetime) -> RetirementUndone:
    scheduled = format_rfc3339(when)
    return RetirementUndone(
        f"version {version} of '{protocol_id}' is active from {scheduled}, after this "
        f"retirement ({format_rfc3339(at)}): it would be in effect again from then. Retire at or "
        f"after {scheduled}, or first retire at {scheduled} to cancel it.",
        scheduled_version=version, scheduled_effective_from=scheduled)


#: What a retirement written with PUT must agree with (see :func:`_check_retirement`): the active version
#: that would undo it, and the content hash of the version it retires (as :func:`retire` picks it).
_RETIRING_SQL = _typed(
    f"SELECT {_UNDONE_BY}, {_RETIRED_CONTENT.format(column='content_hash')} AS basis_hash"
    .replace("= p.id", "= :protocol_id")).columns(undoing_effective_from=_TIME)


def _check_retirement(prepared: _Prepared, fetch: _Fetch) -> None:
    """A ``retired`` version written with PUT obeys the rules DELETE does (:func:`retire`): refused when
    an active version taking effect after it would undo it (the probe found PUT status=retired
    answered 201 where DELETE answered 409), and it repeats the content of the version it retires, so
    that a 410 shows what was in effect (a PUT retired new content, a 500-900 mg range that never
    applied, and a draft-only protocol retired into view; found by an adversarial probe). Read after
    the head: a version appended in between makes the guarded append fail, so the answer cannot rest
    on a state that no longer holds. ``fetch`` runs :data:`_RETIRING_SQL` with its parameters: in the
    write transaction on SQLite, on the thread's autocommit connection on PostgreSQL."""
    stored = prepared.stored
    if stored.status != "retired":
        return
    undoing_version, undoing_effective_from, basis_hash = fetch(
        "retiring", {"protocol_id": stored.protocol_id, "effective_from": stored.effective_from})
    if undoing_version is not None:
        raise _retirement_undone(stored.protocol_id, stored.effective_from, int(undoing_version),
                                 undoing_effective_from)
    if basis_hash is None:
        raise _nothing_published(stored.protocol_id)
    if basis_hash != prepared.params["content_hash"]:
        raise InvalidRecord(
            "a retirement repeats the content of the version it retires (the one in effect just before "
            "its effective_from: a version starting at that same instant is the one it cancels); send "
            "that content with status 'retired', or use DELETE",
            errors={"status": ["'retired' with content that differs from the version in effect just "
                               "before effective_from"]})


def _nothing_published(protocol_id: str) -> NothingPublished:
    return NothingPublished(f"protocol '{protocol_id}' has no published version to retire (only drafts, "
                            "which are never in effect); publish it first or leave the draft unpublished",
                            protocol_id=protocol_id)


#: Reads ``_pg_raw`` compiles for the thread's autocommit connection, by name.
#: Whether a published version starts after ``:effective_from`` and no later than ``:recorded_at``
#: (then a version starting at ``:effective_from`` is not the one in effect at ``:recorded_at``).
_OUTRANKED_SQL = _typed("SELECT 1 FROM protocol_versions WHERE protocol_id = :protocol_id AND status <> 'draft'"
                        " AND effective_from > :effective_from AND effective_from <= :recorded_at LIMIT 1")
_NAMED_READS: dict[str, TextClause | TextualSelect] = {
    "head": _NEWEST_SQL, "retiring": _RETIRING_SQL, "outranked": _OUTRANKED_SQL}


def import_version(session: Session, document: Mapping[str, Any], *, seq_hint: int | None = None) -> None:
    """Restore one exported version exactly (same bytes, same ETag) inside the caller's transaction.

    Used by backup/restore: versions must arrive in order, starting at 1 for each protocol.
    """
    meta, content = record.split_document(document)
    protocol_id = str(meta["id"])
    version = int(meta["version"])
    recorded_at = parse_rfc3339(str(meta["recorded_at"]))
    effective_from = parse_rfc3339(str(meta["effective_from"]))
    head = session.execute(select(Protocol.seq, Protocol.latest_version)
                           .where(Protocol.id == protocol_id)).first()
    conn = session.connection()
    prepared = _prepare(protocol_id, version, content, status=str(meta["status"]), effective_from=effective_from,
                        change_note=meta.get("change_note"),
                        ctx=WriteContext(meta.get("recorded_by"), meta.get("request_id")), now=recorded_at)
    if version == 1:
        protocol_seq = None
        if head is None:
            hold_feed_lock(conn)
            protocol_seq = _insert_protocol(conn, protocol_id, recorded_at)
        if protocol_seq is None:
            raise ProtocolExists(f"protocol '{protocol_id}' already exists", protocol_id=protocol_id)
        _write(conn, prepared, protocol_seq=protocol_seq, expected=None)
        return
    if head is None or head.latest_version != version - 1:
        raise VersionNotFound(f"protocol '{protocol_id}' version {version} arrives out of order")
    _write(conn, prepared, protocol_seq=int(head.seq), expected=version - 1)


@dataclass(frozen=True)
class _Head:
    """What a guarded append needs to know, from one SELECT."""

    version: StoredVersion
    content_hash: str
    protocol_seq: int


@dataclass(frozen=True)
class _RetirementView:
    """The protocol seen from a retirement's ``effective_from`` (see ``_BASIS``): the content to
    repeat, the status in effect then, and the (version, effective_from) of an active version that
    would undo the retirement."""

    basis_document: str | None
    #: Its stored content hash: a retirement repeating it has the same.
    basis_hash: str | None
    status: str | None
    undoing: tuple[int, datetime] | None


def _read_head(conn: Connection, protocol_id: str) -> _Head:
    return _head(conn.execute(_NEWEST_SQL, {"protocol_id": protocol_id}).first(), protocol_id)


def _read_head_for_retirement(conn: Connection, protocol_id: str, at: datetime) -> tuple[_Head, _RetirementView]:
    """The head and what a retirement at ``at`` needs, in the one SELECT a head read costs."""
    row: Any = conn.execute(_NEWEST_WITH_BASIS_SQL, {"protocol_id": protocol_id, "effective_from": at}).first()
    head = _head(row, protocol_id)
    undoing = None if row.undoing_version is None else (int(row.undoing_version), row.undoing_effective_from)
    return head, _RetirementView(row.basis_document, row.basis_hash, row.status_then, undoing)


def _head(row: Any, protocol_id: str) -> _Head:
    if row is None:
        raise ProtocolNotFound(f"protocol '{protocol_id}' does not exist", protocol_id=protocol_id)
    return _Head(stored_version(row), str(row.content_hash), int(row.protocol_seq))


def latest_with_hash(db: Database, protocol_id: str) -> tuple[StoredVersion, str]:
    """The newest version (as :func:`latest`) and its content hash, in one SELECT (for the catalog
    loader, which compares content before it writes)."""
    with db.engine.connect() as conn:
        head = _read_head(conn, protocol_id)
    return head.version, head.content_hash


def names_etag(tags: Sequence[str], etag: str) -> bool:
    """Whether an ``If-None-Match`` list (``*`` or entity-tags) names ``etag``, by the weak comparison
    RFC 9110 prescribes for it (``W/"3-ab"`` names ``"3-ab"``): for reads' 304s and writes' 412s alike."""
    bare = etag.removeprefix("W/")
    return "*" in tags or any(tag.removeprefix("W/") == bare for tag in tags)


def check_if_match(newest: StoredVersion, if_match: Sequence[str] | None, *, already_applied: bool = False,
                   if_none_match: Sequence[str] | None = None) -> None:
    """``If-Match`` must be given (428) and name the newest version (412), unless the write would change
    nothing: then the request's state change has already happened (the retry of a write whose answer
    was lost carries the ETag it started from) and the caller gets the newest version with a 200, as
    RFC 9110 (13.1.1) allows. Without an If-Match, even that is refused: the caller never said what it
    had seen.

    An ``If-None-Match`` that names the newest version (weakly) or is ``*`` (the protocol exists) is
    false, and a write whose condition is false is a 412 (RFC 9110 13.2.2, step 3): it was ignored, and
    a client guarding "not over this version" had its write made (found by a contract probe)."""
    if not if_match:
        message = "this write requires an If-Match header with the ETag of the newest version"
        raise PreconditionRequired(message, current_version=newest.version, current_etag=newest.etag,
                                   errors={"If-Match": [message]})
    if "*" in if_match:
        # Still a 428 (a write must name the version it was made from; "any version" protects nothing),
        # with the header named as at fault (found by an adversarial probe: the body said nothing of it).
        message = "If-Match: * is not accepted; send the ETag of the newest version"
        raise PreconditionRequired(message, current_version=newest.version, current_etag=newest.etag,
                                   errors={"If-Match": [message]})
    if newest.etag not in if_match and not already_applied:
        raise PreconditionFailed(
            f"If-Match does not name the newest version; the newest is version {newest.version}",
            current_version=newest.version, current_etag=newest.etag)
    if if_none_match and names_etag(if_none_match, newest.etag):
        raise PreconditionFailed(
            f"If-None-Match names the newest version (or is *): the condition is false; the newest is "
            f"version {newest.version}", current_version=newest.version, current_etag=newest.etag,
            header="If-None-Match")


def _precondition_holds(newest: StoredVersion, if_match: Sequence[str] | None,
                        if_none_match: Sequence[str] | None) -> bool:
    """Whether :func:`check_if_match` lets a write that changes something append on top of ``newest``."""
    try:
        check_if_match(newest, if_match, if_none_match=if_none_match)
    except DomainError:
        return False
    return True


class ConcurrentChange(PreconditionFailed):
    """Another writer appended between our head read and our guarded append (a 412, as any stale
    If-Match); :func:`retire` tries once more on what is committed."""


def _changed_concurrently(newest: StoredVersion) -> PreconditionFailed:
    """Another writer appended after we read the newest version: our If-Match is stale. The 412 names
    the version that is newest now, as every 412 does (it named none when the race was lost inside the
    guarded append, which on PostgreSQL was most lost races; found by an adversarial probe)."""
    return ConcurrentChange(
        f"protocol '{newest.protocol_id}' was changed concurrently; the newest is now version "
        f"{newest.version}", current_version=newest.version, current_etag=newest.etag)


def _newest_on(conn: Connection, protocol_id: str) -> StoredVersion:
    """The newest version as the connection sees it now (the head a failed guarded append lost to)."""
    row = conn.execute(_NEWEST_SQL, {"protocol_id": protocol_id}).one()
    return StoredVersion(*row[:8])


def hold_feed_lock(conn: Connection) -> None:
    """Queue behind every other writer now, before reading the clock or numbering anything.

    The change counter's row lock is held until commit by every write (step 3 of the module recipe), so
    a transaction that takes it first runs alone until it commits: its ``recorded_at`` and protocol seq
    then follow commit order. SQLite's ``BEGIN IMMEDIATE`` already holds the database's write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_COUNTER)


def _insert_protocol(conn: Connection, protocol_id: str, created_at: datetime) -> int | None:
    """The new protocol's head row; returns its listing sequence, or None when the id exists.

    The listing sequence must follow the changes feed: export writes versions in feed order and import
    replays them, numbering protocols as they arrive, so a listing restored from an export is the
    listing exported only if creates take their protocol seq in commit order. On PostgreSQL the seq
    comes from a sequence at INSERT time, and a create that inserted first could commit (and take its
    feed position) after a later one; callers hold the change counter's row lock first
    (:func:`hold_feed_lock`), which orders both."""
    seq = conn.execute(_INSERT_PROTOCOL, {"protocol_id": protocol_id, "created_at": created_at}).scalar()
    return None if seq is None else int(seq)


def _lost_race(db: Database, protocol_id: str) -> PreconditionFailed:
    try:
        newest = latest(db, protocol_id)
        return PreconditionFailed(
            f"protocol '{protocol_id}' was changed concurrently; the newest is version {newest.version}",
            current_version=newest.version, current_etag=newest.etag)
    except ProtocolNotFound:
        return PreconditionFailed(f"protocol '{protocol_id}' was changed concurrently")


def _next_seq(conn: Connection | Session) -> int:
    """SQLite: take the next changes-feed sequence (PostgreSQL takes it inside the append statement).
    The counter row stays locked until commit (the feed's commit order, see protocols.changes), so
    callers take it last, once everything else is ready."""
    return int(conn.execute(_NEXT_SEQ).scalar_one())


@dataclass(frozen=True)
class _Prepared:
    """Everything an append writes, computed before any lock is taken."""

    stored: StoredVersion
    params: dict[str, Any]
    terms: list[tuple[str, str]]
    lexemes: dict[str, list[str]]
    in_effect: bool
    audited: bool


def _prepare(
    protocol_id: str,
    version: int,
    content: Mapping[str, Any],
    *,
    status: str,
    effective_from: datetime,
    change_note: str | None,
    ctx: WriteContext,
    now: datetime,
    canonical: dict[str, Any] | None = None,
    content_hash: str | None = None,
) -> _Prepared:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    canonical = canonical if canonical is not None else record.canonical_content(content)
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
    document = record.build_canonical_document(meta, canonical)
    etag = record.make_etag(version, document)
    terms = [(kind, value[:200]) for kind, value in sorted(set(search_terms(canonical, status)))]
    lexemes = fulltext.field_tokens(canonical)
    params: dict[str, Any] = {
        "protocol_id": protocol_id, "version": version, "status": status, "effective_from": effective_from,
        "recorded_at": now, "recorded_by": ctx.actor, "request_id": ctx.request_id, "change_note": change_note,
        "content_hash": content_hash or record.canonical_hash(canonical), "etag": etag, "document": document,
    }
    if ctx.audit is not None:
        event = audit_events.allowed_row(ctx, target=protocol_id, now=now)
        params.update({f"audit_{name}": value for name, value in event.items()})
    stored = StoredVersion(protocol_id, version, status, effective_from, now, etag, document, seq=0)
    return _Prepared(stored, params, terms, lexemes, status in IN_EFFECT_STATUSES, ctx.audit is not None)


def _pg_append_params(prepared: _Prepared, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, **fulltext.postgres_lexemes(prepared.lexemes, prefix="fts_"),
            "terms": json.dumps(prepared.terms)}


def _write(conn: Connection, prepared: _Prepared, *, protocol_seq: int, expected: int | None) -> StoredVersion:
    """Write an append's rows: the guarded head advance (``expected`` = the version the head must still
    be at; None for version 1), the change sequence, the version, its derived rows and audit event."""
    params = {**prepared.params, "protocol_seq": protocol_seq, "expected": expected}
    protocol_id = prepared.stored.protocol_id
    if conn.dialect.name == "postgresql":
        seq = conn.execute(_pg_append_statement(expected is not None, prepared.in_effect, prepared.audited),
                           _pg_append_params(prepared, params)).scalar()
        if seq is None:
            raise _changed_concurrently(_newest_on(conn, protocol_id))
    else:
        if expected is not None and conn.execute(_SQLITE_ADVANCE_HEAD, params).rowcount != 1:
            raise _changed_concurrently(_newest_on(conn, protocol_id))
        seq = _next_seq(conn)
        params["seq"] = seq
        conn.execute(_SQLITE_INSERT_VERSION, params)
        fulltext.index_lexemes(conn, seq, prepared.lexemes)
        if prepared.terms:
            conn.execute(_SQLITE_INSERT_TERM, [{"protocol_id": protocol_id, "version": params["version"],
                                                "kind": kind, "value": value} for kind, value in prepared.terms])
        if prepared.in_effect:
            for statement in _SQLITE_PERIODS:
                conn.execute(statement, params)
        if prepared.audited:
            conn.execute(_SQLITE_INSERT_AUDIT, params)
    return replace(prepared.stored, seq=seq)


def reference_periods(versions: Iterable[tuple[int, str, datetime]], protocol_id: str) -> list[dict[str, Any]]:
    """The definition the incremental period updates must equal, from ``(version, status,
    effective_from)`` of every version: each active/retired version is in effect from its
    ``effective_from`` until the next one's; the latest ``effective_from`` wins and ties go to the
    higher version, so the lower one's interval is empty and is not stored. Rows of
    ``effective_periods`` without ``protocol_seq``. Used by tests as the oracle and by the
    benchmark's catalog generator (bench/generate.py), which must write what appends write."""
    rows = sorted(((effective_from, version, status) for version, status, effective_from in versions
                   if status in IN_EFFECT_STATUSES))
    periods = []
    for index, (valid_from, version, status) in enumerate(rows):
        until = rows[index + 1][0] if index + 1 < len(rows) else None
        if until is not None and until <= valid_from:
            continue
        periods.append({"protocol_id": protocol_id, "version": version, "status": status,
                        "valid_from": valid_from, "valid_until": until})
    return periods


def _rebuild_periods(conn: Connection | Session, protocol_id: str) -> None:
    """Recompute a protocol's effective periods from scratch: the reference the incremental updates
    of the append path are tested against (tests/protocols/test_write_path.py)."""
    protocol_seq = conn.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).scalar_one()
    rows = conn.execute(
        select(ProtocolVersion.version, ProtocolVersion.status, ProtocolVersion.effective_from)
        .where(ProtocolVersion.protocol_id == protocol_id)
    ).all()
    conn.execute(delete(EffectivePeriod).where(EffectivePeriod.protocol_id == protocol_id))
    periods = [{**period, "protocol_seq": protocol_seq} for period in reference_periods(rows, protocol_id)]
    if periods:
        conn.execute(insert(EffectivePeriod), periods)


# ---------------------------------------------------------------------------------------- reads


#: ``effective()`` is the hot path of every medication order. It runs one fixed SELECT on the thread's
#: own autocommit DBAPI connection (``db.reads``) instead of an ORM Session: no Session/Connection
#: set-up, no statement building or cache-key lookup, no pool checkout, no BEGIN/ROLLBACK (a single
#: SELECT is atomic on its own). Column types still go through SQLAlchemy's own
#: bind/result processors, and driver errors are wrapped exactly as SQLAlchemy wraps them, so callers
#: see the same values and exceptions as before. Measured in docs/performance.md (bench/).
_EFFECTIVE_SQL = (
    "SELECT {columns}"
    " FROM protocol_versions WHERE protocol_id = {mark} AND status IN ({statuses})"
    " AND effective_from <= {mark} ORDER BY effective_from DESC, version DESC LIMIT 1"
)


_VERSION_COLUMNS_SQL = "protocol_id, version, status, effective_from, recorded_at, etag, document, seq"


@dataclass(frozen=True)
class _ReadPlan:
    sql: str
    etag_sql: str
    bind_time: Any
    read_time: Any


_PLANS: dict[Any, _ReadPlan] = {}


def _identity(value: Any) -> Any:
    return value


def _plan(dialect: Any) -> _ReadPlan:
    plan = _PLANS.get(dialect)
    if plan is None:
        time_type = ProtocolVersion.__table__.c.effective_from.type.dialect_impl(dialect)
        statuses = ", ".join(f"'{s}'" for s in IN_EFFECT_STATUSES)  # constants, not input
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        plan = _ReadPlan(
            sql=_EFFECTIVE_SQL.format(columns=_VERSION_COLUMNS_SQL, mark=mark, statuses=statuses),
            etag_sql=_EFFECTIVE_SQL.format(columns="status, etag", mark=mark, statuses=statuses),
            bind_time=time_type.bind_processor(dialect) or _identity,
            read_time=time_type.result_processor(dialect, None) or _identity)
        _PLANS[dialect] = plan
    return plan


def _effective_row(db: Database, protocol_id: str, at: datetime) -> StoredVersion | None:
    plan = _plan(db.engine.dialect)
    row = db.reads.fetch_one(plan.sql, (protocol_id, plan.bind_time(at)))
    if row is None:
        return None
    return StoredVersion(row[0], row[1], row[2], plan.read_time(row[3]), plan.read_time(row[4]), row[5],
                         row[6], row[7])


def effective_etag(db: Database, protocol_id: str) -> tuple[str, str] | None:
    """``(status, etag)`` of the version in effect now, or None when none is: the same SELECT as
    :func:`effective` without the document. A conditional GET compares ETags before it needs the
    body, and on PostgreSQL a stored document over ~2 KB sits compressed in TOAST: a 304 that
    fetched it would pay for reading and decompressing bytes it never sends."""
    plan = _plan(db.engine.dialect)
    row = db.reads.fetch_one(plan.etag_sql, (protocol_id, plan.bind_time(utcnow())))
    return None if row is None else (str(row[0]), str(row[1]))


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
    session: Session | None = None,
) -> EffectivePage:
    """Protocols whose version in effect at ``at`` has one of ``statuses``, newest protocol first.

    Keyset pagination on the protocol's creation sequence: immutable, so a write between two
    page fetches neither repeats nor skips a protocol. Pages read in one ``session`` (see
    :func:`snapshot`) see one state of the history; otherwise each page sees the history as it is.
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
    if session is not None:
        rows = session.execute(query.limit(limit + 1)).all()
    else:
        with db.read() as own:
            rows = own.execute(query.limit(limit + 1)).all()
    items = [EffectiveRow(r.protocol_seq, stored_version(r)) for r in rows[:limit]]
    if before_seq is not None:
        items.reverse()
    return EffectivePage(items, len(rows) > limit)


@contextmanager
def snapshot(db: Database) -> Iterator[Session]:
    """A read session whose statements all see one state of the database: one transaction, REPEATABLE
    READ on PostgreSQL (READ COMMITTED gives each statement its own), and on SQLite the read
    transaction ``BEGIN`` opens (WAL keeps its snapshot while writers commit)."""
    with db.read() as session:  # the session's transaction begins here and rolls back on close
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"}
                           if db.dialect == "postgresql" else {})
        yield session


def _require_protocol(session: Session, protocol_id: str) -> None:
    if session.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).first() is None:
        raise ProtocolNotFound(f"protocol '{protocol_id}' does not exist", protocol_id=protocol_id)
