"""Wire schemas for dose checking (``/v1/protocols/{id}/dose-check``, ``…/dose``) and CDS Hooks.

The request shapes reuse the record's building blocks where they fit (``FrequencySchema``, the
``{value, unit}`` quantity shape), but an *ordered* dose is not a protocol value: it may be any
positive number in any UCUM dose unit that converts (``mcg``, ``g``, ``ug/kg/min``…), so it gets
its own number field and unit check. Responses carry exact numbers as JSON numbers.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from protocols import dose_units, terminology
from protocols.dosing import (
    MAX_EXPONENT,
    MAX_SIGNIFICANT_DIGITS,
    MAX_WEIGHT_KG,
    MIN_WEIGHT_KG,
    Verdict,
    number_problem,
)
from protocols.fhir_query import RESOURCE_ID_PATTERN
from schemas.clinical import PHASES, DoseRangeSchema, FrequencySchema
from schemas.fields import Duration, Instant, Text, WebUrl
from schemas.query import AsOfQuerySchema

_NUMBER_TEXT = re.compile(r"\A[0-9]{1,20}(\.[0-9]{1,20})?\Z")


class OrderFrequencySchema(FrequencySchema):
    """An order's frequency: one period. A period range describes a protocol's choice; an order is
    given at one frequency, and a ``period_max`` here would be accepted and never checked."""

    class Meta:
        exclude = ("period_max",)


class DoseNumber(fields.Decimal):
    """Any positive, finite number (``protocols.dosing.number_problem``), kept exact as ``Decimal``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_nan", False)
        kwargs.setdefault("as_string", False)
        # The bounds number_problem enforces, stated in the contract (found by an adversarial probe: the
        # OpenAPI document said only "number"). Weights narrow them further with their own validator.
        given = kwargs.pop("metadata", {})
        metadata = given if "maximum" in given else {
            "minimum": float(f"1e-{MAX_EXPONENT}"), "maximum": float(f"1e{MAX_EXPONENT}"), "exclusiveMaximum": True,
            "description": f"A positive number, at least 1e-{MAX_EXPONENT} and less than 1e{MAX_EXPONENT}, with at "
                           f"most {MAX_SIGNIFICANT_DIGITS} significant digits", **given}
        super().__init__(metadata=metadata, **kwargs)

    #: Query strings carry numbers as text; JSON bodies must send numbers.
    accepts_text = False

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or (isinstance(value, str) and not self.accepts_text):
            raise ValidationError("Must be a JSON number.")
        if isinstance(value, str) and not _NUMBER_TEXT.match(value):
            raise ValidationError("Must be a decimal number such as 70 or 70.5.")
        try:
            result = super()._deserialize(value, attr, data, **kwargs)
        except (InvalidOperation, OverflowError) as exc:
            raise ValidationError("Not a valid number.") from exc
        if result is None:
            raise ValidationError("Must be a finite number.")
        problem = number_problem(result)
        if problem is not None:
            raise ValidationError(problem)
        return result


class QueryDoseNumber(DoseNumber):
    """:class:`DoseNumber` in a query string (``?weight_kg=70.5``)."""

    accepts_text = True


class Number(fields.Field):
    """A response number: an exact Decimal written as a JSON integer or number."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        number = Decimal(str(value))
        return int(number) if number == number.to_integral_value() else float(number)


def _check_dose_unit(value: str) -> None:
    try:
        dose_units.parse_ordered_unit(value)
    except dose_units.UnitError as exc:
        raise ValidationError(str(exc)) from exc


def _check_concentration_unit(value: str) -> None:
    try:
        dose_units.parse_concentration(Decimal(1), value)
    except dose_units.UnitError as exc:
        raise ValidationError(str(exc)) from exc


def check_weight_kg(value: Decimal) -> None:
    """Exact Decimal bounds (a ``validate.Range`` would leak Decimals into the OpenAPI document)."""
    if not MIN_WEIGHT_KG <= value <= MAX_WEIGHT_KG:
        raise ValidationError(f"Body weight must be between {MIN_WEIGHT_KG} and {MAX_WEIGHT_KG} kg.")


WEIGHT_BOUNDS = {"minimum": float(MIN_WEIGHT_KG), "maximum": float(MAX_WEIGHT_KG)}


# ------------------------------------------------------------------------------- requests


class DoseQuantitySchema(Schema):
    """The ordered dose: ``{value, unit}`` in a UCUM dose unit (``mcg`` accepted for ``ug``)."""

    value = DoseNumber(required=True, metadata={"example": 56})
    unit = Text(required=True, validate=[validate.Length(1, 40), _check_dose_unit],
                metadata={"description": "UCUM dose unit: amount[/kg][/time], e.g. mg, mg/kg, ug/kg/min",
                          "example": "mg"})


class ConcentrationSchema(Schema):
    """The product's strength, needed only to convert between a volume (mL) and a mass."""

    value = DoseNumber(required=True, metadata={"example": 10})
    unit = Text(required=True, validate=[validate.Length(1, 40), _check_concentration_unit],
                metadata={"description": "mass/volume, e.g. mg/mL", "example": "mg/mL"})


