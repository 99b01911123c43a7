"""``/v1/protocols``: create, read (in effect, as-of, by version), revise, retire, list.

Views are thin: parse with a schema, call a versioning service, serve the stored bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flask import Response, current_app, g, request, url_for

from api.audit_log import pending
from api.errors import ApiError, ErrorSchema
from api.extensions import get_db, write_context
from api.http import (
    CACHE_IMMUTABLE,
    CACHE_REVALIDATE,
    ENTITY_TAG_LIST_PATTERN,
    check_untagged_preconditions,
    if_match,
    if_none_match,
    json_response,
    list_response,
    page_links,
    page_url,
    read_composite_cursor,
    read_cursor,
    reads_cursor,
    version_response,
)
from api.parsing import Blueprint
from protocols import diff, search, versioning
from protocols.errors import ProtocolRetired
from protocols.models import MAX_SEQ, MAX_VERSION
from protocols.timeutil import format_rfc3339, utcnow
from schemas.diff import VersionDiffSchema, diff_body
from schemas.protocol import ProtocolCreateSchema, ProtocolPageSchema, ProtocolSchema, split_payload
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
IF_MATCH_REQUIRED = "If-Match is missing or is `*` (named in `errors`): a write names the version it was made from"
DIFF_ETAG_HEADER = {"ETag": {"description": "Strong entity-tag of this answer (a hash of its bytes: the same two "
                                            "versions may be compared differently by a later release)",
                             "schema": {"type": "string"}}}
LINK_HEADER = {"Link": {"description": "RFC 8288 next/prev links", "schema": {"type": "string"}}}

#: Operations that need If-Match (documented by :func:`document_protocol_operations`, not ``@blp.doc``: a manual
#: ``parameters`` list replaces the query parameters ``@blp.arguments`` documents, and DELETE's
#: ``effective_from``/``change_note`` were missing from the contract).
IF_MATCH_OPERATIONS = (("put", "/v1/protocols/{protocol_id}"), ("delete", "/v1/protocols/{protocol_id}"))
IF_MATCH_PARAMETER = {"in": "header", "name": "If-Match", "required": True,
                      "schema": {"type": "string", "pattern": ENTITY_TAG_LIST_PATTERN},
                      "description": "ETag of the newest version (from GET or the previous write)"}
IF_NONE_MATCH_PARAMETER = {"in": "header", "name": "If-None-Match", "required": False,
                           "schema": {"type": "string", "pattern": ENTITY_TAG_LIST_PATTERN},
                           "description": "Optional: entity-tags (or *) the newest version must not be; when it is, "
                                          "412 and nothing is written (RFC 9110 13.2.2)"}
#: A create's conditional headers: read as on PUT and DELETE (a malformed list is a 400 naming the header),
#: evaluated against the protocol the body names, which a create never has (an existing id is a 409).
CREATE_PRECONDITIONS = [
    {**IF_MATCH_PARAMETER, "required": False,
     "description": "Not for a create: a protocol being created has no version to match, so any If-Match "
                    "(even *) is 412 and nothing is written; revise with PUT"},
    {**IF_NONE_MATCH_PARAMETER,
     "description": "Optional (* or entity-tags): a create is already conditional on no protocol having the "
                    "id (409 otherwise)"},
]

# OpenAPI links: how a client (and the stateful contract fuzzer) goes create -> read -> revise -> read
# version. Operations are named by JSON pointer, so no operationId has to be invented.
_ONE = "#/paths/~1v1~1protocols~1{protocol_id}"
_GET_ONE, _PUT_ONE, _DELETE_ONE = f"{_ONE}/get", f"{_ONE}/put", f"{_ONE}/delete"
_GET_VERSION = "#/paths/~1v1~1protocols~1{protocol_id}~1versions~1{version}/get"
_LIST_VERSIONS = "#/paths/~1v1~1protocols~1{protocol_id}~1versions/get"
_BY_ID = {"protocol_id": "$response.body#/id"}
_READ_LINKS = {
    "GetProtocol": {"operationRef": _GET_ONE, "parameters": _BY_ID},
    "GetVersion": {"operationRef": _GET_VERSION,
                   "parameters": {**_BY_ID, "version": "$response.body#/version"}},
    "ListVersions": {"operationRef": _LIST_VERSIONS, "parameters": _BY_ID},
}
_WRITE_LINKS = {
    "ReviseProtocol": {"operationRef": _PUT_ONE, "requestBody": "$response.body",
                       "parameters": {**_BY_ID, "header.If-Match": "$response.header.ETag"}},
    "RetireProtocol": {"operationRef": _DELETE_ONE,
                       "parameters": {**_BY_ID, "header.If-Match": "$response.header.ETag"}},
}

#: Links per documented response, merged in by :func:`document_protocol_operations`. Not ``@blp.doc``:
#: its ``responses`` replace the response object ``@blp.response`` builds, and the 200/201 of read,
#: create, revise and retire lost their description, body schema and ETag/Location headers (an
#: OpenAPI validator refused the document; found by a documentation probe).
RESPONSE_LINKS = {
    ("post", "/v1/protocols"): {"201": {**_READ_LINKS, **_WRITE_LINKS}},
    ("get", "/v1/protocols/{protocol_id}"): {"200": {**_READ_LINKS, **_WRITE_LINKS}},
    ("put", "/v1/protocols/{protocol_id}"): {"200": _READ_LINKS, "201": {**_READ_LINKS, **_WRITE_LINKS}},
    ("delete", "/v1/protocols/{protocol_id}"): {"200": _READ_LINKS},
}


def _appended() -> None:
    """The service committed a version with its audit event: nothing more to record for this request."""
    g.audit_recorded = True


def _check_body_id(payload: dict[str, Any], protocol_id: str) -> None:
    if payload.get("id") is not None and payload["id"] != protocol_id:
        raise ApiError(422, "The body id differs from the URL id",
                       errors={"id": [f"must be '{protocol_id}' (the id in the URL) or omitted"]})


@blp.route("", methods=["POST"])
@blp.arguments(ProtocolCreateSchema())
@blp.response(201, ProtocolSchema, headers={**ETAG_HEADER,
                                            "Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, schema=ErrorSchema, description="A protocol with this id exists (ids are never reused)")
@blp.alt_response(412, schema=ErrorSchema, description="If-Match was sent: a protocol being created has no version "
                                                       "to match")
def create_protocol(payload: dict[str, Any]) -> Response:
    """Create a protocol (version 1)."""
    # RFC 9110 13.1.1: an origin server MUST evaluate If-Match. It was ignored here, malformed lists
    # included, though PUT and DELETE refuse them (adversarial probe). A protocol being created has no
    # version to match, as a key being created has none (the same rule; If-None-Match's syntax is checked).
    check_untagged_preconditions(exists=False)
    meta, content = split_payload(payload)
    stored = versioning.create(get_db(), meta["id"], content, status=meta["status"],
                               effective_from=meta["effective_from"], change_note=meta["change_note"],
                               ctx=write_context(pending(201)))
    _appended()
    location = url_for("protocols.get_protocol", protocol_id=stored.protocol_id)
    return version_response(stored, 201, headers={"Location": location})


LIST_KIND = "protocols"
RANKED_KIND = "protocols:ranked"


def _list_cursor(query: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(after, before)`` keys of the list's cursor: a ranked search's (with ``q``) or the newest-first
    list's (:func:`_ranked_page` says what a ranked key holds)."""
    if "q" in query:
        return read_composite_cursor(RANKED_KIND, query, (MAX_VERSION, MAX_SEQ, MAX_SEQ, 1), optional=2)
    return read_cursor(LIST_KIND, query)


