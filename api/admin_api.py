"""``/v1/admin``: API-key administration and the audit log (``admin`` scope).

Creating and revoking keys are writes: each is audited in the same transaction as the change
(target = key id), and the plain key appears only in the creation response — never in the audit row
or the logs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Response, g, request, url_for

from api.audit_log import pending
from api.auth import requires_scope
from api.errors import ApiError, ErrorSchema
from api.extensions import get_db, write_context
from api.http import (
    UNTAGGED_PRECONDITION,
    check_untagged_preconditions,
    link_header,
    page_links,
    read_cursor,
    reads_cursor,
)
from api.parsing import Blueprint
from protocols import audit, keys
from protocols.keys import ADMIN, KeyInfo
from protocols.timeutil import utcnow
from schemas.admin import (
    AuditPageSchema,
    AuditQuerySchema,
    KeyCreatedSchema,
    KeyCreateSchema,
    KeyListSchema,
    KeySchema,
)

blp = Blueprint("admin", __name__, url_prefix="/v1/admin",
                description="API keys and the audit log. Requires the `admin` scope.")

LINK_HEADER = {"Link": {"description": "RFC 8288 next/prev links", "schema": {"type": "string"}}}


def _key_dict(info: KeyInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "scopes": list(info.scopes), "created_at": info.created_at,
            "expires_at": info.expires_at, "revoked_at": info.revoked_at, "active": info.is_active(utcnow())}


def _get_key(key_id: str) -> KeyInfo:
    try:
        return keys.get_key(get_db(), key_id)
    except keys.KeyNotFound as exc:
        raise ApiError(404, exc.message) from exc


@blp.route("/keys", methods=["GET"])
@requires_scope(ADMIN)
@blp.response(200, KeyListSchema)
def list_keys() -> dict[str, Any]:
    """Every key ever created (revoked and expired included), oldest first. Secrets are not stored."""
    return {"items": [_key_dict(k) for k in keys.list_keys(get_db())]}


@blp.route("/keys", methods=["POST"])
@requires_scope(ADMIN)
@blp.arguments(KeyCreateSchema())
@blp.response(201, KeyCreatedSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, schema=ErrorSchema,
                  description="A live key (or one whose name looks the same) has this name; errors.name says which")
@blp.alt_response(412, schema=ErrorSchema, description=UNTAGGED_PRECONDITION)
def create_key(payload: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Mint a key. The response is the only place the key ever appears."""
    check_untagged_preconditions(exists=False)
    facts = keys.creation_facts(payload["name"], payload["scopes"], payload["expires_at"])
    info, plain = keys.create_key(get_db(), payload["name"], payload["scopes"], expires_at=payload["expires_at"],
                                  ctx=write_context(pending(201, **facts)))
    g.audit_recorded = True  # written with the key, in its transaction
    return {**_key_dict(info), "key": plain}, 201, {"Location": url_for("admin.get_key", key_id=info.id)}


@blp.route("/keys/<string:key_id>", methods=["GET"])
@requires_scope(ADMIN)
@blp.response(200, KeySchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such key")
def get_key(key_id: str) -> dict[str, Any]:
    """One key's description."""
    return _key_dict(_get_key(key_id))


@blp.route("/keys/<string:key_id>", methods=["DELETE"])
@requires_scope(ADMIN)
@blp.response(200, KeySchema, description="The key, now revoked (the row is kept for the audit trail)")
@blp.alt_response(404, schema=ErrorSchema, description="No such key")
@blp.alt_response(409, schema=ErrorSchema,
                  description="The key is the last live key with the `admin` scope: create another admin key "
                              "first (the shell's `flask keys revoke` may revoke it)")
@blp.alt_response(412, schema=ErrorSchema, description=UNTAGGED_PRECONDITION)
def revoke_key(key_id: str) -> dict[str, Any]:
    """Revoke a key: it stops working at once, in every worker. Revoking again changes nothing. The
    last live admin key is not revoked here: nobody could mint a key over HTTP afterwards."""
    g.audit_target = key_id
    if request.headers.get("If-Match") is not None or request.headers.get("If-None-Match") is not None:
        _get_key(key_id)  # a request that would fail anyway (404) ignores its preconditions (RFC 9110 13.2.1)
        check_untagged_preconditions(exists=True)
    try:
        info = keys.revoke_key(get_db(), key_id, ctx=write_context(pending(200)), keep_an_admin=True)
    except keys.KeyNotFound as exc:
        raise ApiError(404, exc.message) from exc
    g.audit_recorded = True  # written with the revocation (or nothing changed: nothing to record)
    return _key_dict(info)


def _audit_cursor(query: Mapping[str, Any]) -> tuple[int | None, int | None]:
    return read_cursor("audit", query)


@blp.route("/audit", methods=["GET"])
@requires_scope(ADMIN)
@blp.arguments(AuditQuerySchema(), location="query")
@blp.response(200, AuditPageSchema, headers=LINK_HEADER)
@reads_cursor(_audit_cursor)
def list_audit(query: dict[str, Any]) -> Response:
    """The audit log, newest first, filtered by actor, target protocol, action, outcome and time."""
    after, before = _audit_cursor(query)
    page = audit.query(get_db(), limit=query["page_size"], actor=query.get("actor"), target=query.get("protocol"),
                       action=query.get("action"), outcome=query.get("outcome"), since=query.get("since"),
                       until=query.get("until"), after_seq=after, before_seq=before)
    next_url, prev_url = page_links("audit", [e.seq for e in page.items], has_more=page.has_more,
                                    after=after, before=before)
    items = [{**e.__dict__, "detail": _detail(e.detail)} for e in page.items]
    body = AuditPageSchema().dump({"items": items, "page_size": query["page_size"], "next": next_url,
                                   "prev": prev_url})
    response = Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    link = link_header([("next", next_url), ("prev", prev_url)])
    if link:
        response.headers["Link"] = link
    return response


def _detail(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw
