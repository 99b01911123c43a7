"""Query-string schemas. Unknown parameters are rejected (marshmallow's default ``RAISE``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.fields import Instant, Text

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class AsOfQuerySchema(Schema):
    as_of = Instant(metadata={"description": "Answer for this instant (RFC 3339) instead of now"})


class PageQuerySchema(Schema):
    cursor = Text(validate=validate.Length(1, 500),
                  metadata={"description": "Opaque cursor from a previous page's next/prev link"})
    page_size = fields.Integer(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(1, MAX_PAGE_SIZE),
                              metadata={"description": f"Items per page (max {MAX_PAGE_SIZE})"})


class ProtocolListQuerySchema(PageQuerySchema, AsOfQuerySchema):
    """Filters for ``GET /v1/protocols``."""


class VersionListQuerySchema(PageQuerySchema):
    since = Instant(metadata={"description": "Only versions recorded at or after this instant"})
    until = Instant(metadata={"description": "Only versions recorded before this instant"})


class RetireQuerySchema(Schema):
    effective_from = Instant(metadata={"description": "When the retirement takes effect (default now)"})
    change_note = Text(validate=validate.Length(1, 2000))
