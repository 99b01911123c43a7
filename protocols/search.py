"""Finding protocols: structured filters, free text, time travel and keyset pages.

Every filter is an indexed lookup against derived rows written in the same transaction as the
version they describe, so a search never reads a half-written protocol:

* ``search_terms`` (``protocols.indexing``) answers drug, RxCUI, route, indication, FDA status, DEA
  schedule and REMS as equality lookups on ``(kind, value, protocol_id, version)``. ICD-10-CM prefix
  matching (``F33`` finds ``F33.2``) is an equality lookup too: each indication is stored under all
  of its ancestor codes (``indication_key`` terms).
* ``protocol_fts`` (``protocols.fulltext``) answers ``q`` with the database's own text search.
* ``effective_periods`` decides which version a filter looks at: the one in effect at ``as_of``
  (default now). ``status=draft`` looks at each protocol's newest version instead.

Pages are keyset pages. Without ``q`` the key is the protocol's creation sequence (immutable: a write
between two fetches neither repeats nor skips a protocol, and a deep page costs what the first one
does). With ``q`` the key is ``(rank, protocol sequence)``; the rank is a pure function of the version
and the query (see ``protocols.fulltext``), so it does not drift when other protocols are written.

**Bounded pages (issue #9).** A forward page is found by a *walk*: versions in effect are read in
protocol-sequence order (an index range, :data:`WALK_FIRST` rows first, then 4x more per step, at
most :data:`WALK_STEPS` steps), each checked per row against the filters (indexed probes) and the
text (:func:`protocols.fulltext.probe`). Its cost is page size / selectivity, whatever the catalog
size. The rank has only 16 values, so a walk that has seen a page's worth of rows of its best rank
``R`` knows that every unseen row of rank ``<= R`` sorts after them (lower protocol sequence): only
rows ranking *above* ``R`` can still be missing, and those need a field the walked page's winners
lack (:func:`protocols.fulltext.fields_above`). One index-driven statement fetches exactly those
(:func:`protocols.fulltext.candidates`: usually none, from a short posting list). When the walk
runs out of budget first (a rare filter or word), the same statement fetches everything not walked,
as the index-driven plan always did. Backward pages and ``count`` use the index-driven statement.
The result is the same set, in the same order, as sorting every match (tests compare both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from protocols import fulltext
from protocols.db import Database
from protocols.indexing import drug_term, indication_keys
from protocols.models import EffectivePeriod, Protocol, ProtocolVersion, SearchTerm
from protocols.terminology import INDICATION_SYSTEMS, covered_codes, order_rxnorm_codes
from protocols.timeutil import utcnow
from protocols.versioning import VERSION_COLUMNS, StoredVersion, keyset_descending, snapshot, stored_version

T = TypeVar("T")

#: ``status`` values a listing accepts: what is in effect (``active``), protocols whose version in
#: effect is a retirement (``retired``), protocols whose newest version is a draft (``draft``).
LIST_STATUSES = ("active", "retired", "draft")

#: A keyset key: the protocol sequence, or ``(rank, protocol sequence)`` for ranked searches.
Key = int | tuple[int, ...]


@dataclass(frozen=True)
class ProtocolQuery:
    """What a listing asks for; every given filter must hold (AND)."""

    drug: str | None = None
    rxnorm_cui: str | None = None
    route: str | None = None
    indication: str | None = None
    indication_system: str | None = None
    fda_status: str | None = None
    dea_schedule: str | None = None
    rems_required: bool | None = None
    status: str = "active"
    q: str | None = None
    as_of: datetime | None = None
    updated_since: datetime | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ProtocolQuery:
        """Pick the filters out of a parsed query string (other keys such as ``cursor`` are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})

    @property
    def ranked(self) -> bool:
        return self.q is not None


@dataclass(frozen=True)
class Hit:
    """One protocol of a page: the version the filters matched, and its keyset key."""

    protocol_seq: int
    rank: int | None
    version: StoredVersion

    @property
    def key(self) -> Key:
        return self.protocol_seq if self.rank is None else (self.rank, self.protocol_seq)


@dataclass(frozen=True)
class SearchPage:
    items: list[Hit]
    has_more: bool
    total: int | None = None


class ResultsChanged(Exception):
    """A ranked walk's results changed since its first page (:func:`ranked_page`)."""


