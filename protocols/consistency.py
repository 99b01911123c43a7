"""Derived rows checked against the history they are derived from (``flask protocols check``).

Why: the listing, search, FHIR search and CDS Hooks pick the version in effect from
``effective_periods`` and find versions through ``search_terms``; single reads go to
``protocol_versions``. Those derived rows are written in the same transaction as each version, but
nothing in the database stops a later ``UPDATE effective_periods SET version = 1``: one statement
made the listing and CDS judge orders against a superseded version while ``GET /v1/protocols/{id}``
served the current one (found by an adversarial probe). Stored versions are guarded by triggers; the
derived rows are checked here against what the history defines (:func:`versioning.reference_periods`,
:func:`indexing.search_terms`), so that an operator learns of such a change and can rebuild.

Read-only, in one snapshot (REPEATABLE READ on PostgreSQL): read statement by statement, a version
committed between two reads was reported as a damaged protocol (a review). Heads and periods are
held in memory (a few rows per protocol); documents and terms are read in batches of :data:`BATCH`
versions. Full-text rows are not compared.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import groupby

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocols.db import Database
from protocols.indexing import search_terms
from protocols.models import ChangeCounter, EffectivePeriod, Protocol, ProtocolVersion, SearchTerm
from protocols.record import split_document
from protocols.versioning import reference_periods, snapshot

BATCH = 1000


#: What :func:`derived_problems` names for a problem of the changes-feed counter (no protocol's own).
COUNTER = "(changes feed)"


def derived_problems(db: Database, report: Callable[[str, str], None]) -> int:
    """``report(protocol_id, problem)`` for every protocol whose head, effective periods or search
    terms differ from what its stored versions define, and ``report(COUNTER, problem)`` for a changes-feed
    counter behind the stored versions; returns how many protocols were checked."""
    checked = 0
    with snapshot(db) as session:
        heads = {protocol_id: (seq, latest) for protocol_id, seq, latest in
                 session.execute(select(Protocol.id, Protocol.seq, Protocol.latest_version))}
        stored: dict[str, set[tuple[int, int, str, datetime, datetime | None]]] = defaultdict(set)
        for row in session.execute(select(EffectivePeriod.protocol_id, EffectivePeriod.version,
                                          EffectivePeriod.protocol_seq, EffectivePeriod.status,
                                          EffectivePeriod.valid_from, EffectivePeriod.valid_until)):
            stored[row[0]].add(row[1:])
        versions = session.execute(
            select(ProtocolVersion.protocol_id, ProtocolVersion.version, ProtocolVersion.status,
                   ProtocolVersion.effective_from)
            .order_by(ProtocolVersion.protocol_id, ProtocolVersion.version))
        for protocol_id, group in groupby(versions, key=lambda row: row[0]):
            checked += 1
            rows = [(version, status, effective_from) for _, version, status, effective_from in group]
            seq, latest = heads.pop(protocol_id, (None, None))
            if latest != rows[-1][0]:
                # The head may advance by one without a version behind it (the trigger cannot see the
                # version its own write inserts next): the protocol then cannot be revised (probe).
                report(protocol_id, f"its head names version {latest}, but its newest stored version is {rows[-1][0]}")
            wanted = {(p["version"], seq, p["status"], p["valid_from"], p["valid_until"])
                      for p in reference_periods(rows, protocol_id)}
            if stored.pop(protocol_id, set()) != wanted:
                report(protocol_id, "effective_periods differ from what its versions define (the listing, search "
                                    "and CDS Hooks would not use the version in effect)")
        for protocol_id in stored:  # periods of a protocol without versions
            report(protocol_id, "effective_periods name a protocol that has no stored version")
        for protocol_id in heads:
            report(protocol_id, "its head names a protocol that has no stored version")
        for protocol_id, version in _term_mismatches(session):
            report(protocol_id, f"search_terms of version {version} differ from what its document defines")
        counter = session.execute(select(ChangeCounter.value).where(ChangeCounter.id == 1)).scalar()
        newest = session.execute(select(func.max(ProtocolVersion.seq))).scalar() or 0
        if counter is None or counter < newest:
            # Every write would take a seq already stored, fail, and roll its increment back: writes stop
            # until the row is mended (migration 0011 refuses moving it back; found by a probe).
            report(COUNTER, f"change_counter is {counter}, behind the newest stored version's seq {newest}: "
                            "every write would collide with a stored version and fail")
    return checked


def _term_mismatches(session: Session) -> Iterator[tuple[str, int]]:
    """``(protocol id, version)`` of every version whose stored search terms differ from its document's."""
    last = 0
    while True:
        rows = session.execute(
            select(ProtocolVersion.seq, ProtocolVersion.protocol_id, ProtocolVersion.version,
                   ProtocolVersion.status, ProtocolVersion.document)
            .where(ProtocolVersion.seq > last).order_by(ProtocolVersion.seq).limit(BATCH)).all()
        if not rows:
            return
        upto = rows[-1][0]
        terms: dict[tuple[str, int], set[tuple[str, str]]] = defaultdict(set)
        for protocol_id, version, kind, value in session.execute(
                select(SearchTerm.protocol_id, SearchTerm.version, SearchTerm.kind, SearchTerm.value)
                .join(ProtocolVersion, (ProtocolVersion.protocol_id == SearchTerm.protocol_id)
                      & (ProtocolVersion.version == SearchTerm.version))
                .where(ProtocolVersion.seq > last, ProtocolVersion.seq <= upto)):
            terms[(protocol_id, version)].add((kind, value))
        for _, protocol_id, version, status, document in rows:
            _, content = split_document(json.loads(document))
            wanted = {(kind, value[:200]) for kind, value in search_terms(content, status)}
            if terms.get((protocol_id, version), set()) != wanted:
                yield protocol_id, version
        last = upto

