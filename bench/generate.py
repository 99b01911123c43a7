"""Generate a large, realistic protocol catalog for the benchmarks.

Why not POST 100,000 records through the API? It would take longer than the whole benchmark
budget. Instead every record is validated by the wire schema (``ProtocolCreateSchema``, so the
content is exactly what the API would accept and store) and written through the same storage code
path as ``versioning.create``/``versioning.revise`` (``versioning._append``: document bytes, ETag,
content hash, search terms, effective periods, change sequence), many protocols per transaction.
``tests/bench/test_bench_smoke.py`` checks that this produces the same rows as ``versioning.create``.

Shapes vary the way a real formulary does: 1-3 indications (ICD-10-CM or SNOMED CT), 1-3 routes,
1-4 dosing ranges with frequencies, durations and per-period maxima, brand names, DEA schedules,
FDA status mixes, 1-3 sources, and about one protocol in ten with a second version.

Usage: ``python bench/generate.py DATABASE_URL COUNT [--start N] [--batch 500]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from protocols import fulltext, record, terminology, versioning
from protocols.db import Database, make_database
from protocols.indexing import search_terms
from protocols.models import Base, ChangeCounter, EffectivePeriod, Protocol, ProtocolVersion, SearchTerm
from protocols.timeutil import utcnow
from protocols.versioning import WriteContext
from schemas.protocol import ProtocolCreateSchema, split_payload

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

DRUGS = [
    # (generic name, RxCUI, brands, DEA schedule)
    ("ketamine", "6130", ["Ketalar"], "CIII"), ("esketamine", "2201625", ["Spravato"], "CIII"),
    ("sertraline", "36437", ["Zoloft"], None), ("fluoxetine", "4493", ["Prozac", "Sarafem"], None),
    ("escitalopram", "321988", ["Lexapro"], None), ("bupropion", "42347", ["Wellbutrin", "Zyban"], None),
    ("lithium", "6448", ["Lithobid"], None), ("quetiapine", "51272", ["Seroquel"], None),
    ("midazolam", "6960", ["Versed"], "CIV"), ("lorazepam", "6470", ["Ativan"], "CIV"),
    ("morphine", "7052", ["MS Contin"], "CII"), ("fentanyl", "4337", ["Duragesic", "Sublimaze"], "CII"),
    ("buprenorphine", "1819", ["Subutex", "Butrans"], "CIII"), ("naloxone", "7242", ["Narcan"], None),
    ("metformin", "6809", ["Glucophage"], None), ("insulin glargine", "274783", ["Lantus", "Toujeo"], None),
    ("heparin", "5224", [], None), ("enoxaparin", "67108", ["Lovenox"], None),
    ("vancomycin", "11124", ["Vancocin"], None), ("ceftriaxone", "2193", ["Rocephin"], None),
    ("amoxicillin", "723", ["Amoxil"], None), ("methotrexate", "6851", ["Trexall", "Otrexup"], None),
    ("propofol", "8782", ["Diprivan"], None), ("dexmedetomidine", "48937", ["Precedex"], None),
]
UNITS = ["mg", "mg/kg", "ug/kg/min", "mg/kg/h", "ug", "g", "mL"]
PHASES = ["induction", "maintenance", "continuation", "single", "loading", "titration"]
PERIODS = [("P1D", "daily"), ("P1W", "weekly"), ("PT8H", "every 8 hours"), ("PT12H", "every 12 hours")]
INDICATIONS = terminology.indication_list()
ROUTES = sorted(terminology.ROUTES.values(), key=lambda c: c.code)
FDA = ["approved"] * 7 + ["off_label"] * 2 + ["investigational"]
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
ACTOR = "bench-generator"
TABLES = Base.metadata.tables


def protocol_payload(index: int, rng: random.Random) -> dict[str, Any]:
    """One realistic create payload (deterministic for a given index and seed)."""
    name, rxcui, brands, dea = DRUGS[index % len(DRUGS)]
    # Codings come from the service's own terminology lists, so the shapes follow them as they grow.
    indications = [(c.system, c.code, c.display) for c in rng.sample(INDICATIONS, rng.randint(1, 3))]
    routes = [(c.code, c.display) for c in rng.sample(ROUTES, rng.randint(1, 3))]
    dosing = []
    for n in range(rng.randint(1, 4)):
        low = rng.choice([0.5, 1, 2, 5, 10, 25, 50, 100])
        period, text = rng.choice(PERIODS)
        dosing.append({
            "route": routes[n % len(routes)][0], "phase": PHASES[n % len(PHASES)],
            "dose_min": low, "dose_max": low * rng.choice([1, 2, 4]), "unit": rng.choice(UNITS),
            "frequency": {"count": rng.randint(1, 3), "period": period, "text": text},
            "duration": rng.choice([None, "PT40M", "PT2H", "P14D"]),
            "max_per_period": {"value": low * 8, "unit": "mg", "period": "P1D"} if rng.random() < 0.5 else None,
            "instructions": rng.choice([None, "Titrate to response; monitor vital signs for 2 hours.",
                                        "Reduce the dose by half in hepatic impairment."]),
        })
    status = FDA[index % len(FDA)]
    approved = status in ("approved", "off_label")
    return {
        "id": f"{name.replace(' ', '-')}-{index:06d}",
        "title": f"{name.title()} protocol {index} for {indications[0][2][:80]}",
        "summary": f"{name.title()} ({', '.join(brands) or 'generic'}) for {indications[0][2].lower()}; "
                   f"variant {index} of the benchmark catalog, dosing per the prescribing information.",
        "status": "active",
        "effective_from": (EPOCH - timedelta(days=rng.randint(1, 3000))).isoformat(),
        "change_note": "benchmark catalog",
        "drug": {"name": name, "rxnorm_cui": rxcui, "brand_names": brands, "dea_schedule": dea},
        "indications": [{"system": s, "code": c, "display": d} for s, c, d in indications],
        "routes": [{"system": SNOMED, "code": c, "display": d} for c, d in routes],
        "dosing_ranges": dosing,
        "fda_approval": {
            "status": status,
            "application_number": f"NDA{rng.randint(10000, 999999):06d}" if status != "investigational" else None,
            "approval_date": f"{rng.randint(1970, 2024)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
                             if approved else None,
            "approved_indication": indications[0][2] if approved else None,
            "rems_required": rng.random() < 0.1,
            "boxed_warning": rng.choice([None, None, "Respiratory depression", "Suicidal thoughts and behaviors"]),
        },
        "sources": [{"title": f"{name.title()} prescribing information ({n + 1})",
                     "url": f"https://dailymed.nlm.nih.gov/dailymed/search.cfm?query={name.replace(' ', '+')}&n={n}",
                     "supports": ["fda_approval"] if n == 0 else [f"dosing_ranges.{n % len(dosing)}"]}
                    for n in range(rng.randint(1, 3))],
        "verification_notes": [],
    }


TEMPLATES = 499  # distinct validated shapes (a prime, so drugs and shapes mix)


def templates(seed: int = 7) -> list[dict[str, Any]]:
    """Validated payload shapes; record ``i`` is shape ``i % TEMPLATES`` with its own id and text.

    A candidate the wire schema rejects (validation rules evolve) is skipped, never stored."""
    schema = ProtocolCreateSchema()
    shapes: list[dict[str, Any]] = []
    rejected: ValidationError | None = None
    candidate = 0
    while len(shapes) < TEMPLATES and candidate < TEMPLATES * 3:
        try:
            shapes.append(schema.load(protocol_payload(candidate, random.Random(seed * 1_000_003 + candidate))))
        except ValidationError as exc:
            rejected = exc
        candidate += 1
    if len(shapes) < TEMPLATES // 2:
        raise SystemExit(f"bench/generate.py: the schema rejects most shapes: {rejected and rejected.messages}")
    return shapes


def payload_for(index: int, shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Shape ``index % TEMPLATES`` with a unique id, title and summary (plain strings, still valid)."""
    shape = shapes[index % len(shapes)]
    drug = shape["drug"]["name"]
    indication = shape["indications"][0]["display"]
    return {**shape,
            "id": f"{drug.replace(' ', '-')}-{index:06d}",
            "title": f"{drug.title()} protocol {index} for {indication[:80]}",
            "summary": f"{drug.title()} for {indication.lower()}; variant {index} of the benchmark "
                       f"catalog, dosing per the prescribing information."}


