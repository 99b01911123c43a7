"""Full-text index of protocol versions in each database's own engine: SQLite FTS5, PostgreSQL tsvector.

Why it is built this way:

* **Same answers on both databases.** Neither engine's tokenizer is trusted to agree with the other
  (PostgreSQL's parser splits ``F33.2`` and ``84mg`` differently from FTS5's ``unicode61``). Text is
  tokenized once, here, by :func:`tokens`; both databases receive ready-made lexemes: FTS5 gets them
  space-separated (which ``unicode61`` leaves as they are), PostgreSQL gets them through
  ``array_to_tsvector`` (no parsing, no stemming). Queries go through the same function and become
  prefix queries in both dialects (``"dep"*`` / ``'dep':*``), all words required. Same lexemes, same
  operators: the same set of matches.
* **A rank that is a pure function of (version, query).** BM25 depends on corpus statistics, so a
  write elsewhere would reshuffle ranks between two page fetches and break keyset pagination. The
  rank here is a weighted sum over the fields that contain *every* query word on their own:
  title 8, drug/brand 4, indication text 2, summary 1 (0 when the words only match across fields).
  It is computed identically in both dialects, so even the order is the same.
* **Derived data.** One row per version, keyed by ``protocol_versions.seq`` and written by
  :func:`index_version` inside the write transaction (called from ``versioning._append``). Rows may be
  deleted and rebuilt (:func:`rebuild`); versions never are.
* **Two ways in, one rank.** :func:`matches` / :func:`candidates` start from the index (every match,
  or the matches that can reach a given rank); :func:`probe` answers "does *this* version match, and
  with which rank?" for one row at a time, so ``protocols.search`` can walk versions in protocol
  order and stop after a page (see there). Both compute the rank with the same expression:
  PostgreSQL evaluates the stored per-field ``tsvector`` columns; SQLite reads the stored lexemes
  (space-separated, see :func:`index_version`) and asks whether each query word starts one of them,
  which is exactly what the FTS5 prefix query ``"word"*`` matches on these lexemes (``unicode61``
  leaves letter/digit tokens whole). SQLite's per-row read goes to FTS5's content table
  (``protocol_fts_content``, columns ``c0..c3`` in :data:`FIELDS` order): a plain rowid lookup,
  where a ``MATCH`` per row would rebuild a prefix query's whole doclist each time.
* **One posting list per field on both databases.** "Versions whose *drug* holds every word" must
  cost what the answer costs, not what the word's frequency elsewhere costs. PostgreSQL has a GIN
  index per field vector. FTS5 keeps one posting list per *term* for all columns, so a column filter
  (``drug : "depressive"*``) still reads every version holding the word in any field (71,650 of
  100,000 in the benchmark catalog, to return none). SQLite therefore also writes each lexeme tagged
  with its field (``d_depressive``) into ``protocol_fts_fields`` (contentless, ``detail=none``:
  version ids only), and :func:`candidates` with fields queries those tagged terms.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Integer,
    Text,
    TextualSelect,
    and_,
    case,
    cast,
    column,
    func,
    literal,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import TSQUERY, TSVECTOR
from sqlalchemy.orm import Session

from protocols.record import split_document

TABLE = "protocol_fts"
#: SQLite only: each version's lexemes tagged with their field, one posting list per (field, word).
FIELDS_TABLE = "protocol_fts_fields"

#: Searchable fields and their rank weights (powers of two: a title match outranks all the others).
FIELD_WEIGHTS: dict[str, int] = {"title": 8, "drug": 4, "indication": 2, "summary": 1}
FIELDS = tuple(FIELD_WEIGHTS)
#: The tag of each field's lexemes in :data:`FIELDS_TABLE` (``_`` cannot occur in a lexeme).
FIELD_TAGS: dict[str, str] = {"title": "t", "drug": "d", "indication": "i", "summary": "s"}
#: FTS5's own content table: one row per indexed version, each field's stored lexemes in ``c0..c3``.
SQLITE_CONTENT_COLUMNS: dict[str, str] = {name: f"c{index}" for index, name in enumerate(FIELDS)}
SQLITE_CONTENT = table(f"{TABLE}_content", column("id", Integer()),
                       *(column(c, Text()) for c in SQLITE_CONTENT_COLUMNS.values()))

#: Longer words are cut to this many characters, in documents and queries alike.
MAX_TOKEN_CHARS = 64
#: A query may hold at most this many words.
MAX_QUERY_TOKENS = 16

#: Words: letters and digits. The New Tai Lue vowel signs and two Vedic signs are letters to Python but
#: separators to SQLite FTS5's unicode61 tokenizer, which splits the lexemes it is given again: "a" +
#: U+19B0 + "b" was one word on PostgreSQL and two on SQLite, so the two databases counted and paged
#: different matches (found by an adversarial probe). They separate words here too, on both.
_WORD = re.compile("[^\\W_\u19b0-\u19c0\u19c8\u19c9\u1cf2\u1cf3]+")


def tokens(value: str) -> list[str]:
    """Case-folded, accent-stripped words of ``value`` (letters and digits; everything else splits)."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    folded = unicodedata.normalize("NFKC", stripped.casefold())
    return [word[:MAX_TOKEN_CHARS] for word in _WORD.findall(folded)]


