"""Bounded ranked pages (issue #9): same answers as ranking every match, and work that does not grow
with the catalog.

1. Reference: over a varied corpus (revisions, future-dated versions, retirements, drafts), every
   page of every query, forwards and backwards, equals (a) a brute-force ranking in Python of the
   versions the unranked listing returns and (b) the index-driven statement that sorts every match
   (the definition before issue #9, FTS column filters for the rank), under several walk budgets so
   every path (walk only, walk + index remainder, index only) is taken.
2. Bounds without timing: the first page of ``q=<drug>``, ``q=<word in every record>`` and
   ``drug=<name>`` reads about as much at 4x the catalog (SQLite: VM steps; PostgreSQL: rows read by
   the scan nodes of ``EXPLAIN ANALYZE`` of every statement the search ran).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import Integer, TextualSelect, event, text

from protocols import fulltext, record, search, versioning
from protocols.db import Database, make_database
from protocols.search import ProtocolQuery
from protocols.timeutil import utcnow
from tests.bench.test_bench_smoke import _load_bench
from tests.conftest import BACKEND
from tests.protocols.test_search import content_of, icd, route, snomed

T0 = datetime(2025, 3, 3, 8, 0, 0)

# --------------------------------------------------------------------------------- the corpus

TITLE_WORDS = ["ketamine", "infusion", "depressive", "nasal", "spray", "maintenance", "induction", "pain",
               "sertraline", "protocol", "dose", "adult", "Ésketamine", "in", "depression"]
SUMMARY_WORDS = ["adjunct", "oral", "antidepressant", "depressive", "infusion", "ketamine", "sertraline",
                 "pain", "in", "adults", "spray", "off-label", "Spravato", "treatment-resistant"]
DRUGS = [
    {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": ["Ketalar"], "dea_schedule": "CIII"},
    {"name": "esketamine", "rxnorm_cui": "2201625", "brand_names": ["Spravato"], "dea_schedule": "CIII"},
    {"name": "sertraline", "rxnorm_cui": "36437", "brand_names": ["Zoloft"], "dea_schedule": None},
    {"name": "infusion pump saline", "rxnorm_cui": "999", "brand_names": [], "dea_schedule": None},
]
INDICATIONS = [[icd("F33.2")], [icd("F32.2"), icd("R45.851")], [icd("F33.1")], [icd("G89.4"), icd("G90.50")],
               [snomed("399097000")]]
NASAL, IV = "46713006", "47625008"


def _payload(rng: random.Random, pid: str) -> dict[str, Any]:
    drug = rng.choice(DRUGS)
    route_code = rng.choice([NASAL, IV])
    return {
        "title": " ".join(rng.sample(TITLE_WORDS, rng.randint(1, 4))).capitalize(),
        "summary": " ".join(rng.sample(SUMMARY_WORDS, rng.randint(1, 5))) + ".",
        "drug": drug,
        "indications": rng.choice(INDICATIONS),
        "routes": [route(route_code)],
        "dosing_ranges": [{"route": route_code, "phase": "induction", "dose_min": 1, "dose_max": 2, "unit": "mg"}],
    }


def load_varied(db: Database, count: int = 70, seed: int = 9) -> None:
    rng = random.Random(seed)
    for index in range(count):
        pid = f"v{index:03d}"
        stored = versioning.create(db, pid, content_of(pid, **_payload(rng, pid)),
                                   effective_from=T0 - timedelta(days=400), now=T0 + timedelta(minutes=index))
        roll = rng.random()
        if roll < 0.25:  # a revision in effect from a later date (as_of sees the first version before it)
            versioning.revise(db, pid, content_of(pid, **_payload(rng, pid)), if_match=[stored.etag],
                              effective_from=T0 + timedelta(days=30), now=T0 + timedelta(days=1, minutes=index))
        elif roll < 0.32:
            versioning.retire(db, pid, if_match=[stored.etag], now=T0 + timedelta(days=2, minutes=index))
        elif roll < 0.40:
            versioning.revise(db, pid, content_of(pid, **_payload(rng, pid)), if_match=[stored.etag],
                              status="draft", now=T0 + timedelta(days=3, minutes=index))


@pytest.fixture(scope="module")
def varied(test_databases: Any) -> Iterator[Database]:
    """The varied catalog, loaded once into a database of the module's own: the tests that read it
    only search (70 protocols took ~2 s to load per test on PostgreSQL)."""
    db = make_database(test_databases.private_url())
    load_varied(db)
    yield db
    db.dispose()


# ------------------------------------------------------------------------------ the references


def python_rank(version: versioning.StoredVersion, words: list[str]) -> int | None:
    """Brute force: a field counts when every word starts one of its tokens; None if no match."""
    _, content = record.split_document(version.document)
    lexemes = fulltext.field_tokens(content)
    everything = [t for field in fulltext.FIELDS for t in lexemes[field]]
    if not all(any(t.startswith(w) for t in everything) for w in words):
        return None
    return sum(weight for field, weight in fulltext.FIELD_WEIGHTS.items()
               if all(any(t.startswith(w) for t in lexemes[field]) for w in words))


def brute_force(db: Database, query: ProtocolQuery) -> list[tuple[str, int, int]]:
    """(id, rank, protocol seq) best first, from the unranked listing of the same filters."""
    unranked = ProtocolQuery(**{**query.__dict__, "q": None})
    page = search.search(db, unranked, limit=10_000)
    words = fulltext.query_tokens(query.q or "")
    hits = []
    for hit in page.items:
        rank = python_rank(hit.version, words)
        if rank is not None:
            hits.append((hit.version.protocol_id, rank, hit.protocol_seq))
    return sorted(hits, key=lambda h: (h[1], h[2]), reverse=True)


def pre_issue_9_matches(dialect: str, query: fulltext.MatchQuery) -> TextualSelect:
    """``fulltext.matches`` as it was: the rank from FTS5 column filters / per-field ``@@``."""
    if dialect == "sqlite":
        all_fields = fulltext._fts5_expression(query.words)
        rank = " + ".join(
            f"(CASE WHEN rowid IN (SELECT rowid FROM protocol_fts WHERE protocol_fts MATCH :q_{name}) "
            f"THEN {weight} ELSE 0 END)" for name, weight in fulltext.FIELD_WEIGHTS.items())
        statement = text(f"SELECT rowid AS seq, {rank} AS rank FROM protocol_fts WHERE protocol_fts MATCH :q_all")
        params = {"q_all": all_fields, **{f"q_{name}": f"{name} : ({all_fields})" for name in fulltext.FIELDS}}
    else:
        rank = " + ".join(f"(CASE WHEN {name} @@ CAST(:tsq AS tsquery) THEN {weight} ELSE 0 END)"
                          for name, weight in fulltext.FIELD_WEIGHTS.items())
        statement = text(f"SELECT seq, {rank} AS rank FROM protocol_fts WHERE document @@ CAST(:tsq AS tsquery)")
        params = {"tsq": fulltext._tsquery(query.words)}
    return statement.bindparams(**params).columns(seq=Integer, rank=Integer)


def sort_every_match(db: Database, query: ProtocolQuery) -> list[tuple[str, int, int]]:
    old = pre_issue_9_matches(db.dialect, fulltext.MatchQuery.parse(query.q or ""))
    statement, seq, rank = search._matching(db.dialect, query, old)
    with db.read() as session:
        rows = session.execute(statement.order_by(rank.desc(), seq.desc())).all()
    return [(row.protocol_id, int(row.rank), int(row.protocol_seq)) for row in rows]


def walk_pages(db: Database, query: ProtocolQuery, size: int) -> list[tuple[str, int, int]]:
    """Every page forwards; each page's ``before`` must give back the page before it."""
    seen: list[tuple[str, int, int]] = []
    pages: list[list[search.Hit]] = []
    after = None
    while True:
        page = search.search(db, query, limit=size, after=after)
        pages.append(page.items)
        seen += [(h.version.protocol_id, h.rank or 0, h.protocol_seq) for h in page.items]
        if not page.has_more:
            break
        after = page.items[-1].key
    for previous, current in pairwise(pages):
        back = search.search(db, query, limit=size, before=current[0].key)
        assert [h.key for h in back.items] == [h.key for h in previous]
    return seen


