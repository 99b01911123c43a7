"""FHIR search, history and export reads over the versioned registry (no Flask).

What FHIR calls the *current* ``MedicationKnowledge/{id}`` is the protocol version in effect now.
Two rules follow from the FHIR semantics the API promises:

* a retirement is FHIR's *delete*: a retired protocol reads as 410, is absent from searches and
  exports, and appears in history as a DELETE entry;
* drafts are never published: they are absent from history, vread, search and export, so a draft's
  doses can never reach an EHR through this face.

Search parameters are parsed here from the raw ``(name, value)`` pairs of the query string, because
FHIR's grammar (repeats mean AND, commas mean OR, ``name:modifier``, ``ge2024-01`` prefixes and
precision ranges) is not a form schema. Parameters this server does not implement are *collected*,
not raised, so the caller can apply ``Prefer: handling=strict|lenient``; malformed values of
supported parameters raise ``InvalidSearch`` whatever the handling.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, case, exists, false, func, or_, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from protocols import fhir, paging, terminology, versioning
from protocols.db import Database
from protocols.errors import DomainError, ProtocolNotFound, VersionNotFound
from protocols.models import MAX_SEQ, MAX_VERSION, EffectivePeriod, ProtocolVersion, SearchTerm
from protocols.paging import newest_first_window
from protocols.timeutil import format_rfc3339, parse_rfc3339

DEFAULT_COUNT = 20
MAX_COUNT = 100
PUBLISHED = ("active", "retired")

#: When a version is published over FHIR (its ``meta.lastUpdated``, what ``_lastUpdated`` and ``_since``
#: compare): when it was recorded or, for one recorded ahead of its start, when it takes effect. FHIR has
#: one line of versions, the newest being what a read returns; a version scheduled for later was already
#: the newest in ``_history`` and ``vread`` (a dose not valid until 2031, ``status: active``), and when it
#: took effect no ``_lastUpdated`` or ``_since`` poll saw the change, its recording time being older than
#: the poll (found by a probe). A back-dated correction is published when recorded.
PUBLISHED_AT = case((ProtocolVersion.effective_from > ProtocolVersion.recorded_at, ProtocolVersion.effective_from),
                    else_=ProtocolVersion.recorded_at)

_CANCELLING = aliased(ProtocolVersion)
#: A version scheduled for later and cancelled before it took effect (a later version at the same
#: instant, recorded before it: the README's way to cancel one) is never in effect, and is never
#: published: once its start passed it appeared in ``_history`` and ``vread`` as ``active`` (found by a
#: probe).
NEVER_IN_EFFECT = exists(select(_CANCELLING.version).where(
    _CANCELLING.protocol_id == ProtocolVersion.protocol_id, _CANCELLING.version > ProtocolVersion.version,
    _CANCELLING.status.in_(PUBLISHED), _CANCELLING.effective_from == ProtocolVersion.effective_from,
    _CANCELLING.recorded_at <= ProtocolVersion.effective_from))

#: MedicationKnowledge.status code -> protocol statuses whose *current* version maps to it. Retired
#: protocols are deleted in FHIR terms, so no current resource is ever ``inactive``.
_STATUS_FILTER: dict[str, frozenset[str]] = {
    "active": frozenset({"active"}),
    "inactive": frozenset(),
    "entered-in-error": frozenset(),
}

#: Search parameters of ``GET MedicationKnowledge`` (with their FHIR definitions) and result controls.
SEARCH_PARAMS: dict[str, tuple[str, str, str]] = {
    "_id": ("token", "http://hl7.org/fhir/SearchParameter/Resource-id",
            "Protocol id; a comma separates alternatives."),
    "_lastUpdated": ("date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
                     "When the version in effect was published: recorded, or, for a version recorded "
                     "ahead of its start, when it took effect; prefixes eq, ne, gt, lt, ge, le; "
                     "precision from year to seconds (dates, and times without a zone, are UTC). Repeat to AND."),
    "code": ("token", "http://hl7.org/fhir/SearchParameter/MedicationKnowledge-code",
             f"RxNorm CUI as {fhir.RXNORM}|<cui>, <cui> (any system) or {fhir.RXNORM}| (has a CUI); "
             "a comma separates alternatives. Codes of other systems match nothing."),
    "status": ("token", "http://hl7.org/fhir/SearchParameter/MedicationKnowledge-status",
               "active | inactive | entered-in-error. Every current resource is active: a retired "
               "protocol is deleted (410), drafts are not published."),
}
#: Parameters of the HTTP exchange every FHIR read takes (format, indentation): read by the HTTP layer,
#: kept in the links; named once (a review: adding ``_pretty`` took five edits).
HTTP_PARAMS = ("_format", "_pretty")
RESULT_PARAMS = ("_count", "_cursor", *HTTP_PARAMS)
HISTORY_PARAMS = ("_count", "_since", "_cursor", *HTTP_PARAMS)


class InvalidSearch(DomainError):
    """A supported parameter with a malformed value; ``details['param']`` names it, and ``details['also']``
    holds the request's other malformed parameters (each an ``InvalidSearch``), so that one answer names
    every one of them (:func:`raise_all`)."""


#: The most problems one answer lists: 3,000 repeats of ``_count`` were 3,000 issues (found in review).
MAX_PROBLEMS = 20


def raise_all(problems: Sequence[InvalidSearch]) -> None:
    """Raise the first problem carrying the others: a client fixing ``_count`` was told of a bad
    ``_cursor`` only on its next request (found by a probe). A problem repeated (the same parameter,
    the same message) is listed once, and past :data:`MAX_PROBLEMS` the rest are counted, not listed."""
    seen: set[tuple[object, str]] = set()
    unique = []
    for problem in problems:
        key = (problem.details.get("param"), problem.message)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    if len(unique) > MAX_PROBLEMS:
        rest = unique[MAX_PROBLEMS - 1:]
        unique = [*unique[:MAX_PROBLEMS - 1],
                  InvalidSearch(f"{rest[0].message}; and {len(rest) - 1} more malformed parameters, not listed",
                                param=rest[0].details.get("param"))]
    if unique:
        first = unique[0]
        raise InvalidSearch(first.message, param=first.details.get("param"), also=tuple(unique[1:]))


@dataclass(frozen=True)
class Unsupported:
    param: str
    reason: str


@dataclass(frozen=True)
class DateBound:
    prefix: str
    start: datetime
    end: datetime  # exclusive end of the value's precision range


@dataclass
class SearchSpec:
    ids: list[frozenset[str]] = field(default_factory=list)
    codes: list[tuple[frozenset[str], bool]] = field(default_factory=list)  # (CUIs, "any RxNorm CUI")
    statuses: list[frozenset[str]] = field(default_factory=list)
    last_updated: list[DateBound] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    cursor: tuple[int, str] | None = None
    applied: list[tuple[str, str]] = field(default_factory=list)  # echoed in self/next links
    unsupported: list[Unsupported] = field(default_factory=list)

    @property
    def protocol_statuses(self) -> frozenset[str]:
        allowed = frozenset({"active"})
        for alternatives in self.statuses:
            allowed &= alternatives
        return allowed


# ------------------------------------------------------------------------------- parsing


def parse_search(pairs: Sequence[tuple[str, str]]) -> SearchSpec:
    """The search the parameters ask for; every malformed one is named in one :class:`InvalidSearch`."""
    spec = SearchSpec()
    seen_controls: set[str] = set()
    problems: list[InvalidSearch] = []
    for raw_name, value in pairs:
        try:
            _add_search_param(spec, seen_controls, raw_name, value)
        except InvalidSearch as exc:
            problems.append(exc)
    raise_all(problems)
    return spec


def _add_search_param(spec: SearchSpec, seen_controls: set[str], raw_name: str, value: str) -> None:
    name, _, modifier = raw_name.partition(":")
    if name in SEARCH_PARAMS and modifier:
        spec.unsupported.append(Unsupported(raw_name, f"modifier ':{modifier}' is not supported"))
        return
    if name in RESULT_PARAMS:
        if modifier or name in seen_controls:
            raise InvalidSearch(f"'{raw_name}' may appear once, without a modifier", param=raw_name)
        seen_controls.add(name)
    if name == "_id":  # an id that is not a well-formed FHIR id cannot exist: it matches nothing
        spec.ids.append(frozenset(v for v in value.split(",") if is_resource_id(v)))
    elif name == "code":
        spec.codes.append(_parse_codes(value))
    elif name == "status":
        spec.statuses.append(_parse_statuses(value))
    elif name == "_lastUpdated":
        bound = _parse_date_param(name, value)
        if isinstance(bound, Unsupported):
            spec.unsupported.append(bound)
            return
        spec.last_updated.append(bound)
    elif name == "_count":
        spec.count = parse_count(value)
        value = str(spec.count)
    elif name == "_cursor":
        spec.cursor = decode_cursor(SEARCH_CURSOR, value)
        return  # links carry their own cursor
    elif name not in HTTP_PARAMS:  # checked by the HTTP layer and kept in the links
        spec.unsupported.append(Unsupported(raw_name, f"parameter '{raw_name}' is not supported"))
        return
    spec.applied.append((raw_name, value))


#: A FHIR id (R4 datatypes: ``[A-Za-z0-9\-\.]{1,64}``): a resource's, a patient's in a CDS Hooks context.
RESOURCE_ID_PATTERN = r"[A-Za-z0-9.-]{1,64}"
_RESOURCE_ID = re.compile(RESOURCE_ID_PATTERN)


def is_resource_id(value: str) -> bool:
    """FHIR's id grammar; anything else names no resource (and never reaches the database)."""
    return bool(_RESOURCE_ID.fullmatch(value))


