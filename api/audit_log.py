"""Record write attempts in the audit log, for every blueprint, without any view's help.

What is recorded (one row per request):

* a protocol write that appends a version (create, revise, retire) or an API key minted or revoked:
  the view hands the service an :class:`protocols.audit.Pending` event (:func:`pending`), and the
  service writes it in its own transaction, so the row commits and rolls back with the change. The
  view then sets ``g.audit_recorded`` and nothing more is written for the request;
* any other request that *changed something*: its transaction committed at least one
  INSERT/UPDATE/DELETE (written after the response is built, in its own transaction). This is
  observed at the database driver level (engine events below), so a PUT whose content equals the
  newest version (200, nothing appended) is not recorded as a change, whatever blueprint it is;
* a *denied* write: 401/403 on an endpoint that needs ``protocols:write`` or ``admin``, and every
  write's 412/428 (stale or missing ``If-Match``; a read's 412 is not a refused change).

Views may refine the row with ``g.audit_action`` / ``g.audit_target``; otherwise the action is the
endpoint's name and the target the ``protocol_id`` in the URL or the id of the created record.
The detail never carries request bodies or headers, so no key material can reach the log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from sqlalchemy import Engine, event

from api.extensions import get_db
from protocols import audit
from protocols.keys import ADMIN, WRITE
from protocols.redaction import redact

log = logging.getLogger("api.audit")

_WROTE = "protocols_audit_wrote"
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE")

#: Friendlier action names for the protocol endpoints (others default to their endpoint name).
ACTIONS: dict[str, str] = {
    "protocols.create_protocol": "protocol.create",
    "protocols.revise_protocol": "protocol.revise",
    "protocols.retire_protocol": "protocol.retire",
    # By endpoint, not set in the views: a request authentication refuses never reaches its view, and a
    # denied revoke was filed as admin.revoke_key, out of reach of ?action=keys.revoke (found by a probe).
    "admin.create_key": audit.KEY_CREATE,
    "admin.revoke_key": audit.KEY_REVOKE,
}


def track_changes(engine: Engine) -> None:
    """Flag the current request as *changed* when one of its transactions commits a write."""

    @event.listens_for(engine, "after_cursor_execute")
    def _after_execute(conn: Any, cursor: Any, statement: str, _params: Any, context: Any,
                       _many: bool) -> None:
        is_write = context is not None and (context.isinsert or context.isupdate or context.isdelete)
        if (is_write or statement.lstrip()[:6].upper() in _WRITE_VERBS) and cursor.rowcount != 0:
            conn.info[_WROTE] = True

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Any) -> None:
        if conn.info.pop(_WROTE, False) and has_request_context():
            g.db_changed = True

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Any) -> None:
        if conn.invalidated:
            return  # a dead connection: touching conn.info would mask the database error with a 500
        conn.info.pop(_WROTE, None)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info.pop(_WROTE, None)


def _target(response: Response) -> str | None:
    explicit = g.get("audit_target")
    if explicit:
        return str(explicit)
    view_args = request.view_args or {}
    for name in ("protocol_id", "key_id", "id"):
        if view_args.get(name) is not None:
            return redact(str(view_args[name]))  # a key sent as an id: audit rows are never deleted
    if response.status_code == 201 and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return body["id"]
    return redact(request.path)


#: The most an audit row's detail spends on the request's path, as JSON text. The path is the client's to
#: choose (up to gunicorn's 8,190-byte request line), and cut with the rest at the detail column's 4,000
#: characters it took the key id, key state and required scope with it, and left text that is not JSON: a
#: revoked key's refused write to a 3,990-character path named only the key's name, which a newer live key
#: held (found by a security probe).
AUDIT_PATH_CHARS = 1000


def _audited_path(path: str) -> str:
    """``path`` cut until its JSON text fits :data:`AUDIT_PATH_CHARS` (an escaped character takes up to 12)."""
    cut = path
    while len(json.dumps(cut)) > AUDIT_PATH_CHARS:
        cut = cut[:min(AUDIT_PATH_CHARS, len(cut) * 3 // 4)]
    return cut


def _detail(required_scope: str | None = None, **facts: Any) -> str:
    path = redact(request.path)
    kept = _audited_path(path)
    detail: dict[str, Any] = {"method": request.method, "path": kept}
    if kept != path:
        detail["path_length"] = len(path)  # cut: says so, and how long it was
    if g.get("api_key_id"):
        detail["key_id"] = g.api_key_id
    detail.update(g.get("refused_key") or {})
    if required_scope:
        detail["required_scope"] = required_scope
    detail.update(facts)
    return json.dumps(detail, separators=(",", ":"))


def pending(status_code: int, **facts: Any) -> audit.Pending:
    """The *allowed* event of this request, for a service to write inside its own transaction
    (plain values: the service needs no request context). ``facts`` (JSON values) join the detail:
    what a key was minted with, say, which the request's method and path do not tell."""
    endpoint = request.endpoint or ""
    return audit.Pending(action=g.get("audit_action") or ACTIONS.get(endpoint) or endpoint or "unknown",
                         status_code=status_code, detail=_detail(**facts))


def audit_response(response: Response) -> Response:
    """``after_request``: append the audit row for this request, if it is one to record."""
    if g.get("audit_recorded"):  # written with the change itself, in its transaction
        return response
    status = response.status_code
    changed = bool(g.get("db_changed"))
    scope = g.get("required_scope")
    if changed:
        outcome = audit.ALLOWED if status < 400 else "failed"
    elif (status in (412, 428) and request.method not in ("GET", "HEAD")) or (
            status in (401, 403) and scope in (WRITE, ADMIN)) or (status == 409 and scope == ADMIN):
        # A read's 412 (its If-Match named another version) is no refused change: recording it would
        # let any anonymous reader write audit rows. An admin's 409 is: revoking the last admin key (which
        # would lock everyone out of key administration) or minting a second key under a taken name.
        outcome = audit.DENIED
    else:
        return response
    detail = _detail(scope if outcome == audit.DENIED else None)
    endpoint = request.endpoint or ""
    try:
        audit.record(get_db(), action=g.get("audit_action") or ACTIONS.get(endpoint) or endpoint or "unknown",
                     outcome=outcome, actor=g.get("actor_name"), target=_target(response), status_code=status,
                     request_id=g.get("request_id"), detail=detail)
    except Exception:  # the response stands; the failure is loud in the logs
        log.exception("could not write the audit event", extra={"request_id": g.get("request_id")})
    return response


def init_app(app: Flask, engine: Engine) -> None:
    track_changes(engine)
    app.after_request(audit_response)