def ranked_page(db: Database, query: ProtocolQuery, *, limit: int, after: Key | None, before: Key | None,
                count: bool, position: int | None) -> tuple[SearchPage, int]:
    """One page of a ranked walk and the feed position its cursors carry: the first page's position is
    read now (``position`` None), a later page's is checked first (:func:`changed_in_effect_since`;
    :class:`ResultsChanged` when history moved under the walk). Both in one snapshot with the page:
    checked in one transaction and read in another, a back-dated version committed between them moved
    ranks on the page served, which then skipped or repeated a protocol, and a version committed
    between a first page and its position refused the walk's next page for a change the first page
    already showed (a code review)."""
    assert query.as_of is not None  # a walk is pinned to one moment
    with snapshot(db) as session:
        if position is None:
            position = feed_position(db, session=session)
        elif changed_in_effect_since(db, position, query.as_of, drafts=query.status == "draft", session=session):
            raise ResultsChanged("a version recorded since the walk's first page takes effect at or before its moment")
        return search(db, query, limit=limit, after=after, before=before, count=count, session=session), position


def feed_position(db: Database, *, session: Session | None = None) -> int:
    """The newest version's position in the changes feed (0 for an empty registry). A ranked walk
    keeps the position of its first page, so a later page can tell whether history it reads has
    changed under it (:func:`changed_in_effect_since`)."""
    with nullcontext(session) if session is not None else db.read() as reading:
        return int(reading.execute(select(func.coalesce(func.max(ProtocolVersion.seq), 0))).scalar_one())


def changed_in_effect_since(db: Database, position: int, at: datetime, *, drafts: bool = False,
                            session: Session | None = None) -> bool:
    """Whether a version recorded after feed ``position`` takes effect at or before ``at`` (naive UTC,
    as :attr:`ProtocolQuery.as_of`).

    Why: a ranked walk pins its moment (``as_of``), and a version recorded later that starts after that
    moment cannot change what the walk reads. A back-dated one can: it changes which version is in
    effect at the pinned moment, so a protocol's rank moves across the cursor and the walk would skip
    or repeat it (found by an adversarial probe). The feed is in commit order, so "recorded after the
    first page" is exactly ``seq > position``, read through the primary key."""
    with nullcontext(session) if session is not None else db.read() as reading:
        # Drafts are never in effect: a back-dated draft refused walks it could not disturb. A walk of
        # drafts (``drafts``) reads each protocol's newest version *recorded* by its as_of
        # (:func:`_newest_version`), so any version recorded by then can move it, whatever its status
        # and effective_from: a draft dated after the walk's as_of went unnoticed, and the walk listed a
        # protocol twice or skipped one (an adversarial probe; the check compared effective_from).
        moves = ([ProtocolVersion.recorded_at <= at] if drafts else
                 [ProtocolVersion.effective_from <= at, ProtocolVersion.status != "draft"])
        statement = select(ProtocolVersion.seq).where(ProtocolVersion.seq > position, *moves)
        hit = reading.execute(statement.limit(1)).first()
    return hit is not None


def search(
    db: Database,
    query: ProtocolQuery,
    *,
    limit: int,
    after: Key | None = None,
    before: Key | None = None,
    count: bool = False,
    session: Session | None = None,
) -> SearchPage:
    """One page of protocols matching ``query``: newest protocol first, or best rank first with ``q``.

    ``after`` continues towards the end of the listing, ``before`` back towards its start (both
    exclusive). ``count`` adds the total number of matches (a separate, slower query). ``session``: read
    in it (one snapshot with other reads, :func:`ranked_page`), else in a session of its own.
    """
    if query.status not in LIST_STATUSES:
        raise ValueError(f"unknown listing status {query.status!r}")
    if after is not None and before is not None:
        raise ValueError("give after or before, not both")
    # One instant and, with a count, one snapshot for the page and its count: each read "now" for
    # itself, and a page read just before a scheduled version took effect came with the count of
    # just after (30 items, count 29; found by a probe of scheduled versions).
    at = query.as_of or utcnow()
    reader = nullcontext(session) if session is not None else snapshot(db) if count else db.read()
    if before is not None:
        statement, seq_column, rank_column = _matching(db.dialect, query, at=at)
        page = _keyset(statement, seq_column, rank_column, after=None, before=before).limit(limit + 1)
        with reader as session:
            rows = session.execute(page).all()
            total = _count(session, statement) if count else None
        items = [_hit(row, rank_column is not None) for row in rows[:limit]]
        items.reverse()
        return SearchPage(items, len(rows) > limit, total)
    if (query.ranked and isinstance(after, int)) or (not query.ranked and isinstance(after, tuple)):
        raise ValueError("a ranked key was given for an unranked listing" if isinstance(after, tuple)
                         else "an unranked key was given for a ranked listing")
    with reader as session:
        keys = _walked_page(session, db.dialect, query, limit + 1, after, at)
        items = _fetch(session, keys[:limit], query.ranked)
        total = _count(session, _matching(db.dialect, query, at=at)[0]) if count else None
    return SearchPage(items, len(keys) > limit, total)


