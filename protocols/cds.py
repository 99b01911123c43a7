"""CDS Hooks dose checking, in the domain's terms: draft FHIR R4 MedicationRequests in, cards out.

Why here and not in ``api/``: reading a draft order (medication codings, route, ``doseAndRate``,
``timing``), the prefetched body weight, and judging each dose against the protocols in effect are
clinical rules the HTTP layer only carries; ``api/cds_api.py`` parses the request, calls
:func:`draft_medication_requests`, :func:`prefetched_weight` and :func:`cards_for_order`, and maps
:class:`~protocols.errors.MalformedOrder` to a 400.

For every draft order the service reads the RxNorm codings of the medication, the SNOMED CT route and
the ``doseAndRate`` of each dosage instruction, finds the protocols in effect for that medication
*and* route (when the order carries ``reasonCode`` and some of those protocols list it as an
indication, only those), and judges the dose against each range of each protocol with
:mod:`protocols.dosing`. An order has no phase, so every range for the route is evaluated and the
card reports the most favourable verdict with the others listed in its detail. One card per order and
protocol. Data the check needs but lacks (no weight prefetched, a dose in mL without a strength) is a
warning card, not an error, because the order itself is fine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from protocols import fhir_query, search, terminology
from protocols.db import Database
from protocols.dose_units import UnitError, to_kilograms
from protocols.dosing import (
    FAVOURABLE_ORDER,
    DoseOrder,
    DosingError,
    Evaluation,
    Frequency,
    Quantity,
    Verdict,
    evaluate,
    fmt,
    number_problem,
    ranges_for,
)
from protocols.durations import parse_duration
from protocols.errors import MalformedOrder
from protocols.versioning import StoredVersion

LOINC = "http://loinc.org"
BODY_WEIGHT_LOINC = "29463-7"
WEIGHT_PREFETCH = "weight"
USABLE_OBSERVATION_STATUSES = {"final", "amended", "corrected", "preliminary"}
SUMMARY_LIMIT = 140
TOPIC_SYSTEM = "urn:treatment-protocols:protocol"

INDICATOR = {Verdict.WITHIN_RANGE: "info", Verdict.BELOW_MIN: "warning", Verdict.MORE_FREQUENT_THAN_PROTOCOL: "warning",
             Verdict.EXCEEDS_MAX_PER_PERIOD: "critical", Verdict.ABOVE_MAX: "critical"}
VERDICT_TEXT = {Verdict.WITHIN_RANGE: "within protocol range", Verdict.BELOW_MIN: "below protocol minimum",
                Verdict.MORE_FREQUENT_THAN_PROTOCOL: "more frequent than the protocol",
                Verdict.EXCEEDS_MAX_PER_PERIOD: "exceeds protocol maximum per period",
                Verdict.ABOVE_MAX: "above protocol maximum"}
PERIOD_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}

#: Builds the absolute URL of one protocol version (the HTTP layer knows its routes and host).
VersionUrl = Callable[[str, int], str]


@dataclass
class DosageLine:
    """One dose of one dosage instruction, in the shape the dose check wants."""

    route: str
    doses: list[Quantity]
    frequency: Frequency | None
    label: str
    notes: list[str] = field(default_factory=list)


@dataclass
class DraftOrder:
    resource_id: str | None
    medication: str
    rxnorm: list[str]
    reasons: list[str]
    lines: list[DosageLine]


def _bad_request(path: str, message: str) -> MalformedOrder:
    return MalformedOrder(f"Malformed CDS Hooks request: {path}: {message}", errors={path: [message]})


def draft_medication_requests(bundle: Any, hook: str, selections: list[str]) -> list[DraftOrder]:
    """The MedicationRequests of ``context.draftOrders`` (validated as FHIR R4), as DraftOrders."""
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    path = "context.draftOrders"
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise _bad_request(path, "must be a FHIR Bundle")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise _bad_request(f"{path}.entry", "must be an array")
    wanted = set(selections)
    orders = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            raise _bad_request(f"{path}.entry.{index}.resource", "each entry needs a resource")
        if resource.get("resourceType") != "MedicationRequest":
            continue  # other draft orders (labs, imaging) are not this service's business
        if hook == "order-select" and f"MedicationRequest/{resource.get('id')}" not in wanted:
            continue
        try:
            request = MedicationRequest.model_validate(resource)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "MedicationRequest")
            raise _bad_request(f"{path}.entry.{index}.resource" + (f".{where}" if where else ""),
                               f"not a valid FHIR R4 MedicationRequest: {first.get('msg')}") from exc
        orders.append(_draft_order(request, resource, f"{path}.entry.{index}.resource"))
    return orders


def _quantity_json(value: int, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": terminology.UCUM, "code": unit}


#: A draft order using every element the service reads (see ``warm_up``).
_WARM_UP_ORDERS = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
    "resourceType": "MedicationRequest", "id": "warm-up", "status": "draft", "intent": "order",
    "contained": [{"resourceType": "Medication", "id": "m", "code": {"coding": [
        {"system": terminology.RXNORM, "code": "6130", "display": "ketamine"}]}}],
    "medicationReference": {"reference": "#m"},
    "subject": {"reference": "Patient/warm-up"}, "encounter": {"reference": "Encounter/warm-up"},
    "authoredOn": "2026-01-01", "requester": {"reference": "Practitioner/warm-up"},
    "reasonCode": [{"coding": [{"system": terminology.SNOMED, "code": "35489007"}]}],
    "dosageInstruction": [{
        "text": "warm-up", "route": {"coding": [{"system": terminology.SNOMED, "code": "47625008"}]},
        "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/dose-rate-type",
                                  "code": "ordered"}]},
             "doseQuantity": _quantity_json(70, "mg"), "rateQuantity": _quantity_json(1, "mg/kg/h")},
            {"doseRange": {"low": _quantity_json(1, "mg/kg"), "high": _quantity_json(2, "mg/kg")}},
        ]}],
}}]}


def warm_up() -> None:
    """Parse a representative draft order now, at worker start-up.

    Why: ``fhir.resources`` is imported on the first CDS Hooks call (it is large, and nothing else in
    a request needs it), and it builds the pydantic model of each FHIR element type the first time one
    is validated; together ~170 ms that the first CDS call of every worker would otherwise wait for.
    """
    draft_medication_requests(_WARM_UP_ORDERS, "order-sign", [])


def _codings(concept: Any) -> Iterable[Any]:
    return (concept.coding or []) if concept is not None else []


def _draft_order(request: Any, raw: Mapping[str, Any], path: str) -> DraftOrder:
    concept = request.medicationCodeableConcept
    if concept is None and request.medicationReference is not None:
        reference = request.medicationReference.reference or ""
        for contained in request.contained or []:
            if reference == f"#{contained.id}" and contained.get_resource_type() == "Medication":
                concept = contained.code
    rxnorm = [c.code for c in _codings(concept) if c.system == terminology.RXNORM and c.code]
    name = (concept.text if concept is not None and concept.text else None) or next(
        (c.display for c in _codings(concept) if c.display), None) or "medication"
    reasons = [str(c.code).upper() for r in request.reasonCode or [] for c in _codings(r) if c.code]
    lines = [line for index, dosage in enumerate(request.dosageInstruction or [])
             for line in _dosage_lines(dosage, f"{path}.dosageInstruction.{index}")]
    return DraftOrder(request.id, name, rxnorm, reasons, lines)


def _quantity(value: Any, path: str) -> Quantity | None:
    """An ordered amount; a number no dose can be (zero, negative, 1e999999…) is a malformed order,
    refused like the same number sent to ``dose-check``."""
    if value is None or value.value is None:
        return None
    number = Decimal(str(value.value))
    problem = number_problem(number)
    if problem is not None:
        raise _bad_request(f"{path}.value", problem)
    unit = value.code if value.code and value.system in (terminology.UCUM, None) else value.unit
    return Quantity(number, str(unit or ""))


#: FHIR R4 timing abbreviations (``Timing.code``, v3 GTSAbbreviation) with a fixed frequency, used
#: when an order carries no ``timing.repeat`` frequency: an order "BID" is two doses a day, not one.
TIMING_ABBREVIATIONS = {
    "QD": (1, "P1D"), "AM": (1, "P1D"), "PM": (1, "P1D"), "BED": (1, "P1D"), "BID": (2, "P1D"),
    "TID": (3, "P1D"), "QID": (4, "P1D"), "QOD": (1, "P2D"), "WK": (1, "P1W"),
    "Q1H": (1, "PT1H"), "Q2H": (1, "PT2H"), "Q3H": (1, "PT3H"), "Q4H": (1, "PT4H"), "Q6H": (1, "PT6H"),
    "Q8H": (1, "PT8H"),
}
TIMING_ABBREVIATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"


def _frequency(dosage: Any, path: str) -> tuple[Frequency | None, list[str]]:
    """The most frequent schedule the timing allows: ``frequencyMax`` when given (1-3 times a day is
    checked as 3), the shorter ``period`` (every 4-6 h is every 4 h), or a timing abbreviation."""
    repeat = dosage.timing.repeat if dosage.timing is not None else None
    if repeat is None or repeat.period is None or repeat.periodUnit is None:
        return _abbreviated_frequency(dosage)
    unit_seconds = PERIOD_UNIT_SECONDS.get(repeat.periodUnit)
    total = Fraction(Decimal(str(repeat.period))) * (unit_seconds or 0)
    if unit_seconds is None or total.denominator != 1 or total <= 0:
        return None, [f"The timing ({repeat.period} {repeat.periodUnit}) has no fixed length in seconds; "
                      f"the per-period maximum was checked for one dose."]
    count = max(int(repeat.frequency or 1), int(repeat.frequencyMax or 0))
    notes = ([f"Checked at the most frequent the timing allows: {count} per {repeat.period} {repeat.periodUnit}."]
             if repeat.frequencyMax is not None and count != int(repeat.frequency or 1) else [])
    period = _iso_duration(int(total))
    try:
        parse_duration(period)  # the dose check reads it back: it must be a duration the service handles
    except ValueError:
        raise _bad_request(f"{path}.timing.repeat.period", f"{repeat.period} {repeat.periodUnit} is longer "
                           "than a dosing period this service can check") from None
    return Frequency(count, period), notes


def _abbreviated_frequency(dosage: Any) -> tuple[Frequency | None, list[str]]:
    codes = [c.code for c in _codings(dosage.timing.code if dosage.timing is not None else None)
             if c.system in (TIMING_ABBREVIATION_SYSTEM, None) and c.code]
    for code in codes:
        if str(code).upper() in TIMING_ABBREVIATIONS:
            count, period = TIMING_ABBREVIATIONS[str(code).upper()]
            return Frequency(count, period), [f"Frequency from the timing code {code}: {count} per {period}."]
    if codes:
        return None, [f"The timing code {codes[0]} has no fixed frequency; the per-period maximum was checked "
                      f"for one dose."]
    return None, []


def _iso_duration(seconds: int) -> str:
    for suffix, size in (("W", 604800), ("D", 86400)):
        if seconds % size == 0:
            return f"P{seconds // size}{suffix}"
    for suffix, size in (("H", 3600), ("M", 60)):
        if seconds % size == 0:
            return f"PT{seconds // size}{suffix}"
    return f"PT{seconds}S"


def _dosage_lines(dosage: Any, path: str) -> list[DosageLine]:
    """One line per ``doseAndRate``. Everything the entry orders is judged and the worst verdict wins:
    a dose (or both ends of a dose range) *and* its rate, so a 98 mg dose given at 70 mg/h is
    checked at 70 mg/h too."""
    routes = [c.code for c in _codings(dosage.route) if c.system == terminology.SNOMED and c.code]
    if not routes:
        return []  # without a SNOMED route no protocol can be matched
    frequency, notes = _frequency(dosage, path)
    lines = []
    for index, dose_and_rate in enumerate(dosage.doseAndRate or []):
        where = f"{path}.doseAndRate.{index}"
        amounts: list[Quantity] = []
        dose = _quantity(dose_and_rate.doseQuantity, f"{where}.doseQuantity")
        rate = _quantity(dose_and_rate.rateQuantity, f"{where}.rateQuantity")
        if dose is not None:
            amounts = [dose]
        elif dose_and_rate.doseRange is not None:
            dose_range = dose_and_rate.doseRange
            amounts = [q for q in (_quantity(dose_range.low, f"{where}.doseRange.low"),
                                   _quantity(dose_range.high, f"{where}.doseRange.high")) if q is not None]
        labels = [" to ".join(f"{fmt(Fraction(q.value))} {q.unit}" for q in amounts)] if amounts else []
        if rate is not None:
            labels.append(f"{'at ' if amounts else ''}{fmt(Fraction(rate.value))} {rate.unit}")
        doses = [*amounts, *([rate] if rate is not None else [])]
        if doses:
            lines.append(DosageLine(routes[0], doses, frequency, " ".join(labels), list(notes)))
    return lines


def prefetched_weight(prefetch: Mapping[str, Any]) -> Fraction | str:
    """The latest usable body weight in kg, or the reason there is none (shown on cards)."""
    data = prefetch.get(WEIGHT_PREFETCH)
    if data is None:
        return "no body weight was prefetched"
    if not isinstance(data, Mapping):
        raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}", "must be a FHIR Bundle or Observation")
    if data.get("resourceType") == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}.entry", "must be an array")
        resources = [e.get("resource") for e in entries if isinstance(e, Mapping)]
    elif data.get("resourceType") == "Observation":
        resources = [data]
    else:
        raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}", "must be a FHIR Bundle or Observation")
    found: list[tuple[datetime, Fraction]] = []
    for resource in resources:
        weight = _observation_weight(resource)
        if weight is not None:
            found.append(weight)
    if not found:
        return "the prefetched observations hold no usable body weight"
    return max(found, key=lambda item: item[0])[1]


def _observation_weight(resource: Any) -> tuple[datetime, Fraction] | None:
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Observation":
        return None
    # Prefetched resources are the EHR's data, not validated here: anything not shaped like a usable
    # body-weight Observation is no weight (the card then says so), never an error of the service.
    status, concept = resource.get("status"), resource.get("code")
    if not isinstance(status, str) or status not in USABLE_OBSERVATION_STATUSES or not isinstance(concept, Mapping):
        return None
    codings = concept.get("coding")
    codes = [(c.get("system"), c.get("code")) for c in (codings if isinstance(codings, list) else [])
             if isinstance(c, Mapping)]
    if (LOINC, BODY_WEIGHT_LOINC) not in codes:
        return None
    quantity = resource.get("valueQuantity")
    if (not isinstance(quantity, Mapping) or isinstance(quantity.get("value"), bool)
            or not isinstance(quantity.get("value"), int | Decimal)):
        return None  # true is an int to Python, not a weight of 1 kg
    unit = quantity.get("code") or quantity.get("unit")
    value = Decimal(quantity["value"])
    if number_problem(value) is not None:
        return None  # 0, negative, 1e999999 …: no weight (and no million-digit arithmetic)
    try:
        kilograms = to_kilograms(value, str(unit))
    except UnitError:
        return None
    return _observed_at(resource), kilograms


def _observed_at(resource: Mapping[str, Any]) -> datetime:
    """When the observation was made, as naive UTC, so that the newest weight wins whatever offset each
    time carries (as text, ``10:00+09:00`` sorts after ``05:00Z`` though it is four hours earlier). A
    partial FHIR date (``2024``, ``2024-06``, ``2024-06-01``) counts from its start; a missing or
    unreadable time sorts oldest."""
    when = resource.get("effectiveDateTime") or resource.get("effectiveInstant") or resource.get("issued")
    start = fhir_query.date_start(when) if isinstance(when, str) else None
    return start if start is not None else datetime.min


# ----------------------------------------------------------------------------------- cards


def cards_for_order(db: Database, order: DraftOrder, weight: Fraction | str,
                    version_url: VersionUrl) -> list[dict[str, Any]]:
    """One card per dosage line and protocol in effect for the order's medication and route."""
    if not order.rxnorm:
        return []
    cards = []
    for line in order.lines:
        for stored in search.applicable_protocols(db, rxnorm_cuis=order.rxnorm, route=line.route,
                                                  indications=order.reasons):
            content = json.loads(stored.document, parse_float=Decimal)
            cards.append(_card(order, line, stored, content, weight, version_url))
    return cards


