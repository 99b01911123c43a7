"""The append-only audit log: who did (or tried to do) what, to which target, with what outcome.

Rows are never updated or deleted: the first migration installs triggers that refuse UPDATE/DELETE
(and TRUNCATE on PostgreSQL) of ``audit_events``, so not even a bug here can rewrite history.
A change made through a service that takes a :class:`WriteContext` (creating, revising and retiring
protocols; minting and revoking API keys) is recorded *inside* that service's transaction
(:class:`Pending`, written by :func:`insert_allowed`): the event commits with the change and rolls
back with it, so the trail can neither miss a committed change nor record one that never was. An
import (``protocols.transfer``) writes its rows in its own transaction the same way, one per protocol it
wrote (:data:`PROTOCOL_IMPORT`) and a summary (:data:`IMPORT`).
Everything else (denied and failed requests, refused imports, catalog loads) is written by :func:`record` in its own
short transaction, so a denied or failed request is recorded even though its own work was rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from protocols.db import Database
from protocols.models import AuditEvent
from protocols.paging import newest_first_window
from protocols.timeutil import utcnow

ALLOWED = "allowed"
DENIED = "denied"

#: Actions written outside the HTTP request cycle.
KEY_CREATE = "keys.create"
KEY_REVOKE = "keys.revoke"
#: ``flask protocols import``: the file (target its name), and each protocol it wrote (target its id).
IMPORT = "protocols.import"
PROTOCOL_IMPORT = "protocol.import"


@dataclass(frozen=True)
class Pending:
    """The event a service writes in its own transaction when (and only when) it changes something.

    Plain values from the caller (the HTTP layer knows the action, the status the change answers with
    and the request detail); the service adds the actor, request id, target and time of the write."""

    action: str
    status_code: int | None = None
    detail: str | None = None


@dataclass(frozen=True)
class WriteContext:
    """Who is writing and under which request: recorded on the version (and the audit row) for the
    audit trail.

    ``audit``: the event to write *inside* the write's transaction when it changes something (the HTTP
    layer passes one, so the trail commits and rolls back with the change it describes)."""

    actor: str | None = None
    request_id: str | None = None
    audit: Pending | None = None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    occurred_at: datetime
    actor: str | None
    action: str
    target: str | None
    outcome: str
    status_code: int | None
    request_id: str | None
    detail: str | None


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEntry]
    has_more: bool


def _clip(value: str | None, length: int) -> str | None:
    """``value`` cut to ``length``, with NUL as U+FFFD: PostgreSQL text cannot hold NUL, and a refused
    request for ``/v1/protocols/abc%00`` left no audit row there while SQLite kept one. A lone surrogate
    (how Python holds a file name's bytes that are not UTF-8) is written as the escape of its byte
    (``\\xff``): neither database can store it, and ``flask protocols import`` of such a file committed
    the import, then failed on its audit row with a traceback (found by an operations probe)."""
    if value is None:
        return None
    return printable(value).replace("\x00", "\ufffd")[:length]


def printable(value: str) -> str:
    """``value`` with each lone surrogate written as the escape of its byte (``\\xff``), which both
    databases can store (see :func:`_clip`)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def row(*, action: str, outcome: str, actor: str | None, target: str | None, status_code: int | None,
        request_id: str | None, detail: str | None, occurred_at: datetime) -> dict[str, Any]:
    """The column values of one event, over-long values clipped to the column sizes."""
    return {"occurred_at": occurred_at, "actor": _clip(actor, 200), "action": _clip(action, 64),
            "target": _clip(target, 200), "outcome": _clip(outcome, 32), "status_code": status_code,
            "request_id": _clip(request_id, 100), "detail": _clip(detail, 4000)}


def allowed_row(ctx: WriteContext, *, target: str, now: datetime) -> dict[str, Any]:
    """The column values of ``ctx.audit`` (which must be set) as an *allowed* event on ``target``."""
    assert ctx.audit is not None
    return row(action=ctx.audit.action, outcome=ALLOWED, actor=ctx.actor, target=target,
               status_code=ctx.audit.status_code, request_id=ctx.request_id, detail=ctx.audit.detail,
               occurred_at=now)


def insert_allowed(session: Session, ctx: WriteContext, *, target: str, now: datetime) -> None:
    """Write ``ctx.audit`` (if any) as an *allowed* event in ``session``'s transaction: for services
    whose change and audit row must commit together."""
    if ctx.audit is not None:
        session.execute(insert(AuditEvent).values(**allowed_row(ctx, target=target, now=now)))


def record(db: Database, *, action: str, outcome: str, actor: str | None = None, target: str | None = None,
           status_code: int | None = None, request_id: str | None = None, detail: str | None = None,
           now: datetime | None = None) -> None:
    """Append one event (its own transaction). Over-long values are clipped to the column sizes."""
    with db.write.begin() as session:
        session.execute(insert(AuditEvent).values(**row(
            action=action, outcome=outcome, actor=actor, target=target, status_code=status_code,
            request_id=request_id, detail=detail, occurred_at=now or utcnow())))


def query(db: Database, *, limit: int, actor: str | None = None, target: str | None = None,
          action: str | None = None, since: datetime | None = None, until: datetime | None = None,
          outcome: str | None = None, after_seq: int | None = None, before_seq: int | None = None) -> AuditPage:
    """Events newest first. ``after_seq`` pages towards older events, ``before_seq`` towards newer;
    ``since``/``until`` bound ``occurred_at`` (inclusive, exclusive)."""
    stmt = select(AuditEvent)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if target is not None:
        stmt = stmt.where(AuditEvent.target == target)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == outcome)
    if since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < until)
    stmt = newest_first_window(stmt, AuditEvent.seq, older_than=after_seq, newer_than=before_seq)
    with db.read() as session:
        rows = session.execute(stmt.limit(limit + 1)).scalars().all()
    items = [AuditEntry(r.seq, r.occurred_at, r.actor, r.action, r.target, r.outcome, r.status_code,
                        r.request_id, r.detail) for r in rows[:limit]]
    if before_seq is not None:
        items.reverse()
    return AuditPage(items, len(rows) > limit)
