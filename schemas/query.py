"""Query-string schemas. Unknown parameters are rejected (marshmallow's default ``RAISE``)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from protocols import fulltext, terminology
from protocols.search import LIST_STATUSES
from schemas.clinical import DEA_SCHEDULES, FDA_STATUSES
from schemas.fields import Instant, QueryInteger, Text

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class AsOfQuerySchema(Schema):
    as_of = Instant(finer="down", metadata={"description": "Answer for this instant (RFC 3339) instead of now"})


class PageQuerySchema(Schema):
    cursor = Text(validate=validate.Length(1, 500),
                  metadata={"description": "Opaque cursor from a previous page's next/prev link"})
    page_size = QueryInteger(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(1, MAX_PAGE_SIZE),
                              metadata={"description": f"Items per page (max {MAX_PAGE_SIZE})"})


def _strict_boolean(description: str, **kwargs: Any) -> fields.Boolean:
    """``true`` or ``false`` only: a typo such as ``rems_required=ture`` must not read as a value."""
    return fields.Boolean(truthy={"true"}, falsy={"false"}, metadata={"description": description}, **kwargs)


def _check_query_text(value: str) -> None:
    if not value:
        return  # the length check names it; "no words" beside it said the same twice (a probe)
    try:
        fulltext.query_tokens(value)
    except ValueError as exc:
        raise ValidationError(f"{exc}; the query needs 1 to {fulltext.MAX_QUERY_TOKENS} words") from exc


class ProtocolListQuerySchema(PageQuerySchema, AsOfQuerySchema):
    """Filters for ``GET /v1/protocols``; every filter given must hold (AND). With ``as_of`` they apply
    to the versions in effect at that instant."""

    drug = Text(identifier=True, validate=validate.Length(1, 100),
                metadata={"description": "Generic or brand name: the whole name, case-insensitive "
                                         "(for partial words use `q`)"})
    rxnorm_cui = Text(validate=validate.Regexp(terminology.RXNORM_PATTERN, error="Not a well-formed RxCUI."),
                      metadata={"description": "RxNorm concept id of the drug"})
    route = Text(validate=validate.Regexp(terminology.SNOMED_PATTERN,
                                          error="Not a well-formed SNOMED CT concept id."),
                 metadata={"description": "SNOMED CT route code, e.g. 46713006 (nasal)"})
    indication = Text(validate=validate.Length(1, 40),
                      metadata={"description": "Indication code. An ICD-10-CM code also matches its subcodes: "
                                               "F33 matches F33.0 … F33.9, F33.4 matches F33.40, F33.41"})
    indication_system = Text(validate=validate.OneOf(terminology.INDICATION_SYSTEMS),
                             metadata={"description": "Code system URI of `indication` (or alone: any "
                                                      "indication from this system)"})
    fda_status = Text(validate=validate.OneOf(FDA_STATUSES))
    dea_schedule = Text(validate=validate.OneOf(DEA_SCHEDULES))
    rems_required = _strict_boolean("Whether the FDA requires a REMS program")
    status = Text(load_default="active", validate=validate.OneOf(LIST_STATUSES),
                  metadata={"description": "`active` (default): in effect; `retired`: the version in effect "
                                           "is a retirement; `draft`: the newest version is a draft"})
    q = Text(validate=[validate.Length(1, 500), _check_query_text],
             metadata={"description": "Free text over title, summary, drug and brand names and indication "
                                      "text; every word must match (as a word prefix). Results are ranked: "
                                      "title 8, drug 4, indication 2, summary 1 per field holding every "
                                      "word, ties broken by newest protocol"})
    updated_since = Instant(finer="down", metadata={"description": "Only protocols with a version recorded after this "
                                                     "instant (incremental sync; see also /v1/changes)"})
    count = _strict_boolean("Add `count`, the total number of matches (slower)", load_default=False)

    @validates_schema(skip_on_field_errors=False)
    def _check_indication(self, data: dict[str, Any], **_: Any) -> None:
        code = data.get("indication")
        if code is None or not isinstance(code, str):
            return
        systems = [data["indication_system"]] if data.get("indication_system") else terminology.INDICATION_SYSTEMS
        if not any(terminology.is_well_formed_indication(system, code.upper()) for system in systems):
            # Named for the system asked (an adversarial probe: a SNOMED CT search was told of ICD-10-CM).
            kinds = {terminology.ICD10CM: "ICD-10-CM code (e.g. F33 or F33.2)",
                     terminology.SNOMED: "SNOMED CT concept id (e.g. 370143000)"}
            wanted = " or ".join(kinds.get(system, system) for system in systems)
            raise ValidationError({"indication": [f"'{code}' is not a well-formed {wanted}"]})


class WindowPageQuerySchema(PageQuerySchema):
    """A page of a log bounded by ``since`` (inclusive) and ``until`` (exclusive), which subclasses
    declare with their own descriptions."""

    @validates_schema
    def _check_window(self, data: dict[str, Any], **_: Any) -> None:
        """An empty window is a mistake in the request (the bounds swapped), not an empty history."""
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since >= until:
            raise ValidationError({"until": ["must be later than since"]})


class VersionListQuerySchema(WindowPageQuerySchema):
    since = Instant(finer="up", metadata={"description": "Only versions recorded at or after this instant"})
    until = Instant(finer="up", metadata={"description": "Only versions recorded before this instant"})


class RetireQuerySchema(Schema):
    effective_from = Instant(metadata={"description": "When the retirement takes effect (default now)"})
    change_note = Text(multiline=True, validate=validate.Length(1, 2000))
