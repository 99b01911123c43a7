"""Wire shapes of the changes feed (``GET /v1/changes``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.fields import QueryInteger, Slug, Text
from schemas.query import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


class ChangesQuerySchema(Schema):
    after = Text(validate=validate.Length(1, 500),
                 metadata={"description": "Opaque position from a previous page's `next` link; omit to "
                                          "start from the first change ever recorded"})
    page_size = QueryInteger(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(1, MAX_PAGE_SIZE),
                               metadata={"description": f"Changes per page (max {MAX_PAGE_SIZE})"})
    protocol_id = Slug(metadata={"description": "Only changes of this protocol"})


class ChangeSchema(Schema):
    """One recorded version."""

    seq = fields.Integer(required=True, metadata={"description": "Position in commit order"})
    action = fields.String(required=True, validate=validate.OneOf(("created", "revised", "retired")))
    protocol_id = fields.String(required=True)
    version = fields.Integer(required=True)
    status = fields.String(required=True)
    effective_from = fields.String(required=True, metadata={"description": "RFC 3339"})
    recorded_at = fields.String(required=True, metadata={"description": "RFC 3339"})
    recorded_by = fields.String(required=True, allow_none=True)
    change_note = fields.String(required=True, allow_none=True)
    etag = fields.String(required=True)
    href = fields.String(required=True, metadata={"description": "URL of the version (immutable)"})


class ChangePageSchema(Schema):
    """A page of the feed. `next` is always present: poll it to receive later changes."""

    items = fields.List(fields.Nested(ChangeSchema), required=True)
    page_size = fields.Integer(required=True)
    next = fields.String(required=True, metadata={"description": "URL continuing after the last item "
                                                                 "(the same position when the page is empty)"})
    has_more = fields.Boolean(required=True, metadata={"description": "More changes are already waiting"})
    prev = fields.String(required=True, allow_none=True, metadata={"description": "Always null: the feed "
                                                                                  "only moves forward"})
