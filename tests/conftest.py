"""Fixtures: an app per database, a fresh database per test, and real servers when needed.

``PROTOCOLS_TEST_DB`` picks the database for the whole run: ``sqlite`` (default) or ``postgres``.
``make test`` runs the suite once per database. For PostgreSQL a throwaway database is created from
``PROTOCOLS_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) for the run,
migrated once, emptied between tests and dropped at the end; nothing else is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, text

from protocols import migrate
from protocols.db import Database, normalize_url

BACKEND = os.environ.get("PROTOCOLS_TEST_DB", "sqlite")
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pytest_report_header(config: pytest.Config) -> str:
    return f"protocols test database: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres_only`` exercise what exists on PostgreSQL alone (libpq's prepared
    statements, a server that can end a session). In the SQLite leg they are deselected, so the run's
    summary counts them ("N deselected") rather than reporting them as passed without running;
    the PostgreSQL leg, required in CI, runs them."""
    if BACKEND == "postgres":
        return
    kept = [item for item in items if item.get_closest_marker("postgres_only") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does, teardown included (the databases and servers this run made
    are dropped and stopped): ``make test`` stops its background PostgreSQL leg with TERM, since a
    background job of a non-interactive shell ignores Ctrl-C, and TERM's default left them behind."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


class TestDatabases:
    """Hands out an empty, migrated database URL per test."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self.template: Path | None = None
        self.pg_url: str | None = None
        self.pg_name: str | None = None
        self.admin_url = os.environ.get("PROTOCOLS_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)
        self.private_names: list[str] = []
        self._emptier: Engine | None = None
        self._empty_statements: list[str] = []

    # -- SQLite: copy a migrated template file per test
    def sqlite_url(self) -> str:
        if self.template is None:
            self.template = self.tmp_root / "template.sqlite3"
            migrate.upgrade(f"sqlite:///{self.template}")
        path = self.tmp_root / f"db-{uuid.uuid4().hex[:12]}.sqlite3"
        shutil.copyfile(self.template, path)
        _new_feed_id(path)
        return f"sqlite:///{path}"

    # -- PostgreSQL: one throwaway database per run, emptied per test
    def postgres_url(self) -> str:
        if self.pg_url is None:
            self.pg_name = self._create_postgres()
            self.pg_url = self._postgres_url_of(self.pg_name)
        else:
            self.empty_postgres()
        return self.pg_url

    def _create_postgres(self) -> str:
        """Create and migrate a database of this run's own (``tp_test_<pid>_<random>``)."""
        name = f"tp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = create_engine(normalize_url(self.admin_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        migrate.upgrade(self._postgres_url_of(name))
        return name

    def _postgres_url_of(self, name: str) -> str:
        return f"{normalize_url(self.admin_url).rsplit('/', 1)[0]}/{name}"

    def empty_postgres(self) -> None:
        """Empty every table between tests. The immutability triggers are bypassed only here, with
        ``session_replication_role = replica``, on a database this run created.

        DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE's new files for every table cost
        twice as long (~60 ms a test, a minute of the PostgreSQL leg). Identities restart as TRUNCATE's
        RESTART IDENTITY did. One engine serves every test; pre-ping replaces a connection a test's
        fault injection closed."""
        assert self.pg_url is not None
        if self._emptier is None:
            self._emptier = create_engine(self.pg_url, pool_pre_ping=True, pool_size=1)
            with self._emptier.connect() as conn:
                tables = [r[0] for r in conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename NOT IN ('alembic_version', 'change_counter', 'feed_identity') "
                    "ORDER BY tablename"))]
                sequences = [r[0] for r in conn.execute(text(
                    "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY sequencename"))]
            self._empty_statements = ([f'DELETE FROM "{t}"' for t in tables]
                                      + [f'ALTER SEQUENCE "{s}" RESTART' for s in sequences]
                                      + ["UPDATE change_counter SET value = 0",
                                         # a fresh database's own feed id, as migration 0008 makes one
                                         "UPDATE feed_identity SET value = substr(md5(random()::text), 1, 16)"])
        with self._emptier.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.exec_driver_sql("; ".join(self._empty_statements))

    def private_url(self) -> str:
        """A migrated database of its own, for a module-scoped fixture (a real server, a catalog read by
        many tests) that must outlive the per-test emptying; dropped at the end of the run."""
        if BACKEND != "postgres":
            path = self.tmp_root / f"private-{uuid.uuid4().hex[:12]}.sqlite3"
            shutil.copyfile(Path(self.sqlite_url().removeprefix("sqlite:///")), path)
            return f"sqlite:///{path}"
        name = self._create_postgres()
        self.private_names.append(name)
        return self._postgres_url_of(name)

    def drop(self) -> None:
        if self._emptier is not None:
            self._emptier.dispose()
        names = [*([self.pg_name] if self.pg_name else []), *self.private_names]
        if not names:
            return
        admin = create_engine(normalize_url(self.admin_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in names:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                             {"name": name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    def new_url(self) -> str:
        return self.postgres_url() if BACKEND == "postgres" else self.sqlite_url()


def _new_feed_id(path: Path) -> None:
    """A copy of the migrated template gets its own feed id, as a database migrated afresh does
    (migration 0008): a feed cursor of one test database is refused by another."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute("UPDATE feed_identity SET value = ?", (uuid.uuid4().hex[:16],))
    finally:
        connection.close()


@pytest.fixture(scope="session")
def test_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabases]:
    databases = TestDatabases(tmp_path_factory.mktemp("databases"))
    yield databases
    databases.drop()


@pytest.fixture
def database_url(test_databases: TestDatabases) -> str:
    return test_databases.new_url()


@pytest.fixture
def blank_database_url(test_databases: TestDatabases, tmp_path: Path) -> Iterator[str]:
    """An empty database of this run's kind that no migration has touched (a file in ``tmp_path``, or a
    PostgreSQL database of its own, dropped afterwards)."""
    if BACKEND != "postgres":
        yield f"sqlite:///{tmp_path / 'blank.sqlite3'}"
        return
    name = f"tp_blank_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(test_databases.admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield test_databases._postgres_url_of(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


ALL_SCOPES = ("protocols:read", "protocols:write", "admin")
TEST_KEY_NAME = "test-all-scopes"


class AuthenticatedClient(FlaskClient):
    """A test client that sends the test database's all-scopes key (``app.config["TEST_API_KEY"]``),
    so every test can call protected endpoints without knowing about authentication."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        key = self.application.config.get("TEST_API_KEY")
        if key:
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"


@pytest.fixture
def make_app(database_url: str) -> Iterator[Any]:
    """Factory for apps on this test's database (several apps = several "workers").

    The first app mints an all-scopes key (named ``test-all-scopes``) in the test database; every app's
    ``test_client()`` sends it. ``anon_client`` and ``make_key`` exist for authentication tests."""
    apps: list[Flask] = []
    minted: list[str] = []

    def _make(**config: Any) -> Flask:
        from api import create_app
        from protocols import keys

        app = create_app({"PROTOCOLS_DATABASE_URL": database_url, "TESTING": True, **config})
        if not minted:
            minted.append(keys.create_key(app.extensions["protocols_db"], TEST_KEY_NAME, ALL_SCOPES)[1])
        app.config["TEST_API_KEY"] = minted[0]
        app.test_client_class = AuthenticatedClient
        apps.append(app)
        return app

    yield _make
    for app in apps:
        app.extensions["protocols_db"].dispose()


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def anon_client(app: Flask) -> FlaskClient:
    """A client that sends no Authorization header."""
    return FlaskClient(app, app.response_class, use_cookies=True)


@pytest.fixture
def api_key(app: Flask) -> str:
    """The all-scopes key ``client`` sends (for real-server tests: ``Authorization: Bearer <key>``)."""
    return str(app.config["TEST_API_KEY"])


@pytest.fixture
def make_key(app: Flask) -> Any:
    """``make_key(["protocols:read"], name=..., expires_at=...)`` mints a key in the test database and
    returns the plain key."""
    from protocols import keys

    def _make(scopes: Any, name: str | None = None, **kwargs: Any) -> str:
        name = name or f"test-key-{uuid.uuid4().hex[:8]}"  # live keys have distinct names
        return keys.create_key(app.extensions["protocols_db"], name, list(scopes), **kwargs)[1]

    return _make


@pytest.fixture
def db(app: Flask) -> Database:
    return app.extensions["protocols_db"]


@pytest.fixture
def backend() -> str:
    return BACKEND
