"""``/v1/protocols``: create, read (in effect, as-of, by version), revise, retire, list.

Views are thin: parse with a schema, call a versioning service, serve the stored bytes.
"""

from __future__ import annotations

from typing import Any

from flask import Response, url_for

from api.errors import ApiError
from api.extensions import get_db, write_context
from api.http import (
    CACHE_IMMUTABLE,
    if_match,
    list_response,
    page_links,
    read_cursor,
    version_response,
)
from api.parsing import Blueprint
from protocols import versioning
from protocols.errors import ProtocolRetired
from schemas.protocol import ProtocolCreateSchema, ProtocolSchema, split_payload
from schemas.query import (
    AsOfQuerySchema,
    ProtocolListQuerySchema,
    RetireQuerySchema,
    VersionListQuerySchema,
)

blp = Blueprint("protocols", __name__, url_prefix="/v1/protocols",
                description="Versioned treatment-protocol records. Every write appends an immutable "
                            "version; reads resolve the version in effect now or at `as_of`.")

ETAG_HEADER = {"ETag": {"description": "Strong entity-tag of the version served",
                        "schema": {"type": "string"}}}
LINK_HEADER = {"Link": {"description": "RFC 8288 next/prev links", "schema": {"type": "string"}}}


def _check_body_id(payload: dict[str, Any], protocol_id: str) -> None:
    if payload.get("id") is not None and payload["id"] != protocol_id:
        raise ApiError(422, "The body id differs from the URL id",
                       errors={"id": [f"must be '{protocol_id}' (the id in the URL) or omitted"]})


@blp.route("", methods=["POST"])
@blp.arguments(ProtocolCreateSchema)
@blp.response(201, ProtocolSchema, headers={**ETAG_HEADER,
                                            "Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, description="A protocol with this id exists (ids are never reused)")
def create_protocol(payload: dict[str, Any]) -> Response:
    """Create a protocol (version 1)."""
    meta, content = split_payload(payload)
    stored = versioning.create(get_db(), meta["id"], content, status=meta["status"],
                               effective_from=meta["effective_from"], change_note=meta["change_note"],
                               ctx=write_context())
    location = url_for("protocols.get_protocol", protocol_id=stored.protocol_id)
    return version_response(stored, 201, headers={"Location": location})


@blp.route("", methods=["GET"])
@blp.arguments(ProtocolListQuerySchema, location="query")
@blp.response(200, ProtocolSchema(many=True), headers=LINK_HEADER)
def list_protocols(query: dict[str, Any]) -> Response:
    """List the protocols in effect (newest protocol first, cursor pagination)."""
    after, before = read_cursor("protocols", query)
    page = versioning.list_effective(get_db(), at=query.get("as_of"), limit=query["page_size"],
                                     after_seq=after, before_seq=before)
    next_url, prev_url = page_links("protocols", [row.protocol_seq for row in page.items],
                                    has_more=page.has_more, after=after, before=before)
    return list_response((row.version.document for row in page.items), next_url=next_url,
                         prev_url=prev_url, page_size=query["page_size"])


@blp.route("/<string:protocol_id>", methods=["GET"])
@blp.arguments(AsOfQuerySchema, location="query")
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER)
@blp.alt_response(304, description="Not modified (If-None-Match matched)")
@blp.alt_response(404, description="No such protocol, or no version in effect at that time")
@blp.alt_response(410, schema=ProtocolSchema, description="Retired: the retirement version")
def get_protocol(query: dict[str, Any], protocol_id: str) -> Response:
    """The version in effect now, or at `as_of`."""
    try:
        stored = versioning.effective(get_db(), protocol_id, query.get("as_of"))
    except ProtocolRetired as exc:
        return version_response(exc.details["version"], 410)
    return version_response(stored)


@blp.route("/<string:protocol_id>", methods=["PUT"])
@blp.arguments(ProtocolSchema)
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER,
              description="Content equals the newest version: nothing appended, newest returned")
@blp.alt_response(201, schema=ProtocolSchema, description="A new version was appended")
@blp.alt_response(412, description="If-Match is stale; the body names the newest version")
@blp.alt_response(428, description="If-Match is missing")
def revise_protocol(payload: dict[str, Any], protocol_id: str) -> Response:
    """Append the next version. Requires `If-Match` with the newest version's ETag."""
    _check_body_id(payload, protocol_id)
    meta, content = split_payload(payload)
    stored, created = versioning.revise(get_db(), protocol_id, content, if_match=if_match(),
                                        status=meta["status"], effective_from=meta["effective_from"],
                                        change_note=meta["change_note"], ctx=write_context())
    if not created:
        return version_response(stored, 200)
    location = url_for("protocols.get_version", protocol_id=protocol_id, version=stored.version)
    return version_response(stored, 201, headers={"Location": location})


@blp.route("/<string:protocol_id>", methods=["DELETE"])
@blp.arguments(RetireQuerySchema, location="query")
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER,
              description="The retirement version (nothing is erased)")
@blp.alt_response(412, description="If-Match is stale")
@blp.alt_response(428, description="If-Match is missing")
def retire_protocol(query: dict[str, Any], protocol_id: str) -> Response:
    """Retire a protocol: append a `retired` version. Requires `If-Match`."""
    stored, _ = versioning.retire(get_db(), protocol_id, if_match=if_match(),
                                  effective_from=query.get("effective_from"),
                                  change_note=query.get("change_note"), ctx=write_context())
    return version_response(stored, 200)


@blp.route("/<string:protocol_id>/versions", methods=["GET"])
@blp.arguments(VersionListQuerySchema, location="query")
@blp.response(200, ProtocolSchema(many=True), headers=LINK_HEADER)
def list_versions(query: dict[str, Any], protocol_id: str) -> Response:
    """Every version, newest first."""
    kind = f"versions:{protocol_id}"
    after, before = read_cursor(kind, query)
    page = versioning.list_versions(get_db(), protocol_id, limit=query["page_size"], after_version=after,
                                    before_version=before, since=query.get("since"),
                                    until=query.get("until"))
    next_url, prev_url = page_links(kind, [v.version for v in page.items], has_more=page.has_more,
                                    after=after, before=before)
    return list_response((v.document for v in page.items), next_url=next_url, prev_url=prev_url,
                         page_size=query["page_size"])


@blp.route("/<string:protocol_id>/versions/latest", methods=["GET"])
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER)
def get_latest_version(protocol_id: str) -> Response:
    """The newest version, whatever its status (drafts included)."""
    return version_response(versioning.latest(get_db(), protocol_id))


@blp.route("/<string:protocol_id>/versions/<int:version>", methods=["GET"])
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER)
def get_version(protocol_id: str, version: int) -> Response:
    """One version exactly as stored. It never changes: cache it forever."""
    return version_response(versioning.get_version(get_db(), protocol_id, version), cache=CACHE_IMMUTABLE)
