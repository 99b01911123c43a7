"""Wire shapes of the admin API: API keys (the secret appears once, at creation) and audit events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from protocols.keys import SCOPES, key_name_problem
from protocols.timeutil import format_rfc3339, utcnow
from schemas.fields import Instant, Text
from schemas.query import WindowPageQuerySchema


class Timestamp(Instant):
    """An RFC 3339 instant, rendered from the stored naive UTC as ``...Z``."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_rfc3339(value)


def _check_key_name(name: str) -> None:
    problem = key_name_problem(name)
    if problem is not None:
        raise ValidationError(problem)


class KeyCreateSchema(Schema):
    name = Text(required=True, validate=[validate.Length(1, 64), _check_key_name],
                metadata={"description": "Who uses the key (recorded as the author of every write)",
                          "example": "ehr-integration-prod"})
    scopes = fields.List(Text(validate=validate.OneOf(SCOPES)), required=True, validate=validate.Length(1, 3),
                         metadata={"description": f"Any of {', '.join(SCOPES)}"})
    expires_at = Timestamp(load_default=None, allow_none=True,
                           metadata={"description": "When the key stops working (RFC 3339); never when null"})

    @validates("expires_at")
    def _in_future(self, value: datetime | None, **_: Any) -> None:
        if value is not None and value <= utcnow():
            raise ValidationError("Must be in the future.")


class KeySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    created_at = Timestamp(required=True)
    expires_at = Timestamp(allow_none=True)
    revoked_at = Timestamp(allow_none=True)
    active = fields.Boolean(required=True, metadata={"description": "Neither revoked nor expired"})


class KeyCreatedSchema(KeySchema):
    key = fields.String(required=True, metadata={"description": "The API key. Shown only in this response: "
                                                                "store it now, it cannot be retrieved later."})


class KeyListSchema(Schema):
    items = fields.List(fields.Nested(KeySchema), required=True)


class AuditQuerySchema(WindowPageQuerySchema):
    actor = Text(validate=validate.Length(1, 200),
                 metadata={"description": "Who acted, exactly as events name it: an API key's name, `cli:<user>` "
                                          "or `catalog-loader` (see the event's `actor`)"})
    protocol = Text(validate=validate.Length(1, 200),
                    metadata={"description": "Target, exactly as events name it: a protocol id (an import's "
                                             "`protocol.import` rows name each protocol it wrote), a key id for key "
                                             "administration, the path of a refused request, an imported file"})
    action = Text(validate=validate.Length(1, 64), metadata={"description": "e.g. protocol.revise, keys.revoke"})
    outcome = Text(validate=validate.OneOf(("allowed", "denied", "failed")))
    since = Instant(finer="up", metadata={"description": "Events at or after this instant"})
    until = Instant(finer="up", metadata={"description": "Events before this instant"})


class AuditEventSchema(Schema):
    seq = fields.Integer(required=True, metadata={"description": "Position in the append-only log"})
    occurred_at = Timestamp(required=True)
    actor = fields.String(allow_none=True, metadata={
        "description": "Who acted: an API key's name for requests, `cli:<user>` for the command line (imports, "
                       "key administration), `catalog-loader` for `flask protocols load`; null for an anonymous "
                       "request"})
    action = fields.String(required=True)
    target = fields.String(allow_none=True, metadata={
        "description": "What was acted on: a protocol id (also each protocol an import wrote, `protocol.import`), "
                       "a key id, the path of a request refused before it named one, or the file an import read "
                       "(`protocols.import`)"})
    outcome = fields.String(required=True, metadata={"description": "allowed, denied or failed"})
    status_code = fields.Integer(allow_none=True)
    request_id = fields.String(allow_none=True)
    detail = fields.Raw(allow_none=True, metadata={"description": "Method, path, key id, required scope"})


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEventSchema), required=True)
    page_size = fields.Integer(required=True)
    next = fields.String(allow_none=True)
    prev = fields.String(allow_none=True)
