"""Wire shape of ``GET /v1/protocols/{id}/versions/{a}/diff/{b}``: a JSON Patch plus clinical changes."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from protocols.diff import CHANGE_TYPES, SEVERITIES, VersionDiff


class PatchOperationSchema(Schema):
    """One RFC 6902 operation."""

    op = fields.String(required=True, validate=validate.OneOf(("add", "remove", "replace", "move", "copy",
                                                               "test")))
    path = fields.String(required=True, metadata={"description": "JSON Pointer (RFC 6901)"})
    value = fields.Raw(allow_none=True, metadata={"description": "For add, replace and test"})
    from_ = fields.String(data_key="from", attribute="from", metadata={"description": "For move and copy"})


class ClinicalChangeSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(tuple(CHANGE_TYPES)),
                         metadata={"description": "What changed, in clinical terms"})
    severity = fields.String(required=True, validate=validate.OneOf(SEVERITIES),
                             metadata={"description": "`major`: can change a dose a patient gets; "
                                                      "`moderate`: regulatory or safety framing; "
                                                      "`minor`: wording, sources, timing"})
    path = fields.String(required=True, metadata={"description": "JSON Pointer into version b (into "
                                                                 "version a for something removed)"})
    before = fields.Raw(allow_none=True, required=True)
    after = fields.Raw(allow_none=True, required=True)
    description = fields.String(required=True)
    route = fields.String(allow_none=True, required=True,
                          metadata={"description": "Dosing changes: SNOMED CT route of the matched range"})
    phase = fields.String(allow_none=True, required=True,
                          metadata={"description": "Dosing changes: phase of the matched range"})


class SeverityCountsSchema(Schema):
    major = fields.Integer(required=True)
    moderate = fields.Integer(required=True)
    minor = fields.Integer(required=True)


class VersionDiffSchema(Schema):
    """Version ``a`` → version ``b`` of one protocol."""

    protocol_id = fields.String(required=True)
    from_version = fields.Integer(required=True)
    to_version = fields.Integer(required=True)
    patch = fields.List(fields.Nested(PatchOperationSchema), required=True,
                        metadata={"description": "RFC 6902 JSON Patch turning version a's document into b's"})
    changes = fields.List(fields.Nested(ClinicalChangeSchema), required=True,
                          metadata={"description": "Clinical changes, most severe first"})
    highest_severity = fields.String(required=True, allow_none=True, validate=validate.OneOf(SEVERITIES))
    counts = fields.Nested(SeverityCountsSchema, required=True)


def diff_body(protocol_id: str, from_version: int, to_version: int, diff: VersionDiff) -> dict[str, Any]:
    """The response body (validated shape: dump it with :class:`VersionDiffSchema`)."""
    return {
        "protocol_id": protocol_id,
        "from_version": from_version,
        "to_version": to_version,
        "patch": diff.patch,
        "changes": [change.as_dict() for change in diff.changes],
        "highest_severity": diff.highest_severity,
        "counts": diff.counts(),
    }