def field_texts(content: Mapping[str, Any]) -> dict[str, list[str]]:
    """The free text of each searchable field of a version's clinical content."""
    drug = content.get("drug") or {}
    return {
        "title": [str(content.get("title") or "")],
        "drug": [str(drug.get("name") or ""), *(str(b) for b in drug.get("brand_names") or [])],
        "indication": [str(i.get("display") or "") for i in content.get("indications") or []],
        "summary": [str(content.get("summary") or "")],
    }


def field_tokens(content: Mapping[str, Any]) -> dict[str, list[str]]:
    """Distinct lexemes per field, sorted (the form both dialects store)."""
    return {name: sorted({t for part in parts for t in tokens(part)})
            for name, parts in field_texts(content).items()}


class EmptyQuery(ValueError):
    """The query has no searchable words (only punctuation or spaces)."""


class QueryTooLong(ValueError):
    """More words than :data:`MAX_QUERY_TOKENS`."""


def query_tokens(query: str) -> list[str]:
    """Distinct query words in the order given; raises :class:`EmptyQuery` / :class:`QueryTooLong`."""
    words = list(dict.fromkeys(tokens(query)))
    if not words:
        raise EmptyQuery("the query has no searchable words")
    if len(words) > MAX_QUERY_TOKENS:
        raise QueryTooLong(f"at most {MAX_QUERY_TOKENS} words")
    return words


# ------------------------------------------------------------------------------------- writing


def _dialect(bind: Session | Connection) -> str:
    connection = bind.connection() if isinstance(bind, Session) else bind
    return connection.dialect.name


def index_version(session: Session | Connection, seq: int, content: Mapping[str, Any]) -> None:
    """Index one version (by its ``protocol_versions.seq``) inside the caller's transaction."""
    index_lexemes(session, seq, field_tokens(content))


def index_lexemes(session: Session | Connection, seq: int, lexemes: Mapping[str, list[str]]) -> None:
    """:func:`index_version` for lexemes already computed by :func:`field_tokens`."""
    index_many(session, [(seq, lexemes)])