class PatientSchema(Schema):
    weight_kg = DoseNumber(required=True, validate=check_weight_kg,
                           metadata={"description": "Body weight in kg (0.3 to 500)", "example": 70,
                                     **WEIGHT_BOUNDS})


class DoseCheckRequestSchema(Schema):
    """``POST /v1/protocols/{id}/dose-check``."""

    route = Text(required=True, validate=validate.Regexp(terminology.SNOMED_PATTERN,
                                                         error="Must be a SNOMED CT route code."),
                 metadata={"description": "SNOMED CT route code", "example": "46713006"})
    phase = Text(validate=validate.OneOf(PHASES),
                 metadata={"description": "Required when the protocol has ranges for several phases "
                                          "on this route"})
    dose = fields.Nested(DoseQuantitySchema, required=True)
    frequency = fields.Nested(OrderFrequencySchema,
                              metadata={"description": "How often the dose is given; enables the "
                                                       "per-period projection"})
    patient = fields.Nested(PatientSchema)
    concentration = fields.Nested(ConcentrationSchema)
    duration = Duration(metadata={"description": "How long one administration runs (ISO 8601, e.g. PT24H): a "
                                                 "rate and an amount are converted through it (otherwise "
                                                 "through the protocol range's duration), and an infusion's "
                                                 "amount per period is rate x this duration; shorter than the "
                                                 "range's duration and faster than its rate, or (beyond 10 %) "
                                                 "than the range's duration_min, it is named in "
                                                 "faster_than_protocol; longer than a range of rates' duration "
                                                 "and more in all, in longer_than_protocol"})
    as_of = Instant(finer="down", metadata={"description": "Judge against the version in effect at this instant"})
    indication = Text(validate=validate.Length(1, 40), metadata={
        "description": "Code of one of the protocol's indications the order is for: only the ranges for it "
                       "are judged (those listing it in their indications, and those without that field); "
                       "without it, every range of the route and phase",
        "example": "R45.851"})


class DoseQuerySchema(AsOfQuerySchema):
    """``GET /v1/protocols/{id}/dose``."""

    route = Text(required=True, validate=validate.Regexp(terminology.SNOMED_PATTERN,
                                                         error="Must be a SNOMED CT route code."),
                 metadata={"description": "SNOMED CT route code", "example": "47625008"})
    phase = Text(validate=validate.OneOf(PHASES))
    weight_kg = QueryDoseNumber(validate=check_weight_kg,
                                metadata={"description": "Body weight in kg (0.3 to 500); required for "
                                                         "weight-based ranges", **WEIGHT_BOUNDS})


# ------------------------------------------------------------------------------ responses


class ProtocolRefSchema(Schema):
    id = fields.String()
    version = fields.Integer()
    etag = fields.String(metadata={"description": "ETag of the version used"})
    status = fields.String()
    effective_from = fields.String()
    # What a verdict of "within_range" is within: an off-label or investigational protocol (psilocybin:
    # Schedule I, trials only) read like an approved use when the answer named neither (a clinical probe).
    title = fields.String(metadata={"description": "The protocol's title (it says off-label or investigational)"})
    fda_status = fields.String(allow_none=True, metadata={
        "description": "The protocol's FDA status: approved, off_label, investigational or not_approved; a "
                       "verdict is about this protocol's dosing, not an approval of the use"})


class RouteRefSchema(Schema):
    code = fields.String()
    display = fields.String(allow_none=True)


class AmountSchema(Schema):
    value = Number()
    unit = fields.String()


