"""Clinical building blocks of a protocol record, each defined once and reused by every payload."""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from protocols import dose_units, terminology, units
from protocols.dosing import MIN_WEIGHT_KG
from protocols.durations import parse_duration
from protocols.timeutil import utcnow
from schemas.fields import CalendarDate, Duration, PositiveDecimal, StrictBoolean, StrictInteger, Text, WebUrl

PHASES = ("induction", "maintenance", "continuation", "single", "loading", "infusion", "titration")
DEA_SCHEDULES = ("CI", "CII", "CIII", "CIV", "CV")
FDA_STATUSES = ("approved", "off_label", "investigational", "not_approved")


class CodingSchema(Schema):
    """A code from a code system, FHIR style: ``{system, code, display}``."""

    system = Text(required=True, validate=validate.Length(1, 200),
                  metadata={"description": "Code system URI"})
    code = Text(required=True, validate=validate.Length(1, 40))
    display = Text(required=True, validate=validate.Length(1, 200))


class IndicationSchema(CodingSchema):
    system = Text(required=True, validate=validate.OneOf(terminology.INDICATION_SYSTEMS),
                  metadata={"description": "ICD-10-CM or SNOMED CT system URI",
                            "example": terminology.ICD10CM})

    @validates_schema
    def _check_code(self, data: dict[str, Any], **_: Any) -> None:
        if "system" not in data or "code" not in data:
            return  # the field errors already say what is wrong
        errors = terminology.check_indication_coding(data["system"], data["code"], data.get("display"))
        if errors:
            raise ValidationError(errors)


class RouteSchema(CodingSchema):
    system = Text(required=True, validate=validate.OneOf(terminology.ROUTE_SYSTEMS),
                  metadata={"description": "SNOMED CT", "example": terminology.SNOMED})

    @validates_schema
    def _check_code(self, data: dict[str, Any], **_: Any) -> None:
        if "code" not in data or "display" not in data:
            return  # the field errors already say what is wrong
        errors = terminology.check_route(data["code"], data["display"])
        if errors:
            raise ValidationError(errors)


def _check_unit(value: str) -> None:
    message = units.check_dose_unit(value)
    if message:
        raise ValidationError(message)


def _parsed_unit(unit: str) -> dose_units.DoseUnit | None:
    """The parsed dose unit, or None when it does not parse (the unit field reports its own error;
    a cross-field rule on top of it has nothing to add)."""
    try:
        return dose_units.parse_dose_unit(unit)
    except dose_units.UnitError:
        return None


class QuantitySchema(Schema):
    """An amount in a UCUM unit (``{value, unit}``)."""

    value = PositiveDecimal(required=True)
    unit = Text(required=True, validate=[validate.Length(1, 40), _check_unit],
                metadata={"description": "UCUM unit code", "example": "mg"})


class MaxPerPeriodSchema(QuantitySchema):
    """At most ``value`` ``unit`` per ``period`` (ISO 8601 duration, e.g. ``P1D``)."""

    period = Duration(required=True, metadata={"example": "P1D"})

    @validates_schema
    def _check_amount(self, data: dict[str, Any], **_: Any) -> None:
        """An amount (mg, mg/kg, mL) per period, never a rate: "30 mg/h per day" cannot be checked,
        since the dose check adds up the doses given in the period."""
        unit = data.get("unit")
        parsed = _parsed_unit(unit) if unit else None
        if parsed is not None and parsed.is_rate:
            raise ValidationError({"unit": [f"'{unit}' is a rate; a maximum per period is an amount "
                                            "(mg, mg/kg or mL) given in period"]})


class FrequencySchema(Schema):
    """``count`` administrations per ``period`` (e.g. 2 per ``P1W`` = twice weekly); with ``period_max``,
    per ``period`` to ``period_max`` (1 per ``P1W`` to ``P2W`` = every 1 to 2 weeks, FHIR's
    ``Timing.repeat.periodMax``). ``period`` is the most frequent dosing, which dose checks hold orders to."""

    count = StrictInteger(required=True, validate=validate.Range(1, 1000))
    period = Duration(required=True, metadata={"example": "P1W"})
    # No load_default: a record without it is stored (and hashed) exactly as before the field existed.
    period_max = Duration(metadata={"description": "Upper end of a period range (least frequent dosing)",
                                    "example": "P2W"})
    text = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))

    @validates_schema
    def _check_period_range(self, data: dict[str, Any], **_: Any) -> None:
        period, longest = data.get("period"), data.get("period_max")
        if period is not None and longest is not None and parse_duration(longest) <= parse_duration(period):
            raise ValidationError({"period_max": ["must be longer than period"]})