def _count(session: Session, statement: Select[Any]) -> int:
    return int(session.execute(select(func.count()).select_from(statement.subquery())).scalar_one())


# ------------------------------------------------------------------------------- bounded pages

#: Rows read by the first step of a walk, per row wanted on the page; each later step reads 4x more.
WALK_FIRST = 6
#: Steps before a walk gives up and lets the index-driven statement find the rest.
WALK_STEPS = 3


@dataclass(frozen=True)
class _Found:
    """A match located by its key, before its stored version is read."""

    protocol_seq: int
    version_seq: int
    rank: int | None

    def sort_key(self) -> tuple[int, int]:
        return (self.rank or 0, self.protocol_seq)


def _walked_page(session: Session, dialect: str, query: ProtocolQuery, need: int,
                 after: Key | None, at: datetime) -> list[_Found]:
    """The first ``need`` matches in effect at ``at`` after ``after`` (key order), walking first (see
    module docstring)."""
    rank_after, seq_after = (after if isinstance(after, tuple) else (None, after))
    upper = seq_after  # the walk reads protocol sequences below this (all when None)
    instants = {"at": at} if query.updated_since is None else {"at": at, "updated_since": query.updated_since}
    connection = session.connection()
    if dialect == "postgresql":
        # These statements read a bounded number of rows by index (walk steps, a few posting lists,
        # one page of documents). On a small catalog the planner prefers scanning or hashing whole
        # tables and, for per-field prefix matches (estimated at ~2 % of the table), parallel
        # workers, which cost more to start than the query. None of that scales with the page.
        connection.exec_driver_sql("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
                                   "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0")
    found: list[_Found] = []
    walked_to: int | None = None  # lowest protocol sequence walked so far
    exhausted = False
    frequency = dict.fromkeys(fulltext.FIELDS, 0)
    size = WALK_FIRST * need
    for _ in range(WALK_STEPS):
        below = upper if walked_to is None else walked_to
        rows = connection.execute(_walk_statement(dialect, _shape(query), below is not None),
                                  {**instants, "upper": below, "size": size}).all()
        if rows:
            walked_to = int(rows[-1].protocol_seq)
        read = int(rows[-1].walk_rn) if rows else 0
        for row in rows:
            if not row.ok:
                continue
            rank = int(row.rank) if query.ranked else None
            if rank is not None:
                if rank_after is not None and rank > rank_after:
                    continue  # ranks above the cursor's were on earlier pages
                for name in fulltext.field_bits(rank):
                    frequency[name] += 1
            found.append(_Found(int(row.protocol_seq), int(row.seq), rank))
        if read < size:
            exhausted = True
            break
        if len(found) >= need and (not query.ranked or _settled(found, need)):
            break
        size *= 4
    found.sort(key=_Found.sort_key, reverse=True)
    found = found[:need]
    rest = _rest(dialect, query, need, found, frequency, exhausted=exhausted, walked_to=walked_to,
                 upper=upper, rank_after=rank_after)
    if rest is not None:
        statement, params = rest
        found += [_Found(int(r.protocol_seq), int(r.seq), int(r.rank) if query.ranked else None)
                  for r in connection.execute(statement, {**instants, **params}).all()]
        found.sort(key=_Found.sort_key, reverse=True)
    return found[:need]


def _settled(found: list[_Found], need: int) -> bool:
    """The walk's best rank alone fills the page: walking on could only find rarer, higher ranks."""
    ranks = sorted((f.rank or 0 for f in found), reverse=True)
    return ranks[need - 1] == ranks[0]