def parse_count(value: str) -> int:
    """``_count``: 0 asks for the total only; above ``MAX_COUNT`` the server pages at ``MAX_COUNT``."""
    if not re.fullmatch(r"[0-9]{1,6}", value):
        # Said in full: 1000000 is a non-negative integer, and the message said it was not (a probe).
        raise InvalidSearch("_count must be a non-negative integer of at most 6 digits", param="_count")
    return min(int(value), MAX_COUNT)


def _parse_codes(value: str) -> tuple[frozenset[str], bool]:
    cuis: set[str] = set()
    any_cui = False
    for token in value.split(","):
        if not token:
            raise InvalidSearch("empty token in 'code'", param="code")
        system, bar, code = token.rpartition("|")
        if not bar:  # bare code: any system
            cuis.add(token)
        elif system == fhir.RXNORM and code:
            cuis.add(code)
        elif system == fhir.RXNORM:
            any_cui = True
        elif not system and not code:
            raise InvalidSearch("'|' alone is not a token", param="code")
        # other systems, or "|code" (no system): valid, and matches nothing here
    # A value that is not a well-formed RxCUI cannot match (and never reaches the database).
    return frozenset(cui for cui in cuis if terminology.RXNORM_PATTERN.fullmatch(cui)), any_cui


def _parse_statuses(value: str) -> frozenset[str]:
    allowed: set[str] = set()
    for token in value.split(","):
        system, bar, code = token.rpartition("|")
        if bar and system not in ("", fhir.MEDICATION_KNOWLEDGE_STATUS):
            continue  # a foreign system matches nothing
        if code not in _STATUS_FILTER:
            raise InvalidSearch(f"status '{code}' is not one of {', '.join(_STATUS_FILTER)}", param="status")
        allowed |= _STATUS_FILTER[code]
    return frozenset(allowed)


