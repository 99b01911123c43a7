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
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Integer, TextualSelect, text
from sqlalchemy.orm import Session

from protocols.record import split_document

TABLE = "protocol_fts"

#: Searchable fields and their rank weights (powers of two: a title match outranks all the others).
FIELD_WEIGHTS: dict[str, int] = {"title": 8, "drug": 4, "indication": 2, "summary": 1}
FIELDS = tuple(FIELD_WEIGHTS)

#: Longer words are cut to this many characters, in documents and queries alike.
MAX_TOKEN_CHARS = 64
#: A query may hold at most this many words.
MAX_QUERY_TOKENS = 16

_WORD = re.compile(r"[^\W_]+")


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
    lexemes = field_tokens(content)
    if _dialect(session) == "sqlite":
        statement = text(f"INSERT INTO {TABLE} (rowid, title, drug, indication, summary) "
                         "VALUES (:seq, :title, :drug, :indication, :summary)")
        session.execute(statement, {"seq": seq, **{name: " ".join(words) for name, words in lexemes.items()}})
    else:
        columns = ", ".join(FIELDS)
        values = ", ".join(f"array_to_tsvector(CAST(:{name} AS text[]))" for name in FIELDS)
        session.execute(text(f"INSERT INTO {TABLE} (seq, {columns}) VALUES (:seq, {values})"),
                        {"seq": seq, **lexemes})


def rebuild(connection: Connection, batch: int = 500) -> int:
    """Drop every full-text row and index all versions again from their stored documents.

    For migrations and repairs: the index is derived data. Returns the number of versions indexed.
    """
    connection.execute(text(f"DELETE FROM {TABLE}"))
    count = 0
    last = 0
    while True:
        rows = connection.execute(
            text("SELECT seq, document FROM protocol_versions WHERE seq > :last ORDER BY seq LIMIT :n"),
            {"last": last, "n": batch}).all()
        if not rows:
            return count
        for seq, document in rows:
            _, content = split_document(json.loads(document))
            index_version(connection, int(seq), content)
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
    if dialect == "sqlite":
        all_fields = _fts5_expression(query.words)
        rank = " + ".join(
            f"(CASE WHEN rowid IN (SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH :q_{name}) "
            f"THEN {weight} ELSE 0 END)"
            for name, weight in FIELD_WEIGHTS.items())
        statement = text(f"SELECT rowid AS seq, {rank} AS rank FROM {TABLE} WHERE {TABLE} MATCH :q_all")
        params = {"q_all": all_fields,
                  **{f"q_{name}": f"{name} : ({all_fields})" for name in FIELDS}}
    else:
        rank = " + ".join(f"(CASE WHEN {name} @@ CAST(:tsq AS tsquery) THEN {weight} ELSE 0 END)"
                          for name, weight in FIELD_WEIGHTS.items())
        statement = text(f"SELECT seq, {rank} AS rank FROM {TABLE} "
                         "WHERE document @@ CAST(:tsq AS tsquery)")
        params = {"tsq": _tsquery(query.words)}
    return statement.bindparams(**params).columns(seq=Integer, rank=Integer)


def indexed_seqs(connection: Connection) -> Iterable[int]:
    """Every version seq that has a full-text row (for consistency checks)."""
    column = "rowid" if _dialect(connection) == "sqlite" else "seq"
    return [int(r[0]) for r in connection.execute(text(f"SELECT {column} FROM {TABLE} ORDER BY 1"))]
