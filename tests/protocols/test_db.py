"""The connection pool: dead PostgreSQL connections are never handed out, and checking one out costs
no round trip (the pool's ``pre_ping`` used to send ``SELECT 1`` before every statement batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import event, text

from protocols.db import create_db_engine, make_database, refuse_dead_connection


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


@pytest.mark.postgres_only
def test_a_connection_the_server_terminated_is_replaced_at_checkout(pg_database, database_url) -> None:
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


@pytest.mark.postgres_only
def test_reads_replace_a_connection_the_server_terminated(pg_database, database_url) -> None:
    pid = pg_database.reads.fetch_one("SELECT pg_backend_pid()", ())[0]
    _terminate(database_url, pid)
    assert pg_database.reads.fetch_one("SELECT pg_backend_pid()", ())[0] != pid


def test_the_read_connections_of_ended_threads_are_closed(db) -> None:
    """``flask run`` serves each request on a new thread; each one's read connection stayed open until
    PostgreSQL refused new clients (found by an adversarial probe)."""
    import threading

    opened: list[Any] = []

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


# ------------------------------------------------- PostgreSQL: libpq prepared statements


def _psycopg_row(db, sql: str, params) -> object:
    """The same statement through a plain psycopg cursor, on a connection of its own."""
    fairy = db.engine.raw_connection()
    try:
        cursor = fairy.cursor()
        cursor.execute(sql, params)
        return cursor.fetchone()
    finally:
        fairy.rollback()
        fairy.close()


def _psycopg_error(db, sql: str, params) -> Exception:
    try:
        _psycopg_row(db, sql, params)
    except Exception as exc:  # what a plain cursor raises
        return exc
    raise AssertionError("the cursor accepted it")


def test_only_postgresql_has_the_liveness_check_and_libpq_statements(db) -> None:
    """The mechanisms the ``postgres_only`` tests below exercise exist on PostgreSQL alone: SQLite has
    no server that could close a connection, and its read connections keep their cursor. (Those tests
    are deselected, and counted as such, in the SQLite leg: tests/conftest.py.)"""
    db.reads.fetch_one("SELECT 1", ())
    on_postgres = db.dialect == "postgresql"
    assert event.contains(db.engine, "checkout", refuse_dead_connection) == on_postgres
    assert (db.reads._local.statements is not None) == on_postgres


@pytest.mark.postgres_only
def test_reads_send_values_and_load_rows_as_a_psycopg_cursor_does(db) -> None:
    import datetime as dt
    from decimal import Decimal

    moment = dt.datetime(2026, 12, 3, 10, 20, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    # A session time zone that is not UTC: an aware datetime must still arrive as that instant.
    assert db.reads.fetch_one("SET TIME ZONE 'America/New_York'", ()) is None
    named = ("SELECT %(when)s::timestamptz, %(n)s::bigint + 1, %(text)s || '%%', %(flag)s, %(amount)s::numeric,"
             " %(nothing)s::text IS NULL, %(text)s = %(text)s, '{\"a\": [1, 2]}'::jsonb, ARRAY['x', 'y'],"
             " %(when)s::timestamptz = TIMESTAMPTZ '2026-12-03 05:20:30.123456+00', 'é€'::text")
    params = {"when": moment, "n": 41, "text": "ketamine", "flag": True, "amount": Decimal("0.25"),
              "nothing": None}
    for _ in range(3):  # the first call prepares the statement, the others reuse it
        row = db.reads.fetch_one(named, params)
        assert row == _psycopg_row(db, named, params)
    assert row == (moment, 42, "ketamine%", True, Decimal("0.25"), True, True, {"a": [1, 2]}, ["x", "y"], True,
                   "é€")
    assert row[0].astimezone(dt.UTC) == moment.astimezone(dt.UTC)
    positional = "SELECT %s::text, %s::int WHERE %s"
    assert db.reads.fetch_one(positional, ("a", 7, True)) == ("a", 7)
    assert db.reads.fetch_one(positional, ("a", 7, False)) is None  # no row
    assert db.reads.fetch_one(positional, (None, 7, True)) == (None, 7)  # NULL where a string was


@pytest.mark.postgres_only
def test_reads_prepare_a_statement_per_parameter_types(db) -> None:
    """psycopg sends a small int as int2 and a large one as int8, a naive datetime as timestamp and an
    aware one as timestamptz: each set of types is its own prepared statement, as in psycopg's cache."""
    import datetime as dt

    for value in (7, 100_000, 2**40, -(2**40)):
        assert db.reads.fetch_one("SELECT %s::bigint + 1", (value,)) == (value + 1,)
    naive = dt.datetime(2026, 12, 3, 10, 0)
    aware = naive.replace(tzinfo=dt.UTC)
    assert db.reads.fetch_one("SELECT %s::timestamptz = %s::timestamptz", (aware, aware)) == (True,)
    assert db.reads.fetch_one("SELECT %s::text", (naive,))[0].startswith("2026-12-03 10:00:00")
    assert db.reads.fetch_one("SELECT %s::text", (aware,))[0].startswith("2026-12-03")
    (count,) = db.reads.fetch_one("SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                                  ("SELECT $1::bigint + 1",))
    assert count >= 3  # int2, int4, int8 (psycopg's choice of type by magnitude)


@pytest.mark.postgres_only
def test_reads_prepare_each_statement_once_per_connection(db) -> None:
    sql = "SELECT %s::text || 'x'"
    for word in ("a", "b", "c", "d"):
        assert db.reads.fetch_one(sql, (word,)) == (word + "x",)
    (count,) = db.reads.fetch_one(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = %s", ("SELECT $1::text || 'x'",))
    assert count == 1


@pytest.mark.postgres_only
def test_reads_run_unprepared_past_the_cap(db, monkeypatch) -> None:
    from protocols import pg_statements

    db.reads.fetch_one("SELECT 1", ())  # opens this thread's read connection
    monkeypatch.setattr(pg_statements, "MAX_PREPARED", len(db.reads._local.statements._names))
    assert db.reads.fetch_one("SELECT %s::int * 3", (5,)) == (15,)
    assert db.reads.fetch_one("SELECT %s::int * 3", (6,)) == (18,)
    (count,) = db.reads.fetch_one("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                                  ("%* 3",))
    assert count == 0


@pytest.mark.postgres_only
def test_read_errors_are_the_classes_psycopg_raises(db) -> None:
    import psycopg
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as raised:
        db.reads.fetch_one("SELECT 1 / %s::int", (0,))  # fails when it runs, not when it is prepared
    assert type(raised.value.orig) is psycopg.errors.DivisionByZero
    assert not raised.value.connection_invalidated
    with pytest.raises(DBAPIError) as raised:
        db.reads.fetch_one("SELEC 1", ())  # fails when it is prepared
    assert type(raised.value.orig) is psycopg.errors.SyntaxError
    params: Mapping[str, int] | Sequence[int]
    for sql, params in (("SELECT %(a)s::int, %s::int", {"a": 1}), ("SELECT %(a)s::int", {"b": 1}),
                        ("SELECT %s::int", (1, 2))):
        with pytest.raises(DBAPIError) as raised:
            db.reads.fetch_one(sql, params)
        assert type(raised.value.orig) is psycopg.ProgrammingError
        assert type(_psycopg_error(db, sql, params)) is psycopg.ProgrammingError  # a cursor says the same
    for sql, params in (("SELECT %s::int", {"a": 1}), ("SELECT %(a)s::int", (1,))):
        with pytest.raises(DBAPIError) as raised:  # not a protocol error from the server (a 503)
            db.reads.fetch_one(sql, params)
        assert type(raised.value.orig) is psycopg.ProgrammingError
    pid = db.reads.fetch_one("SELECT pg_backend_pid()", ())[0]
    with pytest.raises(DBAPIError):
        db.reads.fetch_one("SELECT 1 / %s::int", (0,))
    assert db.reads.fetch_one("SELECT pg_backend_pid()", ())[0] != pid  # a fresh connection after an error


@pytest.mark.postgres_only
def test_a_statement_libpq_could_not_send_is_a_lost_connection(db) -> None:
    """libpq returns no result when it cannot send (a connection reset after the liveness check);
    psycopg's C build raises MemoryError for that, which would have been a 500."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from api.errors import is_database_unavailable

    db.reads.fetch_one("SELECT 1", ())  # opens this thread's read connection
    statements = db.reads._local.statements

    class Unsent:
        def __init__(self, pgconn: object) -> None:
            self.pgconn = pgconn

        def __getattr__(self, name: str) -> object:
            return getattr(self.pgconn, name)

        def exec_prepared(self, *args: object, **kwargs: object) -> object:
            raise MemoryError("couldn't allocate PGresult")

    statements.pgconn = Unsent(statements.pgconn)
    with pytest.raises(OperationalError) as raised:
        db.reads.fetch_one("SELECT 1", ())
    assert isinstance(raised.value.orig, psycopg.OperationalError) and is_database_unavailable(raised.value)
    assert db.reads.fetch_one("SELECT 1", ()) == (1,)


@pytest.mark.postgres_only
def test_a_read_whose_connection_dies_during_the_statement_is_a_lost_connection(db) -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    from api.errors import is_database_unavailable, is_lost_connection

    pid = db.reads.fetch_one("SELECT pg_backend_pid()", ())[0]
    with pytest.raises(OperationalError) as raised:  # SQLAlchemy's class for psycopg's OperationalError
        db.reads.fetch_one("SELECT pg_terminate_backend(pg_backend_pid())", ())
    assert isinstance(raised.value.orig, psycopg.OperationalError)
    assert is_lost_connection(raised.value) and is_database_unavailable(raised.value)
    assert db.reads.fetch_one("SELECT pg_backend_pid()", ())[0] != pid


@pytest.mark.postgres_only
def test_a_thread_waiting_for_its_statement_lets_the_others_run(db) -> None:
    """gthread workers serve requests on threads: a statement's wait must not hold the GIL."""
    import threading

    finished: list[str] = []

    def slow() -> None:
        db.reads.fetch_one("SELECT pg_sleep(%s::float8)", (1.0,))
        finished.append("slow")

    def fast() -> None:
        for _ in range(20):
            db.reads.fetch_one("SELECT %s::int", (1,))
        finished.append("fast")

    sleeper = threading.Thread(target=slow)
    sleeper.start()
    for _ in range(300):  # until the sleeper's statement runs on the server (or it is over)
        (running,) = db.reads.fetch_one("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                        " AND query LIKE %s", ("SELECT pg_sleep%",))
        if running or finished:
            break
        threading.Event().wait(0.01)
    reader = threading.Thread(target=fast)
    reader.start()
    reader.join()
    sleeper.join()
    assert finished == ["fast", "slow"]


@pytest.mark.postgres_only
def test_the_urls_own_connection_options_are_kept_beside_the_services(database_url) -> None:
    """Found by an operations probe: ``?options=...`` in PROTOCOLS_DATABASE_URL (a search_path, say) was
    replaced by the service's own options and dropped without a word. Both apply now; where the URL sets
    one of the service's own (lock_timeout), the service's wins, since its promises rest on it."""
    url = f"{database_url}?options=-c%20statement_timeout%3D4321%20-c%20lock_timeout%3D1"
    engine = create_db_engine(url, lock_timeout_ms=777)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "4321ms"
            assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "777ms"
    finally:
        engine.dispose()