#: A UTC offset as FHIR writes one: ``Z``, or at most 14 hours either way.
_FHIR_ZONE = r"Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)"
_DATE = re.compile(
    r"^(?P<prefix>[a-z]{2})?(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?P<fraction>\.[0-9]{1,9})?)?"
    rf"(?P<zone>{_FHIR_ZONE}))?)?)?$")
#: A search value may leave out the zone of a time (R4 search.html#date: the server's own zone is
#: assumed, here UTC), as the CapabilityStatement says; ``ge2026-12-05T06:52:25`` was a 400 (probe).
#: A resource's dateTime (:func:`date_start`) still needs its zone, as the dateTime type requires.
_SEARCH_DATE = re.compile(_DATE.pattern.replace(f"(?P<zone>{_FHIR_ZONE})", f"(?P<zone>{_FHIR_ZONE})?"))
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")


def _parse_date_param(name: str, value: str) -> DateBound | Unsupported:
    match = _SEARCH_DATE.fullmatch(value)
    if not match:
        hint = ""
        if _SEARCH_DATE.fullmatch(value.replace(" ", "+")):
            # An unencoded '+' in a query string reads as a space (HTML form encoding); the client meant
            # a UTC offset. Not guessed: the value is refused, with what to send instead.
            hint = " (a '+' in a query string reads as a space: send the offset's '+' as %2B)"
        raise InvalidSearch(f"{name} must be a FHIR date or dateTime with an optional prefix "
                            f"(e.g. ge2024-01-31 or lt2024-01-31T12:00:00Z){hint}", param=name)
    prefix = match["prefix"] or "eq"
    if prefix not in _DATE_PREFIXES:
        if prefix in ("sa", "eb", "ap"):
            return Unsupported(name, f"prefix '{prefix}' is not supported on {name}")
        raise InvalidSearch(f"'{prefix}' is not a search prefix", param=name)
    try:
        start, end = _date_range(match)
    except ValueError as exc:
        raise InvalidSearch(f"{name}: {exc}", param=name) from exc
    return DateBound(prefix, start, end)


