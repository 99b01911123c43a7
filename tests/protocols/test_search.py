"""Search service: every filter, ICD-10-CM prefixes, time travel, free text and keyset pages.

The corpus below is fixed; every expected id set is a constant, so the SQLite run and the
PostgreSQL run (``PROTOCOLS_TEST_DB=postgres``) must return exactly the same sets (and, since the
rank is computed identically, the same order).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text

from protocols import fulltext, search, versioning
from protocols.db import Database
from protocols.indexing import indication_keys, search_terms
from protocols.models import ProtocolVersion
from protocols.record import canonical_content, split_document
from protocols.search import ProtocolQuery
from protocols.terminology import ICD10CM, INDICATIONS, ROUTES, SNOMED
from schemas.protocol import ProtocolCreateSchema, split_payload
from tests.factories import protocol_payload

T0 = datetime(2025, 1, 6, 9, 0, 0)
NASAL, IV, IM = "46713006", "47625008", "78421000"
ANESTHESIA = "399097000"


def icd(code: str) -> dict[str, str]:
    return {"system": ICD10CM, "code": code, "display": INDICATIONS[(ICD10CM, code)].display}


def snomed(code: str) -> dict[str, str]:
    return {"system": SNOMED, "code": code, "display": INDICATIONS[(SNOMED, code)].display}


def route(code: str) -> dict[str, str]:
    return {"system": SNOMED, "code": code, "display": ROUTES[code].display}


def dose(route_code: str, phase: str, low: float, high: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"route": route_code, "phase": phase, "dose_min": low, "dose_max": high, "unit": unit, **extra}


KETAMINE = {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": ["Ketalar"], "dea_schedule": "CIII"}
KETAMINE_GENERIC = {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": [], "dea_schedule": "CIII"}
OFF_LABEL = {"status": "off_label", "application_number": None, "approval_date": None,
             "approved_indication": None, "rems_required": False, "boxed_warning": None}

#: The fixed corpus, created in this order (so P2 is newer than P1, etc.).
CORPUS: dict[str, dict[str, Any]] = {
    "p1-esk-trd": {},  # the factory default: esketamine nasal spray, F33.2, approved, REMS
    "p2-esk-si": {
        "title": "Esketamine for depressive symptoms with acute suicidal ideation",
        "summary": "Spravato with an oral antidepressant for adults with major depressive disorder and "
                   "acute suicidal ideation or behavior.",
        "indications": [icd("F32.2"), icd("R45.851")],
    },
    "p3-ket-anesthesia": {
        "title": "Ketamine for induction of general anesthesia",
        "summary": "Intravenous induction before other general anesthetic agents.",
        "drug": KETAMINE,
        "indications": [snomed(ANESTHESIA)],
        "routes": [route(IV), route(IM)],
        "dosing_ranges": [dose(IV, "induction", 1, 4.5, "mg/kg"), dose(IM, "induction", 6.5, 13, "mg/kg")],
        "fda_approval": {"status": "approved", "application_number": "NDA016812", "approval_date": "1970-01-01",
                         "approved_indication": "Sole anesthetic agent; induction of anesthesia",
                         "rems_required": False, "boxed_warning": None},
    },
    "p4-ket-trd-infusion": {
        "title": "Low-dose intravenous ketamine infusion",
        "summary": "Off-label subanesthetic infusion for treatment-resistant depression.",
        "drug": KETAMINE_GENERIC,
        "indications": [icd("F33.1")],
        "routes": [route(IV)],
        "dosing_ranges": [dose(IV, "infusion", 0.5, 0.5, "mg/kg", duration="PT40M")],
        "fda_approval": OFF_LABEL,
    },
    "p5-ket-pain": {
        "title": "Subanesthetic ketamine for chronic pain",
        "summary": "Off-label infusion for complex regional pain syndrome and chronic pain syndrome.",
        "drug": KETAMINE_GENERIC,
        "indications": [icd("G89.4"), icd("G90.50")],
        "routes": [route(IV)],
        "dosing_ranges": [dose(IV, "infusion", 0.1, 0.3, "mg/kg/h")],
        "fda_approval": OFF_LABEL,
    },
}
ALL = set(CORPUS)
P1, P2, P3, P4, P5 = CORPUS


def content_of(protocol_id: str, **overrides: Any) -> dict[str, Any]:
    """Validated clinical content (through the wire schema, exactly as the API would store it)."""
    payload = protocol_payload(protocol_id, **{**copy.deepcopy(CORPUS.get(protocol_id, {})), **overrides})
    _, content = split_payload(ProtocolCreateSchema().load(payload))
    return content


def load_corpus(db: Database) -> dict[str, versioning.StoredVersion]:
    return {protocol_id: versioning.create(db, protocol_id, content_of(protocol_id),
                                           now=T0 + timedelta(minutes=index))
            for index, protocol_id in enumerate(CORPUS)}


def ids(db: Database, **filters: Any) -> set[str]:
    page = search.search(db, ProtocolQuery(**filters), limit=100)
    assert not page.has_more
    return {hit.version.protocol_id for hit in page.items}


def ranked(db: Database, q: str, **filters: Any) -> list[tuple[str, int | None]]:
    page = search.search(db, ProtocolQuery(q=q, **filters), limit=100)
    return [(hit.version.protocol_id, hit.rank) for hit in page.items]


@pytest.fixture
def corpus(db: Database) -> Database:
    load_corpus(db)
    return db


# ------------------------------------------------------------------------------- pure helpers


def test_tokens_fold_case_accents_and_punctuation() -> None:
    assert fulltext.tokens("Ésketamine (SPRAVATO®) treatment-resistant F33.2, 84mg") == [
        "esketamine", "spravato", "treatment", "resistant", "f33", "2", "84mg"]
    assert fulltext.tokens("snake_case") == ["snake", "case"]
    assert fulltext.tokens("x" * 100) == ["x" * fulltext.MAX_TOKEN_CHARS]


def test_query_tokens_reject_empty_and_overlong_queries() -> None:
    assert fulltext.query_tokens("Depress depress DEPRESS anxiety") == ["depress", "anxiety"]
    with pytest.raises(fulltext.EmptyQuery):
        fulltext.query_tokens(" -- !! ")
    with pytest.raises(fulltext.QueryTooLong):
        fulltext.query_tokens(" ".join(f"w{i}" for i in range(fulltext.MAX_QUERY_TOKENS + 1)))


def test_icd10_indication_keys_cover_every_ancestor() -> None:
    assert indication_keys(ICD10CM, "f33.21") == [f"{ICD10CM}|F33", f"{ICD10CM}|F33.2", f"{ICD10CM}|F33.21"]
    assert indication_keys(ICD10CM, "F33") == [f"{ICD10CM}|F33"]
    assert indication_keys(SNOMED, ANESTHESIA) == [f"{SNOMED}|{ANESTHESIA}"]


# ---------------------------------------------------------------------------- structured filters


def test_no_filter_lists_everything_in_effect_newest_first(corpus: Database) -> None:
    page = search.search(corpus, ProtocolQuery(), limit=100)
    assert [hit.version.protocol_id for hit in page.items] == [P5, P4, P3, P2, P1]


@pytest.mark.parametrize(("filters", "expected"), [
    ({"drug": "spravato"}, {P1, P2}),
    ({"drug": "  SPRAVATO "}, {P1, P2}),
    ({"drug": "Ketalar"}, {P3}),
    ({"drug": "ketamine"}, {P3, P4, P5}),
    ({"drug": "esketamine"}, {P1, P2}),
    ({"drug": "keta"}, set()),  # a name filter is exact, not a prefix (q is for that)
    ({"rxnorm_cui": "6130"}, {P3, P4, P5}),
    ({"rxnorm_cui": "2201625"}, {P1, P2}),
    ({"route": IV}, {P3, P4, P5}),
    ({"route": IM}, {P3}),
    ({"route": NASAL}, {P1, P2}),
    ({"route": "26643006"}, set()),
    ({"fda_status": "off_label"}, {P4, P5}),
    ({"fda_status": "approved"}, {P1, P2, P3}),
    ({"fda_status": "investigational"}, set()),
    ({"dea_schedule": "CIII"}, ALL),
    ({"dea_schedule": "CIV"}, set()),
    ({"rems_required": True}, {P1, P2}),
    ({"rems_required": False}, {P3, P4, P5}),
    ({"indication_system": SNOMED}, {P3}),
    ({"indication_system": ICD10CM}, {P1, P2, P4, P5}),
])
def test_each_filter(corpus: Database, filters: dict[str, Any], expected: set[str]) -> None:
    assert ids(corpus, **filters) == expected


@pytest.mark.parametrize(("filters", "expected"), [
    ({"indication": "F33"}, {P1, P4}),          # category matches its subcodes F33.1, F33.2
    ({"indication": "f33"}, {P1, P4}),          # codes are case-insensitive
    ({"indication": "F33.2"}, {P1}),
    ({"indication": "F33.9"}, set()),
    ({"indication": "F32"}, {P2}),
    ({"indication": "F3"}, set()),              # not an ICD-10-CM category: never a bare prefix
    ({"indication": "G90"}, {P5}),              # G90 -> G90.50 through G90.5
    ({"indication": "G90.5"}, {P5}),
    ({"indication": "R45.8"}, {P2}),            # R45.8 -> R45.851
    ({"indication": "R45.85"}, {P2}),
    ({"indication": "R45.851"}, {P2}),
    ({"indication": ANESTHESIA}, {P3}),
    ({"indication": ANESTHESIA, "indication_system": SNOMED}, {P3}),
    ({"indication": ANESTHESIA, "indication_system": ICD10CM}, set()),
    ({"indication": "F33", "indication_system": ICD10CM}, {P1, P4}),
    ({"indication": "F33", "indication_system": SNOMED}, set()),
])
def test_indication_filter_matches_icd10_subcodes(corpus: Database, filters: dict[str, Any],
                                                 expected: set[str]) -> None:
    assert ids(corpus, **filters) == expected


def test_filters_combine_with_and(corpus: Database) -> None:
    assert ids(corpus, drug="ketamine", fda_status="off_label") == {P4, P5}
    assert ids(corpus, drug="ketamine", fda_status="off_label", indication="F33") == {P4}
    assert ids(corpus, drug="ketamine", route=NASAL) == set()
    assert ids(corpus, q="depress", drug="ketamine") == {P4}
    assert ids(corpus, q="depress", rems_required=True, indication="F32") == {P2}


# ------------------------------------------------------------------------------------ free text

#: q -> expected [(id, rank)], best first. Rank = title 8 + drug 4 + indication 2 + summary 1 for each
#: field that holds every word on its own; ties go to the newest protocol.
TEXT_CASES: list[tuple[str, list[tuple[str, int]]]] = [
    ("depression", [(P1, 9), (P4, 1)]),
    ("depress", [(P2, 11), (P1, 11), (P4, 3)]),
    ("spravato", [(P2, 5), (P1, 4)]),
    ("KETAMINE infusion", [(P4, 8), (P5, 0)]),
    ("anesth", [(P3, 11)]),
    ("suicid", [(P2, 11)]),
    ("Ésketamine", [(P2, 12), (P1, 12)]),
    ("treatment-resistant", [(P1, 9), (P4, 1)]),
    ("ketalar", [(P3, 4)]),
    ("chronic pain syndrome", [(P5, 3)]),
    ("and or not near", []),  # FTS5 operators are words here, not syntax
    ("zzzunknown", []),
]


@pytest.mark.parametrize(("q", "expected"), TEXT_CASES, ids=[case[0] for case in TEXT_CASES])
def test_text_search_same_ids_and_rank_on_both_databases(corpus: Database, q: str,
                                                         expected: list[tuple[str, int]]) -> None:
    assert ranked(corpus, q) == expected


def test_text_search_is_indexed_in_the_write_transaction(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    load_corpus(db)
    with db.read() as session:
        seqs = list(session.execute(select(ProtocolVersion.seq).order_by(ProtocolVersion.seq)).scalars())
        assert list(fulltext.indexed_seqs(session.connection())) == seqs

    write = versioning._write

    def explode(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)
        raise RuntimeError("fails after the version and its index rows were written")

    monkeypatch.setattr(versioning, "_write", explode)
    with pytest.raises(RuntimeError):
        versioning.create(db, "p9-rolled-back", content_of("p9-rolled-back", title="Vanishing zyxwv protocol"))
    monkeypatch.undo()
    assert ranked(db, "zyxwv") == []
    with db.read() as session:
        assert list(fulltext.indexed_seqs(session.connection())) == seqs


def assert_field_postings_agree_with_documents(db: Database) -> None:
    """``fulltext.candidates`` restricted to fields returns, for every lexeme (and its 3-letter
    prefix) of every field, exactly the versions whose stored document has a matching word in one
    of those fields: SQLite's tagged posting lists (migration 0005) and PostgreSQL's per-field
    vectors both hold each field's words and nothing else."""
    with db.read() as session:
        connection = session.connection()
        rows = connection.execute(select(ProtocolVersion.seq, ProtocolVersion.document)).all()
        by_seq = {int(seq): fulltext.field_tokens(split_document(json.loads(document))[1]) for seq, document in rows}
        words = sorted({w for fields in by_seq.values() for ws in fields.values() for w in ws})
        probes = sorted(set(words) | {w[:3] for w in words if len(w) > 3})
        assert len(probes) > 50  # the corpus has a vocabulary worth checking
        dialect = connection.dialect.name
        for field_set in [(name,) for name in fulltext.FIELDS] + [("title", "drug"), ("drug", "summary")]:
            for word in probes:
                expected = {seq for seq, fields in by_seq.items()
                            if any(w.startswith(word) for name in field_set for w in fields[name])}
                statement = fulltext.candidates(dialect, fulltext.MatchQuery((word,)), field_set)
                assert {int(r.seq) for r in connection.execute(statement)} == expected, (field_set, word)


