"""Reading a CDS Hooks call's draft orders and prefetched weight into the domain's terms.

Why a module of its own: what a draft FHIR R4 MedicationRequest *says* (its medication's RxNorm codings,
its route, each dosage instruction's ``doseAndRate`` and ``timing``, and what could not be read) is a
question of FHIR, separate from judging it against protocols (:mod:`protocols.cds`, which turns what is
read here into cards). :func:`draft_medication_requests` validates each order with ``fhir.resources``
and reads it into a :class:`DraftOrder` of :class:`DosageLine` s; :func:`prefetched_weight` reads the
body weight the hook prefetched. What cannot be read is kept as a note on the line ("partly checked"),
never guessed; only a request that is not CDS Hooks at all is a :class:`~protocols.errors.MalformedOrder`.
"""


from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from protocols import fhir_query, terminology
from protocols.dose_units import Concentration, UnitError, parse_concentration, parse_dose_unit, to_kilograms
from protocols.dosing import (
    MAX_EXPONENT,
    DosingError,
    Frequency,
    Quantity,
    check_weight,
    fmt,
    number_problem,
)
from protocols.durations import parse_duration
from protocols.errors import MalformedOrder
from protocols.timeutil import format_rfc3339, utcnow

LOINC = "http://loinc.org"
BODY_WEIGHT_LOINC = "29463-7"
WEIGHT_PREFETCH = "weight"
USABLE_OBSERVATION_STATUSES = {"final", "amended", "corrected", "preliminary"}
PERIOD_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}
#: The dosage instructions of one order that are read; the rest are noted, never refused (a 21-step
#: taper of another drug made the call a 400 with no card for a ketamine overdose beside it; 1,220
#: instructions of one order, each noting the others, made a 37 MB answer; reviews).
MAX_DOSAGE_INSTRUCTIONS = 20
#: How many other dosage instructions a "may be given together" note names; the rest are counted.
NAMED_INSTRUCTIONS = 5


@dataclass
class DosageLine:
    """One dose of one dosage instruction, in the shape the dose check wants."""

    route: str
    doses: list[Quantity]
    frequency: Frequency | None
    label: str
    notes: list[str] = field(default_factory=list)
    #: ``asNeeded``: without timing, the doses per period are not known (one-time orders are one dose).
    as_needed: bool = False
    #: What the check could not read or compare (a timing without a fixed frequency, an open-ended
    #: dose, the order's own maximum per period …): a card for such a line is never "info".
    unchecked: list[str] = field(default_factory=list)
    #: How long one administration runs (``timing.repeat.duration``/``durationMax``), in seconds, and
    #: as written: a rate is converted to an amount through it rather than the protocol's duration (with
    #: ``durationMax`` alone, a rate ordered with its dose runs the time that dose takes; :func:`protocols.cds._judge`).
    duration: tuple[Fraction, str] | None = None
    #: The strength of the ordered product (its one ingredient's ``strength`` in a contained
    #: Medication): a dose in mL is converted to mg through it.
    concentration: Concentration | None = None
    #: The shortest an administration may run (``timing.repeat.duration`` when ``durationMax`` is
    #: also given), in seconds: how fast the dose may be given (``DoseOrder.shortest_s``).
    shortest_s: Fraction | None = None
    #: Why the line has no frequency when the order sent a timing (one that could not be read, or one
    #: administration in all): a verdict for one dose says so, not that no frequency was sent.
    no_frequency: str | None = None
    #: The order's route as written, when it is missing or coded neither in SNOMED CT nor as an FDA SPL route
    #: code: ``route`` is then empty, and the line is judged as given by each route its medication's
    #: protocols give (:func:`protocols.cds._order_matches`, which sets ``route`` to each in turn).
    unread_route: str | None = None
    #: ``duration`` is ``durationMax`` alone: the longest an administration may take, not how long it does.
    duration_is_bound: bool = False
    #: The order's own maximum per period (``maxDosePerPeriod``): the amount, the period in seconds and the
    #: period as written. What bounds an as-needed order with no timing (:func:`protocols.cds._judge`).
    own_maximum: tuple[Quantity, Fraction, str] | None = None


@dataclass
class DraftOrder:
    resource_id: str | None
    medication: str
    rxnorm: list[str]
    reasons: list[str]
    lines: list[DosageLine]
    #: False for an order-select draft the clinician did not select: it gets no card, but it will be signed
    #: with the selected ones, so it counts when orders of one medication are noted as not added up.
    selected: bool = True
    #: Whether the order says why it is given in any form: any ``reasonCode`` (coded, a display or words
    #: only) or a ``reasonReference`` (a Condition). Only an order that says nothing is "an order that names
    #: no indication" (:func:`protocols.cds._softening`).
    reason_stated: bool = False


def _bad_request(path: str, message: str) -> MalformedOrder:
    return MalformedOrder(f"Malformed CDS Hooks request: {path}: {message}", errors={path: [message]})


#: ``[<base>/]Patient/<id>[/_history/<version>]``: a FHIR reference to a Patient, relative or absolute.
_PATIENT_REFERENCE = re.compile(rf"(?:(?P<base>https?://\S+?)/)?Patient/(?P<id>{fhir_query.RESOURCE_ID_PATTERN})"
                                rf"(?:/_history/{fhir_query.RESOURCE_ID_PATTERN})?")


@dataclass(frozen=True)
class HookPatient:
    """The hook's patient (``context.patientId``) on the EHR's FHIR server (``fhirServer``): the only
    patient whose orders and body weight a call judges (found by a probe: another patient's 140 kg
    turned a 600 mg order from critical into "within range")."""

    id: str
    fhir_server: str | None = None

    def named_by(self, reference: Any) -> bool | None:
        """True: ``reference`` names this patient; False: another patient; None: it cannot be told (no
        reference, an identifier, a contained or ``urn:`` reference, another resource type, a server
        other than ``fhirServer``)."""
        match = _PATIENT_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        if match is None:
            return None
        base = match.group("base")
        if base is not None and (self.fhir_server is None or base.rstrip("/") != self.fhir_server.rstrip("/")):
            return None
        return match.group("id") == self.id