def _rest(dialect: str, query: ProtocolQuery, need: int, found: list[_Found], frequency: dict[str, int], *,
          exhausted: bool, walked_to: int | None, upper: int | None,
          rank_after: int | None) -> tuple[Select[Any], dict[str, Any]] | None:
    """The index-driven statement (and its parameters) for matches the walk did not see that can
    still make the page.

    Walked: protocol sequences in ``[walked_to, upper)``. Unwalked rows below ``walked_to`` matter
    only when they rank above the page's last row (``floor``); rows at or above ``upper`` (a
    ranked cursor's own sequence) hold ranks below the cursor's and matter from ``floor`` up.
    """
    full = len(found) >= need
    floor = (found[-1].rank or 0) if full else -1
    params: dict[str, Any] = {"n": need - len(found) if not query.ranked else need, "walked_to": walked_to,
                              "upper": upper, "floor": floor, "rank_after": rank_after}
    if not query.ranked:
        if exhausted or full:
            return None
        if walked_to is None:  # nothing walked at all: the walk is exhausted (kept for clarity)
            return None
        return _rest_statement(dialect, _shape(query), None, True, False), params
    below = not exhausted  # unwalked rows below the walk: ranks above floor
    above = upper is not None and rank_after is not None and floor < rank_after
    if not (below or above):
        return None
    fields = fulltext.fields_above(floor - 1 if above else floor, frequency)
    if fields is None:
        return None
    return _rest_statement(dialect, _shape(query), fields, below, above, rank_after is not None), params


#: Stands for every ``as_of`` / ``updated_since`` instant in the statement caches below.
_ANY_INSTANT = datetime(2000, 1, 1)


def _shape(query: ProtocolQuery) -> ProtocolQuery:
    """``query`` as the cached statements see it: their instants are bound parameters (``at``,
    ``updated_since``, passed at execution) and only whether one was given changes the SQL, so every
    instant shares one entry. Keyed by the instants themselves, each ranked walk (its links carry its
    own ``as_of``) and each poll (``updated_since`` = the last poll) built and kept statements of its
    own: 3-4x the cost of a page, and the caches grew the worker by ~90 MB."""
    if query.as_of is None and query.updated_since is None:
        return query
    return replace(query, as_of=query.as_of and _ANY_INSTANT, updated_since=query.updated_since and _ANY_INSTANT)


@lru_cache(maxsize=512)
def _rest_statement(dialect: str, query: ProtocolQuery, fields: tuple[str, ...] | None, below: bool,
                    above: bool, after: bool = False) -> Select[Any]:
    """Parameters: ``at``, ``n``, ``walked_to``, ``upper``, ``floor``, ``rank_after`` (as used)."""
    at = bindparam("at", type_=DateTime())
    if fields is None:  # unranked
        statement, seq, _ = _matching(dialect, query, at=at)
        return (_narrow(statement.where(seq < bindparam("walked_to", type_=BigInteger())), seq, None)
                .order_by(seq.desc()).limit(bindparam("n", type_=Integer())))
    words = fulltext.MatchQuery.parse(query.q or "")
    statement, seq, rank = _matching(dialect, query, fulltext.candidates(dialect, words, fields), at=at)
    floor = bindparam("floor", type_=Integer())
    parts: list[ColumnElement[bool]] = []
    if below:
        parts.append(and_(rank > floor, seq < bindparam("walked_to", type_=BigInteger())))
    upper, rank_after = bindparam("upper", type_=BigInteger()), bindparam("rank_after", type_=Integer())
    if above:
        parts.append(and_(seq >= upper, rank >= floor, rank < rank_after))
    if after:  # the cursor: nothing at or before its key
        statement = statement.where(or_(rank < rank_after, and_(rank == rank_after, seq < upper)))
    statement = statement.where(or_(*parts))
    return _narrow(statement, seq, rank).order_by(rank.desc(), seq.desc()).limit(bindparam("n", type_=Integer()))


def _narrow(statement: Select[Any], seq: Any, rank: Any) -> Select[Any]:
    """Keys only: the stored documents are read for the final page alone."""
    columns = [seq.label("protocol_seq"), _VERSION.seq.label("seq")]
    if rank is not None:
        columns.append(rank.label("rank"))
    return statement.with_only_columns(*columns)


