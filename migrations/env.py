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


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
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