def draft_medication_requests(bundle: Any, hook: str, selections: list[str], patient: HookPatient
                              ) -> list[DraftOrder]:
    """The MedicationRequests of ``context.draftOrders`` (validated as FHIR R4), as DraftOrders. An order
    whose ``subject`` names another patient is a malformed request (a 400 naming it), not an order to
    judge as this patient's; one whose subject cannot be matched (an identifier, a contained patient) is
    judged, and its cards say so ("partly checked").
    Every order is read (about 580 fit the body limit: well under a second); how many are judged is
    bounded by :func:`protocols.cds.cards_for_orders`."""
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    path = "context.draftOrders"
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise _bad_request(path, "must be a FHIR Bundle")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise _bad_request(f"{path}.entry", "must be an array")
    wanted = set(selections)
    medications = _bundled_medications(entries, path)
    orders = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            raise _bad_request(f"{path}.entry.{index}.resource", "each entry needs a resource")
        if resource.get("resourceType") != "MedicationRequest":
            continue  # other draft orders (labs, imaging) are not this service's business
        if hook == "order-select" and f"MedicationRequest/{resource.get('id')}" not in wanted:
            # Not selected: no card, but signed with the selected ones (their sum, cds._judged_together). Read
            # as far as it can be; one that cannot, or is another patient's, is not this call's business.
            try:
                unselected = _draft_order(_validated(MedicationRequest, resource, f"{path}.entry.{index}.resource"),
                                          resource, f"{path}.entry.{index}.resource", medications)
            except MalformedOrder:
                continue
            subject = resource.get("subject")
            if patient.named_by(subject.get("reference") if isinstance(subject, Mapping) else None) is not False:
                orders.append(replace(unselected, selected=False))
            continue
        request = _validated(MedicationRequest, resource, f"{path}.entry.{index}.resource")
        subject = request.subject.reference if request.subject is not None else None
        named = patient.named_by(subject)
        if named is False:
            raise _bad_request(f"{path}.entry.{index}.resource.subject",
                               f"names {subject}, not the hook's patient, Patient/{patient.id} (context.patientId)")
        order = _draft_order(request, resource, f"{path}.entry.{index}.resource", medications)
        if named is None:
            for line in order.lines:
                line.unchecked.append(f"the order's subject ({subject or 'no reference'}) could not be matched to "
                                      f"the hook's patient, Patient/{patient.id}")
        orders.append(order)
    return orders


def _validated(model: Any, raw: Mapping[str, Any], where: str) -> Any:
    """``raw`` read as the FHIR R4 ``model``; a resource that is not one is a 400 naming the element,
    and so is a number or boolean sent as a string (:func:`_string_for_a_number`)."""
    name = model.__name__
    try:
        resource = model.model_validate(raw)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        inner = ".".join(str(p) for p in first.get("loc", ()) if p != name)
        raise _bad_request(where + (f".{inner}" if inner else ""),
                           f"not a valid FHIR R4 {name}: {first.get('msg')}") from exc
    quoted = _string_for_a_number(raw, resource.model_dump(by_alias=True, exclude_none=True), where)
    if quoted is not None:
        raise _bad_request(quoted, f"not a valid FHIR R4 {name}: a decimal, integer or boolean is a JSON number or "
                                   "boolean, not a string")
    return resource


#: A versioned reference's tail: a Bundle carries one version of a Medication, named without it.
_VERSION_SUFFIX = re.compile(r"/_history/[^/]+$")


def _bundled_medications(entries: list[Any], path: str) -> dict[str, list[tuple[Mapping[str, Any], str]]]:
    """The Medications carried beside the orders in ``draftOrders``, by the references that name them
    (the entry's ``fullUrl`` and ``Medication/<id>``), each with its path for errors.

    Why: an order's ``medicationReference`` may name a Medication of the same Bundle rather than a
    contained one. Only ``#id`` was followed, so a 112 mg Spravato order whose Medication was a Bundle
    entry had no RxNorm code and got no card at all, which reads as "no protocol applies" (found by an
    adversarial probe). A reference to a Medication the request does not carry still cannot be read; one
    that names two of them is refused when an order uses it (:func:`_bundled_medication`)."""
    found: dict[str, list[tuple[Mapping[str, Any], str]]] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "Medication":
            continue
        where = f"{path}.entry.{index}.resource"
        keys = {entry["fullUrl"]} if isinstance(entry.get("fullUrl"), str) else set()
        if isinstance(resource.get("id"), str):
            keys.add(f"Medication/{resource['id']}")
        for key in keys:
            found.setdefault(key, []).append((resource, where))
    return found


def _bundled_medication(reference: str, named: list[tuple[Mapping[str, Any], str]], order_path: str) -> Any:
    """The one Bundle Medication ``reference`` names, validated as FHIR R4 (an invalid one is a 400 naming
    its path). A reference that names two entries (a shared id, or one entry's ``fullUrl`` another's
    ``Medication/<id>``) is a 400 naming the order's reference: read as the first, the order could be
    judged as the wrong drug (found in review)."""
    from fhir.resources.R4B.medication import Medication

    if len(named) > 1:
        raise _bad_request(f"{order_path}.medicationReference.reference",
                           f"'{reference}' names {len(named)} Medications of the Bundle: "
                           f"{', '.join(where for _, where in named)}")
    return _validated(Medication, *named[0])  # as the orders: a strength of "100" is not read as 100


def _string_for_a_number(raw: Any, parsed: Any, path: str) -> str | None:
    """The path of the first string in ``raw`` (the order as sent) where FHIR JSON has a number or a
    boolean, found in ``parsed`` (the same order as ``fhir.resources`` read it: ``model_dump``), or None.

    Why: FHIR JSON carries decimals, integers and booleans as JSON numbers and booleans, and
    ``fhir.resources`` coerces strings ("35", "3.5e1", "true"), in strict mode too. A dose sent as
    ``"35"`` got a card saying it was within range, where /dose-check refuses the same value (found
    by an adversarial probe). Read off the parsed order, the rule covers every element of every
    contained resource without a list of element names (``value`` is a string in an Identifier)."""
    if isinstance(raw, Mapping) and isinstance(parsed, Mapping):
        for key, value in raw.items():
            if key in parsed and (found := _string_for_a_number(value, parsed[key], f"{path}.{key}")):
                return found
    elif isinstance(raw, list) and isinstance(parsed, list) and len(raw) == len(parsed):
        for index, (value, read) in enumerate(zip(raw, parsed, strict=True)):
            if found := _string_for_a_number(value, read, f"{path}.{index}"):
                return found
    elif isinstance(raw, str) and isinstance(parsed, int | float | Decimal):  # bool is an int
        return path
    return None


