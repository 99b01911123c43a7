"""A lock held by another connection, for tests of what requests do behind it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from protocols.db import normalize_url

#: The change-counter row: every write updates it inside its transaction (for a PostgreSQL revision,
#: inside its one append statement, after the protocol head has advanced).
COUNTER_ROW = "SELECT value FROM change_counter WHERE id = 1 FOR UPDATE"


@contextlib.contextmanager
def lock_held(database_url: str, backend: str, statement: str = COUNTER_ROW) -> Iterator[None]:
    """Another connection holds a lock until the block ends: on PostgreSQL the one ``statement`` takes,
    in a transaction rolled back at the end; on SQLite the write lock (``BEGIN IMMEDIATE``; in WAL
    mode readers still read)."""
    if backend == "postgres":
        engine = create_engine(normalize_url(database_url))
        try:
            with engine.connect() as conn:
                transaction = conn.begin()
                conn.execute(text(statement))
                try:
                    yield
                finally:
                    transaction.rollback()
        finally:
            engine.dispose()
        return
    path = make_url(database_url).database
    assert path
    holder = sqlite3.connect(path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()
