"""``/v1/changes``: every version recorded across all protocols, in commit order, for incremental sync.

An integration stores the ``next`` URL of the last page it processed and polls it; it receives each
version exactly once, retirements included, even when writes commit in a different order than they
started (see ``protocols.changes`` for why the feed position cannot skip).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, request, url_for

from api.errors import ApiError, ErrorSchema
from api.extensions import get_db
from api.http import MAX_CURSOR_KEY, decode_cursor_with, list_response, page_url, reads_cursor
from api.parsing import Blueprint
from protocols import changes
from protocols.errors import UnknownFeedPosition
from protocols.paging import encode_cursor, is_key
from protocols.record import dumps
from protocols.timeutil import format_rfc3339
from schemas.changes import ChangePageSchema, ChangesQuerySchema

blp = Blueprint("changes", __name__, url_prefix="/v1/changes",
                description="Changes feed: every version recorded, in commit order (incremental sync).")

CURSOR_KIND = "changes"
LINK_HEADER = {"Link": {"description": "RFC 8288 link to the next page (always present: poll it)",
                        "schema": {"type": "string"}}}


def _after(query: Mapping[str, Any]) -> tuple[int, str | None]:
    """The position and the feed it came from (None in cursors issued before feeds were named)."""
    if "after" not in query:
        return 0, None
    key, direction, extras = decode_cursor_with(CURSOR_KIND, query["after"], param="after", extra=("f",))
    if not is_key(key, MAX_CURSOR_KEY) or direction != "n":
        raise ApiError(422, "The cursor is not valid for this listing",
                       errors={"after": ["not a position issued by this feed"]})
    return int(key), extras.get("f")


def _entry(change: changes.Change) -> str:
    return dumps({
        "seq": change.seq,
        "action": change.action,
        "protocol_id": change.protocol_id,
        "version": change.version,
        "status": change.status,
        "effective_from": format_rfc3339(change.effective_from),
        "recorded_at": format_rfc3339(change.recorded_at),
        "recorded_by": change.recorded_by,
        "change_note": change.change_note,
        "etag": change.etag,
        "href": url_for("protocols.get_version", protocol_id=change.protocol_id,
                        version=change.version, _external=True),
    })


@blp.route("", methods=["GET"])
@blp.arguments(ChangesQuerySchema(), location="query")
@blp.response(200, ChangePageSchema, headers=LINK_HEADER)
@blp.alt_response(409, schema=ErrorSchema,
                  description="`after` is a position this feed never issued: beyond its newest change, or "
                              "from another database (or this one before a restore). `first` links to the "
                              "feed's beginning")
@reads_cursor(_after)
def list_changes(query: dict[str, Any]) -> Response:
    """Versions recorded after the `after` position, oldest first (commit order)."""
    after, feed_id = _after(query)
    params = {k: v for k, v in request.args.items(multi=True) if k != "after"}
    try:
        page = changes.list_changes(get_db(), after_seq=after, feed_id=feed_id, limit=query["page_size"],
                                    protocol_id=query.get("protocol_id"))
    except UnknownFeedPosition as exc:
        raise ApiError(409, f"The changes feed cannot continue from this position: {exc.message}. Versions "
                            "recorded since would be skipped; read the feed again from the beginning "
                            "(the first link).",
                       errors={"after": [exc.message]}, first=page_url(params)) from exc
    position = page.last_seq if page.last_seq is not None else after
    next_url = page_url(params, after=encode_cursor(CURSOR_KIND, position, "n", f=page.feed_id))
    return list_response((_entry(change) for change in page.items), next_url=next_url, prev_url=None,
                         page_size=query["page_size"], extra={"has_more": page.has_more})