def test_field_postings_agree_with_documents_after_writes(corpus: Database) -> None:
    assert_field_postings_agree_with_documents(corpus)


def test_rebuilding_the_index_gives_the_same_answers(corpus: Database) -> None:
    before = {q: ranked(corpus, q) for q, _ in TEXT_CASES}
    with corpus.engine.begin() as connection:
        assert fulltext.rebuild(connection, batch=2) == len(CORPUS)
    assert {q: ranked(corpus, q) for q, _ in TEXT_CASES} == before
    assert_field_postings_agree_with_documents(corpus)


def test_migration_backfills_the_index_for_existing_versions(corpus: Database, database_url: str) -> None:
    """Downgrading drops the derived rows; upgrading again rebuilds them from the stored documents."""
    from alembic import command

    from protocols import migrate

    before = {q: ranked(corpus, q) for q, _ in TEXT_CASES}
    by_indication = ids(corpus, indication="F33")
    config = migrate.alembic_config(database_url)
    try:
        command.downgrade(config, "0001")
        with corpus.engine.connect() as connection:
            assert migrate.current_revision(corpus.engine) == "0001"
            assert "protocol_fts" not in sa_inspect(connection).get_table_names()
    finally:
        command.upgrade(config, "head")
    assert {q: ranked(corpus, q) for q, _ in TEXT_CASES} == before
    assert ids(corpus, indication="F33") == by_indication == {P1, P4}
    assert_field_postings_agree_with_documents(corpus)  # SQLite: 0005's backfill


