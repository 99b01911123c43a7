"""Engine and session factories for SQLite and PostgreSQL.

SQLite needs care to behave like a real server database under concurrent writers:

* WAL journal so readers never block the writer, and a busy timeout so a writer waits for the lock
  instead of failing at once (for at most ``LOCK_TIMEOUT_MS``, as on PostgreSQL);
* pysqlite's own implicit transaction handling is turned off and we emit ``BEGIN`` ourselves, so a
  write transaction can start with ``BEGIN IMMEDIATE`` (take the write lock up front). Without it,
  two writers could both read the same "latest version" and only find out at commit time.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from protocols.pg_statements import PreparedStatements

if TYPE_CHECKING:  # versioning imports this module; the name is only needed for typing
    from protocols.versioning import _Head

DEFAULT_SQLITE_PATH = Path("var") / "protocols.sqlite3"
#: How long a statement waits for a lock held elsewhere before it fails: SQLite's busy timeout and
#: PostgreSQL's ``lock_timeout``. The request then answers 503 with ``Retry-After`` (api/errors.py).
#: Without a bound on PostgreSQL, a lock someone forgot (an open transaction in psql, a migration's
#: ``ACCESS EXCLUSIVE`` lock) held every request that needed it, and so every worker thread, for as
#: long as it lasted. Appends hold their locks for about a millisecond, so 5 s is never reached by
#: the service's own traffic.
LOCK_TIMEOUT_MS = 5000
#: PostgreSQL connections a process keeps open (``PROTOCOLS_DB_POOL_SIZE``), plus 5 overflow.
POOL_SIZE = 5


#: PostgreSQL polls a client's socket this often while running its statement, and abandons the
#: statement (rolling it back) once the client is gone. A revision is one autocommit statement
#: (protocols.versioning): without the check, a worker killed while its statement waits for a lock
#: would still have its version committed once the lock is released, with no one told.
CLIENT_CHECK_INTERVAL_MS = 1000


def default_database_url() -> str:
    """The embedded default: a SQLite file under ``var/`` (created on first use)."""
    return f"sqlite:///{DEFAULT_SQLITE_PATH.as_posix()}"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS, pool_size: int = POOL_SIZE,
                     **kwargs: Any) -> Engine:
    """An engine for ``url``. ``pool_size`` is PostgreSQL's connections per process (plus 5 overflow);
    SQLite, a file in the process, keeps SQLAlchemy's own pool."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": lock_timeout_ms / 1000,
                                                   "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine, lock_timeout_ms)
        return engine
    kwargs.setdefault("pool_size", pool_size)
    kwargs.setdefault("max_overflow", 5)
    kwargs.setdefault("pool_timeout", 10)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 5)
    # The URL's own ``options`` (``?options=-csearch_path%3Dprotocols``) come first and the service's after
    # them: connect_args replaced the URL's, and a search_path there was dropped without a word, the
    # tables created and served in ``public`` (found by an operations probe). The service's two settings
    # are what its promises rest on, so a URL that sets them too is overridden.
    own = f"-c client_connection_check_interval={CLIENT_CHECK_INTERVAL_MS} -c lock_timeout={lock_timeout_ms}"
    from_url = parsed.query.get("options")
    from_url = " ".join(from_url) if isinstance(from_url, tuple) else from_url
    connect_args.setdefault("options", f"{from_url} {own}" if from_url else own)
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


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class ReadConnections:
    """One autocommit connection per thread for single-statement reads by key (the GET fast path).

    Why not the pool: checking a connection out and back in (with its reset, and switching
    PostgreSQL's autocommit on and off around the statement) cost more CPU than the statement itself;
    a read of one immutable row needs no transaction at all. Each thread keeps its own connection
    (detached from the pool, so it went through the same ``connect`` set-up) and uses it for nothing
    else. A connection that fails is closed and replaced on the next call; an idle one the server
    closed is noticed before use (:func:`refuse_dead_connection`); ``Database.dispose`` closes them all.
    The connections of threads that have ended are closed whenever a thread opens one: gunicorn's
    threads live as long as their worker, but ``flask run`` starts a thread per request, and each
    left a PostgreSQL connection open until the server refused new clients.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[Any, threading.Thread] = {}  # connection -> the thread it belongs to
        self._generation = 0
        self._autocommit = engine.dialect.name == "postgresql"

    def fetch_one(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Any:
        """The first row of ``sql`` (driver paramstyle), or None; DBAPI errors come as ``DBAPIError``.

        On PostgreSQL the connection is in autocommit mode, so one statement is one transaction: the
        revise path sends its single append statement here too (protocols.versioning)."""
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            fairy = self._connection()
        except dbapi.Error as exc:  # cannot connect: wrapped as Engine.connect() would wrap it
            raise DBAPIError.instance(None, None, exc, dbapi.Error, dialect=self.engine.dialect) from exc
        try:
            statements = self._local.statements
            if statements is not None:  # PostgreSQL: libpq prepared statements (protocols.pg_statements)
                return statements.fetch_one(sql, params)
            cursor = self._local.cursor  # one per connection, reused: a new cursor per read cost ~30 %
            cursor.execute(sql, params)
            return cursor.fetchone()
        except dbapi.Error as exc:
            disconnected = self.engine.dialect.is_disconnect(exc, fairy.dbapi_connection, None)
            self._discard(fairy)
            raise DBAPIError.instance(sql, params, exc, dbapi.Error, connection_invalidated=disconnected,
                                      dialect=self.engine.dialect) from exc

    def _connection(self) -> Any:
        local = self._local
        fairy = getattr(local, "fairy", None)
        if fairy is not None:
            if local.generation == self._generation and self._alive(fairy):
                return fairy
            self._discard(fairy)
        self._close_orphans()
        fairy = self.engine.raw_connection()
        fairy.detach()  # ours alone from now on; closing it closes the connection
        if self._autocommit:
            fairy.dbapi_connection.autocommit = True  # type: ignore[union-attr]
        with self._lock:
            self._open[fairy] = threading.current_thread()
            local.fairy, local.generation = fairy, self._generation
        if self._autocommit:  # PostgreSQL: libpq's prepared statements, no cursor
            local.cursor, local.statements = None, PreparedStatements(fairy.dbapi_connection)
        else:
            local.cursor, local.statements = fairy.dbapi_connection.cursor(), None  # type: ignore[union-attr]
        return fairy

    @staticmethod
    def _alive(fairy: Any) -> bool:
        try:
            refuse_dead_connection(fairy.dbapi_connection, None, None)
        except DisconnectionError:
            return False
        return True

    def _close_orphans(self) -> None:
        """Close the connections whose thread has ended (nothing can use them any more)."""
        with self._lock:
            orphans = [fairy for fairy, thread in self._open.items() if not thread.is_alive()]
            for fairy in orphans:
                del self._open[fairy]
        for fairy in orphans:
            with contextlib.suppress(Exception):  # its thread is gone: nothing to do with an error
                fairy.close()

    def open_count(self) -> int:
        """How many connections are open (for tests and diagnostics)."""
        with self._lock:
            return len(self._open)

    def _discard(self, fairy: Any) -> None:
        with self._lock:
            self._open.pop(fairy, None)
        if getattr(self._local, "fairy", None) is fairy:
            self._local.fairy = None
        with contextlib.suppress(Exception):  # it is thrown away because it is broken
            fairy.close()

    def close_all(self) -> None:
        with self._lock:
            self._generation += 1
            fairies, self._open = list(self._open), {}
        for fairy in fairies:
            with contextlib.suppress(Exception):  # closing at shutdown: nothing to do with an error
                fairy.close()


class RecentHeads:
    """The newest version this process last saw of each protocol it wrote: a *guess*, never an answer.

    Why: on PostgreSQL a revision reads the head, then sends its guarded append. When this process
    wrote the head itself, the read repeats what it already knows, and costs a round trip. A guess is
    safe because the append verifies it in the same statement (the head is still at that version,
    with that ETag), and writes nothing otherwise; the caller then reads the head and decides from
    what it read (protocols.versioning). Nothing is ever answered from a guess without that check.

    Bounded (oldest entries dropped first), shared by the process's threads."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._heads: dict[str, _Head] = {}
        self._lock = threading.Lock()

    def get(self, protocol_id: str) -> _Head | None:
        return self._heads.get(protocol_id)

    def put(self, protocol_id: str, head: _Head) -> None:
        with self._lock:
            self._heads.pop(protocol_id, None)
            self._heads[protocol_id] = head
            while len(self._heads) > self.capacity:
                del self._heads[next(iter(self._heads))]

    def forget(self, protocol_id: str) -> None:
        with self._lock:
            self._heads.pop(protocol_id, None)


@dataclass
class Database:
    """The engine plus the two session factories the services use.

    ``write`` sessions start with ``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL both are the same.
    ``reads`` holds the per-thread connections of single-statement reads (:class:`ReadConnections`);
    ``heads`` the guesses that spare a revision its head read (:class:`RecentHeads`).
    """

    engine: Engine
    read: sessionmaker[Session]
    write: sessionmaker[Session]
    reads: ReadConnections = field(init=False)
    heads: RecentHeads = field(init=False)

    def __post_init__(self) -> None:
        self.reads = ReadConnections(self.engine)
        self.heads = RecentHeads()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.reads.close_all()
        self.engine.dispose()


def make_database(url: str, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS, **engine_kwargs: Any) -> Database:
    engine = create_db_engine(url, lock_timeout_ms=lock_timeout_ms, **engine_kwargs)
    write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    return Database(
        engine=engine,
        read=sessionmaker(bind=engine, expire_on_commit=False),
        write=sessionmaker(bind=write_engine, expire_on_commit=False),
    )
