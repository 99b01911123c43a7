"""Alembic environment: one code path for SQLite and PostgreSQL.

The URL comes from the Alembic config (set by ``protocols.migrate``) or ``PROTOCOLS_DATABASE_URL``.
A connection passed in ``config.attributes['connection']`` is reused (tests, CLI).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, text

from protocols.db import create_db_engine, default_database_url
from protocols.migrate import MIGRATION_LOCK
from protocols.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return (config.get_main_option("sqlalchemy.url")
            or os.environ.get("PROTOCOLS_DATABASE_URL")
            or default_database_url())


#: How long a migration waits for another one to finish (PostgreSQL): the connection's own lock_timeout
#: (5 s, so that a migration never holds up requests for long) made the second of two concurrent
#: migrations fail after 5 s instead of waiting (a review).
WAIT_FOR_ANOTHER_MIGRATION = "10min"


def _run(connection: Connection) -> None:
    # transactional_ddl on SQLite too (its DDL is transactional): a run is all or nothing, so a downgrade
    # that 0001 refuses has not already undone the later migrations (a review).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", transactional_ddl=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            bound = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
            connection.execute(text(f"SET LOCAL lock_timeout = '{WAIT_FOR_ANOTHER_MIGRATION}'"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.execute(text("SELECT set_config('lock_timeout', :bound, true)"), {"bound": bound})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
