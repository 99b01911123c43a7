"""The connection pool: dead PostgreSQL connections are never handed out, and checking one out costs
no round trip (the pool's ``pre_ping`` used to send ``SELECT 1`` before every statement batch)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from protocols.db import make_database, refuse_dead_connection


@pytest.fixture
def pg_database(database_url: str):
    db = make_database(database_url, pool_size=2, max_overflow=0)
    yield db
    db.dispose()


def _terminate(database_url: str, pid: int) -> None:
    """Have the server end session ``pid``, and wait until it is gone (as after a failover)."""
    killer = make_database(database_url)
    try:
        with killer.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar_one()
    finally:
        killer.dispose()


def _no_server_to_lose(db) -> bool:
    """SQLite has no server that could close a connection: the check is PostgreSQL's alone."""
    if db.dialect == "postgresql":
        assert event.contains(db.engine, "checkout", refuse_dead_connection)
        return False
    assert not event.contains(db.engine, "checkout", refuse_dead_connection)
    return True


def _backend_pid(db) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_checkout_sends_no_statement(pg_database) -> None:
    statements: list[str] = []
    event.listen(pg_database.engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))
    with pg_database.engine.connect() as conn:  # opens the connection
        conn.execute(text("SELECT 1"))
    statements.clear()
    for _ in range(3):
        with pg_database.engine.connect() as conn:
            conn.execute(text("SELECT 42")).scalar_one()
    # SQLite's BEGIN is ours (protocols/db.py emits it so writers can ask for IMMEDIATE); no ping
    assert [s for s in statements if not s.startswith("BEGIN")] == ["SELECT 42"] * 3


def test_a_connection_the_server_terminated_is_replaced_at_checkout(pg_database, database_url) -> None:
    if _no_server_to_lose(pg_database):
        return
    first = _backend_pid(pg_database)
    assert _backend_pid(pg_database) == first  # pooled: the same session again
    _terminate(database_url, first)
    second = _backend_pid(pg_database)  # no error: the dead connection was discarded at checkout
    assert second != first


# ------------------------------------------------------------- per-thread read connections


def test_reads_reuse_one_connection_per_thread_without_the_pool(db) -> None:
    checkouts: list[object] = []
    event.listen(db.engine, "checkout", lambda *args: checkouts.append(args[0]))
    first = db.reads.fetch_one("SELECT 1", ())
    connection = db.reads._local.fairy
    for _ in range(5):
        assert db.reads.fetch_one("SELECT 1", ()) == first
    assert db.reads._local.fairy is connection
    assert len(checkouts) <= 1  # the first call opened it; the others touched no pool


def test_reads_replace_a_connection_after_an_error_and_after_dispose(db) -> None:
    from sqlalchemy.exc import DBAPIError

    db.reads.fetch_one("SELECT 1", ())
    broken = db.reads._local.fairy
    with pytest.raises(DBAPIError):
        db.reads.fetch_one("SELECT * FROM no_such_table", ())
    assert db.reads.fetch_one("SELECT 1", ()) is not None
    assert db.reads._local.fairy is not broken
    before_dispose = db.reads._local.fairy
    db.dispose()
    assert db.reads.fetch_one("SELECT 1", ()) is not None
    assert db.reads._local.fairy is not before_dispose


def test_reads_replace_a_connection_the_server_terminated(pg_database, database_url) -> None:
    if _no_server_to_lose(pg_database):
        return
    pid = pg_database.reads.fetch_one("SELECT pg_backend_pid()", ())[0]
    _terminate(database_url, pid)
    assert pg_database.reads.fetch_one("SELECT pg_backend_pid()", ())[0] != pid


def test_the_read_connections_of_ended_threads_are_closed(db) -> None:
    """``flask run`` serves each request on a new thread; each one's read connection stayed open until
    PostgreSQL refused new clients (found by an adversarial probe)."""
    import threading

    opened: list[object] = []

    def read() -> None:
        db.reads.fetch_one("SELECT 1", ())
        opened.append(db.reads._local.fairy)

    for _ in range(12):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    # Each new thread first closed the connection of the one before it, which had ended.
    assert db.reads.open_count() == 1
    assert all(fairy.dbapi_connection is None for fairy in opened[:-1])  # closed, not just forgotten
    db.reads.fetch_one("SELECT 1", ())  # this (live) thread's own connection is not closed by others
    mine = db.reads._local.fairy
    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert mine.dbapi_connection is not None and db.reads.open_count() == 2
    assert db.reads.fetch_one("SELECT 1", ()) is not None and db.reads._local.fairy is mine