# ---------------------------------------------------------------------------- time and status


def test_as_of_applies_every_filter_to_the_version_then_in_effect(db: Database) -> None:
    pid = "p7-time-travel"
    v1 = versioning.create(db, pid, content_of(pid, title="Alpha nasal protocol"),
                           effective_from=datetime(2020, 1, 1), now=datetime(2019, 12, 1))
    versioning.revise(db, pid, content_of(pid, **{**CORPUS[P4], "title": "Beta infusion protocol"}),
                      if_match=[v1.etag], effective_from=datetime(2022, 1, 1), now=datetime(2021, 12, 1))
    in_2021, in_2023, in_2019 = datetime(2021, 6, 1), datetime(2023, 6, 1), datetime(2019, 12, 15)

    assert ids(db, route=NASAL, as_of=in_2021) == {pid}
    assert ids(db, route=NASAL, as_of=in_2023) == set()
    assert ids(db, route=NASAL) == set()
    assert ids(db, route=IV, as_of=in_2023) == {pid}
    assert ids(db, indication="F33", fda_status="approved", as_of=in_2021) == {pid}
    assert ids(db, indication="F33.1", as_of=in_2021) == set()
    assert ids(db, indication="F33.1", as_of=in_2023) == {pid}
    assert ids(db, q="alpha", as_of=in_2021) == {pid}
    assert ids(db, q="alpha") == set()
    assert ids(db, q="beta") == {pid}
    assert ids(db, as_of=in_2019) == set()  # recorded, but not yet in effect
    hits = search.search(db, ProtocolQuery(as_of=in_2021), limit=10).items
    assert [hit.version.version for hit in hits] == [1]