_FETCH = select(*VERSION_COLUMNS).where(ProtocolVersion.seq.in_(bindparam("seqs", expanding=True)))


def _fetch(session: Session, found: list[_Found], ranked: bool) -> list[Hit]:
    if not found:
        return []
    rows = session.connection().execute(_FETCH, {"seqs": [f.version_seq for f in found]})
    by_seq = {int(row.seq): stored_version(row) for row in rows}
    return [Hit(f.protocol_seq, f.rank if ranked else None, by_seq[f.version_seq]) for f in found]


@lru_cache(maxsize=512)
def _walk_statement(dialect: str, query: ProtocolQuery, bounded: bool) -> Select[Any]:
    """One walk step: ``size`` candidates (below protocol sequence ``upper`` when ``bounded``) in walk
    order, each with a match flag (every filter and the text, checked per row) and its rank. Every
    row read is returned, so the caller knows how far the walk got even when nothing matched.
    Parameters: ``at``, ``size``, ``upper``."""
    at = bindparam("at", type_=DateTime())
    if query.status == "draft":
        newest = _newest_version(query, at)
        order: Any = Protocol.seq
        walk = select(Protocol.seq.label("protocol_seq"), Protocol.id.label("protocol_id"),
                      newest.label("version"))
        conditions: list[ColumnElement[bool]] = [_VERSION.status == "draft"]
    else:
        period = EffectivePeriod
        order = period.protocol_seq
        walk = (select(period.protocol_seq, period.protocol_id, period.version)
                .where(period.valid_from <= at,
                       or_(period.valid_until.is_(None), period.valid_until > at),
                       period.status == query.status))
        conditions = []
    if bounded:
        walk = walk.where(order < bindparam("upper", type_=BigInteger()))
    size = bindparam("size", type_=Integer())
    rows = walk.order_by(order.desc()).limit(size).subquery("walk_rows")
    walked = select(rows, func.row_number().over(order_by=rows.c.protocol_seq.desc()).label("walk_rn")
                    ).subquery("walk")
    statement = (select(walked.c.protocol_seq, walked.c.walk_rn, _VERSION.seq)
                 .select_from(walked)
                 .outerjoin(_VERSION, and_(_VERSION.protocol_id == walked.c.protocol_id,
                                           _VERSION.version == walked.c.version)))
    conditions += _filters(query, probe=True)
    if query.q is not None:
        text_probe = fulltext.probe(dialect, fulltext.MatchQuery.parse(query.q))
        statement = statement.outerjoin(text_probe.source, text_probe.source_seq == _VERSION.seq)
        conditions.append(text_probe.match)
        statement = statement.add_columns(text_probe.rank.label("rank"))
    matched = and_(_VERSION.seq.is_not(None), *conditions)
    ok = case((matched, literal(1)), else_=literal(0))
    # Matches, plus the last row read (matching or not): it tells how far the walk got.
    return (statement.add_columns(ok.label("ok"))
            .where(or_(walked.c.walk_rn == size, matched))
            .order_by(walked.c.protocol_seq.desc()))


# ------------------------------------------------------------------------------- query building


def _newest_version(query: ProtocolQuery, at: Any) -> Any:
    """For ``status=draft``: the protocol's newest version, or with ``as_of`` its newest one recorded
    by then."""
    if query.as_of is None:
        return Protocol.latest_version
    older = aliased(ProtocolVersion)
    return (select(func.max(older.version))
            .where(older.protocol_id == Protocol.id, older.recorded_at <= at)
            .scalar_subquery())

_VERSION = ProtocolVersion