QUERIES = [
    ProtocolQuery(q="ketamine"),
    ProtocolQuery(q="in"),
    ProtocolQuery(q="depress"),
    ProtocolQuery(q="sertraline"),
    ProtocolQuery(q="infusion ketamine"),
    ProtocolQuery(q="esketamine spray"),
    ProtocolQuery(q="zzz"),
    ProtocolQuery(q="in", drug="ketamine"),
    ProtocolQuery(q="dep", route=IV),
    ProtocolQuery(q="in", indication="F33"),
    ProtocolQuery(q="ketamine", as_of=T0 + timedelta(days=5)),
    ProtocolQuery(q="in", as_of=T0 + timedelta(days=60)),
    ProtocolQuery(q="in", status="retired"),
    ProtocolQuery(q="in", status="draft"),
    ProtocolQuery(q="a", status="draft", as_of=T0 + timedelta(days=2)),
    ProtocolQuery(q="infusion", updated_since=T0 + timedelta(hours=12)),
]
BUDGETS = [(search.WALK_FIRST, search.WALK_STEPS), (1, 1), (1, 2), (2, 1)]


@pytest.mark.parametrize("budget", BUDGETS, ids=[f"walk{f}x{s}" for f, s in BUDGETS])
def test_pages_equal_sorting_every_match(varied: Database, budget: tuple[int, int],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "WALK_FIRST", budget[0])
    monkeypatch.setattr(search, "WALK_STEPS", budget[1])
    nonempty = 0
    for query in QUERIES:
        expected = brute_force(varied, query)
        assert sort_every_match(varied, query) == expected, query
        for size in (2, 3, 7, 100):  # size 1 (one page per match) is in the unranked test below
            assert walk_pages(varied, query, size) == expected, (query, size)
        assert search.search(varied, query, limit=1, count=True).total == len(expected)
        nonempty += bool(expected)
    assert nonempty >= 12  # the corpus exercises the queries