def test_status_retired_and_draft(corpus: Database) -> None:
    newest = versioning.latest(corpus, P5)
    versioning.retire(corpus, P5, if_match=[newest.etag])
    p3 = versioning.latest(corpus, P3)
    versioning.revise(corpus, P3, content_of(P3, title="Ketamine induction, draft rewrite"), if_match=[p3.etag],
                      status="draft")
    versioning.create(corpus, "p6-draft-only", content_of("p6-draft-only"), status="draft")

    assert ids(corpus) == {P1, P2, P3, P4}
    assert ids(corpus, status="retired") == {P5}
    assert ids(corpus, status="retired", indication="G89") == {P5}
    assert ids(corpus, status="draft") == {P3, "p6-draft-only"}
    assert ids(corpus, status="draft", drug="ketamine") == {P3}
    assert ids(corpus, status="draft", q="rewrite") == {P3}
    assert ids(corpus, q="rewrite") == set()  # the draft is not what is in effect
    assert ids(corpus, status="draft", as_of=T0 + timedelta(hours=1)) == set()
    assert ids(corpus, as_of=T0 + timedelta(hours=1)) == ALL  # before the retirement


def test_updated_since_finds_protocols_with_a_later_version(corpus: Database) -> None:
    assert ids(corpus, updated_since=T0 + timedelta(minutes=2, seconds=30)) == {P4, P5}
    assert ids(corpus, updated_since=T0 + timedelta(minutes=4)) == set()  # strictly after
    p1 = versioning.latest(corpus, P1)
    versioning.revise(corpus, P1, content_of(P1, title="Esketamine nasal spray, revised"), if_match=[p1.etag],
                      now=datetime(2025, 6, 1))
    assert ids(corpus, updated_since=T0 + timedelta(minutes=4)) == {P1}
    assert ids(corpus, updated_since=T0 + timedelta(minutes=4), route=IV) == set()