def _versions_cursor(query: Mapping[str, Any], protocol_id: str) -> tuple[int | None, int | None]:
    return read_cursor(f"versions:{protocol_id}", query, max_key=MAX_VERSION)


@blp.route("", methods=["GET"])
@blp.arguments(ProtocolListQuerySchema(), location="query")
@blp.response(200, ProtocolPageSchema, headers=LINK_HEADER)
@blp.alt_response(409, schema=ErrorSchema,
                  description="A ranked search's `cursor` from before a version was recorded that takes effect at "
                              "or before the search's moment (a back-dated write): its pages would skip or repeat "
                              "protocols; `first` links to the search without the cursor")
@reads_cursor(_list_cursor)
def list_protocols(query: dict[str, Any]) -> Response:
    """Find protocols: filters (AND), free text `q` (ranked), `as_of` time travel, cursor pages.

    Without `q`: newest protocol first. With `q`: best rank first, then newest protocol. Pages are
    keyset pages: a write between two fetches neither repeats nor skips a protocol. With `q` and no
    `as_of`, the `next`/`prev` links carry the first page's moment as `as_of`: a revision changes a
    protocol's rank, and on a live view it could jump over the cursor between two fetches.
    """
    filters = search.ProtocolQuery.from_mapping(query)
    pinned = None
    if filters.ranked and filters.as_of is None:
        now = utcnow()
        filters = replace(filters, as_of=now)
        pinned = {"as_of": format_rfc3339(now)}
    kind = RANKED_KIND if filters.ranked else LIST_KIND
    after: Any
    before: Any
    if filters.ranked:
        page, keys, after, before = _ranked_page(kind, filters, query, server_pinned=pinned is not None)
    else:
        after, before = _list_cursor(query)
        page = search.search(get_db(), filters, limit=query["page_size"], after=after, before=before,
                             count=query["count"])
        keys = [hit.key for hit in page.items]
    next_url, prev_url = page_links(kind, keys, has_more=page.has_more, after=after, before=before,
                                    pinned=pinned)
    return list_response((hit.version.document for hit in page.items), next_url=next_url,
                         prev_url=prev_url, page_size=query["page_size"],
                         extra={"count": page.total} if page.total is not None else None)