def _date_range(match: re.Match[str]) -> tuple[datetime, datetime]:
    """The half-open UTC range ``[start, end)`` a value of this precision stands for; ``ValueError``
    for a date that does not exist (2024-02-30) or a range past what datetime holds (9999-12-31,
    0001-01-01T00:00:00+14:00: an OverflowError, which was a 500)."""
    try:
        return _date_range_of(match)
    except OverflowError as exc:
        raise ValueError("outside the range of dates this server handles") from exc


def _date_range_of(match: re.Match[str]) -> tuple[datetime, datetime]:
    year = int(match["year"])
    if match["month"] is None:
        return datetime(year, 1, 1), _until(lambda: datetime(year + 1, 1, 1))
    month = int(match["month"])
    if match["day"] is None:
        return datetime(year, month, 1), _until(lambda: datetime(year + (month == 12), month % 12 + 1, 1))
    day = datetime(year, month, int(match["day"]))
    if match["hour"] is None:
        return day, _until(lambda: day + timedelta(days=1))
    zone = match["zone"]
    offset = timedelta(0) if zone in (None, "Z") else (1 if zone[0] == "+" else -1) * timedelta(
        hours=int(zone[1:3]), minutes=int(zone[4:6]))
    start = day.replace(hour=int(match["hour"]), minute=int(match["minute"]), second=int(match["second"] or 0)) - offset
    if match["second"] is None:
        return start, _until(lambda: start + timedelta(minutes=1))
    if match["fraction"]:
        first, after = _microsecond_range(match["fraction"][1:])
        # rounded up, the start of .9999999 in the last second of 9999 is past what datetime holds (a review)
        return (_until(lambda: start + timedelta(microseconds=first)),
                _until(lambda: start + timedelta(microseconds=after)))
    return start, _until(lambda: start + timedelta(seconds=1))


def _until(end: Callable[[], datetime]) -> datetime:
    """Where a range that starts within year 9999 ends (or, rounded up, starts): past it, at the end of what
    datetime holds. FHIR
    clients write ``lt9999-12-31`` as an open upper bound, and it was a 400 ("year 10000 is out of range",
    Python's own words; found by a probe); no stored instant is that late."""
    try:
        return end()
    except (ValueError, OverflowError):
        return datetime.max