def _quantity_json(value: int, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": terminology.UCUM, "code": unit}


#: A draft order using every element the service reads (see ``warm_up``).
_WARM_UP_ORDERS: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
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
    draft_medication_requests(_WARM_UP_ORDERS, "order-sign", [], HookPatient("warm-up"))


def _codings(concept: Any) -> Iterable[Any]:
    return (concept.coding or []) if concept is not None else []


def _draft_order(request: Any, raw: Mapping[str, Any], path: str,
                 medications: Mapping[str, list[tuple[Mapping[str, Any], str]]]) -> DraftOrder:
    concept = request.medicationCodeableConcept
    concentration = None
    if concept is None and request.medicationReference is not None:
        reference = request.medicationReference.reference or ""
        for contained in request.contained or []:
            if reference == f"#{contained.id}" and contained.get_resource_type() == "Medication":
                concept = contained.code
                concentration = _strength(contained)
        reference = _VERSION_SUFFIX.sub("", reference)  # Medication/x/_history/2 is Medication/x's entry
        if concept is None and reference in medications:
            medication = _bundled_medication(reference, medications[reference], path)
            concept, concentration = medication.code, _strength(medication)
    rxnorm = [c.code for c in _codings(concept) if c.system == terminology.RXNORM and c.code]
    name = (concept.text if concept is not None and concept.text else None) or next(
        (c.display for c in _codings(concept) if c.display), None) or "medication"
    reasons = [str(c.code).upper() for r in request.reasonCode or [] for c in _codings(r) if c.code]
    # Any reason at all, coded or not (a coding with a display and no code too; a review).
    stated = bool(request.reasonCode) or bool(request.reasonReference)
    every = request.dosageInstruction or []
    dosages = every[:MAX_DOSAGE_INSTRUCTIONS]
    per_dosage = [_dosage_lines(dosage, f"{path}.dosageInstruction.{index}") for index, dosage in enumerate(dosages)]
    if len(every) > len(dosages):
        for found in per_dosage:
            for line in found:
                line.unchecked.append(f"the order has {len(every)} dosage instructions; only the first "
                                      f"{MAX_DOSAGE_INSTRUCTIONS} were read, and their total was not added up")
    dosed = [index for index, found in enumerate(per_dosage) if any(line.doses for line in found)]
    lines = []
    for index, dosage_lines in enumerate(per_dosage):
        # FHIR: instructions with the same sequence are given at the same time, with different ones one
        # after the other; without a sequence, how they relate is not stated, and two Mon/Thu 84 mg
        # instructions each read as a full pass (a clinical probe). Only instructions with a dose count
        # (a text-only one adds nothing; a review).
        sequence = dosages[index].sequence
        together = [other for other in dosed if other != index and (
            sequence is None or dosages[other].sequence is None or dosages[other].sequence == sequence)]
        if together and index in dosed:
            named = ", ".join(map(str, together[:NAMED_INSTRUCTIONS])) + (
                f" and {len(together) - NAMED_INSTRUCTIONS} more" if len(together) > NAMED_INSTRUCTIONS else "")
            for line in dosage_lines:
                line.unchecked.append(f"dosage instruction {index} may be given together with instruction(s) {named} "
                                      "(the same sequence, or none stated); their total was not added up")
        lines.extend(dosage_lines)
    for line in lines:
        line.concentration = concentration
    return DraftOrder(request.id, name, rxnorm, reasons, lines, reason_stated=stated)


def _strength(medication: Any) -> Concentration | None:
    """The strength of a single-ingredient Medication as mass per volume (100 mg / 1 mL): a dose in mL
    of it is then checked (3.5 mL of 100 mg/mL read "dose not checked"; found by a clinical QA probe).
    None for several ingredients, a strength that is no mass per volume, or missing numbers.

    The ratio is kept exact (100 mg per 3 mL as the fraction 100/3: rounded to 28 digits, 3 mL of it
    read just below a 100 mg minimum), and a strength of zero, a negative or an unreadable one is not
    used (a zero numerator divided by zero, a negative one made a negative dose; adversarial probe)."""
    ingredients = [i for i in medication.ingredient or [] if i.strength is not None]
    if len(ingredients) != 1:
        return None
    numerator, denominator = ingredients[0].strength.numerator, ingredients[0].strength.denominator
    if numerator is None or denominator is None:
        return None
    amount, per = _readable(numerator.value), _readable(denominator.value)
    units = [_unit_of(numerator), _unit_of(denominator)]
    if amount is None or per is None or amount <= 0 or per <= 0 or not all(units):
        return None  # a strength that cannot be used: a dose in mL of it is "not checked", as before
    try:
        return parse_concentration(amount / per, f"{units[0]}/{units[1]}")
    except UnitError:
        return None


def _readable(value: Any) -> Fraction | None:
    """A timing or strength number as an exact fraction, or None when it is not a finite number of a
    size arithmetic can take (1e5000 h overflowed a message's text: a 500). Unlike an ordered dose, zero
    and any precision are valid FHIR here (tim-4/tim-5 allow a duration or period of 0; found by a
    probe of the first fix, which refused them and with them the whole hook call)."""
    if value is None:
        return None
    number = Decimal(str(value))
    if not number.is_finite() or (number and not -MAX_EXPONENT <= number.adjusted() < MAX_EXPONENT):
        return None
    return Fraction(number)


def _quantity(value: Any, path: str) -> Quantity | None:
    """An ordered amount; a number no dose can be (zero, negative, 1e999999…) is a malformed order,
    refused like the same number sent to ``dose-check``."""
    if value is None or value.value is None:
        return None
    number = Decimal(str(value.value))
    problem = number_problem(number)
    if problem is not None:
        raise _bad_request(f"{path}.value", problem)
    unit = _unit_of(value)
    return Quantity(number, str(unit or ""))


def _unit_of(quantity: Any) -> str | None:
    """A FHIR Quantity's unit as the service reads it: its UCUM ``code`` (a ``system`` of UCUM, or none),
    else its human-readable ``unit``. A code of another system is not read, and neither is the text beside
    it: ``unit: mg`` with SNOMED CT's code for gram was read as 84 mg, a green card for 84 g (an
    adversarial probe); such a quantity is "not checked"."""
    if quantity.code and quantity.system not in (terminology.UCUM, None):
        return None
    return quantity.code if quantity.code else quantity.unit


def _ratio_rate(ratio: Any, path: str) -> tuple[Quantity | None, str | None]:
    """``rateRatio`` (5000 mg per 1 min) as a rate quantity (5000 mg/min), or why it cannot be one."""
    numerator = _quantity(ratio.numerator, f"{path}.numerator")
    denominator = _quantity(ratio.denominator, f"{path}.denominator")
    if numerator is None or denominator is None:
        return None, "a rateRatio without both numerator and denominator values"
    value = Fraction(numerator.value) / Fraction(denominator.value)
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(exact) != value or number_problem(exact) is not None:
        return None, f"the rateRatio {numerator.value} {numerator.unit} per {denominator.value} {denominator.unit}"
    rate = Quantity(exact, f"{numerator.unit}/{denominator.unit}")
    try:
        is_rate = parse_dose_unit(rate.unit).is_rate
    except UnitError:
        is_rate = True  # judged, and refused there with the unit's own reason
    if not is_rate:
        # 1 mg per 1 kg is no rate: it was judged as a dose of 1 mg/kg (an adversarial probe).
        return None, (f"the rateRatio {numerator.value} {numerator.unit} per {denominator.value} "
                      f"{denominator.unit} (its denominator is no time)")
    return rate, None


#: FHIR R4 timing abbreviations (``Timing.code``, v3 GTSAbbreviation) with a fixed frequency, used
#: when an order carries no ``timing.repeat`` frequency: an order "BID" is two doses a day, not one.
TIMING_ABBREVIATIONS = {
    "QD": (1, "P1D"), "AM": (1, "P1D"), "PM": (1, "P1D"), "BED": (1, "P1D"), "BID": (2, "P1D"),
    "TID": (3, "P1D"), "QID": (4, "P1D"), "QOD": (1, "P2D"), "WK": (1, "P1W"),
}
#: FHIR days-of-week codes as weekday numbers (Monday 0), for doses that fall on named days.
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
#: FHIR EventTiming codes for meals in general (not one named meal): counted as three a day.
MEAL_EVENTS = {"C": 3, "AC": 3, "PC": 3}
#: ``Q<n>H`` (Q4H, Q12H …): the base value set stops at Q8H, EHRs extend it.
_EVERY_N_HOURS = re.compile(r"Q([1-9][0-9]?)H")
TIMING_ABBREVIATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"


def _abbreviation(code: str) -> tuple[int, str] | None:
    code = code.strip().upper()
    hours = _EVERY_N_HOURS.fullmatch(code)
    return (1, f"PT{hours.group(1)}H") if hours else TIMING_ABBREVIATIONS.get(code)


#: :func:`_frequency`'s note for a timing whose ``repeat.count`` is 1.
ONE_ADMINISTRATION = "the timing's count is 1: one administration"


def _frequency(dosage: Any) -> tuple[Frequency | None, list[str], list[str]]:
    """The most frequent schedule the timing allows, with notes and what could not be read.

    ``frequencyMax`` when given (1-3 times a day is checked as 3), the shorter ``period`` (every 4-6 h
    is every 4 h), and as many doses as ``when`` or ``timeOfDay`` name (MORN and EVE: twice a day;
    they were counted as one dose and 168 mg a day read as 84), or a timing abbreviation."""
    timed = _listed_times(dosage)
    if timed is not None:
        return None, [], [timed]
    repeat = dosage.timing.repeat if dosage.timing is not None else None
    if repeat is None:
        return _abbreviated_frequency(dosage)
    most = max(int(repeat.count or 0), int(repeat.countMax or 0))  # administrations in all (0: no limit)
    if repeat.count == 1 and repeat.countMax in (None, 1):
        # One administration in all, whatever its schedule would be: "56 mg once a day, 1 time" was
        # judged as a daily regimen against a twice-weekly protocol, a critical card for one dose in
        # range (found in review).
        return None, [ONE_ADMINISTRATION], []
    # "C", "AC", "PC" (with, before, after meals) name no one meal: three a day. A time named twice is
    # one time (two 08:00 were two doses a day).
    when = {str(code) for code in repeat.when or []}
    times = len({str(time) for time in repeat.timeOfDay or []})
    events = max(sum(MEAL_EVENTS.get(code, 1) for code in when), times)
    # Days of the week repeat weekly, and the doses fall on those days: MON and THU with MORN and EVE
    # are four a week, two on each of those days (they were counted as days only, and 336 mg a week read
    # as 168; found by a clinical QA probe; spread over the week, 168 mg on a Monday read as 84 a day).
    named = sorted({_WEEKDAYS[str(day)] for day in repeat.dayOfWeek or [] if str(day) in _WEEKDAYS})
    days = len(named)
    period, period_unit = repeat.period, repeat.periodUnit
    longest, shortest = _readable(repeat.periodMax), _readable(period)
    if longest is not None and shortest is not None and longest < shortest:
        # periodMax is the upper end: one below period is malformed, and the shorter of the two is the
        # most frequent reading of it (period 7 d, periodMax 2 d was checked weekly; found by a probe).
        period = repeat.periodMax
    if (period is None or period_unit is None) and (events or days):
        period, period_unit = (1, "wk") if days else (1, "d")  # named days repeat weekly, times of day daily
    if period is None or period_unit is None:
        if repeat.frequency is not None or repeat.frequencyMax is not None:
            return None, [], ["the timing gives a frequency without a period"]
        frequency, notes, unchecked = _abbreviated_frequency(dosage)
        if frequency is None and most > 1:
            # Three 4-hour infusions with no period were one administration, and a green card (4.2 mg/kg
            # against at most 1.4 a day; found in review): how they fall in a period is not known.
            unchecked = [*unchecked, f"the timing gives {most} administrations (repeat.count) with no period; "
                                     "how many fall in a protocol's period was not checked"]
        return frequency, notes, unchecked
    unit_seconds = PERIOD_UNIT_SECONDS.get(period_unit)
    length = _readable(period)
    total = (length or 0) * (unit_seconds or 0)
    if length is None or unit_seconds is None or total <= 0 or total.denominator > 1000:
        return None, [], [f"the timing ({period} {period_unit}) has no fixed length in whole milliseconds, so its "
                          "frequency was not checked"]
    # Every 30 s was left unchecked (under a minute), and its card read "maximum respected: one dose"
    # (found by a probe). Any length is counted now, over whole seconds: 1 per 0.5 s is 2 per second; a
    # longer period with a fraction of a second is rounded down to whole seconds, which counts at least
    # as many doses (3.333 d is 287,971.2 s: scaled like a short one, it made a 400 for the whole call;
    # found in review).
    scale, rounded = 1, total.denominator != 1 and total >= 1
    if total < 1:
        scale, total = total.denominator, Fraction(total.numerator)
    elif rounded:
        total = Fraction(int(total))
    count = max(int(repeat.frequency or 1), int(repeat.frequencyMax or 0), events) * scale
    if days:
        if total != PERIOD_UNIT_SECONDS["wk"]:
            return None, [], [f"dayOfWeek with a period of {period} {period_unit} (not one week)"]
        # A frequency the order gives counts the week's doses, at least one at each named time of each
        # named day (2 a week on MON and THU "with meals" is two, not six: a meal code names no count
        # then; once a week on MON, WED and FRI is three; once a week on MON at 08:00 and 20:00 is two).
        # Without one, each named day has its times of day (or one dose).
        stated = repeat.frequency is not None or repeat.frequencyMax is not None
        named_times = max(times, len(when - set(MEAL_EVENTS)) + (1 if when & set(MEAL_EVENTS) else 0), 1)
        count = (max(int(repeat.frequency or 1), int(repeat.frequencyMax or 0), days * named_times) if stated
                 else days * max(events, 1))
    frequency = Frequency(count, _iso_duration(int(total)), named_days=tuple(named) or None, limit=most or None)
    notes = ([f"Checked at the most frequent the timing allows: {count} per "
              + (f"{period} {period_unit}" if scale == 1 and not rounded else f"{total} s")
              + (f", {frequency.per_named_day} on each of {days} named day{'s' if days > 1 else ''}." if days
                 else ".")]
             if count != int(repeat.frequency or 1) or days or rounded else [])
    try:
        parse_duration(frequency.period)  # the dose check reads it back: it must be a duration the service handles
    except ValueError:
        # Not a 400: that left every order of the call without a card, a critical one beside it too
        return None, [], [f"the timing's period ({period} {period_unit}) is longer than a dosing period this "
                          "service can check, so its frequency was not checked"]
    return frequency, notes, []


def _listed_times(dosage: Any) -> str | None:
    """Why a timing that lists its administrations (``Timing.event``, more than one) was not checked
    for how often; None otherwise.

    Three events on one day are three doses: read as no frequency, they were one dose, and 252 mg of
    esketamine in a day read "within protocol range" (found by a clinical QA probe). A list of
    instants is no count per period, so the card says the schedule was not checked instead of
    guessing one; a single event is one dose."""
    events = dosage.timing.event if dosage.timing is not None else None
    if not events or len(events) < 2:
        return None
    return (f"the timing lists {len(events)} administration times (timing.event); how many fall in a "
            "protocol's period was not checked")


def _abbreviated_frequency(dosage: Any) -> tuple[Frequency | None, list[str], list[str]]:
    concept = dosage.timing.code if dosage.timing is not None else None
    codes = [c.code for c in _codings(concept) if c.system in (TIMING_ABBREVIATION_SYSTEM, None) and c.code]
    if concept is not None and concept.text:
        codes.append(concept.text)  # a code sent as text only ("BID") still says how often
    for code in codes:
        known = _abbreviation(str(code))
        if known is not None:
            count, period = known
            return Frequency(count, period), [f"Frequency from the timing code {code}: {count} per {period}."], []
    if codes:
        return None, [], [f"the timing code {codes[0]} has no fixed frequency this service knows"]
    return None, [], []


def _iso_duration(seconds: int) -> str:
    """``seconds`` as an ISO 8601 duration of the service's (``protocols.durations``): one unit when it
    divides it (``P2W``, ``PT8H``), else weeks, days, hours, minutes and seconds (``P3DT7H59M31S``), whose
    parts stay within the service's digits where ``PT287971S`` did not for longer periods."""
    for suffix, size in (("W", 604800), ("D", 86400)):
        if seconds % size == 0:
            return f"P{seconds // size}{suffix}"
    for suffix, size in (("H", 3600), ("M", 60)):
        if seconds % size == 0:
            return f"PT{seconds // size}{suffix}"
    if seconds < 60:
        return f"PT{seconds}S"
    weeks, rest = divmod(seconds, 604800)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    date = "".join(f"{n}{unit}" for n, unit in ((weeks, "W"), (days, "D")) if n)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (rest, "S")) if n)
    return f"P{date}" + (f"T{time}" if time else "")


