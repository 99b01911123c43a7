"""The protocol record on the wire: one schema for requests and responses.

Server-managed fields (``version``, ``recorded_at``, ``recorded_by``, ``request_id``) are dump-only
and silently dropped from input so a body obtained by GET can be PUT back unchanged. Every other
unknown field is rejected.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from protocols.record import CONTENT_FIELDS, SERVER_FIELDS
from protocols.versioning import STATUSES
from schemas.clinical import (
    DoseRangeSchema,
    DrugSchema,
    FdaApprovalSchema,
    IndicationSchema,
    RouteSchema,
    SourceSchema,
)
from schemas.fields import Instant, Slug, Text

_INDEX = re.compile(r"[0-9]{1,4}")  # not str.isdigit(): superscripts and Arabic-Indic digits pass it


class ProtocolSchema(Schema):
    """A treatment-protocol version."""

    id = Slug(metadata={"description": "Client-chosen stable slug; must equal the URL id on PUT",
                        "example": "esketamine-nasal-trd"})
    version = fields.Integer(dump_only=True, metadata={"description": "1, 2, 3 … gapless per protocol"})
    status = Text(load_default="active", validate=validate.OneOf(STATUSES))
    effective_from = Instant(
        load_default=None, allow_none=True,
        metadata={"description": "When this version takes effect clinically (RFC 3339); defaults to "
                                 "the time of the write"})
    recorded_at = fields.DateTime(dump_only=True)
    recorded_by = fields.String(dump_only=True, allow_none=True,
                                metadata={"description": "Name of the API key that wrote the version"})
    request_id = fields.String(dump_only=True, allow_none=True)
    change_note = Text(load_default=None, allow_none=True, multiline=True, validate=validate.Length(max=2000))
    title = Text(required=True, validate=validate.Length(1, 200))
    summary = Text(required=True, multiline=True, validate=validate.Length(1, 4000))
    drug = fields.Nested(DrugSchema, required=True)
    indications = fields.List(fields.Nested(IndicationSchema), required=True,
                              validate=validate.Length(1, 50))
    routes = fields.List(fields.Nested(RouteSchema), required=True, validate=validate.Length(1, 20))
    dosing_ranges = fields.List(fields.Nested(DoseRangeSchema), required=True,
                                validate=validate.Length(1, 50))
    fda_approval = fields.Nested(FdaApprovalSchema, required=True)
    sources = fields.List(fields.Nested(SourceSchema), required=True, validate=validate.Length(1, 50))
    verification_notes = fields.List(Text(multiline=True, validate=validate.Length(1, 2000)), load_default=list,
                                     validate=validate.Length(max=50),
                                     metadata={"description": "Facts in this record that could not be "
                                                              "verified in a primary source"})

    @pre_load
    def _drop_server_fields(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in SERVER_FIELDS}
        return data

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_cross_fields(self, data: dict[str, Any], original: Any = None, **_: Any) -> None:
        errors: dict[str, Any] = {}
        routes = data.get("routes") or []
        # A route whose code failed its own validation has no code here: skip it (its field error
        # already says what is wrong) rather than crash joining None (found by contract fuzzing).
        route_codes = [str(r["code"]) for r in routes if isinstance(r, dict) and r.get("code") is not None]
        duplicates = {str(c) for c in route_codes if c is not None and route_codes.count(c) > 1}
        if duplicates:
            errors["routes"] = [f"duplicate route codes: {', '.join(sorted(duplicates))}"]
        indications = data.get("indications") or []
        keys = [(i.get("system"), i.get("code")) for i in indications if isinstance(i, dict)]
        if len(set(keys)) != len(keys):
            errors["indications"] = ["duplicate indication codes"]
        if "routes" in data:
            bad = {}
            for index, dose in enumerate(data.get("dosing_ranges") or []):
                if isinstance(dose, dict) and "route" in dose and dose["route"] not in route_codes:
                    bad[index] = {"route": [
                        f"route '{dose['route']}' is not one of the record's routes "
                        f"({', '.join(route_codes)})"]}
            if bad:
                errors["dosing_ranges"] = bad
        self._check_range_indications(data, errors)
        ranges = [r for r in data.get("dosing_ranges") or [] if isinstance(r, dict)]
        for later, dose_range in enumerate(ranges):
            range_errors = errors.setdefault("dosing_ranges", {})
            if dose_range in ranges[:later] and later not in range_errors:
                range_errors[later] = [f"repeats dosing_ranges.{ranges.index(dose_range)} exactly"]
        if not errors.get("dosing_ranges"):
            errors.pop("dosing_ranges", None)
        source_errors = {}
        sent = original if isinstance(original, dict) else data
        for index, source in enumerate(data.get("sources") or []):
            if not isinstance(source, dict):
                continue
            wrong = [p for p in source.get("supports") or [] if not _path_exists(sent, data, p)]
            if wrong:
                source_errors[index] = {"supports": [f"no such field in this record: {', '.join(wrong)}"]}
        if source_errors:
            errors["sources"] = source_errors
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def _check_range_indications(data: dict[str, Any], errors: dict[str, Any]) -> None:
        """A range's ``indications`` name codes of the record's own indications: a code the record does not
        hold would put the range under no indication at all (FHIR, dose checks). Not checked when the
        indications failed their own validation (the loaded list then lacks the entries that failed)."""
        if "indications" not in data:
            return
        codes = [str(i["code"]) for i in data["indications"] if isinstance(i, dict) and i.get("code") is not None]
        for index, dose in enumerate(data.get("dosing_ranges") or []):
            if not isinstance(dose, dict):
                continue
            wrong = {position: [f"'{code}' is not the code of one of the record's indications "
                                f"({', '.join(codes)})"]
                     for position, code in enumerate(dose.get("indications") or []) if code not in codes}
            if wrong:
                range_errors = errors.setdefault("dosing_ranges", {}).setdefault(index, {})
                range_errors["indications"] = wrong


class ProtocolCreateSchema(ProtocolSchema):
    id = Slug(required=True, metadata={"description": "Client-chosen stable slug, never reused",
                                       "example": "esketamine-nasal-trd"})


_ABSENT = object()


def _path_exists(sent: dict[str, Any], loaded: dict[str, Any], path: str) -> bool:
    """Whether a dotted path such as ``dosing_ranges.0.dose_max`` names a field of the record that
    will be stored: the rule ``flask protocols check`` and ``import`` apply to a stored version.

    Why two walks: the request as sent still holds a field that failed its own validation (the loaded
    data lacks it, and shifts a list's items after one that failed), so "no such field" does not pile
    a second, wrong error on it; the loaded data holds the defaults of what the request left out
    (``status``, ``verification_notes``, a range's ``instructions``), which the stored record holds
    too. Looking only at the request, a path under a field left out passed (``verification_notes.7``):
    the version was stored, and then ``check`` refused it and ``import`` refused the whole backup
    (found by an adversarial probe)."""
    parts = path.split(".")
    if parts[0] not in CONTENT_FIELDS and parts[0] not in ("effective_from", "status"):
        return False
    if parts[0] not in loaded:
        return True  # that field failed validation (or a required one is missing): it has its own error
    as_sent: Any = sent
    as_loaded: Any = loaded
    for part in parts:
        if isinstance(as_sent, list) and (not isinstance(as_loaded, list) or len(as_loaded) != len(as_sent)):
            as_loaded = _ABSENT  # an item failed validation: the loaded list's indices have shifted
        as_sent, as_loaded = _child(as_sent, part), _child(as_loaded, part)
        if as_sent is _ABSENT and as_loaded is _ABSENT:
            return False
    return True


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _ABSENT)
    if isinstance(node, list) and _INDEX.fullmatch(part) and int(part) < len(node):
        return node[int(part)]
    return _ABSENT


def split_payload(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a loaded payload into (meta: id/status/effective_from/change_note, clinical content)."""
    meta = {k: payload.get(k) for k in ("id", "status", "effective_from", "change_note")}
    content = {k: payload[k] for k in CONTENT_FIELDS if k in payload}
    return meta, content


class ProtocolPageSchema(Schema):
    """One page of a listing: the records plus cursor links (also sent as an RFC 8288 ``Link``)."""

    items = fields.List(fields.Nested(ProtocolSchema), required=True)
    page_size = fields.Integer(required=True)
    next = fields.String(required=True, allow_none=True, metadata={"description": "URL of the next page"})
    prev = fields.String(required=True, allow_none=True, metadata={"description": "URL of the previous page"})
    count = fields.Integer(metadata={"description": "Total number of matches; only with `count=true`"})