@dataclass
class RangeResult:
    phase: str
    verdict: Verdict | None
    evaluations: list[Evaluation]
    problem: str | None
    notes: list[str] = field(default_factory=list)


def _judge(content: Mapping[str, Any], index: int, line: DosageLine, weight: Fraction | str) -> RangeResult:
    """Judge every quantity of the line against one range; the worst verdict wins. A quantity that
    cannot be compared (a rate against an amount range that gives no duration) is noted, and never
    replaces a verdict reached for another: 400 mg at 50 mg/h against 1-4.5 mg/kg stays "above"."""
    dose_range = content["dosing_ranges"][index]
    phase = str(dose_range.get("phase"))
    evaluations, problems = [], []
    for dose in line.doses:
        order = DoseOrder(route=line.route, dose=dose, frequency=line.frequency,
                          weight_kg=weight if isinstance(weight, Fraction) else None)
        try:
            evaluations.append(evaluate(content, index, order))
        except DosingError as exc:
            problem = exc.message
            if isinstance(weight, str) and exc.field.endswith("weight_kg"):
                problem = f"{exc.message} ({weight})"
            problems.append(f"{fmt(Fraction(dose.value))} {dose.unit}: {problem}")
    if not evaluations:
        return RangeResult(phase, None, [], "; ".join(problems))
    # A dose range (low to high) is inside only when both ends are, a dose and its rate only when
    # both are: take the worst.
    verdict = max((e.verdict for e in evaluations), key=FAVOURABLE_ORDER.index)
    return RangeResult(phase, verdict, evaluations, None, [f"not checked: {p}" for p in problems])