def _dosage_lines(dosage: Any, path: str) -> list[DosageLine]:
    """One line per ``doseAndRate``. Everything the entry orders is judged and the worst verdict wins:
    a dose (or both ends of a dose range) *and* its rate, so a 98 mg dose given at 70 mg/h is
    checked at 70 mg/h too; ``maxDosePerAdministration`` is judged as a dose. What cannot be judged
    (an open-ended dose, what an order with no timing repeats within its own maximum per period) keeps the
    card from reading "info"."""
    # Known SNOMED CT routes first, then FDA SPL codes read as theirs, then SNOMED CT codes the route pick
    # list does not hold (an unknown SNOMED code hid a usable SPL code beside it; a review).
    snomed = [c.code for c in _codings(dosage.route) if c.system == terminology.SNOMED and c.code]
    routes = [code for code in snomed if code in terminology.ROUTES] + [
        terminology.SPL_ROUTES[c.code] for c in _codings(dosage.route)
        if c.system in terminology.NCI_THESAURUS_SYSTEMS and c.code in terminology.SPL_ROUTES] + [
        code for code in snomed if code not in terminology.ROUTES]
    unread_route = None
    if not routes:
        # Without a route read as SNOMED CT the line is judged as given by every route its medication's
        # protocols give (:func:`protocols.cds._order_matches`): no card read as "no protocol" (560 mg of
        # Spravato a day, its route coded by EDQM, passed in silence; a clinical probe), and a route card
        # alone left 840 mg of Spravato a day, ordered without a route (FHIR's Dosage.route is optional),
        # unchecked (a later clinical probe).
        unread_route = _route_words(dosage.route)
        routes = [""]
    frequency, notes, unchecked = _frequency(dosage)
    no_frequency = _one_dose_reason(frequency, notes, unchecked)
    duration, shortest_s = _administration_duration(dosage, unchecked, frequency)
    repeat = dosage.timing.repeat if dosage.timing is not None else None
    bound_only = repeat is not None and repeat.durationMax is not None and repeat.duration is None
    order_max = _quantity(dosage.maxDosePerAdministration, f"{path}.maxDosePerAdministration")
    as_needed = bool(dosage.asNeededBoolean) or dosage.asNeededCodeableConcept is not None
    own_maximum = _own_maximum(dosage.maxDosePerPeriod, f"{path}.maxDosePerPeriod", unchecked)
    if own_maximum is not None and frequency is None and no_frequency is None:
        # With no timing the order repeats at will within its own maximum: what that gives per the protocol's
        # schedule is not checked, whatever the maximum says (it may only add a breach: protocols.cds._judge).
        # A maximum of 84 mg a day read as a full pass against twice weekly (a review).
        unchecked.append(f"the order has no timing and repeats within its own maximum ({own_maximum[0].value} "
                         f"{own_maximum[0].unit} per {own_maximum[2]}): its doses per the protocol's schedule were "
                         "not checked")
    lines = []
    for index, dose_and_rate in enumerate(dosage.doseAndRate or [None]):
        where = f"{path}.doseAndRate.{index}"
        line_unchecked = list(unchecked)
        amounts: list[Quantity] = []
        rates: list[Quantity] = []
        if dose_and_rate is not None:
            dose_quantity = dose_and_rate.doseQuantity
            dose = _quantity(dose_quantity, f"{where}.doseQuantity")
            if dose is not None:
                amounts = [dose]
                if dose_quantity.comparator in (">", ">="):
                    line_unchecked.append(f"the dose is open-ended ({dose_quantity.comparator} {dose.value} "
                                          f"{dose.unit})")
                elif dose_quantity.comparator in ("<", "<="):
                    # "<140 mg" is any dose under it, 1 mg included: judged at its bound it read as a full
                    # pass (a clinical probe; FHIR's SimpleQuantity allows no comparator here at all).
                    line_unchecked.append(f"the dose is bounded above only ({dose_quantity.comparator} "
                                          f"{dose.value} {dose.unit}): judged at that bound, how far below it "
                                          "it goes was not checked")
            elif dose_and_rate.doseRange is not None:
                amounts = _range_ends(dose_and_rate.doseRange, f"{where}.doseRange", "dose", line_unchecked)
            rate = _quantity(dose_and_rate.rateQuantity, f"{where}.rateQuantity")
            if rate is not None:
                rates = [rate]
            elif dose_and_rate.rateRange is not None:
                rates = _range_ends(dose_and_rate.rateRange, f"{where}.rateRange", "rate", line_unchecked)
            elif dose_and_rate.rateRatio is not None:
                ratio_rate, problem = _ratio_rate(dose_and_rate.rateRatio, f"{where}.rateRatio")
                rates = [ratio_rate] if ratio_rate is not None else []
                if problem is not None:
                    line_unchecked.append(f"{problem} could not be read as a rate")
        if order_max is not None:
            amounts.append(order_max)
        labels = [" to ".join(f"{fmt(Fraction(q.value))} {q.unit}" for q in amounts)] if amounts else []
        if rates:
            labels.append(f"{'at ' if amounts else ''}"
                          + " to ".join(f"{fmt(Fraction(q.value))} {q.unit}" for q in rates))
        doses = [*amounts, *rates]
        if doses or line_unchecked != unchecked:
            # An entry with nothing that could be read (a rateRatio that is no exact rate) still gets
            # its card, "dose not checked"; without a line it got none, as if no protocol applied.
            lines.append(DosageLine(routes[0], doses, frequency, " ".join(labels) or "as ordered", list(notes),
                                    as_needed=as_needed, unchecked=line_unchecked, duration=duration,
                                    shortest_s=shortest_s, no_frequency=no_frequency, unread_route=unread_route,
                                    duration_is_bound=bound_only, own_maximum=own_maximum))
    return lines


