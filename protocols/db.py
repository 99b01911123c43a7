"""Engine and session factories for SQLite and PostgreSQL.

SQLite needs care to behave like a real server database under concurrent writers:

* WAL journal so readers never block the writer, and a busy timeout so a writer waits for the lock
  instead of failing at once;
* pysqlite's own implicit transaction handling is turned off and we emit ``BEGIN`` ourselves, so a
  write transaction can start with ``BEGIN IMMEDIATE`` (take the write lock up front). Without it,
  two writers could both read the same "latest version" and only find out at commit time.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_PATH = Path("var") / "protocols.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 5000


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``var/`` (created on first use)."""
    return f"sqlite:///{DEFAULT_SQLITE_PATH.as_posix()}"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                   "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", int(os.environ.get("PROTOCOLS_DB_POOL_SIZE", "5")))
    kwargs.setdefault("max_overflow", 5)
    kwargs.setdefault("pool_timeout", 10)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 5)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkout", refuse_dead_connection)
    return engine


def refuse_dead_connection(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Pool ``checkout``: hand out no PostgreSQL connection the server has already closed.

    Why not ``pool_pre_ping``: it sends ``SELECT 1`` before every checkout, which doubled the round
    trips of a read (28 % of ``GET /v1/protocols/{id}`` under py-spy). An idle pooled connection
    never has anything to read: when the server terminates it (failover, restart, an admin's
    ``pg_terminate_backend``) it sends a FATAL message and closes the socket, which makes the socket
    readable. A zero-timeout ``select`` sees that without a round trip; ``DisconnectionError`` makes
    the pool discard the connection and check out (or open) another, so the request never sees the
    dead one. A connection that dies *during* a request is not covered (nor was it by pre-ping):
    that is the read retry in ``versioning`` and the 503 + Retry-After for writes.
    """
    pgconn = getattr(dbapi_conn, "pgconn", None)
    if pgconn is None:
        return
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("connection closed")
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError) as exc:  # the socket is gone altogether
        raise DisconnectionError(str(exc)) from exc
    if readable:
        raise DisconnectionError("the server closed this connection while it was idle in the pool")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass
class Database:
    """The engine plus the two session factories the services use.

    ``write`` sessions start with ``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL both are the same.
    """

    engine: Engine
    read: sessionmaker[Session]
    write: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def make_database(url: str, **engine_kwargs: Any) -> Database:
    engine = create_db_engine(url, **engine_kwargs)
    write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    return Database(
        engine=engine,
        read=sessionmaker(bind=engine, expire_on_commit=False),
        write=sessionmaker(bind=write_engine, expire_on_commit=False),
    )
