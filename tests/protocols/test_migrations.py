"""Migrations: run twice at once they serialize, and they are never how history is deleted."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from protocols import migrate, versioning
from protocols.db import make_database
from tests.protocols.test_search import content_of


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_downgrading_below_the_first_migration_refuses_while_the_database_holds_history(
        blank_database_url: str) -> None:
    """Found by an operations probe: ``alembic downgrade base`` silently dropped every version, key and
    audit event, on both databases. It refuses, naming what is held, and nothing is dropped; a database
    with no history (a developer's fresh one) still goes down to nothing and back."""
    url = blank_database_url
    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(url)

    db = make_database(url)
    try:
        versioning.create(db, "kept", content_of("kept"))
    finally:
        db.dispose()
    before = _tables(url)
    with pytest.raises(RuntimeError, match=r"refusing to downgrade below 0001: the database holds 1 protocol_versions"):
        command.downgrade(migrate.alembic_config(url), "base")
    # nothing undone, the later migrations included (on SQLite they had run, one by one; a review)
    assert _tables(url) == before
    engine = create_engine(url)
    try:
        assert migrate.is_current(engine, url)
    finally:
        engine.dispose()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT protocol_id, version FROM protocol_versions")).all() == [("kept", 1)]
    finally:
        engine.dispose()


@pytest.mark.postgres_only
def test_a_migration_waits_for_one_already_running(blank_database_url: str) -> None:
    """Found by an operations probe: two ``flask protocols migrate`` at once on an empty PostgreSQL
    database both created the schema, and the loser failed with a traceback (a duplicate type). A
    migration holds an advisory lock: while another holds it, this one waits and changes nothing,
    then finds what it needs to do and does it."""
    lock = migrate.MIGRATION_LOCK
    holder = create_engine(blank_database_url)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(blank_database_url)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    try:
        with holder.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock})
            conn.commit()
            migrating = threading.Thread(target=run)
            migrating.start()
            migrating.join(6.0)  # longer than the connections' 5 s lock_timeout: it still waits (a review)
            assert migrating.is_alive(), failures
            assert _tables(blank_database_url) == set()  # waiting, nothing created
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock})
            conn.commit()
        migrating.join(60)
        assert not migrating.is_alive() and failures == []
        engine = create_engine(blank_database_url)
        try:
            assert migrate.is_current(engine, blank_database_url)
        finally:
            engine.dispose()
    finally:
        holder.dispose()