class SpanSchema(Schema):
    min = Number()
    max = Number()
    unit = fields.String()


class AbsoluteRangeSchema(SpanSchema):
    weight_kg = Number(allow_none=True)
    calculation = fields.String(metadata={"example": "0.5\u20131 mg/kg \u00d7 70 kg = 35\u201370 mg"})


class PerPeriodSchema(Schema):
    period = fields.String(metadata={"example": "P1D"})
    doses_per_period = fields.Integer(metadata={"description": "Doses that fall in one period at the "
                                                               "ordered frequency, evenly spaced"})
    projected = fields.Nested(AmountSchema)
    maximum = fields.Nested(AmountSchema, allow_none=True)
    exceeded = fields.Boolean()
    calculation = fields.String()


class EvaluationSchema(Schema):
    """One range judged: what the verdict rests on."""

    verdict = fields.String(metadata={"enum": [v.value for v in Verdict]})
    range_index = fields.Integer(allow_none=True, metadata={"description": "Index in dosing_ranges"})
    matched_range = fields.Nested(DoseRangeSchema, allow_none=True)
    dose_in_range_unit = fields.Nested(AmountSchema, allow_none=True)
    range_in_ordered_unit = fields.Nested(SpanSchema, allow_none=True)
    absolute_range = fields.Nested(AbsoluteRangeSchema, allow_none=True)
    per_period = fields.Nested(PerPeriodSchema, allow_none=True, metadata={
        "description": "The order's amount in the window of the range's max_per_period (or in the order's own "
                       "period when the range has none), against that maximum"})
    regimen = fields.Nested(PerPeriodSchema, allow_none=True, metadata={
        "description": "The order's amount in the period of the range's own frequency, against the most that "
                       "regimen gives (dose_max times its count: 56-84 mg twice weekly gives at most 168 mg per "
                       "P1W; a range of rates with a duration gives dose_max for the infusion time a period "
                       "holds: 0.35 mg/kg/h for PT4H daily gives at most 1.4 mg/kg per P1D, and an order of rates "
                       "without a frequency is one administration); exceeded makes the verdict "
                       "exceeds_max_per_period. Null without the range's frequency, for amounts without the "
                       "order's, and for rates whose range states no duration"})
    faster_than_protocol = fields.String(allow_none=True, metadata={
        "description": "Why the dose is given faster than the range allows (the order's own duration is shorter "
                       "than the range's and its rate is more than 10 % above dose_max per that duration, or it is "
                       "more than 10 % shorter than the range's duration_min, a push time that holds for every "
                       "dose), or null. The verdict stays about the amount; CDS Hooks cards with it are never "
                       "'info'"})
    longer_than_protocol = fields.String(allow_none=True, metadata={
        "description": "Why one administration gives more than the range's does (a range of rates with a "
                       "duration, such as 0.35 mg/kg/h for PT4H: the order's own duration is longer and its rate "
                       "times that duration is more than dose_max times the range's), or null. CDS Hooks cards "
                       "with it are never 'info'"})
    unchecked = fields.List(fields.String(), metadata={
        "description": "What of the order this range gives nothing to check against (an order that repeats its "
                       "dose, judged against a range without frequency or max_per_period), or could not check (a "
                       "max_per_period that could not be applied to the order; the messages say why). A "
                       "within_range verdict with entries here is not a full pass; CDS Hooks calls it 'partly "
                       "checked'"})
    messages = fields.List(fields.String(), metadata={"description": "Clinician-readable explanation"})


class DoseCheckResponseSchema(Schema):
    verdict = fields.String(metadata={"enum": [v.value for v in Verdict]})
    protocol = fields.Nested(ProtocolRefSchema, metadata={"description": "The version judged against"})
    route = fields.Nested(RouteRefSchema)
    phase = fields.String(allow_none=True)
    dose = fields.Nested(AmountSchema, metadata={"description": "The ordered dose (unit normalized)"})
    range_index = EvaluationSchema._declared_fields["range_index"]
    matched_range = EvaluationSchema._declared_fields["matched_range"]
    dose_in_range_unit = EvaluationSchema._declared_fields["dose_in_range_unit"]
    range_in_ordered_unit = EvaluationSchema._declared_fields["range_in_ordered_unit"]
    absolute_range = EvaluationSchema._declared_fields["absolute_range"]
    per_period = EvaluationSchema._declared_fields["per_period"]
    regimen = EvaluationSchema._declared_fields["regimen"]
    faster_than_protocol = EvaluationSchema._declared_fields["faster_than_protocol"]
    longer_than_protocol = EvaluationSchema._declared_fields["longer_than_protocol"]
    unchecked = EvaluationSchema._declared_fields["unchecked"]
    messages = EvaluationSchema._declared_fields["messages"]
    evaluations = fields.List(fields.Nested(EvaluationSchema),
                              metadata={"description": "Every alternative range of the phase that was "
                                                       "judged; the verdict is the most favourable"})