def has_second_version(index: int) -> bool:
    return index % 10 == 3


def second_version(content: dict[str, Any]) -> dict[str, Any]:
    return {**content, "summary": content["summary"] + " Revised after label update."}


@dataclass
class Rows:
    """The rows of one batch, table by table, in the order ``versioning.create`` writes them."""

    protocols: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    terms: list[dict[str, Any]] = field(default_factory=list)
    periods: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    fulltext: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def _version_row(rows: Rows, seq: int, protocol_id: str, version: int, canonical: dict[str, Any], *,
                 effective_from: datetime, change_note: str, now: datetime) -> dict[str, Any]:
    """Mirror of ``versioning._append`` (document, ETag, content hash, search terms, full text) for
    content that is already canonical (``record.canonical_content``): that walk is done once per shape,
    not once per protocol, which is most of the generator's time."""
    meta = {"id": protocol_id, "version": version, "status": "active", "effective_from": effective_from,
            "recorded_at": now, "recorded_by": ACTOR, "request_id": None, "change_note": change_note}
    doc = {name: record.jsonable(meta.get(name)) for name in record.META_FIELDS}
    doc.update(canonical)
    document = record.dumps(doc)  # = record.build_document(meta, content)
    content_hash = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False,
                                             separators=(",", ":")).encode()).hexdigest()  # = record.content_hash
    row = {"seq": seq, "protocol_id": protocol_id, "version": version, "status": "active",
           "effective_from": effective_from, "recorded_at": now, "recorded_by": ACTOR, "request_id": None,
           "change_note": change_note, "content_hash": content_hash,
           "etag": record.make_etag(version, document), "document": document}
    rows.versions.append(row)
    rows.fulltext.append((seq, canonical))
    for kind, value in sorted(set(search_terms(canonical, "active"))):
        rows.terms.append({"protocol_id": protocol_id, "version": version, "kind": kind, "value": value[:200]})
    return row