def _matching(dialect: str, query: ProtocolQuery, text_matches: Any = None,
              at: Any = None) -> tuple[Select[Any], Any, Any]:
    """The unordered statement of all matches, its protocol-sequence column and its rank column.

    ``text_matches`` replaces :func:`protocols.fulltext.matches` (a ``(seq, rank)`` statement);
    ``at`` replaces ``as_of`` (or now), e.g. with a bound parameter."""
    if at is None:
        at = query.as_of or utcnow()
    if query.status == "draft":
        newest = _newest_version(query, at)
        seq_column: Any = Protocol.seq.label("protocol_seq")
        statement = (select(seq_column, *VERSION_COLUMNS)
                     .select_from(Protocol)  # explicit: with as_of and q, the join's left side is ambiguous
                     .join(_VERSION, and_(_VERSION.protocol_id == Protocol.id, _VERSION.version == newest))
                     .where(_VERSION.status == "draft"))
        order_seq: Any = Protocol.seq
    else:
        period = EffectivePeriod
        seq_column = period.protocol_seq.label("protocol_seq")
        statement = (select(seq_column, *VERSION_COLUMNS)
                     .join(_VERSION, and_(_VERSION.protocol_id == period.protocol_id,
                                          _VERSION.version == period.version))
                     .where(period.valid_from <= at,
                            or_(period.valid_until.is_(None), period.valid_until > at),
                            period.status == query.status))
        order_seq = period.protocol_seq
    statement = statement.where(*_filters(query))
    rank_column = None
    if query.q is not None:
        if text_matches is None:
            text_matches = fulltext.matches(dialect, fulltext.MatchQuery.parse(query.q))
        matches = text_matches.subquery("fts")
        statement = statement.join(matches, matches.c.seq == _VERSION.seq).add_columns(
            matches.c.rank.label("rank"))
        rank_column = matches.c.rank
    return statement, order_seq, rank_column


def _exists(statement: Select[Any], probe: bool) -> ColumnElement[bool]:
    """``EXISTS`` for set-oriented plans; as a probe (a one-row scalar subquery, which PostgreSQL
    cannot turn into a hash over every matching row), an index lookup per row for walks."""
    if probe:
        return statement.limit(1).scalar_subquery().is_not(None)
    return statement.exists()


def _term(kind: str, values: Sequence[str], probe: bool = False) -> ColumnElement[bool]:
    """The version being looked at has a ``search_terms`` row ``(kind, one of values)``."""
    term = aliased(SearchTerm)
    return _exists(select(literal(1))
                   .where(term.protocol_id == _VERSION.protocol_id, term.version == _VERSION.version,
                          term.kind == kind, term.value.in_(list(values))), probe)


def _filters(query: ProtocolQuery, probe: bool = False) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.drug is not None:
        # Stored terms are cut to the column's 200 characters (case folding can lengthen a name past
        # them: "ﬃ" folds to "ffi"), so the query is cut alike or such a name is not found by itself.
        conditions.append(_term("drug", [drug_term(query.drug)[:200]], probe))
    if query.rxnorm_cui is not None:
        conditions.append(_term("rxnorm_cui", [query.rxnorm_cui], probe))
    if query.route is not None:
        conditions.append(_term("route", [query.route], probe))
    if query.indication is not None:
        systems = [query.indication_system] if query.indication_system else list(INDICATION_SYSTEMS)
        keys = [indication_keys(system, query.indication)[-1] for system in systems]
        conditions.append(_term("indication_key", keys, probe))
    elif query.indication_system is not None:
        conditions.append(_term("indication_system", [query.indication_system], probe))
    if query.fda_status is not None:
        conditions.append(_term("fda_status", [query.fda_status], probe))
    if query.dea_schedule is not None:
        conditions.append(_term("dea_schedule", [query.dea_schedule], probe))
    if query.rems_required is not None:
        conditions.append(_term("rems_required", ["true" if query.rems_required else "false"], probe))
    if query.updated_since is not None:  # a parameter, as ``at`` is: see _shape
        later = aliased(ProtocolVersion)
        since = bindparam("updated_since", value=query.updated_since, type_=later.recorded_at.type)
        conditions.append(_exists(select(literal(1))
                                  .where(later.protocol_id == _VERSION.protocol_id, later.recorded_at > since),
                                  probe))
    return conditions


def _keyset(statement: Select[Any], seq: Any, rank: Any, *, after: Key | None,
            before: Key | None) -> Select[Any]:
    """Order (best rank first, then newest protocol first) and cut at the cursor key."""
    if rank is None:
        if isinstance(after, tuple) or isinstance(before, tuple):
            raise ValueError("a ranked key was given for an unranked listing")
        return keyset_descending(statement, seq, after, before)
    if isinstance(after, int) or isinstance(before, int):
        raise ValueError("an unranked key was given for a ranked listing")
    if before is not None:
        rank_key, seq_key = before
        return (statement.where(or_(rank > rank_key, and_(rank == rank_key, seq > seq_key)))
                .order_by(rank.asc(), seq.asc()))
    if after is not None:
        rank_key, seq_key = after
        statement = statement.where(or_(rank < rank_key, and_(rank == rank_key, seq < seq_key)))
    return statement.order_by(rank.desc(), seq.desc())


