"""``/v1/protocols/{id}/dose-check`` and ``/v1/protocols/{id}/dose``: dosing against one version.

Both resolve the version in effect now or at ``as_of`` and name it (id, version, ETag) in the
answer, so the EHR can record exactly which protocol text a verdict came from. The arithmetic is
:mod:`protocols.dosing`; this module only maps requests in and results out.
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

from api.errors import ApiError, ErrorSchema
from api.extensions import get_db
from api.http import UNTAGGED_PRECONDITION, check_untagged_preconditions
from api.parsing import Blueprint
from protocols import terminology, versioning
from protocols.dose_units import normalize, parse_concentration, seconds
from protocols.dosing import (
    AbsoluteRange,
    Amount,
    DoseOrder,
    DosingError,
    Evaluation,
    Frequency,
    PatientRange,
    PerPeriod,
    Quantity,
    Selection,
    Span,
    Verdict,
    check,
    patient_ranges,
    to_decimal,
)
from protocols.durations import parse_duration
from protocols.errors import ProtocolRetired
from protocols.versioning import StoredVersion
from schemas.dosing import (
    DoseCheckRequestSchema,
    DoseCheckResponseSchema,
    DoseQuerySchema,
    PatientDoseResponseSchema,
)

blp = Blueprint("dosing", __name__, url_prefix="/v1/protocols",
                description="Dose checking against the protocol version in effect (or at `as_of`), "
                            "with the arithmetic shown. Verdicts are exact at range edges.")

def load_version(protocol_id: str, as_of: Any) -> tuple[StoredVersion, dict[str, Any]]:
    """The version in effect and its content with exact Decimal numbers. A retirement is a 410."""
    try:
        stored = versioning.effective(get_db(), protocol_id, as_of)
    except ProtocolRetired as exc:
        retired: StoredVersion = exc.details["version"]
        raise ApiError(410, f"protocol '{protocol_id}' was retired in version {retired.version}; it "
                            f"has no dosing in effect", protocol_version=retired.version) from exc
    return stored, json.loads(stored.document, parse_float=Decimal)


def protocol_ref(stored: StoredVersion) -> dict[str, Any]:
    document = json.loads(stored.document)
    approval = document.get("fda_approval") or {}
    return {"id": stored.protocol_id, "version": stored.version, "etag": stored.etag,
            "status": stored.status, "effective_from": document.get("effective_from"),
            "title": document.get("title"), "fda_status": approval.get("status")}


def route_ref(code: str) -> dict[str, Any]:
    concept = terminology.ROUTES.get(code)
    return {"code": code, "display": concept.display if concept else None}


def amount_out(amount: Amount | None, against: Fraction | None = None) -> dict[str, Any] | None:
    """An amount as JSON; a rounded value is rounded away from the bound it was judged ``against``."""
    return None if amount is None else {"value": to_decimal(amount.value, against), "unit": amount.unit}


def span_out(span: Span, dose: Fraction | None = None) -> dict[str, Any]:
    """A range as JSON; a rounded bound the ``dose`` (in the span's unit) broke is rounded away from it."""
    low_broken = dose if dose is not None and dose < span.low else None
    high_broken = dose if dose is not None and dose > span.high else None
    low, high = to_decimal(span.low, low_broken), to_decimal(span.high, high_broken)
    if low > high:
        # Bounds a hair apart (or equal: 0.35-0.35 mg/kg/h) rounded apart in opposite directions showed
        # min 5.83333333334 above max 5.83333333333 (adversarial probe): both read as the broken one.
        low, high = (low, low) if low_broken is not None else (high, high)
    return {"min": low, "max": high, "unit": span.unit}


def absolute_out(absolute: AbsoluteRange, dose: Fraction | None = None) -> dict[str, Any]:
    weight = None if absolute.weight_kg is None else to_decimal(absolute.weight_kg)
    return {**span_out(absolute.span, dose), "weight_kg": weight, "calculation": absolute.calculation}


def per_period_out(per_period: PerPeriod | None) -> dict[str, Any] | None:
    if per_period is None:
        return None
    return {"period": per_period.period, "doses_per_period": per_period.doses_per_period,
            "projected": amount_out(per_period.projected, None if per_period.maximum is None
                                    else per_period.maximum.value),
            "maximum": amount_out(per_period.maximum),
            "exceeded": per_period.exceeded, "calculation": per_period.calculation}


def evaluation_out(evaluation: Evaluation | None) -> dict[str, Any]:
    if evaluation is None:
        return {"range_index": None, "matched_range": None, "dose_in_range_unit": None,
                "range_in_ordered_unit": None, "absolute_range": None, "per_period": None, "regimen": None,
                "faster_than_protocol": None, "longer_than_protocol": None, "unchecked": []}
    ordered = Fraction(evaluation.dose.value)  # a bound the dose broke is shown on the far side of it
    return {"range_index": evaluation.range_index, "matched_range": evaluation.range,
            "dose_in_range_unit": amount_out(evaluation.dose_in_range_unit, evaluation.dose_against),
            "range_in_ordered_unit": span_out(evaluation.range_in_ordered_unit, ordered),
            "absolute_range": absolute_out(evaluation.absolute_range,
                                           ordered if evaluation.absolute_range.span.unit == evaluation.dose.unit
                                           else None),
            "per_period": per_period_out(evaluation.per_period), "regimen": per_period_out(evaluation.regimen),
            "faster_than_protocol": evaluation.faster, "longer_than_protocol": evaluation.longer,
            "unchecked": evaluation.unchecked}


def alternative_out(evaluation: Evaluation) -> dict[str, Any]:
    return {"verdict": evaluation.verdict.value, **evaluation_out(evaluation), "messages": evaluation.messages}


def patient_range_out(result: PatientRange) -> dict[str, Any]:
    maximum = None
    if result.max_per_period is not None:
        maximum = {**(amount_out(result.max_per_period) or {}), "period": result.max_per_period_period}
    return {"range_index": result.range_index, "matched_range": result.range,
            "absolute_range": absolute_out(result.absolute_range), "max_per_period": maximum,
            "messages": result.messages}


def dosing_error(exc: DosingError, rename: dict[str, str] | None = None) -> ApiError:
    field = (rename or {}).get(exc.field, exc.field)
    return ApiError(422, exc.message, errors={field: [exc.message]})


@blp.route("/<string:protocol_id>/dose-check", methods=["POST"])
@blp.arguments(DoseCheckRequestSchema())
@blp.response(200, DoseCheckResponseSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such protocol, or no version in effect at that time")
@blp.alt_response(410, schema=ErrorSchema, description="Retired (protocol_version names the retirement)")
@blp.alt_response(412, schema=ErrorSchema, description=UNTAGGED_PRECONDITION)
def dose_check(payload: dict[str, Any], protocol_id: str) -> dict[str, Any]:
    """Judge a dose against the protocol version in effect (or at `as_of`).

    Verdicts: `within_range`, `below_min`, `more_frequent_than_protocol` (each dose in range, given
    more often than the protocol's frequency), `above_max`, `exceeds_max_per_period`,
    `route_not_in_protocol`, `phase_not_in_protocol`. A weight-based range needs
    `patient.weight_kg`; mL needs `concentration`. When the protocol has ranges for several phases
    on the route, `phase` is required (422 naming `phase`): the answer differs by phase and the
    service does not guess. Several ranges within one phase are alternatives: the dose is judged
    against each (`evaluations`) and the most favourable verdict is the answer. With `indication` (a code
    of the protocol's indications), only the ranges for it are judged (those naming it in their
    `indications`, and those without that field)."""
    stored, content = load_version(protocol_id, payload.get("as_of"))
    check_untagged_preconditions(exists=False)
    frequency = payload.get("frequency")
    concentration = payload.get("concentration")
    order = DoseOrder(
        route=payload["route"], phase=payload.get("phase"),
        dose=Quantity(payload["dose"]["value"], payload["dose"]["unit"]),
        frequency=Frequency(frequency["count"], frequency["period"]) if frequency else None,
        weight_kg=(payload.get("patient") or {}).get("weight_kg"),
        concentration=(parse_concentration(concentration["value"], concentration["unit"])
                       if concentration else None),
        duration_s=seconds(parse_duration(payload["duration"])) if payload.get("duration") else None,
        duration_text=payload.get("duration"),
        indication=payload.get("indication"),
    )
    try:
        result = check(content, order)
    except DosingError as exc:
        raise dosing_error(exc) from exc
    phase = result.evaluation.range.get("phase") if result.evaluation else payload.get("phase")
    dose_unit = result.evaluation.dose.unit if result.evaluation else normalize(order.dose.unit)
    return {"verdict": result.verdict.value, "protocol": protocol_ref(stored),
            "route": route_ref(order.route), "phase": phase,
            "dose": {"value": order.dose.value, "unit": dose_unit},
            **evaluation_out(result.evaluation), "messages": result.messages,
            "evaluations": [alternative_out(e) for e in result.evaluations]}



@blp.route("/<string:protocol_id>/dose", methods=["GET"])
@blp.arguments(DoseQuerySchema(), location="query")
@blp.response(200, PatientDoseResponseSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such protocol, or no version in effect at that time")
@blp.alt_response(410, schema=ErrorSchema, description="Retired (protocol_version names the retirement)")
def patient_dose(query: dict[str, Any], protocol_id: str) -> dict[str, Any]:
    """The protocol's range for a route (and phase) as absolute amounts for a patient's weight.

    `ranges` lists every range of the phase (usually one; several are alternatives the prescriber
    chooses between).

    A route or phase without a range in the protocol is a 422 naming `route` or `phase`; several
    phases on the route without `phase` is a 422 naming `phase`."""
    stored, content = load_version(protocol_id, query.get("as_of"))
    try:
        result = patient_ranges(content, query["route"], query.get("phase"), query.get("weight_kg"))
    except DosingError as exc:
        raise dosing_error(exc) from exc
    if isinstance(result, Selection):
        assert result.message is not None
        field = "route" if result.verdict is Verdict.ROUTE_NOT_IN_PROTOCOL else "phase"
        raise ApiError(422, result.message, errors={field: [result.message]})
    return {"protocol": protocol_ref(stored), "route": route_ref(query["route"]),
            "phase": result[0].range.get("phase"), "ranges": [patient_range_out(r) for r in result]}