def _own_maximum(ratio: Any, path: str, unchecked: list[str]) -> tuple[Quantity, Fraction, str] | None:
    """``maxDosePerPeriod`` (840 mg per 1 d) as (amount, period in seconds, the period as written), or None
    with a note in ``unchecked`` when it cannot be read. It bounds an order with no timing, which repeats at
    will within it (the cards compare it with a protocol's maximum per period); a scheduled order is judged
    by its schedule, which the maximum can only lower."""
    if ratio is None:
        return None
    try:
        amount = _quantity(ratio.numerator, f"{path}.numerator")
        period = _quantity(ratio.denominator, f"{path}.denominator")
    except MalformedOrder:  # a zero or an absurd number: noted, never a 400 that loses every card (a review)
        amount = period = None
    unit_seconds = PERIOD_UNIT_SECONDS.get(period.unit) if period is not None else None
    if amount is None or period is None or unit_seconds is None:
        unchecked.append("the order's own maxDosePerPeriod could not be read (an amount per a period in s, min, "
                         "h, d or wk)")
        return None
    return amount, Fraction(period.value) * unit_seconds, f"{fmt(Fraction(period.value))} {period.unit}"


#: How a line without any route shows it (``DosageLine.unread_route``).
NO_ROUTE = "no route"


def _route_words(route: Any) -> str:
    """How an order's route that could not be read is shown: its codes and text, or that it has none."""
    if route is None:
        return NO_ROUTE
    codes = [f"{c.system or 'no system'}|{c.code}" for c in _codings(route) if c.code]
    words = [route.text] if route.text else []
    return "; ".join([*codes, *words]) or "a route with neither code nor text"