def _microsecond_range(digits: str) -> tuple[int, int]:
    """The stored instants (whole microseconds into the second) that a fraction of ``digits`` stands
    for, as ``[first, after)``. Up to six digits that is the fraction and one unit of its last digit.
    Beyond six (a .NET client sends seven, ``2024-03-01T09:15:30.1234567Z``, and Java nine; at most
    nine, as FHIR R5's instant; an adversarial probe found them refused) both ends are rounded up to
    the next whole microsecond, so that every prefix compares exactly: ``.1234567`` stands for no
    stored instant (``eq`` finds nothing, ``ge`` starts at ``.123457``), ``.1234560`` for ``.123456``
    alone."""
    scale = 10 ** len(digits)
    value = int(digits)
    return -(-value * 10**6 // scale), -(-(value + 1) * 10**6 // scale)


def date_start(value: str) -> datetime | None:
    """Where a FHIR date or dateTime of any precision (``2024``, ``2024-06-01``,
    ``2024-06-01T10:00:00+09:00``) starts, as naive UTC; None when ``value`` is not one."""
    match = _DATE.fullmatch(value)
    if match is None or match["prefix"] is not None:
        return None
    try:
        return _date_range(match)[0]
    except ValueError:  # 2024-02-30 and the like
        return None


_FHIR_OFFSET = re.compile(rf"(?:{_FHIR_ZONE})$")


def parse_instant(name: str, value: str) -> datetime:
    """An instant parameter such as ``_since`` (at or after it): full date-time with a zone of at most
    ±14:00 (FHIR's ``instant``; ``_since`` took +23:59 where ``_lastUpdated`` refused +14:01, found by an
    adversarial probe); a fraction past microseconds is rounded up, so that the bound compares exactly
    with stored instants."""
    try:
        if _FHIR_OFFSET.search(value) is None:
            # A date alone has no time and no offset at all: it was told its offset was beyond ±14:00 (a probe).
            if not re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                raise ValueError("not a date-time")
            if "T" not in value.upper():
                raise ValueError("no time and zone")
            if re.search(r"[+-][0-9]{2}:[0-9]{2}$", value):
                raise ValueError("offset beyond FHIR's ±14:00")
            # +5, +0100, a lowercase z: a zone FHIR's instant does not write that way (a review)
            raise ValueError("the zone must be Z or +hh:mm/-hh:mm" if re.search(r"(?:[Zz]|[+-][0-9:]*)$", value)
                             else "no zone")
        return parse_rfc3339(value, finer="up")
    except ValueError as exc:
        # Says what was wrong: a year outside 1900-9998 was blamed on the offset (a review).
        raise InvalidSearch(f"{name} must be an instant such as 2024-01-31T12:00:00Z, with a UTC offset of at "
                            f"most ±14:00 ({exc})", param=name) from exc


# -------------------------------------------------------------------------------- cursors


#: The listing a cursor was issued by, written into it and checked when it comes back: a ``_history``
#: cursor of one protocol was accepted by search (its version number read as a search position) and by
#: another protocol's ``_history`` (a wrong page, with a ``previous`` link on its first page), found by
#: an adversarial probe. The REST listings bind theirs the same way, with the same codec (protocols/paging.py).
SEARCH_CURSOR = "fhir-search"


def history_cursor(protocol_id: str) -> str:
    """The cursor kind of one protocol's ``_history``."""
    return f"fhir-history:{protocol_id}"


def decode_cursor(kind: str, token: str, max_key: int = MAX_SEQ) -> tuple[int, str]:
    """``(key, direction)`` of a cursor the listing ``kind`` issued (:func:`paging.decode_cursor`),
    where direction is ``n`` (towards older) or ``p`` (towards newer); the key must be an integer that
    fits its column (``max_key``): a forged larger one overflowed the driver (a 500)."""
    try:
        key, direction, _ = paging.decode_cursor(kind, token)
        if not paging.is_key(key, max_key):
            raise paging.InvalidCursor("wrong cursor key")
    except paging.InvalidCursor as exc:
        raise InvalidSearch("_cursor is not a cursor this listing issued; follow the Bundle links",
                            param="_cursor") from exc
    return key, direction


# ---------------------------------------------------------------------------------- search


def _filters(spec: SearchSpec) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    for ids in spec.ids:
        filters.append(EffectivePeriod.protocol_id.in_(sorted(ids)))
    for cuis, any_cui in spec.codes:
        term = select(SearchTerm.id).where(SearchTerm.protocol_id == EffectivePeriod.protocol_id,
                                           SearchTerm.version == EffectivePeriod.version,
                                           SearchTerm.kind == "rxnorm_cui")
        if any_cui:
            filters.append(exists(term))
        elif cuis:
            filters.append(exists(term.where(SearchTerm.value.in_(sorted(cuis)))))
        else:
            filters.append(false())
    for bound in spec.last_updated:
        recorded = PUBLISHED_AT
        filters.append({
            "eq": and_(recorded >= bound.start, recorded < bound.end),
            "ne": or_(recorded < bound.start, recorded >= bound.end),
            "gt": recorded >= bound.end,
            "lt": recorded < bound.start,
            "ge": recorded >= bound.start,
            "le": recorded < bound.end,
        }[bound.prefix])
    return filters


def search(db: Database, spec: SearchSpec, *, at: datetime, session: Session | None = None) -> versioning.EffectivePage:
    """One page of current resources matching ``spec``, newest protocol first (keyset on creation);
    read in ``session`` when given (:func:`versioning.snapshot`, shared with :func:`count`)."""
    statuses = spec.protocol_statuses
    if not statuses or spec.count == 0:
        return versioning.EffectivePage([], False)
    after, before = (None, None)
    if spec.cursor is not None:
        key, direction = spec.cursor
        after, before = (key, None) if direction == "n" else (None, key)
    return versioning.list_effective(db, at=at, limit=spec.count, after_seq=after, before_seq=before,
                                     statuses=sorted(statuses), extra_filters=_filters(spec), session=session)


def search_with_total(db: Database, spec: SearchSpec, *, at: datetime) -> tuple[versioning.EffectivePage, int]:
    """A search page and its Bundle ``total``, read in one snapshot (:func:`count` says why)."""
    with versioning.snapshot(db) as session:
        return search(db, spec, at=at, session=session), count(db, spec, at=at, session=session)


def count(db: Database, spec: SearchSpec, *, at: datetime, session: Session | None = None) -> int:
    """How many current resources match ``spec`` (the Bundle ``total``); mirrors ``list_effective``.

    Read in the page's ``session``: in separate reads a protocol retired or revived between the two
    made a complete single page disagree with its own total (23 against 24 entries; adversarial probe)."""
    statuses = spec.protocol_statuses
    if not statuses:
        return 0
    query = (
        select(func.count())
        .select_from(EffectivePeriod)
        .join(ProtocolVersion, and_(ProtocolVersion.protocol_id == EffectivePeriod.protocol_id,
                                    ProtocolVersion.version == EffectivePeriod.version))
        .where(EffectivePeriod.valid_from <= at,
               or_(EffectivePeriod.valid_until.is_(None), EffectivePeriod.valid_until > at),
               EffectivePeriod.status.in_(sorted(statuses)), *_filters(spec))
    )
    with nullcontext(session) if session is not None else db.read() as reading:
        return int(reading.execute(query).scalar_one())


def iter_current(db: Database, *, at: datetime, page_size: int = MAX_COUNT) -> Iterator[versioning.StoredVersion]:
    """Every current (active, in effect at ``at``) version, read in keyset pages of ``page_size``:
    memory stays bounded by one page however large the catalog is. The pages are read in one snapshot:
    a protocol retired from a past date while the export streamed was left out of it, though it was
    current when the export began (found by a probe)."""
    after: int | None = None
    with versioning.snapshot(db) as session:
        while True:
            page = versioning.list_effective(db, at=at, limit=page_size, after_seq=after, session=session)
            for row in page.items:
                yield row.version
            if not page.has_more or not page.items:
                return
            after = page.items[-1].protocol_seq


# --------------------------------------------------------------------------------- history

@dataclass(frozen=True)
class HistoryPage:
    items: list[versioning.StoredVersion]
    has_more: bool
    total: int
    #: The first published version: over FHIR, the resource's create.
    first_published: int


def history(db: Database, protocol_id: str, *, at: datetime, limit: int, before_version: int | None = None,
            after_version: int | None = None, since: datetime | None = None) -> HistoryPage:
    """Versions published by ``at`` (active and retired, taking effect by then), newest first; drafts,
    and versions scheduled to take effect later, are left out (see :data:`PUBLISHED_AT`).

    A page holds versions older than ``before_version`` (a ``next`` link) or, read backwards, the
    ``limit`` versions just newer than ``after_version`` (a ``previous`` link); either way newest first.
    ``has_more`` says whether more lie in the direction read.

    Raises ``ProtocolNotFound`` for an id that never existed, and for one with drafts only: over FHIR
    that protocol does not exist yet (its read is a 404 too).

    Read in one snapshot: on PostgreSQL each statement of a READ COMMITTED read sees its own state, and a
    version appended between the count and the rows made a complete page hold 18 entries against a
    ``total`` of 17 (found by a probe, 29 times in 783 reads under concurrent writes)."""
    versioning.latest(db, protocol_id)  # existence check, raises ProtocolNotFound
    where = [ProtocolVersion.protocol_id == protocol_id, ProtocolVersion.status.in_(PUBLISHED),
             ProtocolVersion.effective_from <= at, ~NEVER_IN_EFFECT]
    with versioning.snapshot(db) as session:
        first_published = session.execute(select(func.min(ProtocolVersion.version)).where(*where)).scalar()
        if first_published is None:
            raise ProtocolNotFound(f"MedicationKnowledge/{protocol_id} has no published version (drafts, and "
                                   "versions that take effect later, are not published over FHIR)",
                                   protocol_id=protocol_id)
        if since is not None:
            where.append(since <= PUBLISHED_AT)
        total = int(session.execute(select(func.count()).select_from(ProtocolVersion).where(*where))
                    .scalar_one())
        query = newest_first_window(select(*versioning.VERSION_COLUMNS).where(*where), ProtocolVersion.version,
                                    older_than=before_version, newer_than=after_version)
        rows = session.execute(query.limit(limit + 1)).all()
    items = [versioning.stored_version(r) for r in rows[:limit]]
    if after_version is not None:
        items.reverse()
    return HistoryPage(items, len(rows) > limit, total, int(first_published))


def published_version(db: Database, protocol_id: str, version: int, *, at: datetime) -> versioning.StoredVersion:
    """One version for vread; a draft, a version that takes effect after ``at``, or one cancelled before
    it took effect (:data:`NEVER_IN_EFFECT`) is reported as not found (none is published)."""
    stored = versioning.get_version(db, protocol_id, version)
    if stored.status not in PUBLISHED:
        raise VersionNotFound(f"MedicationKnowledge/{protocol_id} has no published version {version} "
                              "(drafts are not published over FHIR)", protocol_id=protocol_id)
    if stored.effective_from > at:
        raise VersionNotFound(f"MedicationKnowledge/{protocol_id} version {version} is not published yet: it "
                              f"takes effect at {format_rfc3339(stored.effective_from)}", protocol_id=protocol_id)
    if _never_in_effect(db, protocol_id, version):
        raise VersionNotFound(f"MedicationKnowledge/{protocol_id} version {version} was never published: it was "
                              "cancelled before it took effect", protocol_id=protocol_id)
    return stored


def _never_in_effect(db: Database, protocol_id: str, version: int) -> bool:
    with db.read() as session:
        return bool(session.execute(select(NEVER_IN_EFFECT).where(
            ProtocolVersion.protocol_id == protocol_id, ProtocolVersion.version == version)).scalar())


@dataclass
class HistorySpec:
    count: int = DEFAULT_COUNT
    since: datetime | None = None
    before_version: int | None = None
    after_version: int | None = None
    applied: list[tuple[str, str]] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)