class DoseRangeSchema(Schema):
    """One dosing range; used by every payload that carries a dose range."""

    route = Text(required=True, validate=validate.Length(1, 40),
                 metadata={"description": "SNOMED CT code of one of the record's routes"})
    phase = Text(required=True, validate=validate.OneOf(PHASES))
    dose_min = PositiveDecimal(required=True)
    dose_max = PositiveDecimal(required=True)
    unit = Text(required=True, validate=[validate.Length(1, 40), _check_unit],
                metadata={"description": "UCUM unit; a /kg unit is weight-based", "example": "mg/kg"})
    frequency = fields.Nested(FrequencySchema, load_default=None, allow_none=True)
    duration = Duration(load_default=None, allow_none=True,
                        metadata={"description": "Length of one administration, e.g. PT40M. Dose checks read it "
                                                 "as a rate (dose_max over it): it may be an infusion's length "
                                                 "or the time the top dose takes at a stated rate"})
    # No load_default: a range without it is stored (and hashed) exactly as before the field existed.
    duration_min = Duration(metadata={
        "description": "For a range of amounts, the shortest time any dose of it may be given over, whatever its "
                       "amount: a bolus's push time (the Ketalar label's 'administer slowly over 60 seconds', "
                       "PT60S). A dose check of a dose given in less (beyond 10 %) names it in "
                       "faster_than_protocol",
        "example": "PT60S"})
    max_per_period = fields.Nested(MaxPerPeriodSchema, load_default=None, allow_none=True)
    # No load_default: a range without it is stored (and hashed) exactly as before the field existed.
    absolute_max = fields.Nested(QuantitySchema, metadata={
        "description": "For a weight-based range, the most any patient is given whatever the weight, in the "
                       "range's unit without /kg: 0.35 mg/kg/h not exceeding 25 mg/h (a rate for a range of "
                       "rates, an amount for a range of amounts)"})
    instructions = Text(load_default=None, allow_none=True, multiline=True, validate=validate.Length(max=2000))
    # No load_default: a range without it is for every indication of the record, and is stored (and hashed)
    # exactly as before the field existed.
    indications = fields.List(
        Text(validate=validate.Length(1, 40)), validate=validate.Length(1, 50),
        metadata={"description": "Codes of the record's indications this range is for (Spravato's 84 mg twice "
                                 "weekly for 4 weeks is for R45.851 only); absent, the range is for every "
                                 "indication of the record. FHIR gives the range under those indications only",
                  "example": ["R45.851"]})

    @validates_schema
    def _check_range(self, data: dict[str, Any], **_: Any) -> None:
        low, high = data.get("dose_min"), data.get("dose_max")
        if low is not None and high is not None and low > high:
            raise ValidationError({"dose_max": ["dose_max must be greater than or equal to dose_min."]})
        codes = data.get("indications") or []
        repeated = sorted({code for code in codes if codes.count(code) > 1})
        if repeated:
            raise ValidationError({"indications": [f"duplicate indication codes: {', '.join(repeated)}"]})
        self._check_absolute_max(data)
        self._check_duration_min(data)
        cap = data.get("max_per_period")
        if data.get("unit") and isinstance(cap, dict) and cap.get("unit"):
            # Mixed units: a dose in mg capped in mL (or the reverse) cannot be compared by anyone.
            dose_unit, cap_unit = _parsed_unit(data["unit"]), _parsed_unit(cap["unit"])
            if dose_unit is None or cap_unit is None:
                return
            dose_kind, cap_kind = dose_unit.kind, cap_unit.kind
            if dose_kind != cap_kind:
                raise ValidationError({"max_per_period": {"unit": [
                    f"'{cap['unit']}' is a {cap_kind} but the dose unit '{data['unit']}' is a {dose_kind}: "
                    "a maximum must be the same kind of amount as the dose"]}})
            comparable = not dose_unit.is_rate and not cap_unit.is_rate and dose_unit.per_kg == cap_unit.per_kg
            if (comparable and low is not None and cap.get("value") is not None
                    and Fraction(cap["value"]) * cap_unit.amount_factor < Fraction(low) * dose_unit.amount_factor):
                raise ValidationError({"max_per_period": {"value": [
                    f"{cap['value']} {cap['unit']} per {cap.get('period')} is less than one dose at the minimum "
                    f"({low} {data['unit']}): no dose in this range could be given"]}})

    @staticmethod
    def _check_duration_min(data: dict[str, Any]) -> None:
        """A shortest administration time belongs to a dose given as an amount (a push); a range of rates is
        paced by its rate. It cannot be longer than the range's own duration (no dose could be given as the
        range says)."""
        shortest = data.get("duration_min")
        if shortest is None:
            return
        dose_unit = _parsed_unit(data["unit"]) if data.get("unit") else None
        if dose_unit is not None and dose_unit.is_rate:
            raise ValidationError({"duration_min": [
                f"'{data['unit']}' is a rate: a range of rates is paced by its rate, and only a range of amounts "
                "has a shortest administration time"]})
        if data.get("duration") and parse_duration(shortest) > parse_duration(data["duration"]):
            raise ValidationError({"duration_min": [
                f"{shortest} is longer than the range's duration ({data['duration']}): no dose could be given "
                "as the range says"]})

    @staticmethod
    def _check_absolute_max(data: dict[str, Any]) -> None:
        """An absolute maximum caps a weight-based range for heavy patients, so it is the range's own unit
        without /kg (25 mg/h for 0.35 mg/kg/h): any other would be compared with nothing, or with a dose
        of another kind."""
        ceiling = data.get("absolute_max")
        if not isinstance(ceiling, dict) or not data.get("unit") or not ceiling.get("unit"):
            return
        dose_unit, ceiling_unit = _parsed_unit(data["unit"]), _parsed_unit(ceiling["unit"])
        if dose_unit is None or ceiling_unit is None:
            return
        if not dose_unit.per_kg:
            raise ValidationError({"absolute_max": [
                f"only a weight-based range (a /kg unit) has an absolute maximum; '{data['unit']}' is not one"]})
        if (ceiling_unit.per_kg or ceiling_unit.kind != dose_unit.kind
                or ceiling_unit.is_rate != dose_unit.is_rate):
            raise ValidationError({"absolute_max": {"unit": [
                f"'{ceiling['unit']}' is not '{data['unit']}' without /kg (such as '{dose_unit.absolute_code}'): an "
                "absolute maximum is the same kind of dose as the range, for the whole patient"]}})
        low = data.get("dose_min")
        if ceiling.get("value") is None or low is None:
            return
        # Below the minimum even for the lightest patient the service accepts, the cap would make every order
        # a breach: a unit slip (25 ug/h for 25 mg/h) was accepted (a review).
        cap = Fraction(ceiling["value"]) * ceiling_unit.amount_factor / (ceiling_unit.time_seconds or 1)
        lightest = Fraction(low) * dose_unit.amount_factor / (dose_unit.time_seconds or 1) * Fraction(MIN_WEIGHT_KG)
        if cap < lightest:
            raise ValidationError({"absolute_max": {"value": [
                f"{ceiling['value']} {ceiling['unit']} is below the range's minimum ({low} {data['unit']}) even for "
                f"a {MIN_WEIGHT_KG} kg patient: every dose would break it"]}})