def _one_dose_reason(frequency: Frequency | None, notes: list[str], unchecked: list[str]) -> str | None:
    """Why one dose is counted although the order sent a timing (:func:`_frequency`'s answer): the dose
    check's own wording, "no frequency was sent", would be untrue."""
    if frequency is not None:
        return None
    if unchecked:
        return "the order's timing could not be read; see below"
    return "the timing gives one administration" if ONE_ADMINISTRATION in notes else None


def _administration_duration(dosage: Any, unchecked: list[str], frequency: Frequency | None = None,
                             ) -> tuple[tuple[Fraction, str] | None, Fraction | None]:
    """``timing.repeat.duration`` (or the longer ``durationMax``) with its ``durationUnit``: the longest an
    administration runs, which gives the most an infusion delivers; and the shortest it may run
    (``duration`` when ``durationMax`` is given too), which says how fast the dose may be given: a 10 min
    ``duration`` with a 40 min ``durationMax`` read as 40 min, and passed a protocol's "over 40 min"
    (a review).

    An order without a frequency or period, bounded by ``boundsDuration`` and no ``duration``, is one
    administration that long (25 mg/h for 4 h): without it, such a rate was projected as running
    without a stop (a review)."""
    repeat = dosage.timing.repeat if dosage.timing is not None else None
    if repeat is None:
        return None, None
    value = repeat.durationMax if repeat.durationMax is not None else repeat.duration
    unit = repeat.durationUnit
    if value is None and _rate_only(dosage):
        # An infusion with no duration runs, at most, until its bounds end (boundsDuration, boundsPeriod:
        # 0.35 mg/kg/h bounded by one day read as the protocol's 4 h, a green card for 588 mg against at
        # most 100 mg a day; an adversarial probe), and with a schedule, until the next start (read as the
        # protocol's 4 h, a QD infusion bounded by a day fell from critical to a warning; a review). A
        # bolus is given at once: bounded by two days, 150 mg was spread to 75 mg a day (a review).
        bounded = _bounds_length(repeat, unchecked)
        schedule = (repeat.frequency is not None or repeat.frequencyMax is not None or repeat.period is not None
                    or repeat.when or repeat.dayOfWeek or repeat.timeOfDay or dosage.timing.code is not None)
        if bounded is not None and not schedule:
            return bounded, None
        if bounded is not None and frequency is not None:
            per_day = frequency.per_named_day
            gap = Fraction(86400) / per_day if per_day else frequency.period_seconds / frequency.count
            longest = min(bounded[0], gap)
            return (longest, f"{fmt(longest / 3600)} h (until the next start, within its bounds)"), None
    if value is None:
        return None, None
    length = _readable(value)
    unit_seconds = PERIOD_UNIT_SECONDS.get(str(unit)) if unit else None
    if length is None or length <= 0 or unit_seconds is None or unit_seconds > PERIOD_UNIT_SECONDS["wk"]:
        unchecked.append(f"the administration's duration ({value} {unit}) could not be read")
        return None, None
    shortest = _readable(repeat.duration) if repeat.durationMax is not None and repeat.duration is not None else None
    shortest_s = shortest * unit_seconds if shortest is not None and 0 < shortest <= length else None
    return (length * unit_seconds, f"{value} {unit}"), shortest_s