@pytest.mark.parametrize("query", [ProtocolQuery(), ProtocolQuery(drug="ketamine"), ProtocolQuery(route=NASAL),
                                   ProtocolQuery(drug="sertraline", as_of=T0 + timedelta(days=60)),
                                   ProtocolQuery(status="draft", drug="esketamine")], ids=str)
@pytest.mark.parametrize("budget", BUDGETS[:2], ids=["default", "walk1x1"])
def test_unranked_pages_equal_the_set_statement(varied: Database, query: ProtocolQuery, budget: tuple[int, int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "WALK_FIRST", budget[0])
    monkeypatch.setattr(search, "WALK_STEPS", budget[1])
    statement, seq, _ = search._matching(varied.dialect, query)
    with varied.read() as session:
        expected = [(r.protocol_id, 0, int(r.protocol_seq)) for r in session.execute(statement.order_by(seq.desc()))]
    for size in (1, 4, 100):
        assert walk_pages(varied, query, size) == expected


def test_rank_ties_and_cursor_across_rank_tiers(varied: Database) -> None:
    """A cursor in the middle of a rank tier continues with the rest of that tier, then lower ranks."""
    query = ProtocolQuery(q="in")
    expected = brute_force(varied, query)
    ranks = [r for _, r, _ in expected]
    assert len(set(ranks)) >= 3
    for cut in range(len(expected) - 1):
        _, rank, seq = expected[cut]
        page = search.search(varied, query, limit=5, after=(rank, seq))
        assert [(h.version.protocol_id, h.rank, h.protocol_seq) for h in page.items] == expected[cut + 1:cut + 6]


def test_fields_above_covers_every_higher_rank() -> None:
    for threshold in range(-1, 16):
        fields = fulltext.fields_above(threshold)
        if threshold == 15:
            assert fields is None
            continue
        assert fields is not None
        for rank in range(threshold + 1, 16):
            assert set(fulltext.field_bits(rank)) & set(fields) or (threshold < 0 and not fields)


def test_lexeme_prefix_probe_agrees_with_the_index(db: Database) -> None:
    """The per-row text check (stored lexemes) and the index agree, accents and digits included."""
    titles = ["Ésketamine F33.2 84mg naïve", "ketamine-esketamine co-therapy", "Ǆemal über Straße 2x"]
    for index, title in enumerate(titles):
        versioning.create(db, f"px-{index}", content_of(f"px-{index}", title=title))
    for q in ["esk", "ketamine", "f33 2", "84", "84mg", "naive", "dz", "uber strasse", "2x", "co therapy", "straße"]:
        expected = sort_every_match(db, ProtocolQuery(q=q))
        assert walk_pages(db, ProtocolQuery(q=q), 1) == expected, q


# ------------------------------------------------------------------------------------ the bounds


class WorkMeter:
    """Work a database does for the statements run while it is active, without timing anything."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.statements: list[tuple[str, Any]] = []
        self.steps = 0

    def _progress(self) -> int:
        self.steps += 1
        return 0

    def __enter__(self) -> WorkMeter:
        event.listen(self.db.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.db.engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if self.db.dialect == "sqlite":
            conn.connection.dbapi_connection.set_progress_handler(self._progress, 100)
        elif statement.lstrip().upper().startswith(("SELECT", "SET")):
            self.statements.append((statement, parameters))

    def work(self) -> int:
        """SQLite: VM steps / 100. PostgreSQL: rows read by scan nodes, from ``EXPLAIN ANALYZE``."""
        if self.db.dialect == "sqlite":
            return self.steps
        total = 0
        with self.db.engine.begin() as conn:  # replayed as the search ran them: settings included
            for statement, parameters in self.statements:
                if statement.lstrip().upper().startswith("SET"):
                    conn.exec_driver_sql(statement)
                    continue
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement,
                                            parameters).scalar_one()
                plan = plan if isinstance(plan, list) else json.loads(plan)
                total += _rows_examined(plan[0]["Plan"])
        return total


def _rows_examined(node: dict[str, Any]) -> int:
    """Rows every scan node of a plan read (returned or filtered out), over all its loops."""
    own = 0
    if "Scan" in node["Node Type"]:
        loops = int(node.get("Actual Loops", 1))
        own = (int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
               + int(node.get("Rows Removed by Index Recheck", 0))) * loops
    return own + sum(_rows_examined(child) for child in node.get("Plans", []))


def _first_page_work(db: Database, query: ProtocolQuery) -> int:
    search.search(db, query, limit=10)  # warm caches (prepared plans, pages)
    with WorkMeter(db) as meter:
        page = search.search(db, query, limit=10)
    assert len(page.items) == 10
    if db.dialect == "sqlite":
        with db.engine.connect() as conn:
            sqlite_connection = conn.connection.dbapi_connection
            assert sqlite_connection is not None
            sqlite_connection.set_progress_handler(None, 0)
    return meter.work()


#: Ranked queries whose "can anything outrank the page" statement PostgreSQL plans by table size: at
#: 2,400 protocols it reads protocol_fts whole (2,640 rows) instead of the per-field GIN index it uses
#: at 100,000 (0 rows), so a 600 -> 2,400 comparison says nothing about them there. bench/run.py
#: measures them at 1,000 and 100,000 on both databases (docs/performance.md).
SIZE_PLANNED_ON_POSTGRES = {"q-drug": ProtocolQuery(q="sertraline"),
                            "q-two-words": ProtocolQuery(q="sertraline zoloft")}
FIRST_PAGE_QUERIES = {"q-common-word": ProtocolQuery(q="depressive"), "drug-filter": ProtocolQuery(drug="sertraline"),
                      **(SIZE_PLANNED_ON_POSTGRES if BACKEND == "sqlite" else {})}


@pytest.fixture(scope="module")
def first_page_work(test_databases: Any) -> Iterator[dict[str, tuple[int, int]]]:
    """Each query's first-page work on the same bench catalog at 600 protocols, then grown to 2,400
    (4x), in a database of the module's own (built once for every query)."""
    generate = _load_bench("generate")
    db = make_database(test_databases.private_url())
    shapes = generate.templates()
    now = utcnow().replace(microsecond=0) - timedelta(minutes=1)

    def grow(to: int, start: int) -> dict[str, int]:
        for first in range(start, to, 600):
            generate.write_batch(db, range(first, min(first + 600, to)), shapes, now)
        generate.analyze(db)
        return {name: _first_page_work(db, query) for name, query in FIRST_PAGE_QUERIES.items()}

    try:
        small = grow(600, 0)
        large = grow(2400, 600)
        yield {name: (small[name], large[name]) for name in FIRST_PAGE_QUERIES}
    finally:
        db.dispose()


@pytest.mark.parametrize("query", FIRST_PAGE_QUERIES)
def test_first_page_work_does_not_grow_with_the_catalog(first_page_work: dict[str, tuple[int, int]],
                                                        query: str) -> None:
    small, large = first_page_work[query]
    assert large <= 1.5 * small + 50, (query, small, large)


def test_per_field_indexes_have_the_shape_search_cost_relies_on(db: Database, backend: str) -> None:
    """The "can anything outrank this page" probe reads one (field, word) posting list, whatever was
    written recently (migrations 0004, 0005).

    PostgreSQL: every GIN index has ``fastupdate = off``, so no scan reads an unmerged pending list
    (after a 99,000-row load, 257 pending pages made the drug index's empty answer cost 4 ms).
    SQLite: the field-tagged terms live in their own FTS5 table, contentless and ``detail=none``
    (version ids only), tokenized with ``_`` kept inside a token so ``d_depressive`` stays one term.
    Which versions those indexes return is checked in tests/protocols/test_search.py."""
    with db.engine.connect() as conn:
        if backend == "postgres":
            rows = conn.execute(text(
                "SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'gin'")).all()
            assert {name for name, _ in rows} == {"ix_protocol_fts_document", "ix_protocol_fts_title",
                                                  "ix_protocol_fts_drug", "ix_protocol_fts_indication",
                                                  "ix_protocol_fts_summary"}
            assert all("fastupdate=off" in (options or []) for _, options in rows), rows
        else:
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"),
                               {"n": fulltext.FIELDS_TABLE}).scalar_one()
            declared = " ".join(sql.split())
            for part in ("fts5(", "content = ''", "detail = none", "tokenchars ''_''"):
                assert part in declared, (part, declared)