# ----------------------------------------------------------------------------------- keyset pages


def _walk(db: Database, query: ProtocolQuery, size: int, between: Any = None) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = search.search(db, query, limit=size, after=after)
        seen += [hit.version.protocol_id for hit in page.items]
        if not page.has_more:
            return seen
        after = page.items[-1].key
        if between:
            between()


@pytest.mark.parametrize("query", [ProtocolQuery(), ProtocolQuery(q="ketamine"), ProtocolQuery(q="in")],
                         ids=["newest-first", "ranked", "ranked-prefix"])
def test_keyset_pages_neither_repeat_nor_skip_under_inserts(corpus: Database, query: ProtocolQuery) -> None:
    expected = _walk(corpus, query, size=100)
    counter = iter(range(100))

    def insert_two() -> None:
        for _ in range(2):
            pid = f"p-new-{next(counter)}"
            versioning.create(corpus, pid, content_of(pid, **CORPUS[P4]))

    seen = _walk(corpus, query, size=2, between=insert_two)
    originals = [pid for pid in seen if pid in ALL]
    assert originals == expected
    assert len(seen) == len(set(seen))


def test_backward_pages_mirror_forward_pages(corpus: Database) -> None:
    for query in (ProtocolQuery(), ProtocolQuery(q="in")):
        first = search.search(corpus, query, limit=2)
        second = search.search(corpus, query, limit=2, after=first.items[-1].key)
        back = search.search(corpus, query, limit=2, before=second.items[0].key)
        assert [h.key for h in back.items] == [h.key for h in first.items]
        assert back.has_more is False