def index_many(session: Session | Connection, rows: Sequence[tuple[int, Mapping[str, list[str]]]], *,
               tagged: bool = True) -> None:
    """Index many versions, ``(seq, lexemes)`` each, with one statement per table (a write passes
    one; :func:`rebuild` and bench/generate.py pass a batch).

    ``tagged=False`` skips SQLite's :data:`FIELDS_TABLE`: only for migration 0002's backfill, which
    runs before migration 0005 creates (and fills) that table."""
    if not rows:
        return

    def params(items: list[dict[str, Any]]) -> list[dict[str, Any]] | dict[str, Any]:
        return items[0] if len(items) == 1 else items

    if _dialect(session) == "sqlite":
        session.execute(_SQLITE_INSERT, params([{"seq": seq, **{name: " ".join(words) for name, words in lex.items()}}
                                                for seq, lex in rows]))
        if tagged:
            session.execute(_SQLITE_FIELDS_INSERT,
                            params([{"seq": seq, "terms": tagged_terms(lexemes)} for seq, lexemes in rows]))
    else:
        session.execute(_POSTGRES_INSERT, params([{"seq": seq, **postgres_lexemes(lexemes)} for seq, lexemes in rows]))


SQLITE_FIELDS_INSERT = f"INSERT INTO {FIELDS_TABLE} (rowid, terms) VALUES (:seq, :terms)"
_SQLITE_INSERT = text(f"INSERT INTO {TABLE} (rowid, {', '.join(FIELDS)}) "
                      f"VALUES (:seq, {', '.join(':' + name for name in FIELDS)})")
_SQLITE_FIELDS_INSERT = text(SQLITE_FIELDS_INSERT)


def tagged_terms(lexemes: Mapping[str, Iterable[str]]) -> str:
    """A version's lexemes as :data:`FIELDS_TABLE` stores them: ``<tag>_<lexeme>``, space-separated."""
    return " ".join(f"{FIELD_TAGS[name]}_{word}" for name in FIELDS for word in lexemes.get(name, ()))


def postgres_insert(prefix: str = "") -> str:
    """PostgreSQL's full-text row for ``:seq``: each field's lexemes arrive as one JSON array named
    ``:<prefix><field>`` (:func:`postgres_lexemes`) and become a tsvector without parsing (see module
    docstring). The append path embeds it in its one write statement, with a prefix."""
    values = ", ".join(f"array_to_tsvector(ARRAY(SELECT json_array_elements_text(CAST(:{prefix}{name} AS json))))"
                       for name in FIELDS)
    return f"INSERT INTO {TABLE} (seq, {', '.join(FIELDS)}) VALUES (:seq, {values})"


def postgres_lexemes(lexemes: Mapping[str, Iterable[str]], prefix: str = "") -> dict[str, str]:
    """The parameters of :func:`postgres_insert`: each field's lexemes as a JSON array.

    Why JSON and not a text array: psycopg dumps a Python list as a PostgreSQL array literal element by
    element in Python, ~3 µs an element (measured on this machine: two lists of 150 strings in 0.49 ms,
    against 0.03 ms for ``json.dumps`` of the same), and a write sends a version's lexemes and search terms
    (~60-150 strings): 4 % of a PUT's CPU on PostgreSQL (``bench/profile.py --path-kind put --postgres
    --gil``). The server unpacks the JSON in C."""
    return {f"{prefix}{name}": json.dumps(list(lexemes.get(name, ()))) for name in FIELDS}


_POSTGRES_INSERT = text(postgres_insert())


def rebuild(connection: Connection, batch: int = 500, *, tagged: bool = True) -> int:
    """Drop every full-text row and index all versions again from their stored documents.

    For migrations and repairs: the index is derived data. Returns the number of versions indexed.
    ``tagged``: see :func:`index_many`.
    """
    connection.execute(text(f"DELETE FROM {TABLE}"))
    if tagged and _dialect(connection) == "sqlite":  # contentless: emptied by FTS5's own command
        connection.execute(text(f"INSERT INTO {FIELDS_TABLE} ({FIELDS_TABLE}) VALUES ('delete-all')"))
    count = 0
    last = 0
    while True:
        rows = connection.execute(
            text("SELECT seq, document FROM protocol_versions WHERE seq > :last ORDER BY seq LIMIT :n"),
            {"last": last, "n": batch}).all()
        if not rows:
            return count
        index_many(connection, [(int(seq), field_tokens(split_document(json.loads(document))[1]))
                                for seq, document in rows], tagged=tagged)
        count += len(rows)
        last = int(rows[-1][0])