def _ranked_page(kind: str, filters: search.ProtocolQuery, query: dict[str, Any], *, server_pinned: bool
                 ) -> tuple[search.SearchPage, list[Any], tuple[int, ...] | None, tuple[int, ...] | None]:
    """A ranked page, its items' cursor keys, and the cursor keys it was read after or before.

    Cursors are ``[rank, seq, feed position, pinned]``: the feed position of the walk's first page, and
    whether its ``as_of`` was pinned by the server rather than asked for. A version recorded since the
    first page that takes effect by the walk's moment (a back-dated write) moves ranks across the
    cursor, so the walk is refused (409) rather than let skip or repeat a protocol (found by an
    adversarial probe); the 409's ``first`` link drops an ``as_of`` the server pinned, so the restart
    reads now, not the stale moment (found by a probe of the fix). Cursors issued without the last
    parts are read as before."""
    after, before = _list_cursor(query)
    cursor = after or before
    if cursor is None:
        pinned = int(server_pinned)
    elif len(cursor) <= 2:  # a cursor issued before walks carried their feed position: read as before
        page = search.search(get_db(), filters, limit=query["page_size"], after=after, before=before,
                             count=query["count"])
        return page, [hit.key for hit in page.items], after, before
    else:
        pinned = cursor[3] if len(cursor) > 3 else 0
    try:
        page, position = search.ranked_page(get_db(), filters, limit=query["page_size"], after=after and after[:2],
                                            before=before and before[:2], count=query["count"],
                                            position=None if cursor is None else cursor[2])
    except search.ResultsChanged as exc:
        dropped = {"cursor", "as_of"} if pinned else {"cursor"}
        raise ApiError(409, "This search's results changed after its first page: a version recorded since "
                            "then takes effect at or before the search's moment, so pages would skip or "
                            "repeat protocols. Start again from the first page.",
                       errors={"cursor": ["the results changed since this cursor was issued; "
                                          "search again without it"]},
                       first=page_url({k: v for k, v in request.args.items(multi=True) if k not in dropped})) from exc
    keys: list[Any] = [(*_as_tuple(hit.key), position, pinned) for hit in page.items]
    return page, keys, after, before


def _as_tuple(key: search.Key) -> tuple[int, ...]:
    return key if isinstance(key, tuple) else (key,)


@blp.route("/<string:protocol_id>", methods=["GET"])
@blp.arguments(AsOfQuerySchema(), location="query")
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER)
@blp.alt_response(304, description="Not modified (If-None-Match matched)")
@blp.alt_response(404, schema=ErrorSchema, description="No such protocol, or no version in effect at that time")
@blp.alt_response(410, schema=ProtocolSchema, description="Retired: the retirement version")
def get_protocol(query: dict[str, Any], protocol_id: str) -> Response:
    """The version in effect now, or at `as_of`."""
    try:
        stored = versioning.effective(get_db(), protocol_id, query.get("as_of"))
    except ProtocolRetired as exc:
        return version_response(exc.details["version"], 410)
    return version_response(stored)


@blp.route("/<string:protocol_id>", methods=["PUT"])
@blp.arguments(ProtocolSchema())
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER,
              description="Content equals the newest version: nothing appended, newest returned")
@blp.alt_response(201, schema=ProtocolSchema, description="A new version was appended",
                  headers={**ETAG_HEADER, "Location": {"schema": {"type": "string"}}})
@blp.alt_response(409, schema=ErrorSchema,
                  description="status 'retired' where an active version taking effect after it would undo the "
                              "retirement (as for DELETE; named in scheduled_version / scheduled_effective_from), "
                              "or where the protocol has only drafts")