def test_count_is_optional_and_counts_all_matches(corpus: Database) -> None:
    assert search.search(corpus, ProtocolQuery(), limit=1).total is None
    assert search.search(corpus, ProtocolQuery(drug="ketamine"), limit=1, count=True).total == 3
    assert search.search(corpus, ProtocolQuery(q="depress"), limit=1, count=True).total == 3


def test_mismatched_keys_are_refused(corpus: Database) -> None:
    with pytest.raises(ValueError):
        search.search(corpus, ProtocolQuery(q="in"), limit=1, after=5)
    with pytest.raises(ValueError):
        search.search(corpus, ProtocolQuery(), limit=1, after=(1, 5))
    with pytest.raises(ValueError):
        search.search(corpus, ProtocolQuery(status="deleted"), limit=1)


def test_index_rows_hold_quotes_backslashes_and_braces_as_written(db: Database) -> None:
    """On PostgreSQL a write sends the version's search terms and lexemes as JSON arrays
    (``fulltext.postgres_lexemes``); before, as text arrays. Characters special to either (quotes,
    backslashes, braces, commas) and non-ASCII text must arrive as they were, through the first
    version's statement and a revision's prepared one alike."""
    brand = 'Ke"ta\\lar {x,y} naïve'
    original = content_of("p8-special", drug={**KETAMINE, "brand_names": [brand]},
                          title='Ketamine "quoted" back\\slash {braced} a,b')
    first = versioning.create(db, "p8-special", original)
    revised = content_of("p8-special", drug={**KETAMINE, "brand_names": [brand, "Ke'tanest\\"]},
                         summary='Résumé with "quotes", {braces} and a back\\slash.')
    second, _ = versioning.revise(db, "p8-special", revised, if_match=[first.etag])
    with db.read() as session:
        for version, content in ((1, original), (2, revised)):
            rows = set(session.execute(text("SELECT kind, value FROM search_terms WHERE protocol_id = 'p8-special'"
                                            " AND version = :v"), {"v": version}).all())
            assert rows == {(kind, value[:200]) for kind, value in search_terms(canonical_content(content), "active")}
    assert second.version == 2
    assert ids(db, drug="ke\"ta\\lar {x,y} naïve") == {"p8-special"}
    assert ids(db, drug="ke'tanest\\") == {"p8-special"}
    assert ranked(db, "résumé") == [("p8-special", 1)]
    assert_field_postings_agree_with_documents(db)


def test_fields_without_words_index_as_empty(db: Database) -> None:
    versioning.create(db, "p8-punctuation", content_of("p8-punctuation", title="!!! ---", summary="…"))
    assert ranked(db, "esketamine") == [("p8-punctuation", 4)]  # only the drug field has the word


