"""``/v1/health``: liveness (the process answers) and readiness (database reachable, schema current).

Load balancers route on readiness: an instance whose database is gone, or that runs ahead of or
behind the migrations, answers 503 so traffic goes elsewhere; liveness stays 200 so it is not
restarted for a problem a restart cannot fix. Both are public and cheap.
"""

from __future__ import annotations

import functools
import logging

from alembic.util import exc as alembic_errors
from flask import Response, current_app, jsonify
from marshmallow import Schema, fields
from sqlalchemy import text

from api.errors import RETRY_AFTER_SECONDS, ErrorSchema, error_response
from api.extensions import get_db
from api.parsing import Blueprint
from protocols import migrate

log = logging.getLogger("api.health")

blp = Blueprint("health", __name__, url_prefix="/v1/health",
                description="Liveness and readiness probes (no authentication).")


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"description": "`ok` or `ready`"})
    database = fields.String(metadata={"description": "`ok` when a query succeeded"})
    migrations = fields.String(metadata={"description": "`current` when the schema is at the newest revision"})


@functools.lru_cache(maxsize=8)
def _head_revision(url: str) -> str | None:
    """The newest migration shipped with this code (fixed for the life of the process)."""
    return migrate.head_revision(url)


@blp.route("", methods=["GET"])
@blp.response(200, HealthSchema)
def health() -> Response:
    """Liveness: the process is up and answering."""
    return jsonify({"status": "ok"})


@blp.route("/ready", methods=["GET"])
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=ErrorSchema, description="Database unreachable or migrations not current",
                  headers={"Retry-After": {"description": "Seconds to wait before retrying",
                                           "schema": {"type": "integer"}}})
def ready() -> Response:
    """Readiness: the database answers and its schema is at the newest migration."""
    db = get_db()
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = migrate.current_revision(db.engine)
    except alembic_errors.CommandError:  # the database answered, but records several schema revisions
        return error_response(503, "The database records more than one schema revision (alembic_version): "
                                   "it was not migrated by this service.",
                              headers={"Retry-After": RETRY_AFTER_SECONDS}, database="ok",
                              migrations="not current")
    except Exception as exc:  # any failure to reach the database means "not ready"
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        return error_response(503, "The database is unreachable.", headers={"Retry-After": RETRY_AFTER_SECONDS},
                              database="unreachable")
    head = _head_revision(current_app.config["PROTOCOLS_DATABASE_URL"])
    if current != head:
        # A revision this release does not know is a newer release's: migrating cannot help (it says
        # so), deploying that release can (the advice read "run flask protocols migrate"; found by a probe).
        advice = ("run `flask protocols migrate`." if current is None
                  or migrate.is_known_revision(current_app.config["PROTOCOLS_DATABASE_URL"], current)
                  else "this release does not know that revision; the database was migrated by a newer one.")
        return error_response(503, f"The database schema is at revision {current!r}, not {head!r}: {advice}",
                              headers={"Retry-After": RETRY_AFTER_SECONDS}, database="ok",
                              migrations="not current")
    return jsonify({"status": "ready", "database": "ok", "migrations": "current"})
