"""Run Alembic migrations programmatically (used by the CLI, ``make run`` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from protocols.db import normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
#: The PostgreSQL advisory lock a migration holds for its transaction (``migrations/env.py``), an arbitrary
#: constant of this project's: two ``flask protocols migrate`` at once (an init container per replica)
#: both found the schema missing, and the loser failed on a duplicate type with a traceback (found by an
#: operations probe). The second now waits for the first, then finds the database at head.
MIGRATION_LOCK = 0x7470_6D69_6772_6174  # "tpmigrat"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def is_known_revision(url: str, revision: str) -> bool:
    """Whether this release's migrations include ``revision`` (a database migrated by a newer release
    is at one they do not)."""
    try:
        return ScriptDirectory.from_config(alembic_config(url)).get_revision(revision) is not None
    except Exception:  # alembic's ResolutionError / CommandError for an unknown id
        return False


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine, url: str) -> bool:
    return current_revision(engine) == head_revision(url)