def _index_fulltext(session: Session, items: list[tuple[int, dict[str, Any]]]) -> None:
    """``fulltext.index_version`` for many versions in one executemany (same statement, same lexemes)."""
    if not items:
        return
    fulltext.index_many(session, [(seq, fulltext.field_tokens(content)) for seq, content in items])


def build_rows(indexes: range, shapes: list[dict[str, Any]], first_seq: int, now: datetime) -> Rows:
    rows = Rows()
    seq = first_seq
    canonical_shapes: dict[int, dict[str, Any]] = {}
    for index in indexes:
        meta, content = split_payload(payload_for(index, shapes))
        shape = index % len(shapes)
        if shape not in canonical_shapes:
            canonical_shapes[shape] = record.canonical_content(content)
        # Only plain strings differ from the shape: replacing them keeps the content canonical.
        canonical = {**canonical_shapes[shape], "title": content["title"], "summary": content["summary"]}
        protocol_id = meta["id"]
        versions = [_version_row(rows, seq, protocol_id, 1, canonical, effective_from=meta["effective_from"],
                                 change_note=meta["change_note"], now=now)]
        seq += 1
        if has_second_version(index):
            versions.append(_version_row(rows, seq, protocol_id, 2, second_version(canonical),
                                         effective_from=now - timedelta(days=1), change_note="label update",
                                         now=now))
            seq += 1
        rows.protocols.append({"id": protocol_id, "created_at": now, "latest_version": len(versions)})
        rows.periods.append((protocol_id, versioning.reference_periods(
            [(v["version"], v["status"], v["effective_from"]) for v in versions], protocol_id)))
    return rows