class MaxPerPeriodOutSchema(AmountSchema):
    period = fields.String()


class PatientRangeSchema(Schema):
    range_index = fields.Integer(metadata={"description": "Index in dosing_ranges"})
    matched_range = fields.Nested(DoseRangeSchema)
    absolute_range = fields.Nested(AbsoluteRangeSchema)
    max_per_period = fields.Nested(MaxPerPeriodOutSchema, allow_none=True,
                                   metadata={"description": "Absolute for this patient when weight-based"})
    messages = fields.List(fields.String())


class PatientDoseResponseSchema(Schema):
    protocol = fields.Nested(ProtocolRefSchema)
    route = fields.Nested(RouteRefSchema)
    phase = fields.String()
    ranges = fields.List(fields.Nested(PatientRangeSchema),
                         metadata={"description": "Every range of the phase for the route (alternatives)"})


# ------------------------------------------------------------------------------ CDS Hooks

HOOKS = ("order-select", "order-sign")


class CdsContextSchema(Schema):
    """``context`` of order-select / order-sign (CDS Hooks 2.0). Extra members are ignored."""

    class Meta:
        unknown = EXCLUDE

    userId = Text(required=True, validate=validate.Length(1, 200))
    # A FHIR id (the spec's "FHIR id of the patient"): "Patient/x" was refused once per order, naming
    # each order's subject rather than this (found in review)
    patientId = Text(required=True, validate=validate.Regexp(f"^{RESOURCE_ID_PATTERN}$", error="Not a FHIR id."),
                     metadata={"pattern": f"^{RESOURCE_ID_PATTERN}$"})
    encounterId = Text(validate=validate.Length(1, 200), allow_none=True)
    selections = fields.List(Text(validate=validate.Length(1, 300)), validate=validate.Length(max=200))
    draftOrders = fields.Dict(required=True, metadata={"description": "FHIR R4 Bundle of draft orders"})


class CdsRequestSchema(Schema):
    """A CDS Hooks service request. Unknown members are ignored, as the spec's extensibility asks."""

    class Meta:
        unknown = EXCLUDE

    hook = Text(required=True, validate=validate.OneOf(HOOKS))
    hookInstance = Text(required=True, validate=validate.Length(1, 100))
    fhirServer = WebUrl(allow_none=True, schemes={"http", "https"}, require_tld=False)
    fhirAuthorization = fields.Dict(allow_none=True)
    context = fields.Nested(CdsContextSchema, required=True)
    prefetch = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True)
    extension = fields.Dict(allow_none=True)

    @validates_schema
    def _check_selections(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("hook") == "order-select" and not (data.get("context") or {}).get("selections"):
            raise ValidationError({"context": {"selections": ["order-select requires selections."]}})


class CdsSourceSchema(Schema):
    label = fields.String()
    url = fields.String()
    topic = fields.Dict()


class CdsLinkSchema(Schema):
    label = fields.String()
    url = fields.String()
    type = fields.String()


class CardSchema(Schema):
    uuid = fields.String()
    summary = fields.String()
    detail = fields.String()
    indicator = fields.String(metadata={"enum": ["info", "warning", "critical"]})
    source = fields.Nested(CdsSourceSchema)
    links = fields.List(fields.Nested(CdsLinkSchema))


class CdsResponseSchema(Schema):
    cards = fields.List(fields.Nested(CardSchema))


class CdsServiceSchema(Schema):
    hook = fields.String()
    id = fields.String()
    title = fields.String()
    description = fields.String()
    prefetch = fields.Dict(keys=fields.String(), values=fields.String())
    usageRequirements = fields.String()


class CdsDiscoverySchema(Schema):
    services = fields.List(fields.Nested(CdsServiceSchema))