def _has_rate(dosage: Any) -> bool:
    """Whether the dosage orders a rate (beside an amount or alone)."""
    return any(e.rateQuantity is not None or e.rateRatio is not None or e.rateRange is not None
               for e in dosage.doseAndRate or [])


def _rate_only(dosage: Any) -> bool:
    """Whether the dosage orders a rate and no amount (an infusion, whose bounds may be its length)."""
    return _has_rate(dosage) and all(e.doseQuantity is None and e.doseRange is None for e in dosage.doseAndRate or [])


def _bounds_length(repeat: Any, unchecked: list[str]) -> tuple[Fraction, str] | None:
    """How long a timing's bounds last (``boundsDuration``, else ``boundsPeriod``), or None."""
    bounds = repeat.boundsDuration
    if bounds is not None and bounds.value is not None:
        length, unit = _readable(bounds.value), _unit_of(bounds)
        unit_seconds = PERIOD_UNIT_SECONDS.get(str(unit)) if unit else None
        if length is None or length <= 0 or unit_seconds is None or length * unit_seconds > PERIOD_UNIT_SECONDS["wk"]:
            unchecked.append(f"the administration's bounds ({bounds.value} {unit}) could not be read as its duration")
            return None
        return length * unit_seconds, f"{bounds.value} {unit} (boundsDuration)"
    if repeat.boundsPeriod is not None:
        return _period_length(repeat.boundsPeriod, unchecked)
    return None


def _period_length(period: Any, unchecked: list[str]) -> tuple[Fraction, str] | None:
    """How long a ``boundsPeriod`` lasts: end minus start for instants, whole days for dates (an end date
    is that day's end: the longer reading); None, noted, when it has no end or cannot be read."""
    start, end = period.start, period.end
    if start is None or end is None:
        return None  # open: as an order without a duration (the protocol's, noted as assumed)
    if isinstance(start, datetime) and isinstance(end, datetime) and start.tzinfo and end.tzinfo:
        seconds = Fraction(int((end - start).total_seconds()))
    elif not isinstance(start, datetime) and not isinstance(end, datetime) and isinstance(start, date):
        seconds = Fraction(((end - start).days + 1) * 86400)
    else:
        seconds = Fraction(0)
    if seconds <= 0 or seconds > PERIOD_UNIT_SECONDS["wk"]:
        unchecked.append(f"the administration's bounds ({start} to {end}) could not be read as its duration")
        return None
    return seconds, f"{fmt(seconds / 3600)} h (boundsPeriod)"


def _range_ends(bounds: Any, path: str, what: str, unchecked: list[str]) -> list[Quantity]:
    """Both ends of a dose or rate range; a missing end leaves the range open that way (unchecked).

    Without a low end, "up to 140 mg" also orders every amount below the protocol's minimum, and its
    card read "within protocol range" from the high end alone (adversarial probe)."""
    low = _quantity(bounds.low, f"{path}.low")
    high = _quantity(bounds.high, f"{path}.high")
    if high is None:
        unchecked.append(f"the {what} range has no upper end")
    if low is None:
        unchecked.append(f"the {what} range has no lower end")
    return [q for q in (low, high) if q is not None]


@dataclass(frozen=True)
class Weight:
    """The newest prefetched body weight and when it was observed (shown on every card), and why it is
    not used when it is implausible (``refused``).

    Why the refusal is decided here, once: the cards judged each dose with the weight, and the weight
    line of each card checked it again; a fixed-dose range was not checked at all beside a 1,000,000 kg
    weight (the dose check refused the whole order for it), and the line had to repeat the rule to
    avoid reading "Body weight used" above the refusal (found by an adversarial probe)."""

    kg: Fraction
    observed_at: datetime | None
    refused: str | None = None
    #: The observation's ``subject.reference``: only the hook's patient's weight is used.
    subject: str | None = None
    #: Why the weight may no longer hold (observed more than :data:`WEIGHT_MAX_AGE` ago, or undated):
    #: a weight-based dose judged with it is "partly checked".
    stale: str | None = None

    @property
    def usable_kg(self) -> Fraction | None:
        return self.kg if self.refused is None else None

    def observed(self) -> str:
        return format_rfc3339(self.observed_at) if self.observed_at is not None else "date unknown"