@pytest.mark.parametrize("status", ["active", "draft"])
def test_statements_are_built_once_per_query_shape_not_per_as_of_instant(db: Database, status: str) -> None:
    """Ranked walks carry their own as_of (each page link pins its first page's moment). The cached
    statements take the instant as a parameter: a new instant must not build new ones, which made a
    page 3-4x as expensive and grew the worker's caches by ~90 MB."""
    load_corpus(db)
    caches = (search._walk_statement, search._rest_statement)
    for cache in caches:
        cache.cache_clear()

    def page(minute: int) -> list[str]:
        query = ProtocolQuery(q="depress", status=status, as_of=T0 + timedelta(days=30, minutes=minute))
        return [hit.version.protocol_id for hit in search.search(db, query, limit=2).items]

    first = page(0)
    built = [cache.cache_info().misses for cache in caches]
    assert all(page(minute) == first for minute in range(1, 6))  # same answer at every later instant
    assert [cache.cache_info().misses for cache in caches] == built


def test_each_updated_since_gets_its_own_answer_from_shared_statements(db: Database) -> None:
    """``updated_since`` (a poll's last time) is a parameter of the cached statements, like as_of: a
    new value builds nothing new, and each value still gets its own answer."""
    load_corpus(db)  # P1 … P5 recorded a minute apart from T0
    caches = (search._walk_statement, search._rest_statement)
    for cache in caches:
        cache.cache_clear()

    def listed(since: datetime) -> list[str]:
        page = search.search(db, ProtocolQuery(updated_since=since), limit=10)
        return [hit.version.protocol_id for hit in page.items]

    assert listed(T0 + timedelta(minutes=2, seconds=30)) == [P5, P4]
    built = [cache.cache_info().misses for cache in caches]
    assert listed(T0 + timedelta(seconds=30)) == [P5, P4, P3, P2]
    assert listed(T0 + timedelta(minutes=3, seconds=30)) == [P5]
    assert listed(T0 + timedelta(minutes=5)) == []
    assert [cache.cache_info().misses for cache in caches] == built