def write_batch(db: Database, indexes: range, shapes: list[dict[str, Any]], now: datetime) -> None:
    """Insert one batch in one transaction: the rows ``versioning.create`` (and ``revise`` for the
    second versions) would write, with a few executemany statements instead of ~8 per protocol."""
    with db.write.begin() as session:
        counter = int(session.execute(select(ChangeCounter.value).where(ChangeCounter.id == 1)).scalar_one())
        rows = build_rows(indexes, shapes, counter + 1, now)
        # Core inserts (the tables, not the mapped classes): same rows, without ORM bookkeeping.
        session.execute(insert(TABLES[Protocol.__tablename__]), rows.protocols)
        session.execute(insert(TABLES[ProtocolVersion.__tablename__]), rows.versions)
        if rows.terms:
            session.execute(insert(TABLES[SearchTerm.__tablename__]), rows.terms)
        _index_fulltext(session, rows.fulltext)
        seqs: dict[str, int] = dict(session.execute(select(Protocol.id, Protocol.seq).where(
            Protocol.id.in_([p["id"] for p in rows.protocols]))).all())
        periods = [{**period, "protocol_seq": seqs[pid]} for pid, items in rows.periods for period in items]
        if periods:
            session.execute(insert(TABLES[EffectivePeriod.__tablename__]), periods)
        session.execute(update(ChangeCounter).where(ChangeCounter.id == 1)
                        .values(value=counter + len(rows.versions)))


def create_through_service(db: Database, indexes: range, shapes: list[dict[str, Any]], now: datetime) -> None:
    """The slow reference path, one protocol at a time through ``versioning.create``/``revise``.

    The smoke test compares its rows with :func:`write_batch`'s, table by table."""
    ctx = WriteContext(actor=ACTOR)
    for index in indexes:
        meta, content = split_payload(payload_for(index, shapes))
        stored = versioning.create(db, meta["id"], content, status=meta["status"],
                                   effective_from=meta["effective_from"], change_note=meta["change_note"],
                                   ctx=ctx, now=now)
        if has_second_version(index):
            versioning.revise(db, meta["id"], second_version(content), if_match=[stored.etag],
                              effective_from=now - timedelta(days=1), change_note="label update", ctx=ctx,
                              now=now)


def generate(url: str, count: int, *, start: int = 0, batch_size: int = 2000,
             progress: bool = False) -> float:
    """Insert ``count`` protocols with indexes ``start..start+count-1``; returns seconds taken."""
    db = make_database(url)
    began = time.perf_counter()
    now = utcnow().replace(microsecond=0)
    shapes = templates()
    try:
        for first in range(start, start + count, batch_size):
            write_batch(db, range(first, min(first + batch_size, start + count)), shapes, now)
            done = min(first + batch_size, start + count) - start
            if progress and done % 20_000 == 0:
                print(f"  generated {done}/{count} in {time.perf_counter() - began:.0f}s", file=sys.stderr)
        analyze(db)
    finally:
        db.dispose()
    return time.perf_counter() - began


def analyze(db: Database) -> None:
    """Refresh the planner's statistics, as autovacuum (PostgreSQL) or a routine ``ANALYZE`` would
    after a bulk load. Without it PostgreSQL plans 100,000 rows as if there were a few dozen (the
    first list page sorted every row in effect: ~1.5 s instead of milliseconds)."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args(argv)
    seconds = generate(args.url, args.count, start=args.start, batch_size=args.batch, progress=True)
    print(f"{args.count} protocols in {seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