def _card(order: DraftOrder, line: DosageLine, stored: StoredVersion, content: Mapping[str, Any],
          weight: Fraction | str, version_url: VersionUrl) -> dict[str, Any]:
    results = [_judge(content, index, line, weight) for index, _ in ranges_for(content, line.route)]
    judged = [r for r in results if r.verdict is not None]
    route = terminology.ROUTES.get(line.route)
    route_text = route.display.lower() if route else f"route {line.route}"
    label = f"protocol {stored.protocol_id} v{stored.version}"
    if judged:
        best = min(judged, key=lambda r: FAVOURABLE_ORDER.index(r.verdict))
        assert best.verdict is not None
        indicator = INDICATOR[best.verdict]
        summary = f"{order.medication} {line.label} {route_text}: {VERDICT_TEXT[best.verdict]} ({label})"
    else:
        indicator = "warning"
        summary = f"{order.medication} {line.label} {route_text}: dose not checked against {label}"
    detail = [f"Checked against **{content.get('title', stored.protocol_id)}** "
              f"({label}, ETag {stored.etag}, effective from {json.loads(stored.document)['effective_from']})."]
    for result in results:
        if result.verdict is None:
            detail.append(f"- **{result.phase}**: could not be checked: {result.problem}")
            continue
        detail.append(f"- **{result.phase}**: {result.verdict.value}")
        for evaluation in result.evaluations:
            detail.extend(f"  - {message}" for message in evaluation.messages)
        detail.extend(f"  - {note}" for note in result.notes)
    detail.extend(f"- {note}" for note in line.notes)
    url = version_url(stored.protocol_id, stored.version)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary if len(summary) <= SUMMARY_LIMIT else summary[:SUMMARY_LIMIT - 1] + "…",
        "detail": "\n".join(detail),
        "indicator": indicator,
        "source": {"label": f"Treatment protocol {stored.protocol_id} version {stored.version}", "url": url,
                   "topic": {"system": TOPIC_SYSTEM, "code": f"{stored.protocol_id}/{stored.version}",
                             "display": str(content.get("title", stored.protocol_id))}},
        "links": [{"label": f"Protocol {stored.protocol_id} version {stored.version}", "url": url,
                   "type": "absolute"}],
    }
