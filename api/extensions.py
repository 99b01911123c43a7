"""Per-app extension handles: the database and the OpenAPI ``Api`` live in ``app.extensions``."""

from __future__ import annotations

from flask import current_app, g

from protocols.audit import Pending
from protocols.db import Database
from protocols.versioning import WriteContext

API_KEY = "protocols_api"
DB_KEY = "protocols_db"


def get_db() -> Database:
    db: Database = current_app.extensions[DB_KEY]
    return db


def write_context(audit: Pending | None = None) -> WriteContext:
    """Who is writing (the API key's name, once authenticated), the request id, and the audit event the
    service records in the write's own transaction if it appends a version."""
    return WriteContext(actor=g.get("actor_name"), request_id=g.get("request_id"), audit=audit)