@blp.alt_response(412, schema=ErrorSchema, description="If-Match is stale; the body names the newest version")
@blp.alt_response(428, schema=ErrorSchema, description=IF_MATCH_REQUIRED)
def revise_protocol(payload: dict[str, Any], protocol_id: str) -> Response:
    """Append the next version. Requires `If-Match` with the newest version's ETag."""
    _check_body_id(payload, protocol_id)
    meta, content = split_payload(payload)
    stored, created = versioning.revise(get_db(), protocol_id, content, if_match=if_match(),
                                        if_none_match=if_none_match(),
                                        status=meta["status"], effective_from=meta["effective_from"],
                                        change_note=meta["change_note"], ctx=write_context(pending(201)))
    if not created:
        return version_response(stored, 200)
    _appended()
    location = url_for("protocols.get_version", protocol_id=protocol_id, version=stored.version)
    return version_response(stored, 201, headers={"Location": location})


@blp.route("/<string:protocol_id>", methods=["DELETE"])
@blp.arguments(RetireQuerySchema(), location="query")
@blp.response(200, ProtocolSchema, headers=ETAG_HEADER,
              description="The retirement version (nothing is erased)")
@blp.alt_response(409, schema=ErrorSchema,
                  description="An active version taking effect after the retirement would undo it (named in "
                              "scheduled_version / scheduled_effective_from), or the protocol has only drafts "
                              "(nothing published to retire)")
@blp.alt_response(412, schema=ErrorSchema, description="If-Match is stale")
@blp.alt_response(428, schema=ErrorSchema, description=IF_MATCH_REQUIRED)
def retire_protocol(query: dict[str, Any], protocol_id: str) -> Response:
    """Retire a protocol: append a `retired` version. Requires `If-Match`."""
    stored, created = versioning.retire(get_db(), protocol_id, if_match=if_match(), if_none_match=if_none_match(),
                                        effective_from=query.get("effective_from"),
                                        change_note=query.get("change_note"), ctx=write_context(pending(200)))
    if created:
        _appended()
    return version_response(stored, 200)


@blp.route("/<string:protocol_id>/versions", methods=["GET"])
@blp.arguments(VersionListQuerySchema(), location="query")
@blp.response(200, ProtocolPageSchema, headers=LINK_HEADER)
@reads_cursor(_versions_cursor)
def list_versions(query: dict[str, Any], protocol_id: str) -> Response:
    """Every version, newest first."""
    kind = f"versions:{protocol_id}"
    after, before = _versions_cursor(query, protocol_id)
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


@blp.route("/<string:protocol_id>/versions/<int:a>/diff/<int:b>", methods=["GET"])
@blp.response(200, VersionDiffSchema, headers=DIFF_ETAG_HEADER)
@blp.alt_response(304, description="Not modified (If-None-Match matched)")
@blp.alt_response(404, schema=ErrorSchema, description="No such protocol or version")
def diff_versions(protocol_id: str, a: int, b: int) -> Any:
    """What changed from version `a` to version `b`: an RFC 6902 JSON Patch and typed clinical changes
    with a severity (`major` = can change a dose a patient gets). Both versions are immutable, but how
    they are compared may improve between releases: the ETag is the answer's own, and a cached answer is
    revalidated (`no-cache`), so a client holding an older comparison gets the new one."""
    db = get_db()
    old, new = versioning.get_version(db, protocol_id, a), versioning.get_version(db, protocol_id, b)
    body = VersionDiffSchema().dump(diff_body(protocol_id, a, b, diff.diff_documents(old.as_dict(), new.as_dict())))
    representation = current_app.json.dumps(body).encode()
    # A matching If-None-Match is answered 304 by the app's after-request hook (_conditional_get), as for
    # every GET whose view sets no 304 of its own.
    return json_response(representation, headers={"ETag": diff.diff_etag(representation),
                                                  "Cache-Control": CACHE_REVALIDATE})


def document_protocol_operations(api: Any) -> None:
    """Add to the OpenAPI document what decorators cannot add without replacing what others built: the
    If-Match and If-None-Match header parameters of :data:`IF_MATCH_OPERATIONS` and the :data:`RESPONSE_LINKS`."""
    for method, path in IF_MATCH_OPERATIONS:
        api.spec._paths[path][method].setdefault("parameters", []).extend(  # a copy each, as links below
            json.loads(json.dumps([IF_MATCH_PARAMETER, IF_NONE_MATCH_PARAMETER])))
    api.spec._paths["/v1/protocols"]["post"].setdefault("parameters", []).extend(
        json.loads(json.dumps(CREATE_PRECONDITIONS)))
    for (method, path), by_status in RESPONSE_LINKS.items():
        responses = api.spec._paths[path][method]["responses"]
        for status, links in by_status.items():
            # A copy each: shared dicts became YAML anchors and aliases in openapi.yaml, and every app
            # would share (and could change) the module's own.
            responses[status].setdefault("links", {}).update(json.loads(json.dumps(links)))
