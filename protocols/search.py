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
Ranked pages must score every match before sorting: their cost grows with the number of matches,
not with the page number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select
from sqlalchemy.orm import aliased

from protocols import fulltext
from protocols.db import Database
from protocols.indexing import indication_keys
from protocols.models import EffectivePeriod, Protocol, ProtocolVersion, SearchTerm
from protocols.terminology import INDICATION_SYSTEMS
from protocols.timeutil import utcnow
from protocols.versioning import VERSION_COLUMNS, StoredVersion, keyset_descending, stored_version

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


def search(
    db: Database,
    query: ProtocolQuery,
    *,
    limit: int,
    after: Key | None = None,
    before: Key | None = None,
    count: bool = False,
) -> SearchPage:
    """One page of protocols matching ``query``: newest protocol first, or best rank first with ``q``.

    ``after`` continues towards the end of the listing, ``before`` back towards its start (both
    exclusive). ``count`` adds the total number of matches (a separate, slower query).
    """
    if query.status not in LIST_STATUSES:
        raise ValueError(f"unknown listing status {query.status!r}")
    if after is not None and before is not None:
        raise ValueError("give after or before, not both")
    statement, seq_column, rank_column = _matching(db.dialect, query)
    page = _keyset(statement, seq_column, rank_column, after=after, before=before).limit(limit + 1)
    with db.read() as session:
        rows = session.execute(page).all()
        total = None
        if count:
            total = int(session.execute(select(func.count()).select_from(statement.subquery())).scalar_one())
    items = [_hit(row, rank_column is not None) for row in rows[:limit]]
    if before is not None:
        items.reverse()
    return SearchPage(items, len(rows) > limit, total)


# ------------------------------------------------------------------------------- query building

_VERSION = ProtocolVersion


def _matching(dialect: str, query: ProtocolQuery) -> tuple[Select[Any], Any, Any]:
    """The unordered statement of all matches, its protocol-sequence column and its rank column."""
    at = query.as_of or utcnow()
    if query.status == "draft":
        newest: Any = Protocol.latest_version
        if query.as_of is not None:
            older = aliased(ProtocolVersion)
            newest = (select(func.max(older.version))
                      .where(older.protocol_id == Protocol.id, older.recorded_at <= at)
                      .scalar_subquery())
        seq_column: Any = Protocol.seq.label("protocol_seq")
        statement = (select(seq_column, *VERSION_COLUMNS)
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
        matches = fulltext.matches(dialect, fulltext.MatchQuery.parse(query.q)).subquery("fts")
        statement = statement.join(matches, matches.c.seq == _VERSION.seq).add_columns(
            matches.c.rank.label("rank"))
        rank_column = matches.c.rank
    return statement, order_seq, rank_column


def _term(kind: str, values: Sequence[str]) -> ColumnElement[bool]:
    """The version being looked at has a ``search_terms`` row ``(kind, one of values)``."""
    term = aliased(SearchTerm)
    return (select(literal(1))
            .where(term.protocol_id == _VERSION.protocol_id, term.version == _VERSION.version,
                   term.kind == kind, term.value.in_(list(values)))
            .exists())


def _filters(query: ProtocolQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.drug is not None:
        conditions.append(_term("drug", [query.drug.strip().casefold()]))
    if query.rxnorm_cui is not None:
        conditions.append(_term("rxnorm_cui", [query.rxnorm_cui]))
    if query.route is not None:
        conditions.append(_term("route", [query.route]))
    if query.indication is not None:
        systems = [query.indication_system] if query.indication_system else list(INDICATION_SYSTEMS)
        keys = [indication_keys(system, query.indication)[-1] for system in systems]
        conditions.append(_term("indication_key", keys))
    elif query.indication_system is not None:
        conditions.append(_term("indication_system", [query.indication_system]))
    if query.fda_status is not None:
        conditions.append(_term("fda_status", [query.fda_status]))
    if query.dea_schedule is not None:
        conditions.append(_term("dea_schedule", [query.dea_schedule]))
    if query.rems_required is not None:
        conditions.append(_term("rems_required", ["true" if query.rems_required else "false"]))
    if query.updated_since is not None:
        later = aliased(ProtocolVersion)
        conditions.append(select(literal(1))
                          .where(later.protocol_id == _VERSION.protocol_id,
                                 later.recorded_at > query.updated_since)
                          .exists())
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


def applicable_protocols(db: Database, *, rxnorm_cuis: Sequence[str], route: str, indications: Sequence[str] = (),
                         at: datetime | None = None) -> list[StoredVersion]:
    """Versions in effect at ``at`` for a medication (any of ``rxnorm_cuis``) given by ``route``.

    Used at order time (CDS Hooks). When the order states reasons and some of these protocols list
    one of them as an indication, only those are returned; otherwise every match for the drug and
    route is (a protocol is not dropped because the order did not say why it was written)."""
    base = [_term("rxnorm_cui", rxnorm_cuis), _term("route", [route])]
    found = _all_in_effect(db, base, at)
    if indications and found:
        narrowed = _all_in_effect(db, [*base, _term("indication", [code.upper() for code in indications])], at)
        if narrowed:
            return narrowed
    return found


def _all_in_effect(db: Database, conditions: list[ColumnElement[bool]], at: datetime | None) -> list[StoredVersion]:
    statement, seq, _ = _matching(db.dialect, ProtocolQuery(as_of=at))
    with db.read() as session:
        rows = session.execute(statement.where(*conditions).order_by(seq.desc())).all()
    return [stored_version(row) for row in rows]