def test_migration_0006_reindexes_versions_holding_the_separator_signs(corpus: Database, database_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Lexemes written before the tokenizer split words at the New Tai Lue vowel signs keep the old
    split until 0006 rebuilds them: after it, 'b' of 'a' + U+19B0 + 'b' is a word on both databases."""
    import re

    from alembic import command

    from protocols import migrate

    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0005")
    try:
        monkeypatch.setattr(fulltext, "_WORD", re.compile(r"[^\W_]+"))  # the tokenizer before 0006
        versioning.create(corpus, "ntl-old", content_of("ntl-old", summary="a\u19b0b"))
        monkeypatch.undo()
    finally:
        command.upgrade(config, "head")
    assert "ntl-old" in ids(corpus, q="b")
    assert_field_postings_agree_with_documents(corpus)


def test_the_drug_filter_normalizes_names_on_both_sides_and_0007_re_derives_old_terms(
        db: Database, database_url: str) -> None:
    """Found by a probe: stored names were only case-folded and queries also stripped, so a brand stored
    as "Spacy  Brand " matched no query at all, and composed and decomposed accents never matched each
    other. Both sides now fold case, compose (NFC) and collapse white space; migration 0007 re-derives
    terms stored the old way."""
    from alembic import command

    from protocols import migrate

    composed, decomposed = "\u00c9spr\u00e1vato", "E\u0301spra\u0301vato"
    for pid, brand in (("brand-spaced", "Spacy  Brand "), ("brand-composed", composed),
                       ("brand-decomposed", decomposed)):
        content = content_of(pid)
        content["drug"] = {**content["drug"], "brand_names": [brand]}
        versioning.create(db, pid, content)
    for query in ("Spacy  Brand ", "spacy brand", " SPACY\tBRAND"):
        assert ids(db, drug=query) == {"brand-spaced"}, query
    for query in (composed, decomposed, composed.upper()):
        assert ids(db, drug=query) == {"brand-composed", "brand-decomposed"}, query
    long_brand = "\ufb03" * 70  # folds to 210 characters, past the 200 a stored term holds (found by a probe)
    content = content_of("brand-long")
    content["drug"] = {**content["drug"], "brand_names": [long_brand]}
    versioning.create(db, "brand-long", content)
    assert ids(db, drug=long_brand) == {"brand-long"}

    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0006")
    try:
        with db.engine.begin() as connection:  # the terms as revision 0006's code stored them
            connection.execute(text("UPDATE search_terms SET value = :old WHERE protocol_id = 'brand-spaced' "
                                    "AND kind = 'drug' AND value = 'spacy brand'"), {"old": "spacy  brand "})
        assert ids(db, drug="spacy brand") == set()
    finally:
        command.upgrade(config, "head")
    assert ids(db, drug="spacy brand") == {"brand-spaced"}


def test_the_drug_filter_folds_compatibility_forms_on_both_sides_and_0009_re_derives_old_terms(
        db: Database, database_url: str) -> None:
    """Found by a review: a brand in fullwidth or mathematical letters, or with a dotless i, is the
    same name to a reader and was another one to the filter, both ways round. Both sides now fold to
    NFKC casefold; migration 0009 re-derives terms stored the NFC way."""
    from alembic import command

    from protocols import migrate

    fullwidth = "\uff33\uff50\uff52\uff41\uff56\uff41\uff54\uff4f"  # fullwidth "Spravato"
    bold = "".join(chr(0x1D41A + ord(c) - ord("a")) for c in "zorblex")  # mathematical bold zorblex
    for pid, brand in (("brand-fullwidth", fullwidth), ("brand-bold", bold), ("brand-dotless", "Quux\u0131n")):
        content = content_of(pid)
        content["drug"] = {**content["drug"], "brand_names": [brand]}
        versioning.create(db, pid, content)
    for query in ("spravato", "SPRAVATO", fullwidth):
        assert "brand-fullwidth" in ids(db, drug=query), query
    assert ids(db, drug="Zorblex") == ids(db, drug=bold) == {"brand-bold"}
    assert ids(db, drug="quuxin") == ids(db, drug="QUUXIN") == ids(db, drug="quux\u0131n") == {"brand-dotless"}
    assert ids(db, drug="zorble") == set()  # still equality, not a prefix
    content = content_of("brand-dotted")
    content["drug"] = {**content["drug"], "brand_names": ["\u0130zorb"]}  # a capital dotted I
    versioning.create(db, "brand-dotted", content)
    assert ids(db, drug="izorb") == ids(db, drug="IZORB") == {"brand-dotted"}

    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0008")
    try:
        with db.engine.begin() as connection:  # the term as revision 0008's code stored it
            connection.execute(text("UPDATE search_terms SET value = :old WHERE protocol_id = 'brand-bold' "
                                    "AND kind = 'drug' AND value = 'zorblex'"), {"old": bold})
        assert ids(db, drug="zorblex") == set()
    finally:
        command.upgrade(config, "head")
    assert ids(db, drug="zorblex") == {"brand-bold"}


@pytest.mark.parametrize(("indication", "reason", "treated"), [
    ("F33.9", "F33.9", True), ("F33.9", "F33.2", True), ("F33.9", "F33.41", True), ("F33.9", "F33.40", True),
    ("F33.9", "F33.8", False), ("F33.9", "F33", False), ("F33.9", "F32.2", False),
    ("F32.9", "F32.0", True), ("F32.9", "F32.5", True),
    ("F32.9", "F32.81", False), ("F32.9", "F32.89", False), ("F32.9", "F32.A", False), ("F32.9", "F32", False),
    ("G90.50", "G90.511", True), ("G90.50", "G90.529", True), ("G90.50", "G90.59", True), ("G90.50", "G90.6", False),
    ("F32.2", "F32.2", True), ("F32.2", "F32.21", False), ("R45.851", "R45.850", False),
])
def test_treats_matches_a_reason_the_indication_covers(indication, reason, treated):
    """An unspecified code covers the codes of the same disorder (data/icd10cm.json ``covers``), not
    its whole category: F32 also files premenstrual dysphoric disorder (F32.81) and "depression,
    unspecified" (F32.A), F33 "other recurrent depressive disorders" (F33.8). A specific code covers
    nothing but itself."""
    document = {"indications": [icd(indication)]}
    assert search.treats(document, {reason}) is treated
