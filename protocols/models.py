"""SQLAlchemy models: the storage shape of the versioned registry.

Why this shape:

* ``protocols`` is the *head* of a protocol: its slug, a creation sequence used as a stable
  keyset-pagination key (taken in commit order, so an export replayed by import lists alike), and
  ``latest_version`` which writers advance with a guarded
  ``UPDATE ... WHERE latest_version = :expected`` so the If-Match check holds inside the database.
* ``protocol_versions`` is the immutable history. A trigger (see the first migration) refuses any
  UPDATE or DELETE of a row on SQLite and PostgreSQL alike. Each row stores the JSON document served
  for it, serialized once at write time, with its strong ETag.
* ``effective_periods`` is *derived* data, rebuilt inside every write transaction: for each
  active/retired version the half-open interval during which it is the version in effect. Reads
  "what is in effect at T" become an indexed range lookup instead of a per-protocol max().
* ``search_terms`` is derived too: one row per searchable value of a version (drug, brand, code…).
* ``change_counter`` hands out the commit-ordered sequence of the changes feed: its single row is
  locked by every writer until commit, so sequence order equals commit order on both databases.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The largest value a key column holds: version numbers are 32-bit integers, sequences (protocols,
#: versions, changes, audit events) 64-bit. Keys that come from outside (cursors) are checked against
#: them, since PostgreSQL answers a larger one with "integer out of range".
MAX_VERSION = 2**31 - 1
MAX_SEQ = 2**63 - 1


class Base(DeclarativeBase):
    """Declarative base for every table of the service."""


class Protocol(Base):
    __tablename__ = "protocols"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False)


class ProtocolVersion(Base):
    __tablename__ = "protocol_versions"
    __table_args__ = (
        UniqueConstraint("protocol_id", "version", name="uq_protocol_versions_protocol_version"),
        Index("ix_protocol_versions_effective", "protocol_id", "effective_from", "version"),
        Index("ix_protocol_versions_recorded_at", "recorded_at"),
    )

    # Commit-ordered, gap-free-per-commit sequence used by the changes feed (not autoincrement:
    # it comes from ``change_counter`` so it is assigned in commit order).
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    protocol_id: Mapped[str] = mapped_column(ForeignKey("protocols.id"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    effective_from: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    recorded_by: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(100))
    change_note: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    etag: Mapped[str] = mapped_column(String(100), nullable=False)
    document: Mapped[str] = mapped_column(Text, nullable=False)


class EffectivePeriod(Base):
    __tablename__ = "effective_periods"
    __table_args__ = (
        ForeignKeyConstraint(["protocol_id", "version"],
                             ["protocol_versions.protocol_id", "protocol_versions.version"]),
        Index("ix_effective_periods_seq", "protocol_seq"),
        Index("ix_effective_periods_window", "valid_from", "valid_until"),
    )

    protocol_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    protocol_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    valid_from: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    valid_until: Mapped[datetime | None] = mapped_column(DateTime())


class SearchTerm(Base):
    __tablename__ = "search_terms"
    __table_args__ = (
        ForeignKeyConstraint(["protocol_id", "version"],
                             ["protocol_versions.protocol_id", "protocol_versions.version"]),
        Index("ix_search_terms_lookup", "kind", "value", "protocol_id", "version"),
        Index("ix_search_terms_version", "protocol_id", "version"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    protocol_id: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    value: Mapped[str] = mapped_column(String(200), nullable=False)


class ChangeCounter(Base):
    __tablename__ = "change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class FeedIdentity(Base):
    """One row: a random name for this database's changes feed (migration 0008). Feed cursors carry
    it, so a position issued by another database, or before a restore, is refused instead of skipping
    the versions another history numbered up to it."""

    __tablename__ = "feed_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str] = mapped_column(String(32), nullable=False)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    scopes: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime())


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_time", "occurred_at"),
        Index("ix_audit_events_actor", "actor"),
        Index("ix_audit_events_target", "target"),
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(), nullable=False)
    actor: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[str | None] = mapped_column(Text)
