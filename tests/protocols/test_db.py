"""The connection pool: dead PostgreSQL connections are never handed out, and checking one out costs
no round trip (the pool's ``pre_ping`` used to send ``SELECT 1`` before every statement batch)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from protocols.db import make_database


@pytest.fixture
def pg_database(database_url: str, backend: str):
    if backend != "postgres":
        pytest.skip("PostgreSQL connection pool behaviour (SQLite has no server to lose)")
    db = make_database(database_url, pool_size=2, max_overflow=0)
    yield db
    db.dispose()


def _backend_pid(db) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_checkout_sends_no_statement(pg_database) -> None:
    statements: list[str] = []
    event.listen(pg_database.engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))
    _backend_pid(pg_database)  # opens the connection
    statements.clear()
    for _ in range(3):
        with pg_database.engine.connect() as conn:
            conn.execute(text("SELECT 42")).scalar_one()
    assert statements == ["SELECT 42"] * 3


def test_a_connection_the_server_terminated_is_replaced_at_checkout(pg_database, database_url) -> None:
    first = _backend_pid(pg_database)
    assert _backend_pid(pg_database) == first  # pooled: the same session again
    killer = make_database(database_url)
    try:
        with killer.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": first}).scalar_one()
    finally:
        killer.dispose()
    second = _backend_pid(pg_database)  # no error: the dead connection was discarded at checkout
    assert second != first