def _hit(row: Any, ranked: bool) -> Hit:
    return Hit(int(row.protocol_seq), int(row.rank) if ranked else None, stored_version(row))


def applicable_protocols(db: Database, *, rxnorm_cuis: Sequence[str], route: str | None,
                         at: datetime | None = None, session: Session | None = None) -> list[StoredVersion]:
    """Versions in effect at ``at`` for a medication (any of ``rxnorm_cuis``, and the catalog codes they
    stand for: :func:`terminology.order_rxnorm_codes`) given by ``route``; read in ``session`` when
    given (a caller making several lookups that must see one state of the history), else in a read
    session of its own. ``route`` None: by any route (what a medication ordered by a route no protocol
    gives is given by instead).

    Used at order time (CDS Hooks), which narrows them by the order's reasons (:func:`narrowed_to`)."""
    base = [_term("rxnorm_cui", order_rxnorm_codes(rxnorm_cuis))]
    if route is not None:
        base.append(_term("route", [route]))
    return _all_in_effect(db, base, at, session)


def narrowed_to(found: Sequence[tuple[T, Mapping[str, Any]]], reasons: Sequence[str]
                ) -> list[tuple[T, Mapping[str, Any]]]:
    """Of ``found`` ((version, its document) pairs), those that treat one of an order's ``reasons``
    (:func:`treats`), or all of them when none does or the order states none: a protocol is not dropped
    because the order did not say why it was written."""
    wanted = {code.upper() for code in reasons}
    narrowed = [pair for pair in found if wanted and treats(pair[1], wanted)]
    return narrowed or list(found)


def indexed_rxnorm_codes(db: Database, codes: Iterable[str], *, session: Session | None = None) -> set[str]:
    """Which of ``codes`` any stored version is indexed under (at any time): an order whose codes are none
    of them has no protocol, and needs no lookup (CDS Hooks; one indexed query per call)."""
    wanted = sorted(set(codes))
    if not wanted:
        return set()
    with nullcontext(session) if session is not None else db.read() as reading:
        return set(reading.execute(select(SearchTerm.value).where(
            SearchTerm.kind == "rxnorm_cui", SearchTerm.value.in_(wanted)).distinct()).scalars())


def treats(document: Mapping[str, Any], reasons: set[str]) -> bool:
    """Whether a protocol lists one of an order's reason codes as an indication: the code itself, or a
    code the indication covers (:func:`terminology.covered_codes`: an order for F33.2 is one the
    protocol of F33.9 "recurrent MDD, unspecified" treats; G90.511 one of G90.50 "CRPS I,
    unspecified"). Orders coded more specifically than the protocol fell back to every protocol for the
    drug and route (found by a clinical QA probe). Coverage is curated, not the code's category: F32.9
    (major depressive disorder) once covered all of F32, so an order for premenstrual dysphoric disorder
    (F32.81) or "depression, unspecified" (F32.A) lost its off-indication warning (found by a clinical
    data audit). Other codes match exactly: R45.850 (homicidal ideation) is not R45.851 (suicidal)."""
    return bool(treated_codes(document, reasons))


def treated_codes(document: Mapping[str, Any], reasons: set[str]) -> list[str]:
    """The codes, as the record writes them, of the indications of ``document`` one of an order's reason
    codes (upper case) names or falls under (see :func:`treats`): which of a record's ranges the order is
    for (a range's ``indications``)."""
    codes = []
    for indication in document.get("indications") or []:
        code = str(indication.get("code", "")).upper()
        covered = covered_codes(str(indication.get("system", "")), code)
        if code in reasons or (covered and any(reason.startswith(covered) for reason in reasons)):
            codes.append(str(indication.get("code")))
    return codes


def _all_in_effect(db: Database, conditions: list[ColumnElement[bool]], at: datetime | None,
                   session: Session | None = None) -> list[StoredVersion]:
    statement, seq, _ = _matching(db.dialect, ProtocolQuery(as_of=at))
    with nullcontext(session) if session is not None else db.read() as reading:
        rows = reading.execute(statement.where(*conditions).order_by(seq.desc())).all()
    return [stored_version(row) for row in rows]