def parse_history(pairs: Sequence[tuple[str, str]], protocol_id: str) -> HistorySpec:
    """Parameters of ``protocol_id``'s ``_history``: ``_count``, ``_since`` (instant), ``_cursor`` (one
    this history issued), ``_format``."""
    spec = HistorySpec()
    seen: set[str] = set()
    problems: list[InvalidSearch] = []
    for name, value in pairs:
        if name not in HISTORY_PARAMS:
            spec.unsupported.append(Unsupported(name, f"parameter '{name}' is not supported on _history"))
            continue
        try:
            _add_history_param(spec, seen, protocol_id, name, value)
        except InvalidSearch as exc:
            problems.append(exc)
    raise_all(problems)
    return spec


def _add_history_param(spec: HistorySpec, seen: set[str], protocol_id: str, name: str, value: str) -> None:
    if name in seen:
        raise InvalidSearch(f"'{name}' may appear once", param=name)
    seen.add(name)
    if name == "_count":
        spec.count = parse_count(value)
        value = str(spec.count)
    elif name == "_since":
        spec.since = parse_instant(name, value)
    elif name == "_cursor":
        key, direction = decode_cursor(history_cursor(protocol_id), value, max_key=MAX_VERSION)
        if direction == "n":
            spec.before_version = key
        else:
            spec.after_version = key
        return
    spec.applied.append((name, value))