class DrugSchema(Schema):
    name = Text(required=True, identifier=True, validate=validate.Length(1, 100),
                metadata={"description": "Generic name", "example": "esketamine"})
    rxnorm_cui = Text(load_default=None, allow_none=True,
                      validate=validate.Regexp(terminology.RXNORM_PATTERN, error="Not a well-formed RxCUI."))
    brand_names = fields.List(Text(identifier=True, validate=validate.Length(1, 100)), load_default=list,
                              validate=validate.Length(max=20))
    dea_schedule = Text(load_default=None, allow_none=True, validate=validate.OneOf(DEA_SCHEDULES))

    @validates_schema
    def _check_brand_names(self, data: dict[str, Any], **_: Any) -> None:
        names = [name.casefold() for name in data.get("brand_names") or []]
        if len(set(names)) != len(names):
            raise ValidationError({"brand_names": ["duplicate brand names"]})


#: No FDA application predates the 1900s (the NDA itself dates from 1938); 1066-01-01 is a typo.
EARLIEST_APPROVAL = date(1900, 1, 1)


class FdaApprovalSchema(Schema):
    status = Text(required=True, validate=validate.OneOf(FDA_STATUSES))
    application_number = Text(load_default=None, allow_none=True,
                              validate=validate.Regexp(r"\A(NDA|ANDA|BLA)[0-9]{6}\Z",
                                                       error="Must be NDA, ANDA or BLA followed by 6 digits."))
    approval_date = CalendarDate(load_default=None, allow_none=True)
    approved_indication = Text(load_default=None, allow_none=True, multiline=True,
                               validate=validate.Length(max=1000))
    rems_required = StrictBoolean(load_default=False)
    boxed_warning = Text(load_default=None, allow_none=True, multiline=True, validate=validate.Length(max=1000),
                         metadata={"description": "Boxed warning title; null when the label has none"})

    @validates_schema
    def _check_status_rules(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        status = data.get("status")
        if status == "approved":
            for name in ("application_number", "approval_date"):
                if data.get(name) is None:
                    errors[name] = [f"{name} is required when status is 'approved'."]
        elif status == "investigational":
            for name in ("application_number", "approval_date"):
                if data.get(name) is not None:
                    errors[name] = [f"{name} must be null when status is 'investigational'."]
        approved = data.get("approval_date")
        # A day of slack: "today" is a different date across time zones.
        if approved is not None and not EARLIEST_APPROVAL <= approved <= utcnow().date() + timedelta(days=1):
            errors.setdefault("approval_date", []).append(
                f"must be between {EARLIEST_APPROVAL.isoformat()} and today: an approval cannot be in the future")
        if errors:
            raise ValidationError(errors)


class SourceSchema(Schema):
    title = Text(required=True, validate=validate.Length(1, 500))
    url = WebUrl(required=True, schemes={"http", "https"}, validate=validate.Length(max=2000))
    supports = fields.List(Text(validate=validate.Length(1, 100)), load_default=list,
                           validate=validate.Length(max=50),
                           metadata={"description": "Field paths this source backs, e.g. "
                                                    "fda_approval.approval_date or dosing_ranges.0"})