#: How old a body weight may be before a weight-based dose checked with it is "partly checked": a
#: weight from 2012 made 500 mg of ketamine "within range" for a patient who may now weigh half as much
#: (found by a clinical probe). A month: weight-based dosing wants a current weight, and inpatient
#: weights are measured on admission; the dose is still judged with the weight, and the card says why
#: it is not a full pass.
WEIGHT_MAX_AGE = timedelta(days=30)


def prefetched_weight(prefetch: Mapping[str, Any], *, patient: HookPatient, now: datetime | None = None
                      ) -> Weight | str:
    """The latest usable body weight of the hook's patient, or the reason there is none (shown on cards).

    Only observations whose ``subject`` is the patient count: another patient's 140 kg turned a
    600 mg order from critical into "within range" (found by a probe). An OperationOutcome is how a
    CDS Hooks 2.0 client says it could not prefetch (it was a 400, and the call's other cards, a
    critical one too, were lost: found by a conformance probe)."""
    now = now or utcnow()
    data = prefetch.get(WEIGHT_PREFETCH)
    if data is None:
        return "no body weight was prefetched"
    if not isinstance(data, Mapping):
        raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}", "must be a FHIR Bundle, Observation or OperationOutcome")
    if data.get("resourceType") == "OperationOutcome":
        return f"the EHR could not prefetch a body weight ({_outcome_text(data)})"
    if data.get("resourceType") == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}.entry", "must be an array")
        resources = [e.get("resource") for e in entries if isinstance(e, Mapping)]
    elif data.get("resourceType") == "Observation":
        resources = [data]
    else:
        raise _bad_request(f"prefetch.{WEIGHT_PREFETCH}", "must be a FHIR Bundle, Observation or OperationOutcome")
    # A weight "observed" after now is a data-entry error, not the newest weight (2099 won).
    latest_plausible = now + timedelta(days=1)
    weights = [weight for weight in map(_observation_weight, resources) if weight is not None]
    named = [patient.named_by(weight.subject) for weight in weights]
    found = [weight for weight, own in zip(weights, named, strict=True)
             if own and (weight.observed_at or datetime.min) <= latest_plausible]
    if not found:
        if True in named:  # the patient's own, none usable (dated in the future): that is the reason
            return "the prefetched observations hold no usable body weight"
        if False in named:
            return f"the prefetched body weights are not of this patient (Patient/{patient.id})"
        if None in named:
            return f"the prefetched body weights name no patient this service can match to Patient/{patient.id}"
        return "the prefetched observations hold no usable body weight"
    newest = max(found, key=lambda weight: weight.observed_at or datetime.min)
    try:
        check_weight(newest.kg)
    except DosingError as exc:  # the newest is wrong, so an older one is no safer: none is used
        return replace(newest, refused=exc.message)
    if newest.observed_at is None:
        return replace(newest, stale="the body weight's observation has no date, so it may no longer hold")
    if newest.observed_at < now - WEIGHT_MAX_AGE:
        return replace(newest, stale=f"the body weight was observed on {newest.observed_at.date().isoformat()}, more "
                                     f"than {WEIGHT_MAX_AGE.days} days ago, and may no longer hold")
    return newest


def per_kg(unit: str) -> bool:
    """Whether a dose in ``unit`` is per kilogram of body weight (an unreadable unit is not: its verdict
    says why it was not checked)."""
    try:
        return parse_dose_unit(unit).per_kg
    except UnitError:
        return False


def is_rate(unit: str) -> bool:
    """Whether a dose in ``unit`` is a rate (an unreadable unit is not)."""
    try:
        return parse_dose_unit(unit).is_rate
    except UnitError:
        return False


def _outcome_text(outcome: Mapping[str, Any]) -> str:
    """What an OperationOutcome says, in a few words: the text of its first error (an outcome often opens
    with an ``information`` issue), else of its first issue, else that issue's code."""
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, Mapping)] \
        if isinstance(outcome.get("issue"), list) else []
    issue = next((i for i in issues if i.get("severity") in ("fatal", "error")), issues[0] if issues else {})
    details = issue.get("details")
    text = issue.get("diagnostics") or (details.get("text") if isinstance(details, Mapping) else None) \
        or issue.get("code")
    return " ".join(text.split())[:200] if isinstance(text, str) and text.strip() else "an OperationOutcome"


def _observation_weight(resource: Any) -> Weight | None:
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
            or not isinstance(quantity.get("value"), int | Decimal) or quantity.get("comparator") is not None):
        return None  # true is an int to Python, not a weight of 1 kg; "> 70 kg" is no weight either
    if quantity.get("system") is not None and quantity.get("system") != terminology.UCUM:
        return None  # a unit coded in another system is not read as UCUM (or from its text)
    unit = quantity.get("code") or quantity.get("unit")
    value = Decimal(quantity["value"])
    if number_problem(value) is not None:
        return None  # 0, negative, 1e999999 …: no weight (and no million-digit arithmetic)
    try:
        kilograms = to_kilograms(value, str(unit))
    except UnitError:
        return None
    subject = resource.get("subject")
    return Weight(kilograms, _observed_at(resource),
                  subject=subject.get("reference") if isinstance(subject, Mapping) else None)


def _observed_at(resource: Mapping[str, Any]) -> datetime | None:
    """When the observation was made, as naive UTC, so that the newest weight wins whatever offset each
    time carries (as text, ``10:00+09:00`` sorts after ``05:00Z`` though it is four hours earlier). A
    partial FHIR date (``2024``, ``2024-06``, ``2024-06-01``) counts from its start; an
    ``effectivePeriod`` from its end (or start); a missing or unreadable time is None (sorts oldest)."""
    period = resource.get("effectivePeriod")
    period_time = ((period.get("end") or period.get("start")) if isinstance(period, Mapping) else None)
    when = (resource.get("effectiveDateTime") or resource.get("effectiveInstant") or period_time
            or resource.get("issued"))
    return fhir_query.date_start(when) if isinstance(when, str) else None