# ------------------------------------------------------------------------------------- querying


@dataclass(frozen=True)
class MatchQuery:
    """A parsed free-text query: its words, ready to be rendered for either dialect."""

    words: tuple[str, ...]

    @classmethod
    def parse(cls, query: str) -> MatchQuery:
        return cls(tuple(query_tokens(query)))


def _fts5_expression(words: Sequence[str]) -> str:
    # Words are letters/digits only, so quoting cannot be broken out of; quoting also keeps
    # AND/OR/NOT/NEAR literal.
    return " AND ".join(f'"{word}"*' for word in words)


def _tsquery(words: Sequence[str]) -> str:
    return " & ".join(f"'{word}':*" for word in words)


def matches(dialect: str, query: MatchQuery) -> TextualSelect:
    """A statement yielding ``(seq, rank)`` for every version matching all query words."""
    return candidates(dialect, query)


def candidates(dialect: str, query: MatchQuery, fields: Sequence[str] = ()) -> TextualSelect:
    """``(seq, rank)`` of the versions matching all query words, from the index.

    With ``fields``, only versions where at least one of those fields holds every word on its own
    (the versions that can reach a rank with one of those fields' bits): the index answers that
    directly, so a search looking for ranks above a threshold never touches the other matches.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    if dialect == "sqlite":
        params: dict[str, Any] = _sqlite_word_params(query.words)
        if fields:  # the tagged terms' posting lists, then each candidate's fields by rowid
            columns = {name: f"fts_row.{c}" for name, c in SQLITE_CONTENT_COLUMNS.items()}
            params["q"] = " OR ".join(
                "(" + _fts5_expression([f"{FIELD_TAGS[name]}_{word}" for word in query.words]) + ")"
                for name in fields)
            statement = text(f"SELECT {FIELDS_TABLE}.rowid AS seq, {_sqlite_rank_sql(columns, len(query.words))}"
                             f" AS rank FROM {FIELDS_TABLE} JOIN {SQLITE_CONTENT.name} AS fts_row"
                             f" ON fts_row.id = {FIELDS_TABLE}.rowid WHERE {FIELDS_TABLE} MATCH :q")
        else:
            columns = {name: f"{TABLE}.{name}" for name in FIELDS}
            rank = _sqlite_rank_sql(columns, len(query.words))
            statement = text(f"SELECT {TABLE}.rowid AS seq, {rank} AS rank FROM {TABLE} WHERE {TABLE} MATCH :q")
            params["q"] = _fts5_expression(query.words)
    else:
        rank = " + ".join(f"(CASE WHEN {name} @@ CAST(:tsq AS tsquery) THEN {weight} ELSE 0 END)"
                          for name, weight in FIELD_WEIGHTS.items())
        # A field holding every word implies the whole document does: with fields, their own
        # GIN indexes answer alone (the document's posting lists would list every match).
        where = (" OR ".join(f"{name} @@ CAST(:tsq AS tsquery)" for name in fields) if fields
                 else "document @@ CAST(:tsq AS tsquery)")
        statement = text(f"SELECT seq, {rank} AS rank FROM {TABLE} WHERE {where}")
        params = {"tsq": _tsquery(query.words)}
    return statement.bindparams(**params).columns(seq=Integer, rank=Integer)


def _sqlite_word_params(words: Sequence[str]) -> dict[str, str]:
    return {f"w{index}": f" {word}" for index, word in enumerate(words)}


def _sqlite_has_words(haystack: str, count: int) -> str:
    """SQL: every query word starts a lexeme of ``haystack`` (space-separated lexemes)."""
    return " AND ".join(f"instr(' ' || {haystack}, :w{index}) > 0" for index in range(count))


def _sqlite_rank_sql(columns: Mapping[str, str], count: int) -> str:
    return " + ".join(f"(CASE WHEN {_sqlite_has_words(columns[name], count)} THEN {weight} ELSE 0 END)"
                      for name, weight in FIELD_WEIGHTS.items())


@dataclass(frozen=True)
class Probe:
    """Per-row full-text evaluation for a statement that already has a version seq column.

    Join ``source`` on ``source_seq == <version seq>`` (an outer join keeps rows without an index
    row, which then do not match); ``match`` holds when the version matches every query word;
    ``rank`` is the version's rank (meaningful only where ``match`` holds).
    """

    source: FromClause
    source_seq: ColumnElement[Any]
    match: ColumnElement[bool]
    rank: ColumnElement[int]



POSTGRES_TABLE = table(TABLE, column("seq"), *(column(name, TSVECTOR()) for name in (*FIELDS, "document")))


def probe(dialect: str, query: MatchQuery) -> Probe:
    """The per-row form of :func:`matches`: same matches, same rank (see the module docstring)."""
    if dialect == "sqlite":
        source = SQLITE_CONTENT.alias("fts_row")
        columns = {name: source.c[c] for name, c in SQLITE_CONTENT_COLUMNS.items()}
        words = [literal(f" {word}") for word in query.words]

        def has_words(haystack: ColumnElement[Any]) -> ColumnElement[bool]:
            spaced = literal(" ") + haystack
            return and_(*(func.instr(spaced, word) > 0 for word in words))

        everything: ColumnElement[Any] = columns["title"]
        for name in FIELDS[1:]:
            everything = everything + literal(" ") + columns[name]
        match = has_words(everything)
        rank = _rank_sum({name: has_words(col) for name, col in columns.items()})
        return Probe(source, source.c.id, match, rank)
    pg = POSTGRES_TABLE.alias("fts_row")
    tsq = cast(literal(_tsquery(query.words)), TSQUERY())
    match = pg.c.document.bool_op("@@")(tsq)
    rank = _rank_sum({name: pg.c[name].bool_op("@@")(tsq) for name in FIELDS})
    return Probe(pg, pg.c.seq, match, rank)


def _rank_sum(conditions: Mapping[str, ColumnElement[bool]]) -> ColumnElement[int]:
    terms = [case((conditions[name], literal(weight)), else_=literal(0)) for name, weight in FIELD_WEIGHTS.items()]
    total: ColumnElement[int] = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def fields_above(threshold: int, frequency: Mapping[str, int] | None = None) -> tuple[str, ...] | None:
    """Fields such that every rank above ``threshold`` needs at least one of them to hold all words.

    ``None`` when no rank can exceed the threshold (it is the maximum). Ranks are 4-bit masks, so
    ``rank > t`` holds exactly when, for some bit ``i`` clear in ``t``, the rank has bit ``i`` and
    every bit of ``t`` above ``i``; one field of each such group suffices as a filter (the rank
    itself is then checked exactly). ``frequency`` (how often each field matched in a sample)
    picks the rarest field of each group: the fewest candidates.
    """
    if threshold < 0:
        return ()
    if threshold >= sum(FIELD_WEIGHTS.values()):
        return None
    chosen: list[str] = []
    for name, weight in FIELD_WEIGHTS.items():
        if threshold & weight:
            continue
        group = [name] + [other for other, w in FIELD_WEIGHTS.items() if w > weight and threshold & w]
        pick = min(group, key=lambda f: ((frequency or {}).get(f, 0), group.index(f)))
        if pick not in chosen:
            chosen.append(pick)
    return tuple(chosen)


def field_bits(rank: int) -> list[str]:
    """The fields whose bits are set in ``rank``."""
    return [name for name, weight in FIELD_WEIGHTS.items() if rank & weight]


def indexed_seqs(connection: Connection) -> Iterable[int]:
    """Every version seq that has a full-text row (for consistency checks)."""
    column = "rowid" if _dialect(connection) == "sqlite" else "seq"
    return [int(r[0]) for r in connection.execute(text(f"SELECT {column} FROM {TABLE} ORDER BY 1"))]
